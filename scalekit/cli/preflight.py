"""`scalekit preflight`: device matmul throughput, collective bandwidth, stragglers; on one or many processes.

Run it alone, under srun (every task runs it; process 0 prints), or as the first step of a launched job
(`scalekit launch slurm --preflight ...`). Exit code 0, or 3 with --fail-on-stragglers when any are found.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


PROG = "scalekit preflight"
DTYPES = ("bfloat16", "float32", "float16")


class _BadArgument(Exception):
    """A bad argument: printed as one line `scalekit preflight: error: ...`, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        raise _BadArgument(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=2048, help="matmul dimension (default 2048)")
    p.add_argument("--iters", type=int, default=5, help="timed repetitions of each measurement")
    p.add_argument("--dtypes", default="bfloat16,float32", help="matmul dtypes, comma-separated")
    p.add_argument("--collective-mb", default="1,16", help="per-device message sizes in MiB, comma-separated")
    p.add_argument("--straggler-ratio", type=float, default=0.8, help="straggler: below this x the median")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    p.add_argument("--out", default="", help="also write the JSON report to this file")
    p.add_argument("--prometheus-port", type=int, default=0, help="serve the figures as Prometheus metrics")
    p.add_argument("--prometheus-host", default="127.0.0.1",
                   help="address the metrics server binds (default 127.0.0.1; 0.0.0.0 to be scraped remotely)")
    p.add_argument("--hold", type=float, default=30.0, help="seconds to keep serving metrics after the run")
    p.add_argument("--textfile", default="", help="write the metrics in Prometheus text format to this file")
    p.add_argument("--fail-on-stragglers", action="store_true", help="exit 3 when stragglers are found")
    p.add_argument("--timeout", type=int, default=300, help="seconds to wait for all processes to start")
    p.add_argument("--mode", choices=("per_gpu", "per_node"), default="per_gpu", help="process-to-GPU mapping")
    return p


def _error(message: str) -> int:
    from scalekit.launch.checks import printable
    print(f"{PROG}: error: {printable(message)}", file=sys.stderr)
    return 2


def _check(a: argparse.Namespace) -> tuple[list[str], list[int]]:
    """Range and format checks of the arguments (ValueError naming the flag); returns (dtypes, message bytes)."""
    from scalekit.launch import checks
    checks.int_range("--size", a.size, 1, 1 << 16)
    checks.int_range("--iters", a.iters, 1, 1_000_000)
    checks.int_range("--timeout", a.timeout, 1, 7 * 24 * 3600)
    checks.port("--prometheus-port", a.prometheus_port, allow_zero=True)
    if not 0 < a.straggler_ratio <= 1:
        raise ValueError(f"--straggler-ratio={a.straggler_ratio:g} must be in (0, 1], e.g. 0.8")
    if not 0 <= a.hold <= 7 * 24 * 3600:
        raise ValueError(f"--hold={a.hold:g} must be between 0 and 604800 seconds")
    checks.no_control("--prometheus-host", a.prometheus_host)
    dtypes = [d.strip() for d in a.dtypes.split(",") if d.strip()]
    bad = [d for d in dtypes if d not in DTYPES]
    if not dtypes or bad:
        raise ValueError(f"--dtypes {a.dtypes!r}: give a comma-separated list of {', '.join(DTYPES)}")
    try:
        sizes = [float(x) for x in a.collective_mb.split(",") if x.strip()]
    except ValueError:
        sizes = []
    if not sizes or not all(0 < x <= 1 << 16 for x in sizes):
        raise ValueError(f"--collective-mb {a.collective_mb!r}: give comma-separated sizes in MiB, each > 0, e.g. 1,16")
    return dtypes, [max(1, int(x * 2 ** 20)) for x in sizes]


def _probe_port(host: str, port: int) -> None:
    """Raise ValueError naming --prometheus-port/--prometheus-host when host:port cannot be bound now."""
    import socket
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise ValueError(f"--prometheus-host {host!r} is not an address of this machine ({e})") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the HTTP server does
        try:
            s.bind(address)
        except OSError as e:
            raise ValueError(f"--prometheus-port {port} cannot be served on {host} ({e.strerror or e}): another "
                             "program uses it; pick a free port or 0 for no server") from None


def main(argv: list[str]) -> int:
    """Initialise (multi-host if the environment says so), measure, report and export."""
    try:
        a = _parser().parse_args(argv)
        dtypes, collective_bytes = _check(a)
    except (_BadArgument, ValueError) as e:
        return _error(str(e))
    from scalekit.parallel import distributed
    try:
        dist = distributed.initialize({"enabled": "auto", "mode": a.mode, "timeout_s": a.timeout})
    except distributed.DistributedInitError as e:
        print(f"scalekit preflight: {e}", file=sys.stderr)
        return 1
    if a.prometheus_port and dist.process_index == 0:  # fail now, not after the measurements
        try:
            _probe_port(a.prometheus_host, a.prometheus_port)
        except ValueError as e:
            distributed.report_failure(str(e))
            return _error(str(e))
    from scalekit.parallel import preflight
    opts = preflight.PreflightOptions(size=a.size, iters=a.iters, dtypes=dtypes, collective_bytes=collective_bytes,
                                      straggler_ratio=a.straggler_ratio)
    report = preflight.run(opts)
    import jax
    if jax.process_index() == 0:
        print(json.dumps(report, indent=2) if a.json else preflight.format_report(report), flush=True)
        if a.out:
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            Path(a.out).write_text(json.dumps(report, indent=2))
        if a.textfile or a.prometheus_port:
            registry = preflight.export_metrics(report)
            if a.textfile:
                from prometheus_client import write_to_textfile
                write_to_textfile(a.textfile, registry)
            if a.prometheus_port:
                from prometheus_client import start_http_server
                try:
                    start_http_server(a.prometheus_port, addr=a.prometheus_host, registry=registry)
                except OSError as e:
                    distributed.report_failure(str(e))
                    return _error(f"--prometheus-port {a.prometheus_port} cannot be served on {a.prometheus_host} "
                                  f"({e.strerror or e}): pick a free port or 0 for no server")
                print(f"serving metrics on http://{a.prometheus_host}:{a.prometheus_port}/metrics for {a.hold:g} s",
                      flush=True)
                time.sleep(a.hold)
    distributed.shutdown()
    slow = report["stragglers"]["devices"] or report["stragglers"]["hosts"]
    return 3 if a.fail_on_stragglers and slow else 0
