"""Preflight: measure every device's matmul throughput and the mesh's collective bandwidth; find stragglers.

Before a long run, each process times a size^3 matmul on each of its devices (bf16 and f32, TFLOP/s) and all
processes together time all-reduce and all-gather through JAX collectives, like nccl-tests:
  all-reduce of S bytes per device over n devices: algbw = S / t, busbw = algbw * 2 (n - 1) / n;
  all-gather producing S_out = n * S bytes:          algbw = S_out / t, busbw = algbw * (n - 1) / n.
Bus bandwidth is comparable across n and with the link speed. With several processes the collectives run on
three scopes of a (process, local) mesh: "all" devices, "intra" (within a process: NVLink on a GPU node) and
"inter" (across processes: the network), so the layer that is the bottleneck shows. Stragglers are devices whose
throughput, or processes whose median device throughput, fall below `ratio` x the median (default 0.8).
The per-device figures are gathered to every process; process 0 prints and exports them.
"""

from __future__ import annotations

import dataclasses
import socket
import statistics
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

HOST_BYTES = 64


@dataclasses.dataclass
class PreflightOptions:
    """What to measure and how hard."""

    size: int = 2048  # matmul dimension
    iters: int = 5  # timed repetitions (after one warm-up)
    dtypes: Sequence[str] = ("bfloat16", "float32")
    collective_bytes: Sequence[int] = (1 << 20, 1 << 24)  # per-device message sizes
    straggler_ratio: float = 0.8


def matmul_tflops(device: Any, size: int, dtype: str, iters: int, repeats: int = 3) -> float:
    """Throughput in TFLOP/s (2 size^3 per matmul): the best of `repeats` windows of `iters` chained matmuls."""
    key = jax.device_put(jax.random.PRNGKey(0), device)
    a = jax.device_put(jax.random.normal(key, (size, size), dtype), device)
    step = jax.jit(lambda x, y: (x @ y) * jnp.asarray(1.0 / size, dtype))
    step(a, a).block_until_ready()  # compile and warm up
    best = float("inf")
    for _ in range(repeats):  # best of a few windows: a device is as fast as it can be shown to be
        t0 = time.perf_counter()
        x = a
        for _ in range(iters):
            x = step(x, a)
        x.block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * size ** 3 * iters / best / 1e12


def find_stragglers(values: dict[Any, float], ratio: float) -> list[Any]:
    """Keys whose value is below ratio x the median of all values."""
    if len(values) < 2:
        return []
    median = statistics.median(values.values())
    return [k for k, v in values.items() if v < ratio * median]


def _mesh() -> Mesh:
    """A (process, local) mesh of every device, ordered by process then device id."""
    n_proc = jax.process_count()
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    local = len(devices) // n_proc
    return Mesh(np.array(devices).reshape(n_proc, local), ("proc", "local"))


def _collective(mesh: Mesh, op: str, axes: tuple[str, ...], nbytes: int, iters: int) -> float:
    """Seconds per call of an all-reduce / all-gather of nbytes per device over `axes` of the mesh."""
    count = max(1, nbytes // 4)
    spec = P(("proc", "local"))
    if op == "all_reduce":
        body = lambda x: jax.lax.psum(x, axes)  # noqa: E731
    else:
        body = lambda x: jax.lax.all_gather(x, axes, tiled=True)  # noqa: E731
    fn = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=spec, out_specs=spec))
    x = jax.make_array_from_callback((mesh.size * count,), NamedSharding(mesh, spec),
                                     lambda idx: np.ones((count,), np.float32))
    fn(x).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(iters):
        y = fn(x)
    y.block_until_ready()
    return (time.perf_counter() - t0) / iters


def _allgather(values: np.ndarray) -> np.ndarray:
    """Stack an array from every process (axis 0 = process); a no-op copy with one process."""
    if jax.process_count() == 1:
        return values[None]
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(values))


def _host_codes() -> list[str]:
    raw = np.zeros(HOST_BYTES, np.uint8)
    name = socket.gethostname().encode()[:HOST_BYTES]
    raw[:len(name)] = np.frombuffer(name, np.uint8)
    return [bytes(row).rstrip(b"\0").decode(errors="replace") for row in _allgather(raw)]


