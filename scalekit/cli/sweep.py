"""`scalekit sweep plan|run|work|status|export|ingest|repair|migrate`: declare, run, inspect, export, repair and
copy sweeps.

  scalekit sweep plan PLAN [--json]                      print the runs a plan makes, with N, D, C and time
  scalekit sweep run PLAN --workdir DIR [--store URL] [--executor local|slurm] [--parallel K] [--max-attempts 3]
                    [--stale-after 120] [--retry-failed] [--dry-run] [--train-cmd CMD] [--isolate]
                    [--worker-max-runs 200]
  scalekit sweep work DIR [--store URL]                  one worker's claim-run-record loop (what Slurm tasks run)
  scalekit sweep status DIR [--store URL] [--json]       progress, results, failures and their errors
  scalekit sweep export DIR [--store URL] --format csv|jsonl|parquet [--out PATH]
  scalekit sweep ingest DIR results.csv [--store URL] [--map SRC=FIELD[*FACTOR] ...]
  scalekit sweep repair DIR [--plan PLAN] [--force]      rebuild a damaged results.db from the run directories
  scalekit sweep migrate SRC DST [--sweep NAME]          copy a sweep's rows and events between stores

The results live in DIR/results.db (SQLite) unless `--store postgresql://user@host:port/db[?sweep=NAME]` names a
PostgreSQL database a cluster shares; `sweep run --store URL` records the URL (never its password) in DIR/store.json,
so later commands on DIR, and Slurm tasks, find the store without --store. Passwords come from the URL, PGPASSWORD
or ~/.pgpass; every URL is printed with its password as ***. SRC and DST of `migrate` are sweep directories or URLs.

Running again skips done runs, retries failed ones below --max-attempts, reclaims runs of dead drivers, and reports
what it did. Each worker trains its runs in one warm process that imports JAX once and reuses compiled steps across
runs of the same shapes (replaced after --worker-max-runs runs, or when it dies); --isolate, or a custom
--train-cmd, starts a fresh process per run instead. Exit code: 0 when every planned run is done, 1 when some failed,
2 for a bad plan or arguments, or a store that is damaged or cannot be used (one line on stderr naming the file and
the fix). `status` and `export` only read: they work on a read-only store.
"""

from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import sys
import threading
import time
from collections import Counter
from typing import Any

from scalekit.sweep import executors as ex
from scalekit.sweep.plan import PlanError, describe, load_plan
from scalekit.sweep.store import (STATUSES, ResultsStore, StoreError, is_url, open_store, redact_url, store_path,
                                  write_pointer)
from scalekit.sweep.tables import FORMATS, IngestError, export_sweep, ingest


