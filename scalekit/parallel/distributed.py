"""Multi-host initialisation: who is process 0, how many processes, and which local devices each one drives.

`initialize(dist_cfg)` must run before any other JAX call. It works out the cluster from, in order of precedence:

1. explicit config: `distributed.coordinator_address`, `num_processes`, `process_id`, `local_device_ids`;
2. environment: SCALEKIT_COORDINATOR_ADDRESS, SCALEKIT_NUM_PROCESSES, SCALEKIT_PROCESS_ID,
   SCALEKIT_LOCAL_DEVICE_IDS (then JAX's own JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID,
   JAX_LOCAL_DEVICE_IDS);
3. a Slurm step (SLURM_JOB_ID, SLURM_PROCID, SLURM_STEP_NUM_TASKS/SLURM_NTASKS, SLURM_LOCALID, the step nodelist);
4. a Kubernetes Indexed Job / JobSet pod (JOB_COMPLETION_INDEX, JOBSET_NAME, REPLICATED_JOB_NAME, JOB_INDEX,
   SCALEKIT_K8S_PARALLELISM, SCALEKIT_K8S_REPLICAS, SCALEKIT_K8S_SUBDOMAIN), whose coordinator is the
   headless-service hostname of pod 0: `<jobset>-<replicated job>-0-0.<subdomain>`.

Each field is taken from the first of these that sets it. Auxiliary variables: SCALEKIT_COORDINATOR_PORT (the
port on Slurm/Kubernetes; Slurm's default is 61440 + job id % 4096, as JAX does), SCALEKIT_HOST_ALIASES
("name=ip,name2=ip2": a static host table consulted before DNS, like a pod's `hostAliases`; tests use it to make
the JobSet hostname resolve to 127.0.0.1 without touching /etc/hosts), SCALEKIT_COORDINATOR_BIND (the address
process 0 listens on; by default the coordinator host's own address, 127.0.0.1 when every process is on this
machine; 0.0.0.0 for every interface).

Process-to-GPU mapping (`distributed.mode`): "per_gpu" runs one process per GPU; under Slurm the task with
SLURM_LOCALID=i drives GPU i of the node when all node GPUs are visible to every task, or the single GPU Slurm
bound to it (--gpus-per-task=1 / --gpu-bind). "per_node" runs one process per node that drives every visible GPU.
Mismatches (more tasks than GPUs, several tasks per node in per_node mode) fail with a message saying what to
change, instead of silently putting two processes on one GPU.

Failure detection: before JAX connects, the processes meet at the coordinator port (`rendezvous.py`), so a peer
that never arrives makes every other process raise DistributedInitError naming it within `timeout_s`. The
rendezvous connections stay open as a liveness channel: a peer that dies later makes the others exit with
EXIT_PEER_FAILED and a message naming it, instead of hanging in a collective. JAX's own heartbeat
(`heartbeat_timeout_seconds = timeout_s`) covers a lost node that closes no connection.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import sys
import time
from collections.abc import Mapping
from typing import Any

from scalekit.parallel import rendezvous
from scalekit.parallel.rendezvous import EXIT_PEER_FAILED, DistributedInitError

__all__ = ["ClusterSpec", "DistributedInfo", "DistributedInitError", "EXIT_PEER_FAILED", "detect",
           "expand_nodelist", "initialize", "shutdown", "report_failure", "info"]

SOURCES = ("single", "explicit", "env", "slurm", "k8s")
K8S_DEFAULT_PORT = 8476
_INFO: DistributedInfo | None = None


@dataclasses.dataclass(frozen=True)
class DistributedInfo:
    """What `initialize` set up: this process's index, the count, its devices and where the settings came from."""

    process_index: int
    process_count: int
    local_device_ids: tuple[int, ...] | None  # None = every device visible to the process
    source: str  # one of SOURCES
    coordinator: str  # "host:port" as configured ("" for a single process)
    mode: str = "per_gpu"
    detail: str = ""  # how the process-to-device mapping was chosen, for logs


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    """The resolved settings before any connection: a pure function of config and environment."""

    coordinator_address: str
    num_processes: int
    process_id: int
    local_device_ids: tuple[int, ...] | None
    source: str
    mode: str
    detail: str


