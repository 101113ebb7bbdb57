"""Sweep-level speed: one fixed plan run both ways in the same run, process-per-run with one step per call (the old
path) and warm workers with K steps per call (the new one); wall time, sweep-level MFU, FLOPs and fitted exponents.

    python benchmarks/bench_sweep.py                                  # the demo plan, 2 workers
    python benchmarks/bench_sweep.py --plan experiments/sweep_demo.py:quick --bootstrap 50
    python benchmarks/bench_sweep.py --modes old,warm_k1,isolated_auto,new   # also each change alone

Sweep-level MFU = the plan's total model FLOPs (PaLM convention, scalekit.model.counting, summed over the runs'
summaries) / the sweep's wall time / the machine's matmul peak, measured in this process on all its cores (best of
a 2048^3 float32 matmul before and after the sweeps, so machine drift is bounded). Each mode starts from an empty
sweep directory and an empty compilation cache, as a first `make demo` does. Run keys leave out
steps_per_dispatch, so every mode trains the same runs; their losses are compared exactly and their fitted
exponents (approaches 2 and 3, with bootstrap intervals) must agree within the intervals. Prints a table and appends
a JSON line to benchmarks/results/sweep.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = Path(__file__).resolve().parent / "results" / "sweep.jsonl"

# mode -> (isolate: a fresh process per run, steps_per_dispatch: 1 = one step per call, 0 = auto K)
MODES = {"old": (True, 1), "warm_k1": (False, 1), "isolated_auto": (True, 0), "new": (False, 0)}


def _environment() -> None:
    """Children train on one CPU device each (not the 8 fake devices the tests use); compile caches per sweep."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "force_host_platform_device_count" not in f]
    os.environ["XLA_FLAGS"] = " ".join(flags)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)  # each sweep uses its own <dir>/xla_cache, empty at first


def run_mode(plan_spec: str, mode: str, workdir: Path, parallel: int) -> dict:
    """Run the whole plan in a fresh sweep directory in one mode; wall time, FLOPs and per-run losses."""
    from scalekit.sweep import executors as ex
    from scalekit.sweep.plan import load_plan
    from scalekit.sweep.store import open_store

    isolate, k = MODES[mode]
    plan = load_plan(plan_spec)
    plan.overrides = {**plan.overrides, "steps_per_dispatch": k}
    runs = plan.expand()
    keys = [r.key for r in runs]
    store = open_store(workdir)
    store.add_runs(r.to_row() for r in runs)
    opts = ex.WorkerOptions(keys=keys, max_attempts=1, isolate=isolate)
    t0 = time.perf_counter()
    outcomes = ex.run_local(store, workdir, opts, parallel=parallel, stop=threading.Event())
    wall = time.perf_counter() - t0
    rows = [r for r in store.rows() if r["key"] in set(keys)]
    failed = [f"{r['name']}: {ex.error_summary(r['error'])}" for r in rows if r["status"] != "done"]
    startups = [(r["summary"] or {}).get("startup") or {} for r in rows]
    warm_starts = [s["to_first_step_s"] for s in startups if s.get("warm_process") and s.get("to_first_step_s")]
    return {"mode": mode, "isolate": isolate, "steps_per_dispatch": k, "runs": len(runs),
            "done": len(rows) - len(failed), "failed": failed, "wall_s": wall,
            "goodput": {p: float(sum(((r["summary"] or {}).get("goodput") or {}).get(p, 0.0) for r in rows))
                        for p in ("startup_s", "compile_s", "data_wait_s", "step_s", "eval_s", "checkpoint_save_s")},
            "warm_first_step_s": sorted(warm_starts),
            "flops": float(sum(r["flops"] or 0.0 for r in rows)),
            "train_wall_s": float(sum(o.wall_s for o in outcomes)),
            "losses": {r["key"]: r["final_loss"] for r in rows}}


def exponents(workdir: Path, bootstrap: int) -> dict:
    """N_opt ~ C^a from approaches 2 and 3, each with its bootstrap interval (None when a fit failed)."""
    from scalekit.analysis import fit_sweep, load_sweep

    fits = fit_sweep(load_sweep(workdir), bootstrap=bootstrap, compare=False, extrapolate=False)
    out = {}
    for approach in (2, 3):
        try:
            a, interval = fits.exponent(approach)
            out[approach] = {"a": float(a), "interval": list(interval) if interval else None}
        except (KeyError, ValueError):
            out[approach] = None
    return out


