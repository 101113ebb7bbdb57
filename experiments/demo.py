"""The scalekit demo, end to end on CPU: an IsoFLOP sweep -> scaling-law fits -> HTML report -> what to train next.

    python experiments/demo.py --workdir runs/demo          # `make demo`; a few minutes on 2 cores
    python experiments/demo.py --workdir runs/demo          # again: reuses every finished run, takes seconds

1. Runs the IsoFLOP plan of experiments/sweep_demo.py (5 budgets over two decades of compute x 6 model sizes on the
   synthetic language whose entropy floor is known) with the sweep driver's local executor: two warm workers, each
   training its runs in one process, K steps per call, printing progress. Runs are
   stored in runs/demo/results.db by the hash of their config, so a rerun (or a run after an interruption) only
   trains what is missing.
2. Fits approaches 1, 2 and 3 of Chinchilla with bootstrap intervals, checks the law by fitting the cheaper runs
   and predicting the largest budget, and compares the fitted irreducible loss with the language's true floor.
   Then the law comparison (scalekit.laws.compare): every law form x fit objective (and approach 2's optima)
   fitted below the largest budget, ranked by its error on the held-out runs of the largest; the table is printed.
3. Writes runs/demo/report/{report.html, fits.json, *.png} and prints the compute-optimal N and D for budgets
   10x, 100x and 1000x the largest one, from the comparison's winner refitted on every run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REPORT_VERSION = 3          # bumped when the report changes, so that a rerun rewrites a report an older demo wrote
COMPARE_BOOTSTRAP = 50      # resamples for the law comparison's prediction intervals (the main fits use --bootstrap)


def child_environment(workdir: Path) -> None:
    """Children train on one CPU device each (drop the 8 fake devices `make` exports for the tests); this process
    keeps its compiled fits in a persistent cache so a rerun's fits compile in no time."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "force_host_platform_device_count" not in f]
    os.environ["XLA_FLAGS"] = " ".join(flags)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str((workdir / "xla_cache").resolve()))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def _say(t0: float, msg: str) -> None:
    print(f"[{time.time() - t0:6.0f}s] {msg}", flush=True)


def run_sweep(plan_spec: str, workdir: Path, parallel: int, t0: float) -> tuple[int, int]:
    """Run what is left of the plan; return (done, failed) among its runs."""
    from scalekit.sweep import executors as ex
    from scalekit.sweep.plan import describe, load_plan
    from scalekit.sweep.store import open_store

    plan = load_plan(plan_spec)
    runs = plan.expand()
    keys = [r.key for r in runs]
    store = open_store(workdir)
    store.add_runs(r.to_row() for r in runs)
    counts = store.counts(keys)
    todo = [r for r in runs if r.key in {row["key"] for row in store.rows() if row["status"] != "done"}]
    if not todo:
        _say(t0, f"sweep: all {len(runs)} runs of plan {plan.name!r} already done in {workdir}; nothing to train")
        return counts["done"], counts["failed"]
    est = sum(r.est_time_s for r in todo) / max(parallel, 1)
    print(describe(runs))
    _say(t0, f"sweep: {len(todo)} of {len(runs)} runs to train ({counts['done']} already done), {parallel} at a time, "
             f"roughly {est / 60:.0f} min; results in {workdir / 'results.db'}")
    n_done = [counts["done"]]
    lock = threading.Lock()
    by_name = {r.name: r for r in runs}

    def log(msg: str) -> None:
        parts = msg.split("] ", 1)[-1].split()
        if not parts or parts[0] not in ("done", "failed", "start"):
            return
        name = parts[1]
        with lock:
            if parts[0] == "start":
                r = by_name.get(name)
                what = f" (N={r.n_params:,}, D={r.tokens:,}, {r.steps} steps)" if r else ""
                _say(t0, f"  start {name}{what}")
                return
            if parts[0] == "done":
                n_done[0] += 1
            _say(t0, f"  [{n_done[0]}/{len(runs)}] {msg.split('] ', 1)[-1]}")

    opts = ex.WorkerOptions(keys=keys, max_attempts=2)
    stop = threading.Event()

    def handler(signum, _frame):
        print(f"\ndemo: signal {signum}: stopping; unfinished runs go back to pending (rerun to resume)",
              file=sys.stderr, flush=True)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    ex.run_local(store, workdir, opts, parallel=parallel, stop=stop, log=log)
    if stop.is_set():
        raise SystemExit(130)
    counts = store.counts(keys)
    for row in store.rows():
        if row["key"] in set(keys) and row["status"] == "failed":
            _say(t0, f"  FAILED {row['name']}: {ex.error_summary(row['error'])}")
    return counts["done"], counts["failed"]