def _fmt(x: Any, spec: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "-"
    return format(x, spec)


def _last_line(text: str | None) -> str:
    return ex.error_summary(text)


def _worker_opts(args: argparse.Namespace) -> ex.WorkerOptions:
    if args.worker_max_runs < 0:
        raise PlanError(f"--worker-max-runs {args.worker_max_runs}: must be >= 0 (0 = never recycle)")
    return ex.WorkerOptions(command=ex.parse_command(args.train_cmd) if args.train_cmd else ex.DEFAULT_TRAIN_COMMAND,
                            max_attempts=args.max_attempts, stale_after=args.stale_after, timeout_s=args.timeout,
                            isolate=args.isolate, worker_max_runs=args.worker_max_runs)


def _add_worker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-attempts", type=int, default=3, help="tries per run before it stays failed (default 3)")
    p.add_argument("--stale-after", type=float, default=120.0,
                   help="seconds without a heartbeat after which a running run's driver is taken for dead")
    p.add_argument("--timeout", type=float, default=0.0, help="per-run time limit in seconds (0 = none)")
    p.add_argument("--train-cmd", default="", help="command template run per job; placeholders {python} "
                   "{config} {workdir} (default: {python} -m scalekit train --config {config} --workdir {workdir}); "
                   "a custom command runs a fresh process per run")
    p.add_argument("--isolate", action="store_true",
                   help="a fresh `scalekit train` process per run instead of one warm process per worker")
    p.add_argument("--worker-max-runs", type=int, default=ex.WorkerOptions.worker_max_runs,
                   help="replace a warm worker process after this many runs, bounding leaks (default %(default)s; "
                   "0 = never)")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="scalekit sweep", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("plan", help="print the runs a plan makes")
    p.add_argument("plan", help="plan file PATH[:ARG] exposing get_plan() or PLAN")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("run", help="run (or resume) a sweep")
    p.add_argument("plan")
    p.add_argument("--workdir", required=True, help="sweep directory (results.db, runs/)")
    _add_store_arg(p)
    p.add_argument("--executor", choices=("local", "slurm"), default="local")
    p.add_argument("--parallel", type=int, default=1, help="local: runs at once; slurm: array tasks")
    p.add_argument("--retry-failed", action="store_true", help="give runs at their attempt limit new attempts")
    p.add_argument("--dry-run", action="store_true", help="slurm: write the sbatch script, do not submit")
    p.add_argument("--slurm-time", default="", help="slurm: --time per array task")
    p.add_argument("--slurm-partition", default="")
    p.add_argument("--slurm-gres", default="", help="slurm: e.g. gpu:1")
    p.add_argument("--slurm-cpus-per-task", type=int, default=0)
    p.add_argument("--slurm-arg", action="append", default=[], help="slurm: an extra '#SBATCH' option, repeatable")
    _add_worker_args(p)
    p = sub.add_parser("work", help="claim and run runs from a sweep until none is left")
    p.add_argument("workdir")
    _add_store_arg(p)
    p.add_argument("--worker-id", default="")
    p.add_argument("--wait", action="store_true", help="wait for runs other workers hold instead of exiting")
    _add_worker_args(p)
    p = sub.add_parser("status", help="progress, results and failures of a sweep")
    p.add_argument("workdir")
    _add_store_arg(p)
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("export", help="write the results as csv, jsonl or parquet")
    p.add_argument("workdir")
    _add_store_arg(p)
    p.add_argument("--format", choices=FORMATS, default="csv")
    p.add_argument("--out", default="", help="output path (default <workdir>/results.<format>)")
    p = sub.add_parser("ingest", help="add finished runs from a CSV/JSONL table")
    p.add_argument("workdir")
    p.add_argument("table")
    _add_store_arg(p)
    p.add_argument("--map", action="append", default=[], metavar="SRC=FIELD[*FACTOR]",
                   help="rename a column to a field (n_params, tokens, flops, final_loss, eval_loss, name, ...)")
    p = sub.add_parser("repair", help="rebuild a damaged results store from the run directories")
    p.add_argument("workdir")
    p.add_argument("--plan", default="", help="the sweep's plan: exact plan fields and order, unstarted runs pending")
    p.add_argument("--force", action="store_true", help="rebuild even a healthy store (the old file is kept aside)")
    p = sub.add_parser("migrate", help="copy a sweep's rows and events to another store (idempotent)")
    p.add_argument("src", help="a sweep directory or a store URL (postgresql://..., sqlite:///...)")
    p.add_argument("dst", help="a sweep directory or a store URL; created if missing")
    p.add_argument("--sweep", default="", help="the sweep's name in DST (default: its name in SRC)")
    return ap


def _add_store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default="", metavar="URL",
                   help="the results store, when not DIR/results.db: postgresql://user@host:port/db[?sweep=NAME]")


def _open(args: argparse.Namespace, **kw: Any) -> ResultsStore:
    """The sweep's store: --store URL, else DIR's store.json, else DIR/results.db."""
    return open_store(args.workdir, store=args.store or None, **kw)