def run(opts: PreflightOptions | None = None) -> dict[str, Any]:
    """Measure, gather to every process, and return the report (see the module docstring for the figures)."""
    opts = opts or PreflightOptions()
    local = sorted(jax.local_devices(), key=lambda d: d.id)
    figures = np.array([[matmul_tflops(d, opts.size, dt, opts.iters) for dt in opts.dtypes] for d in local])
    ids = np.array([d.id for d in local], np.int32)
    all_figures, all_ids, hosts = _allgather(figures), _allgather(ids), _host_codes()
    devices = []
    for p in range(all_figures.shape[0]):
        for j in range(all_figures.shape[1]):
            devices.append({"process": p, "host": hosts[p], "device": int(all_ids[p, j]),
                            "tflops": {dt: float(all_figures[p, j, k]) for k, dt in enumerate(opts.dtypes)}})
    mesh = _mesh()
    scopes = {"all": ("proc", "local")}
    if mesh.shape["proc"] > 1:
        scopes["inter"] = ("proc",)
    if mesh.shape["local"] > 1 and mesh.shape["proc"] > 1:  # with one process "intra" is "all"
        scopes["intra"] = ("local",)
    collectives = []
    for scope, axes in scopes.items():
        n = int(np.prod([mesh.shape[a] for a in axes]))
        for op in ("all_reduce", "all_gather"):
            for nbytes in opts.collective_bytes:
                t = float(_allgather(np.array([_collective(mesh, op, axes, nbytes, opts.iters)])).max())
                size = nbytes if op == "all_reduce" else n * nbytes
                factor = 2 * (n - 1) / n if op == "all_reduce" else (n - 1) / n
                collectives.append({"op": op, "scope": scope, "n": n, "bytes": int(nbytes), "time_s": t,
                                    "algbw_gbps": size / t / 1e9, "busbw_gbps": size / t / 1e9 * factor})
    medians, slow_devices, slow_hosts = {}, [], []
    for dt in opts.dtypes:
        per_device = {(d["process"], d["device"]): d["tflops"][dt] for d in devices}
        medians[dt] = statistics.median(per_device.values())
        slow_devices += [{"process": p, "device": i, "host": hosts[p], "dtype": dt, "tflops": per_device[(p, i)],
                          "median": medians[dt]} for p, i in find_stragglers(per_device, opts.straggler_ratio)]
        per_proc = {p: statistics.median(v for (q, _), v in per_device.items() if q == p) for p in range(len(hosts))}
        slow_hosts += [{"process": p, "host": hosts[p], "dtype": dt, "tflops": per_proc[p]}
                       for p in find_stragglers(per_proc, opts.straggler_ratio)]
    return {"platform": local[0].platform, "device_kind": local[0].device_kind,
            "process_count": jax.process_count(), "device_count": jax.device_count(),
            "size": opts.size, "iters": opts.iters, "straggler_ratio": opts.straggler_ratio, "devices": devices,
            "median_tflops": medians, "collectives": collectives,
            "stragglers": {"devices": slow_devices, "hosts": slow_hosts}}


def format_report(report: dict[str, Any]) -> str:
    """A plain-text table of the report: devices, collectives, stragglers."""
    dts = list(report["median_tflops"])
    lines = [f"preflight: {report['device_count']} {report['platform']} devices in {report['process_count']} "
             f"process(es); matmul {report['size']}^3 x {report['iters']}",
             f"{'process':>7} {'host':<20} {'device':>6} " + " ".join(f"{dt + ' TFLOP/s':>17}" for dt in dts)]
    slow = {(s["process"], s["device"]) for s in report["stragglers"]["devices"]}
    for d in report["devices"]:
        mark = "  <- straggler" if (d["process"], d["device"]) in slow else ""
        lines.append(f"{d['process']:>7} {d['host'][:20]:<20} {d['device']:>6} "
                     + " ".join(f"{d['tflops'][dt]:>17.4f}" for dt in dts) + mark)
    lines.append(f"{'median':>7} {'':<20} {'':>6} " + " ".join(f"{report['median_tflops'][dt]:>17.4f}" for dt in dts))
    lines += ["", f"{'collective':<11} {'scope':<6} {'n':>4} {'bytes/dev':>11} {'time ms':>9} {'algbw GB/s':>11} "
              f"{'busbw GB/s':>11}"]
    for c in report["collectives"]:
        lines.append(f"{c['op']:<11} {c['scope']:<6} {c['n']:>4} {c['bytes']:>11} {c['time_s'] * 1e3:>9.3f} "
                     f"{c['algbw_gbps']:>11.3f} {c['busbw_gbps']:>11.3f}")
    s = report["stragglers"]
    lines += ["", f"stragglers (below {report['straggler_ratio']:g} x median): "
              f"{len(s['devices'])} device(s), {len(s['hosts'])} process(es)"]
    lines += [f"  device {x['device']} of process {x['process']} ({x['host']}): {x['tflops']:.4f} {x['dtype']} "
              f"TFLOP/s vs median {x['median']:.4f}" for x in s["devices"]]
    lines += [f"  process {x['process']} ({x['host']}): median {x['tflops']:.4f} {x['dtype']} TFLOP/s"
              for x in s["hosts"]]
    return "\n".join(lines)


def export_metrics(report: dict[str, Any], registry: Any = None) -> Any:
    """Fill prometheus_client gauges (prefix scalekit_preflight_) from a report; returns the registry."""
    from prometheus_client import CollectorRegistry, Gauge
    reg = registry if registry is not None else CollectorRegistry()
    tflops = Gauge("scalekit_preflight_matmul_tflops", "Matmul throughput per device (TFLOP/s)",
                   ["host", "process", "device", "dtype"], registry=reg)
    straggler = Gauge("scalekit_preflight_straggler", "1 if the device is below the straggler ratio x median",
                      ["host", "process", "device", "dtype"], registry=reg)
    busbw = Gauge("scalekit_preflight_busbw_gbps", "Collective bus bandwidth (GB/s, nccl-tests convention)",
                  ["op", "scope", "bytes"], registry=reg)
    algbw = Gauge("scalekit_preflight_algbw_gbps", "Collective algorithm bandwidth (GB/s)", ["op", "scope", "bytes"],
                  registry=reg)
    count = Gauge("scalekit_preflight_devices", "Devices measured", registry=reg)
    slow = {(s["process"], s["device"], s["dtype"]) for s in report["stragglers"]["devices"]}
    for d in report["devices"]:
        for dt, v in d["tflops"].items():
            labels = (d["host"], str(d["process"]), str(d["device"]), dt)
            tflops.labels(*labels).set(v)
            straggler.labels(*labels).set(float((d["process"], d["device"], dt) in slow))
    for c in report["collectives"]:
        busbw.labels(c["op"], c["scope"], str(c["bytes"])).set(c["busbw_gbps"])
        algbw.labels(c["op"], c["scope"], str(c["bytes"])).set(c["algbw_gbps"])
    count.set(report["device_count"])
    return reg