def _digest(results) -> str:
    cols = ["key", "n_params", "tokens", "C", "loss"]
    return hashlib.sha256(results.frame[cols].to_csv(index=False).encode()).hexdigest()[:16]


def report(workdir: Path, bootstrap: int, refit: bool, t0: float) -> Path:
    """Fit and write the report, unless one for exactly these results exists already (then reprint its summary)."""
    from scalekit.analysis.sweepdata import load_sweep

    results = load_sweep(workdir)
    out = workdir / "report"
    digest = _digest(results)
    stamp = out / "inputs.json"
    if not refit and (out / "report.html").exists() and stamp.exists():
        saved = json.loads(stamp.read_text())
        if (saved.get("digest") == digest and saved.get("bootstrap") == bootstrap
                and saved.get("version") == REPORT_VERSION):
            _say(t0, f"fits: the report in {out} is up to date with these {len(results)} runs (--refit to redo)")
            print(saved["summary"])
            return out / "report.html"
    _say(t0, f"fitting {len(results)} runs: approach 3 (variable projection + {bootstrap} bootstrap refits), "
             "approach 2 (IsoFLOP parabolas), approach 1 (training-curve envelope), extrapolation check, "
             "law comparison (every form x objective x approach, largest budget held out)")
    from scalekit.analysis.fits import fit_sweep
    from scalekit.analysis.report import write_report

    # the comparison's 30 rows each get prediction intervals: fewer resamples there keep the demo in minutes
    fits = fit_sweep(results, bootstrap=bootstrap, compare_kw={"bootstrap": min(bootstrap, COMPARE_BOOTSTRAP)})
    rep = write_report(results, out, bootstrap=bootstrap, fits=fits)
    summary = rep.fits.summary(allocations=False)
    if rep.fits.comparison is not None:
        summary += "\n\n" + rep.fits.comparison.summary()
    summary += "\n\n" + rep.fits.recommendation()
    stamp.write_text(json.dumps({"digest": digest, "bootstrap": bootstrap, "version": REPORT_VERSION,
                                 "summary": summary}))
    _say(t0, f"wrote {rep.html}, {rep.json.name} and {len(rep.pngs)} plots")
    print(summary)
    return rep.html


def main(argv: list[str] | None = None) -> int:
    """Entry point: sweep, fit, report; exit 1 when runs failed (the report still covers the finished ones)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="runs/demo", help="sweep directory and report location")
    ap.add_argument("--plan", default=str(REPO / "experiments" / "sweep_demo.py"), help="IsoFLOP plan PATH[:ARG]")
    ap.add_argument("--parallel", type=int, default=min(2, os.cpu_count() or 1), help="runs trained at once")
    ap.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for the intervals")
    ap.add_argument("--refit", action="store_true", help="refit and rewrite the report even if it is up to date")
    args = ap.parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    child_environment(workdir)
    t0 = time.time()
    print(f"scalekit demo: IsoFLOP sweep -> fits -> report, in {workdir.resolve()}", flush=True)
    done, failed = run_sweep(args.plan, workdir, args.parallel, t0)
    if done < 6:
        _say(t0, f"only {done} runs finished ({failed} failed): too few to fit; see `scalekit sweep status {workdir}`")
        return 1
    html = report(workdir, args.bootstrap, args.refit, t0)
    _say(t0, f"done in {time.time() - t0:.0f} s. Open the report: file://{html.resolve()}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