def _install_stop(stop: threading.Event) -> None:
    """SIGINT/SIGTERM stop claiming, end the running children and give their runs back."""
    def handler(signum: int, _frame: Any) -> None:
        print(f"\nscalekit sweep: signal {signum}: stopping; running runs go back to pending", file=sys.stderr,
              flush=True)
        stop.set()
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def cmd_plan(args: argparse.Namespace) -> int:
    """Print the runs of a plan."""
    plan = load_plan(args.plan)
    runs = plan.expand()
    if args.json:
        print(json.dumps([{**r.fields(), "key": r.key, "name": r.name, "n_params": r.n_params,
                           "n_params_nonembed": r.n_params_nonembed, "tokens": r.tokens, "flops": r.flops,
                           "flops_6n": r.flops_6n, "est_time_s": r.est_time_s} for r in runs], indent=1))
        return 0
    print(f"plan {plan.name!r} ({plan.kind}), base {plan.base}")
    print(describe(runs))
    for s in plan.skipped:
        print(f"skipped: {s}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Add the plan's runs to the store and run what is left."""
    plan = load_plan(args.plan)
    runs = plan.expand()
    if args.parallel < 1 or args.max_attempts < 1:
        raise PlanError("--parallel and --max-attempts must be >= 1")
    keys = [r.key for r in runs]
    store = _open(args)
    if args.store:
        _point_to(args.workdir, store, args.store)
    new = store.add_runs(r.to_row() for r in runs)
    before = {r["key"]: r for r in store.rows() if r["key"] in set(keys)}
    st = Counter(r["status"] for r in before.values())
    at_limit = sum(1 for r in before.values() if r["status"] == "failed" and r["attempts"] >= args.max_attempts)
    where = f" (store {store.location})" if args.store else ""
    print(f"sweep {args.workdir}{where}: plan {plan.name!r}, {len(runs)} runs ({new} new); already done {st['done']}, "
          f"pending {st['pending']}, failed {st['failed']} ({at_limit} at the attempt limit), running {st['running']}")
    for s in plan.skipped:
        print(f"  skipped: {s}")
    if args.retry_failed and st["failed"]:
        print(f"  --retry-failed: {store.reset_failed(keys)} failed runs get {args.max_attempts} new attempts")
    opts = _worker_opts(args)
    opts.keys = keys
    if args.executor == "slurm":
        runnable = len(runs) - st["done"] - (0 if args.retry_failed else at_limit)
        size = max(1, min(args.parallel, runnable))
        path, job = ex.submit_slurm(args.workdir, array_size=size, opts=opts, dry_run=args.dry_run,
                                    job_name=f"sweep-{plan.name}", time_limit=args.slurm_time,
                                    partition=args.slurm_partition, gres=args.slurm_gres,
                                    cpus_per_task=args.slurm_cpus_per_task, extra=args.slurm_arg,
                                    secret_env=_password_env(args.store))
        if job is None:
            print(f"dry run: wrote {path} (array of {size}); submit it with: sbatch {path}")
        else:
            print(f"submitted Slurm array job {job} ({size} tasks), script {path}; follow it with "
                  f"`scalekit sweep status {args.workdir}`")
        return 0
    stop = threading.Event()
    _install_stop(stop)
    t0 = time.time()
    outcomes = ex.run_local(store, args.workdir, opts, parallel=args.parallel, stop=stop, log=_log)
    return _report(store, keys, outcomes, time.time() - t0, args)


def _point_to(workdir: str, store: ResultsStore, url: str) -> None:
    """Record in the sweep directory that its results live in `url` (so `work`, `status`, `fit` find them)."""
    if is_url(workdir):
        return
    local = store_path(workdir)
    if local.exists() and not url.startswith("sqlite://"):
        print(f"note: {local} is not used: this sweep's results go to {store.location} (copy the old ones over with "
              f"`scalekit sweep migrate {workdir} URL`)")
    write_pointer(workdir, store, url)


def _password_env(url: str) -> dict[str, str]:
    """PGPASSWORD for Slurm tasks when the URL carries a password (the job script itself never holds it)."""
    if not url.startswith(("postgresql://", "postgres://")):
        return {}
    from scalekit.sweep.store_postgres import split_url
    password = split_url(url)[2]
    return {"PGPASSWORD": password} if password else {}


def _report(store: Any, keys: list[str], outcomes: list[ex.Outcome], wall: float, args: argparse.Namespace) -> int:
    """Print what this driver did and where the sweep stands; the exit code."""
    did = Counter(o.status for o in outcomes)
    extra = [f"{sum(o.retry for o in outcomes)} retries", f"{sum(o.reclaimed for o in outcomes)} reclaimed from "
             "dead drivers", f"{sum(o.recovered for o in outcomes)} recovered without rerunning"]
    print(f"this driver: {len(outcomes)} attempts in {wall:.1f} s: {did['done']} done, {did['failed']} failed, "
          f"{did['released']} interrupted, {did['lost']} lost to another driver; " + ", ".join(extra))
    rows = {r["key"]: r for r in store.rows()}
    mine = [rows[k] for k in keys]
    c = Counter(r["status"] for r in mine)
    print(f"sweep: {c['done']}/{len(mine)} done, {c['failed']} failed, {c['running']} running, "
          f"{c['pending']} pending")
    for r in mine:
        if r["status"] == "failed":
            limit = " (at the limit; rerun with --retry-failed)" if r["attempts"] >= args.max_attempts else ""
            print(f"  failed {r['name']} after {r['attempts']} attempt(s){limit}: {_last_line(r['error'])}")
        elif r["status"] not in ("done", "pending", "running"):  # e.g. 'diverged' in a repaired store
            print(f"  {r['status']} {r['name']}: {_last_line(r['error'])}")
    return 0 if c["done"] == len(mine) else 1


def cmd_work(args: argparse.Namespace) -> int:
    """One worker: claim-run-record until nothing is claimable."""
    store = _open(args, create=False)
    opts = _worker_opts(args)
    opts.worker, opts.wait = args.worker_id, args.wait
    stop = threading.Event()
    _install_stop(stop)
    outcomes = ex.work(store, args.workdir, opts, stop=stop, log=_log)
    did = Counter(o.status for o in outcomes)
    print(f"worker done: {did['done']} done, {did['failed']} failed, {did['released']} interrupted")
    return 0


def status_dict(workdir: str, store_url: str | None = None) -> dict[str, Any]:
    """The sweep's status as plain data (what `status --json` prints)."""
    store = open_store(workdir, create=False, readonly=True, store=store_url)
    rows = store.rows()
    store.close()
    counts = Counter(r["status"] for r in rows)
    now = time.time()
    runs = []
    for r in rows:
        runs.append({k: r.get(k) for k in ("key", "name", "status", "attempts", "n_params", "n_params_nonembed",
                                           "tokens", "flops", "flops_6n", "final_loss", "eval_loss", "wall_time_s",
                                           "host", "worker", "source", "error")}
                    | {"heartbeat_age_s": now - r["heartbeat"] if r["status"] == "running" and r["heartbeat"]
                       else None, "fields": r.get("fields") or {}})
    total = len(rows)
    return {"workdir": str(workdir) if not is_url(workdir) else redact_url(str(workdir)), "store": store.location,
            "sweep": store.sweep, "total": total, "counts": {s: counts[s] for s in STATUSES}
            | {s: n for s, n in sorted(counts.items()) if s not in STATUSES},
            "progress": counts["done"] / total if total else 0.0, "runs": runs,
            "failures": [{"name": r["name"], "key": r["key"], "attempts": r["attempts"], "error": r["error"]}
                         for r in rows if r["status"] == "failed"]}


def cmd_status(args: argparse.Namespace) -> int:
    """Print the status table (or JSON)."""
    s = status_dict(args.workdir, args.store or None)
    if args.json:
        print(json.dumps(s, indent=1, default=str))
        return 0
    c = s["counts"]
    bar = "#" * int(30 * s["progress"])
    if is_url(args.workdir):
        head = f"sweep {s['sweep']!r} in {s['store']}"
    else:
        local = s["store"] == str(store_path(s["workdir"]))
        head = f"sweep {s['workdir']}" + ("" if local else f" (store {s['store']}, sweep {s['sweep']!r})")
    print(f"{head}: {s['total']} runs  [{bar:<30}] {100 * s['progress']:.0f}% done  "
          f"(done {c['done']}, running {c['running']}, pending {c['pending']}, failed {c['failed']}"
          + "".join(f", {k} {n}" for k, n in c.items() if k not in STATUSES) + ")")
    head = (f"{'name':<34} {'key':<8} {'status':<8} {'try':>3} {'N':>8} {'D':>8} {'C':>8} {'loss':>7} "
            f"{'eval':>7} {'time':>7}  host")
    print(head + "\n" + "-" * len(head))
    for r in s["runs"]:
        status = r["status"]
        if status == "running" and r["heartbeat_age_s"] is not None and r["heartbeat_age_s"] > 60:
            status = "stale?"
        print(f"{r['name'][:34]:<34} {r['key'][:8]:<8} {status:<8} {r['attempts']:>3} {_fmt(r['n_params']):>8} "
              f"{_fmt(r['tokens']):>8} {_fmt(r['flops']):>8} {_fmt(r['final_loss'], '.4f'):>7} "
              f"{_fmt(r['eval_loss'], '.4f'):>7} {_fmt(r['wall_time_s'], '.1f'):>7}  {r['host'] or ''}")
    if s["failures"]:
        print("\nfailures:")
        for f in s["failures"]:
            print(f"  {f['name']} ({f['key'][:8]}, {f['attempts']} attempt(s)): {_last_line(f['error'])}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write the results table."""
    path = export_sweep(args.workdir, args.format, args.out or None, store=args.store or None)
    print(f"wrote {path}")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    """Add finished runs from a table."""
    added, present = ingest(args.workdir, args.table, args.map, store=_open(args))
    print(f"ingested {added} runs from {args.table} into {args.workdir} ({present} already there)")
    return 0


def cmd_repair(args: argparse.Namespace) -> int:
    """Rebuild the store from the run directories, keeping the old file aside."""
    from scalekit.sweep.repair import repair

    plan_rows = [r.to_row() for r in load_plan(args.plan).expand()] if args.plan else []
    report = repair(args.workdir, force=args.force, plan_rows=plan_rows)
    print("\n".join(report.lines()))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    """Copy a sweep between stores; exit 1 when some runs differ between the two (nothing is overwritten)."""
    from scalekit.sweep.migrate import migrate

    report = migrate(args.src, args.dst, sweep=args.sweep or None)
    print("\n".join(report.lines()))
    return 1 if report.conflicts else 0


def _one_line(e: BaseException) -> str:
    """An exception as one line: OS errors as 'what: path', others their first line."""
    if isinstance(e, OSError) and e.strerror:
        text = e.strerror + (f": {e.filename!r}" if e.filename else "")
    else:
        text = str(e) or type(e).__name__
    if isinstance(e, sqlite3.Error):
        text = f"results store: {text} (SQLite)"
    return " ".join(text.split())


def main(argv: list[str]) -> int:
    """Entry point of `scalekit sweep`."""
    args = _parser().parse_args(argv)
    handler = {"plan": cmd_plan, "run": cmd_run, "work": cmd_work, "status": cmd_status, "export": cmd_export,
               "ingest": cmd_ingest, "repair": cmd_repair, "migrate": cmd_migrate}[args.cmd]
    try:
        return handler(args)
    except (PlanError, IngestError) as e:
        print(f"scalekit sweep {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    except (StoreError, OSError, sqlite3.Error) as e:  # the store or a path: one line, no traceback
        print(f"scalekit sweep {args.cmd}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # sbatch missing or refused
        print(f"scalekit sweep {args.cmd}: error: {e}", file=sys.stderr)
        return 1