def _cfg_get(cfg: Any, name: str, default: Any) -> Any:
    if cfg is None:
        return default
    try:
        return cfg[name]
    except (KeyError, AttributeError, TypeError):
        return getattr(cfg, name, default)


def _parse_ids(text: str) -> tuple[int, ...] | None:
    text = str(text).strip()
    if not text:
        return None
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise DistributedInitError(f"local device ids {text!r} must be comma-separated integers like '0,1'") from e


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a Slurm hostlist ('gpu[001-003,007],login1') into host names, preserving order and zero padding."""
    hosts: list[str] = []
    for match in re.finditer(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist):
        prefix, ranges = match.group(1), match.group(2)
        if not ranges:
            hosts.append(prefix)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            width = len(lo)
            for i in range(int(lo), int(hi or lo) + 1):
                hosts.append(f"{prefix}{i:0{width}d}")
    return hosts


def _gpu_count(env: Mapping[str, str]) -> int | None:
    """GPUs visible to this process (None when there are none or the platform is forced to CPU)."""
    if env.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
        return None
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [v for v in visible.split(",") if v.strip() and v.strip() not in ("-1", "NoDevFiles")]
        return len(ids) or None
    on_node = env.get("SLURM_GPUS_ON_NODE", "")
    return int(on_node) if on_node.isdigit() and int(on_node) > 0 else None


def _tasks_on_this_node(env: Mapping[str, str]) -> int | None:
    """Tasks of this step on this node, from SLURM_STEP_TASKS_PER_NODE ('4(x2),3') and SLURM_NODEID."""
    spec, node = env.get("SLURM_STEP_TASKS_PER_NODE", ""), env.get("SLURM_NODEID", "")
    counts: list[int] = []
    for part in filter(None, spec.split(",")):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not m:
            return None
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    return counts[int(node)] if node.isdigit() and int(node) < len(counts) else None


def _slurm_devices(env: Mapping[str, str], mode: str) -> tuple[tuple[int, ...] | None, str]:
    """(local_device_ids, explanation) for this Slurm task; raises on a mapping that would idle or share GPUs."""
    local_id = int(env.get("SLURM_LOCALID", "0"))
    local_tasks = _tasks_on_this_node(env)
    gpus = _gpu_count(env)
    node = env.get("SLURMD_NODENAME", "this node")
    if mode == "per_node":
        if local_id > 0 or (local_tasks or 1) > 1:
            raise DistributedInitError(
                f"distributed.mode=per_node expects one task per node, but {node} runs {local_tasks or '>1'} "
                f"(this is local task {local_id}): submit with --ntasks-per-node=1, or set "
                "--config.distributed.mode=per_gpu")
        return None, f"slurm per_node: one process drives all {gpus or 'local'} devices of the node"
    if gpus is None:
        return None, "slurm per_gpu: no GPUs in this step; the process uses all its local (CPU) devices"
    if gpus == 1:
        return None, f"slurm per_gpu: Slurm bound one GPU (CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', '?')})"
    if local_id >= gpus or (local_tasks is not None and local_tasks != gpus):
        raise DistributedInitError(
            f"process-to-GPU mapping on {node}: {local_tasks or '?'} tasks (this is SLURM_LOCALID={local_id}) but "
            f"{gpus} GPUs are visible (CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', 'unset')}): launch "
            "one task per GPU (--ntasks-per-node equal to --gpus-per-node) or use --config.distributed.mode=per_node")
    return (local_id,), f"slurm per_gpu: local task {local_id} drives GPU {local_id} of {gpus} visible"


def _slurm(env: Mapping[str, str], mode: str) -> dict[str, Any] | None:
    if not all(k in env for k in ("SLURM_JOB_ID", "SLURM_PROCID")):
        return None
    if "SLURM_STEP_NUM_TASKS" not in env and int(env.get("SLURM_NTASKS") or 1) > 1:
        raise DistributedInitError(
            f"this is the batch script of Slurm job {env['SLURM_JOB_ID']} (no job step), which has "
            f"SLURM_NTASKS={env['SLURM_NTASKS']} tasks: start the processes with `srun ...` so that each task runs "
            "one, or set --config.distributed.enabled=off to run a single process here")
    count = int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or 1)
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "localhost"
    host = expand_nodelist(nodelist)[0]
    port = env.get("SCALEKIT_COORDINATOR_PORT") or str(61440 + int(env["SLURM_JOB_ID"]) % 4096)
    ids, detail = _slurm_devices(env, mode)
    return {"coordinator_address": f"{host}:{port}", "num_processes": count,
            "process_id": int(env["SLURM_PROCID"]), "local_device_ids": ids, "detail": detail}


def _k8s(env: Mapping[str, str], mode: str) -> dict[str, Any] | None:
    if "JOB_COMPLETION_INDEX" not in env:
        return None
    index = int(env["JOB_COMPLETION_INDEX"])
    parallelism = int(env.get("SCALEKIT_K8S_PARALLELISM") or 0)
    replicas = int(env.get("SCALEKIT_K8S_REPLICAS") or 1)
    job_index = int(env.get("JOB_INDEX") or 0)
    port = env.get("SCALEKIT_COORDINATOR_PORT") or str(K8S_DEFAULT_PORT)
    if env.get("JOBSET_NAME"):
        subdomain = env.get("SCALEKIT_K8S_SUBDOMAIN") or env["JOBSET_NAME"]
        host = f"{env['JOBSET_NAME']}-{env.get('REPLICATED_JOB_NAME', 'workers')}-0-0.{subdomain}"
    elif env.get("JOB_NAME") and env.get("SCALEKIT_K8S_SUBDOMAIN"):  # a plain Indexed Job + headless service
        host = f"{env['JOB_NAME']}-0.{env['SCALEKIT_K8S_SUBDOMAIN']}"
    else:
        host = ""
    if parallelism <= 0 or not host:
        raise DistributedInitError(
            "Kubernetes Indexed Job detected (JOB_COMPLETION_INDEX is set) but SCALEKIT_K8S_PARALLELISM and "
            "JOBSET_NAME (or JOB_NAME + SCALEKIT_K8S_SUBDOMAIN) are missing: generate the manifest with "
            "`scalekit launch k8s`, or set SCALEKIT_COORDINATOR_ADDRESS/NUM_PROCESSES/PROCESS_ID yourself")
    detail = f"k8s {mode}: pod {index} of job {job_index}; coordinator is the headless-service name of pod 0"
    return {"coordinator_address": f"{host}:{port}", "num_processes": parallelism * replicas,
            "process_id": job_index * parallelism + index, "local_device_ids": None, "detail": detail}


def detect(dist_cfg: Any = None, environ: Mapping[str, str] | None = None) -> ClusterSpec:
    """Resolve the cluster settings from config, environment, Slurm or Kubernetes (no side effects)."""
    env = os.environ if environ is None else environ
    enabled = _cfg_get(dist_cfg, "enabled", "auto")
    mode = _cfg_get(dist_cfg, "mode", "per_gpu")
    if mode not in ("per_gpu", "per_node"):
        raise DistributedInitError(f"distributed.mode={mode!r} must be 'per_gpu' or 'per_node'")
    if enabled == "off":
        return ClusterSpec("", 1, 0, None, "single", mode, "distributed.enabled=off")
    explicit = {
        "coordinator_address": _cfg_get(dist_cfg, "coordinator_address", "") or None,
        "num_processes": _cfg_get(dist_cfg, "num_processes", 0) or None,
        "process_id": None if _cfg_get(dist_cfg, "process_id", -1) in (-1, None) else
        int(_cfg_get(dist_cfg, "process_id", -1)),
        "local_device_ids": _parse_ids(_cfg_get(dist_cfg, "local_device_ids", "") or ""),
    }
    from_env: dict[str, Any] = {}
    for field, names in (("coordinator_address", ("SCALEKIT_COORDINATOR_ADDRESS", "JAX_COORDINATOR_ADDRESS")),
                         ("num_processes", ("SCALEKIT_NUM_PROCESSES", "JAX_NUM_PROCESSES")),
                         ("process_id", ("SCALEKIT_PROCESS_ID", "JAX_PROCESS_ID")),
                         ("local_device_ids", ("SCALEKIT_LOCAL_DEVICE_IDS", "JAX_LOCAL_DEVICE_IDS"))):
        value = next((env[n] for n in names if env.get(n, "").strip()), None)
        if value is not None:
            from_env[field] = _parse_ids(value) if field == "local_device_ids" else (
                value if field == "coordinator_address" else int(value))
    cluster_name, cluster, cluster_error = "", None, None
    for name, probe in (("slurm", _slurm), ("k8s", _k8s)):
        try:
            cluster = probe(env, mode)
        except DistributedInitError as e:  # matters only if the cluster must supply a setting (below)
            cluster, cluster_error = {}, e
        if cluster is not None:
            cluster_name = name
            break
    given = {k for values in (explicit, from_env) for k, v in values.items() if v is not None}
    if cluster_error is not None and not {"coordinator_address", "num_processes", "process_id"} <= given:
        raise cluster_error
    resolved: dict[str, Any] = {}
    origins: dict[str, str] = {}  # field -> where it came from
    for field in ("coordinator_address", "num_processes", "process_id", "local_device_ids"):
        for origin, values in (("explicit", explicit), ("env", from_env), (cluster_name, cluster or {})):
            if values.get(field) is not None:
                resolved[field], origins[field] = values[field], origin
                break
    core = [o for f, o in origins.items() if f != "local_device_ids"]
    source = min(core, key=SOURCES.index) if core else "single"
    count = int(resolved.get("num_processes") or 1)
    if count <= 1:
        if enabled == "on" and not resolved:
            raise DistributedInitError(
                "distributed.enabled=on but no cluster was found: set distributed.coordinator_address, "
                "num_processes and process_id (or SCALEKIT_COORDINATOR_ADDRESS, SCALEKIT_NUM_PROCESSES, "
                "SCALEKIT_PROCESS_ID), or run under srun / a Kubernetes Indexed Job")
        return ClusterSpec("", 1, 0, resolved.get("local_device_ids"), "single", mode, "one process")
    missing = [f for f in ("coordinator_address", "process_id") if f not in resolved]
    if missing:
        raise DistributedInitError(
            f"{count} processes requested (source: {source}) but {', '.join(missing)} is not set: give "
            + " and ".join(f"--config.distributed.{f} or SCALEKIT_{f.upper()}" for f in missing))
    pid = int(resolved["process_id"])
    if not 0 <= pid < count:
        raise DistributedInitError(f"process_id={pid} is outside [0, {count}) (num_processes={count})")
    detail = f"settings from {', '.join(sorted(set(origins.values()), key=SOURCES.index))}"
    if cluster and cluster_name in origins.values():
        detail = f"{detail}; {cluster['detail']}"
    return ClusterSpec(str(resolved["coordinator_address"]), count, pid, resolved.get("local_device_ids"),
                       source, mode, detail)


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise DistributedInitError(f"coordinator address {address!r} must look like host:port")
    return host.strip("[]"), int(port)


def resolve_host(host: str, deadline: float, environ: Mapping[str, str] | None = None) -> str:
    """Resolve a coordinator host name, consulting SCALEKIT_HOST_ALIASES first and retrying DNS until deadline.

    Retrying matters on Kubernetes: the headless-service record of pod 0 appears only once that pod exists.
    """
    env = os.environ if environ is None else environ
    aliases = dict(item.split("=", 1) for item in env.get("SCALEKIT_HOST_ALIASES", "").split(",") if "=" in item)
    if host in aliases:
        return aliases[host].strip()
    last = ""
    while True:
        try:
            return socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][4][0]
        except OSError as e:
            last = str(e)
        if time.monotonic() > deadline:
            raise DistributedInitError(
                f"coordinator host {host!r} did not resolve within the timeout ({last}). On Kubernetes the "
                "headless service must exist and publish not-ready pods (JobSet network.enableDNSHostnames and "
                "publishNotReadyAddresses); elsewhere check the name or set SCALEKIT_HOST_ALIASES=name=ip")
        time.sleep(0.5)


def all_local(spec: ClusterSpec, environ: Mapping[str, str] | None = None) -> bool:
    """True when every process runs on this machine: a loopback coordinator, or a Slurm step on one node."""
    env = os.environ if environ is None else environ
    host, _ = _split_address(spec.coordinator_address)
    if rendezvous.is_loopback(host):
        return True
    if spec.source != "slurm":
        return False
    nodes = env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_JOB_NUM_NODES") or ""
    if nodes.strip().isdigit():
        return int(nodes) == 1
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or ""
    return bool(nodelist) and len(expand_nodelist(nodelist)) == 1


def bind_override(environ: Mapping[str, str] | None = None) -> str | None:
    """The address process 0 is told to listen on: SCALEKIT_COORDINATOR_BIND (an IP; 0.0.0.0 or :: for every
    interface), else the host part of JAX_COORDINATOR_BIND_ADDRESS; None when neither is set."""
    env = os.environ if environ is None else environ
    bind = env.get("SCALEKIT_COORDINATOR_BIND", "").strip()
    if not bind and env.get("JAX_COORDINATOR_BIND_ADDRESS", "").strip():
        bind = env["JAX_COORDINATOR_BIND_ADDRESS"].strip().rpartition(":")[0]
    bind = bind.strip("[]")
    if not bind:
        return None
    import ipaddress
    try:
        ipaddress.ip_address(bind)
    except ValueError:
        raise DistributedInitError(f"SCALEKIT_COORDINATOR_BIND={bind!r} must be an IP address of this machine "
                                   "(0.0.0.0 or :: for every interface)") from None
    return bind


def initialize(dist_cfg: Any = None) -> DistributedInfo:
    """Initialise jax.distributed from config/env/Slurm/Kubernetes; a single process needs no initialisation."""
    global _INFO
    if _INFO is not None:
        return _INFO
    spec = detect(dist_cfg)
    if spec.num_processes <= 1:
        _INFO = DistributedInfo(0, 1, spec.local_device_ids, "single", "", spec.mode, spec.detail)
        if spec.local_device_ids:
            import jax
            jax.config.update("jax_cuda_visible_devices", ",".join(map(str, spec.local_device_ids)))
        return _INFO
    timeout = int(_cfg_get(dist_cfg, "timeout_s", 300) or 300)
    host, port = _split_address(spec.coordinator_address)
    address, bind = rendezvous.meet(host, port, spec.process_id, spec.num_processes, timeout,
                                    resolve=lambda h, d: resolve_host(h, d), local=all_local(spec),
                                    bind=bind_override())
    import jax
    jax.distributed.initialize(
        coordinator_address=address, num_processes=spec.num_processes, process_id=spec.process_id,
        coordinator_bind_address=bind or None,  # process 0: the address the rendezvous listened on, not [::]
        local_device_ids=list(spec.local_device_ids) if spec.local_device_ids else None,
        cluster_detection_method="deactivate", initialization_timeout=timeout,
        heartbeat_timeout_seconds=timeout, shutdown_timeout_seconds=timeout)
    _INFO = DistributedInfo(spec.process_id, spec.num_processes, spec.local_device_ids, spec.source,
                            spec.coordinator_address, spec.mode, spec.detail)
    print(f"scalekit.distributed: process {spec.process_id} of {spec.num_processes} (source {spec.source}, "
          f"coordinator {spec.coordinator_address}, local devices "
          f"{','.join(map(str, spec.local_device_ids)) if spec.local_device_ids else 'all'}): {spec.detail}",
          file=sys.stderr, flush=True)
    return _INFO


def info() -> DistributedInfo | None:
    """The DistributedInfo of this process, or None before `initialize`."""
    return _INFO


def report_failure(message: str) -> None:
    """Tell the other processes this one is failing (they exit with EXIT_PEER_FAILED instead of waiting)."""
    rendezvous.say_bye(ok=False, message=message)


def shutdown() -> None:
    """Leave cleanly: tell peers this exit is orderly, then shut jax.distributed down."""
    rendezvous.say_bye(ok=True)
    if _INFO is not None and _INFO.process_count > 1:
        import jax
        jax.distributed.shutdown()