def _agree(x: dict | None, y: dict | None) -> bool | None:
    """Each exponent inside the other's interval (None when either is missing)."""
    if not x or not y or not x["interval"] or not y["interval"]:
        return None
    return x["interval"][0] <= y["a"] <= x["interval"][1] and y["interval"][0] <= x["a"] <= y["interval"][1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan", default=str(REPO / "experiments" / "sweep_demo.py"), help="plan PATH[:ARG]")
    ap.add_argument("--parallel", type=int, default=min(2, os.cpu_count() or 1), help="workers per sweep")
    ap.add_argument("--modes", default="old,new", help=f"comma-separated, from {', '.join(MODES)}; the first is "
                                                       "the baseline")
    ap.add_argument("--bootstrap", type=int, default=100, help="bootstrap resamples for the exponents' intervals")
    ap.add_argument("--keep", default="", help="keep the sweep directories under this path (default: removed)")
    args = ap.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        ap.error(f"--modes: unknown {unknown or 'empty'}; choose from {', '.join(MODES)}")
    if args.parallel < 1:
        ap.error("--parallel must be >= 1")
    _environment()

    import jax

    from scalekit.train.mfu import measure_matmul_flops

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    peaks = [measure_matmul_flops("float32")]
    results = []
    try:
        for mode in modes:
            workdir = root / mode
            if workdir.exists():
                shutil.rmtree(workdir)
            print(f"[bench_sweep] {mode}: running {args.plan} with {args.parallel} workers ...", flush=True)
            res = run_mode(args.plan, mode, workdir, args.parallel)
            res["exponents"] = exponents(workdir, args.bootstrap) if res["done"] >= 6 else {}
            results.append(res)
            print(f"[bench_sweep] {mode}: {res['done']}/{res['runs']} done in {res['wall_s']:.1f} s", flush=True)
        peaks.append(measure_matmul_flops("float32"))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    peak = max(peaks)
    base = results[0]
    print(f"\nmachine matmul peak (float32, {jax.devices()[0].platform}, all cores): {peak / 1e9:.1f} GFLOP/s "
          f"(measured {', '.join(f'{p / 1e9:.1f}' for p in peaks)})")
    print(f"{'mode':<14} {'isolate':>7} {'K':>5} {'runs':>5} {'wall s':>8} {'vs base':>8} {'FLOPs':>10} "
          f"{'GFLOP/s':>8} {'MFU':>6} {'a (appr. 2)':>24} {'a (appr. 3)':>24} {'same losses':>11}")
    for res in results:
        res["mfu"] = res["flops"] / res["wall_s"] / peak
        res["speedup"] = base["wall_s"] / res["wall_s"]
        res["same_losses"] = res["losses"] == base["losses"]
        exps = [res["exponents"].get(a) for a in (2, 3)]
        text = [f"{e['a']:.3f} [{e['interval'][0]:.3f}, {e['interval'][1]:.3f}]" if e and e["interval"] else "-"
                for e in exps]
        print(f"{res['mode']:<14} {str(res['isolate']):>7} {res['steps_per_dispatch'] or 'auto':>5} "
              f"{res['done']:>5} {res['wall_s']:>8.1f} {res['speedup']:>7.2f}x {res['flops']:>10.3g} "
              f"{res['flops'] / res['wall_s'] / 1e9:>8.1f} {100 * res['mfu']:>5.1f}% {text[0]:>24} {text[1]:>24} "
              f"{str(res['same_losses']):>11}")
        for f in res["failed"]:
            print(f"  FAILED {f}")
    print("\nseconds summed over the runs, by phase (scalekit.observe.goodput; compile includes cache loads):")
    for res in results:
        warm = res["warm_first_step_s"]
        first = (f"; runs after a worker's first start their first step in {statistics.median(warm):.2f} s (median; "
                 f"{min(warm):.2f}-{max(warm):.2f})" if warm else "")
        print(f"  {res['mode']:<14} " + ", ".join(f"{k[:-2]} {v:.1f}" for k, v in res["goodput"].items()) + first)
    for res in results[1:]:
        for a in (2, 3):
            ok = _agree(base["exponents"].get(a), res["exponents"].get(a))
            print(f"approach {a} exponent, {res['mode']} vs {base['mode']}: "
                  + {True: "agree within both intervals", False: "DISAGREE", None: "not compared"}[ok])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps({"time": time.time(), "plan": args.plan, "parallel": args.parallel, "peak_flops": peak,
                            "results": [{k: v for k, v in r.items() if k != "losses"} for r in results]}) + "\n")
    return 0 if all(not r["failed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
