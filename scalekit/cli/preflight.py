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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scalekit preflight", description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=2048, help="matmul dimension (default 2048)")
    p.add_argument("--iters", type=int, default=5, help="timed repetitions of each measurement")
    p.add_argument("--dtypes", default="bfloat16,float32", help="matmul dtypes, comma-separated")
    p.add_argument("--collective-mb", default="1,16", help="per-device message sizes in MiB, comma-separated")
    p.add_argument("--straggler-ratio", type=float, default=0.8, help="straggler: below this x the median")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    p.add_argument("--out", default="", help="also write the JSON report to this file")
    p.add_argument("--prometheus-port", type=int, default=0, help="serve the figures as Prometheus metrics")
    p.add_argument("--prometheus-host", default="0.0.0.0")
    p.add_argument("--hold", type=float, default=30.0, help="seconds to keep serving metrics after the run")
    p.add_argument("--textfile", default="", help="write the metrics in Prometheus text format to this file")
    p.add_argument("--fail-on-stragglers", action="store_true", help="exit 3 when stragglers are found")
    p.add_argument("--timeout", type=int, default=300, help="seconds to wait for all processes to start")
    p.add_argument("--mode", choices=("per_gpu", "per_node"), default="per_gpu", help="process-to-GPU mapping")
    return p


def main(argv: list[str]) -> int:
    """Initialise (multi-host if the environment says so), measure, report and export."""
    a = _parser().parse_args(argv)
    from scalekit.parallel import distributed
    try:
        distributed.initialize({"enabled": "auto", "mode": a.mode, "timeout_s": a.timeout})
    except distributed.DistributedInitError as e:
        print(f"scalekit preflight: {e}", file=sys.stderr)
        return 1
    from scalekit.parallel import preflight
    opts = preflight.PreflightOptions(size=a.size, iters=a.iters, dtypes=[d for d in a.dtypes.split(",") if d],
                                      collective_bytes=[int(float(x) * 2 ** 20) for x in a.collective_mb.split(",")],
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
                start_http_server(a.prometheus_port, addr=a.prometheus_host, registry=registry)
                print(f"serving metrics on http://{a.prometheus_host}:{a.prometheus_port}/metrics for {a.hold:g} s",
                      flush=True)
                time.sleep(a.hold)
    distributed.shutdown()
    slow = report["stragglers"]["devices"] or report["stragglers"]["hosts"]
    return 3 if a.fail_on_stragglers and slow else 0
