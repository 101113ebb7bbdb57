"""Fit speed: the 4,500-start approach-3 fit on epoch_chinchilla, JAX batched L-BFGS vs a plain scipy loop.

Both run side by side in this process on the same 240 points and the same starts (the Chinchilla grid), scipy
first (before JAX starts its CPU runtime, whose threads would slow it), so the ratio is measured under the same
machine load. The scipy baseline is what the replication ran: L-BFGS-B from
each start with default settings and finite-difference gradients, best converged start wins.

    .venv/bin/python benchmarks/bench_fit.py            # full: 4,500 starts each side (~150 s of scipy)
    .venv/bin/python benchmarks/bench_fit.py --quick    # a fixed random 450 of the starts, each side

Then the solvers of `fit_law` against each other, per objective (huber_log, lsq_log, lsq, huber): variable
projection (`solver="vpnls"`) against the 4,500-start batched L-BFGS (`solver="lbfgs"`), both cold and warm, with
their objective values side by side (goal: vpnls >= 10x faster at an equal or lower objective).

    .venv/bin/python benchmarks/bench_fit.py --solvers-only   # just the solver comparison (~1 min)

Prints tables and appends one JSON line to benchmarks/results/fit.jsonl. "cold" is the first call in the
process (tracing and XLA compilation included; no persistent compilation cache), "warm" a repeat call.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "epoch_chinchilla" / "svg_extracted_data.csv"
RESULTS = REPO / "benchmarks" / "results" / "fit.jsonl"


def _timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def scipy_loop(N, D, L, starts, delta: float = 1e-3, jac: bool = False):
    """The plain baseline: scipy L-BFGS-B from each start, keep the best converged."""
    from scipy.optimize import minimize
    from scipy.special import huber, logsumexp

    lN, lD, lL = np.log(N), np.log(D), np.log(L)

    def obj(p):
        a, b, e, al, be = p
        pred = logsumexp([a - al * lN, b - be * lD, np.full_like(lN, e)], axis=0)
        return np.sum(huber(delta, pred - lL))

    def obj_grad(p):
        a, b, e, al, be = p
        T = np.stack([a - al * lN, b - be * lD, np.full_like(lN, e)])
        pred = logsumexp(T, axis=0)
        w = np.exp(T - pred)
        r = pred - lL
        hp = np.clip(r, -delta, delta)
        g = np.array([np.sum(hp * w[0]), np.sum(hp * w[1]), np.sum(hp * w[2]), -np.sum(hp * w[0] * lN),
                      -np.sum(hp * w[1] * lD)])
        return np.sum(huber(delta, r)), g

    best, n_ok = None, 0
    for x0 in starts:
        r = minimize(obj_grad, x0, jac=True, method="L-BFGS-B") if jac else minimize(obj, x0, method="L-BFGS-B")
        n_ok += bool(r.success)
        if r.success and (best is None or r.fun < best.fun):
            best = r
    return best, n_ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a fixed random tenth of the starts (450) on both sides")
    ap.add_argument("--bootstrap", type=int, default=1000, help="bootstrap refits to time (default 1000)")
    ap.add_argument("--baseline-jac", action="store_true",
                    help="give scipy an analytic gradient too (a stronger baseline than the replication's)")
    ap.add_argument("--no-save", action="store_true", help="do not append to benchmarks/results/fit.jsonl")
    ap.add_argument("--solvers-only", action="store_true", help="skip the scipy baseline and the bootstrap")
    args = ap.parse_args(argv)
    if not DATA.exists():
        print(f"bench_fit: reference data not found at {DATA}; nothing to measure", file=sys.stderr)
        return 0
    if args.solvers_only:
        record = {"bench": "fit_solvers", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **solver_comparison()}
        _save(record, args.no_save)
        return 0

    import jax
    import pandas as pd

    from scalekit.laws import ScalingData, bootstrap_fit, fit_law
    from scalekit.laws.forms import CHINCHILLA

    data = ScalingData.from_frame(pd.read_csv(DATA), {"N": "Model Size", "C": "Training FLOP", "loss": "loss"})
    data = data.drop_highest_loss(5)
    starts = CHINCHILLA.default_grid()
    if args.quick:        # a fixed random tenth (every 10th row would hold beta = 0 only: the grid's last axis)
        starts = starts[np.sort(np.random.default_rng(0).choice(len(starts), len(starts) // 10, replace=False))]
    load0 = os.getloadavg()[0]

    # scipy first: once XLA's CPU runtime has started, its worker threads slow a numpy/scipy loop in the same
    # process by up to 2x (measured), which would flatter the ratio. Nothing below has run a JAX computation yet.
    (best, n_ok), t_sp, c_sp = _timed(lambda: scipy_loop(data["N"], data["D"], data.loss, starts,
                                                         jac=args.baseline_jac))
    cold, t_cold, c_cold = _timed(lambda: fit_law(data, "chinchilla", grid=starts))
    warm, t_warm, c_warm = _timed(lambda: fit_law(data, "chinchilla", grid=starts))
    _, t_bc, c_bc = _timed(lambda: bootstrap_fit(warm, data, args.bootstrap, seed=0))
    boot, t_bw, c_bw = _timed(lambda: bootstrap_fit(warm, data, args.bootstrap, seed=1))
    load1 = os.getloadavg()[0]

    sp = dict(zip(("A", "B", "E", "alpha", "beta"),
                  (np.exp(best.x[0]), np.exp(best.x[1]), np.exp(best.x[2]), best.x[3], best.x[4])))
    ours = warm.params
    rel = {k: abs(ours[k] / sp[k] - 1) for k in sp}
    rows = [
        ("starts", f"{len(starts)}", f"{len(starts)}"),
        ("converged starts", f"{warm.n_converged}", f"{n_ok}"),
        ("best objective", f"{warm.objective:.10g}", f"{best.fun:.10g}"),
        *[(k, f"{ours[k]:.6g}", f"{sp[k]:.6g}") for k in ("A", "B", "E", "alpha", "beta")],
        ("wall time, cold (s)", f"{t_cold:.2f}", f"{t_sp:.1f}"),
        ("wall time, warm (s)", f"{t_warm:.2f}", ""),
        ("CPU time, cold/warm (s)", f"{c_cold:.2f} / {c_warm:.2f}", f"{c_sp:.1f}"),
    ]
    w = max(len(r[0]) for r in rows)
    print(f"approach-3 grid fit on epoch_chinchilla (240 points), jax {jax.__version__}, "
          f"{os.cpu_count()} CPUs, load {load0:.1f} -> {load1:.1f}")
    print(f"{'':<{w}}  {'scalekit (JAX)':>22}  {'scipy L-BFGS-B loop':>20}")
    for r in rows:
        print(f"{r[0]:<{w}}  {r[1]:>22}  {r[2]:>20}")
    print(f"speed-up: {t_sp / t_warm:.1f}x warm, {t_sp / t_cold:.1f}x cold (wall); "
          f"max relative parameter difference {max(rel.values()):.2e}; objective difference "
          f"{(warm.objective - best.fun) / best.fun:+.2e} (relative)")
    print(f"bootstrap, {args.bootstrap} refits: {t_bw:.2f} s warm, {t_bc:.2f} s cold "
          f"({boot.bootstrap_converged[0]} converged)")

    record = {
        "bench": "fit", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "quick": args.quick, "starts": len(starts),
        "jax": jax.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
        "loadavg_start": load0, "loadavg_end": load1, "baseline": "scipy L-BFGS-B" + (" +jac" if args.baseline_jac
                                                                                    else " (finite differences)"),
        "jax_wall_cold_s": t_cold, "jax_wall_warm_s": t_warm, "jax_cpu_cold_s": c_cold, "jax_cpu_warm_s": c_warm,
        "scipy_wall_s": t_sp, "scipy_cpu_s": c_sp, "speedup_warm": t_sp / t_warm, "speedup_cold": t_sp / t_cold,
        "jax_objective": warm.objective, "scipy_objective": float(best.fun), "jax_params": ours, "scipy_params": sp,
        "max_rel_param_diff": max(rel.values()), "jax_converged": warm.n_converged, "scipy_converged": n_ok,
        "bootstrap": args.bootstrap, "bootstrap_wall_warm_s": t_bw, "bootstrap_wall_cold_s": t_bc,
        "bootstrap_converged": boot.bootstrap_converged[0],
    }
    record.update(solver_comparison())
    _save(record, args.no_save)
    return 0


def _save(record: dict, no_save: bool) -> None:
    if no_save:
        return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as fh:
        fh.write(json.dumps({k: (float(v) if isinstance(v, np.floating) else v) for k, v in record.items()},
                            default=float) + "\n")
    print(f"appended to {RESULTS.relative_to(REPO)}")


def solver_comparison() -> dict:
    """VPNLS against the 4,500-start L-BFGS on epoch_chinchilla for every objective: cold and warm wall times."""
    import pandas as pd

    from scalekit.laws import OBJECTIVES, ScalingData, fit_law

    data = ScalingData.from_frame(pd.read_csv(DATA), {"N": "Model Size", "C": "Training FLOP", "loss": "loss"})
    data = data.drop_highest_loss(5)
    import jax.numpy as jnp

    jnp.ones(1).block_until_ready()        # start the JAX runtime first: "cold" below is tracing + compiling
    rows, out = [], {}
    for objective in OBJECTIVES:
        res = {}
        for solver in ("vpnls", "lbfgs"):
            cold, t_cold, _ = _timed(lambda: fit_law(data, objective=objective, solver=solver, diagnose=False))
            warm = [_timed(lambda: fit_law(data, objective=objective, solver=solver, diagnose=False))
                    for _ in range(3)]
            t_warm = min(w[1] for w in warm)
            res[solver] = (warm[0][0], t_cold, t_warm)
        (vf, vc, vw), (lf, lc, lw) = res["vpnls"], res["lbfgs"]
        rel = (vf.objective - lf.objective) / lf.objective
        rows.append((objective, f"{lf.objective:.10g}", f"{vf.objective:.10g}", f"{rel:+.1e}", f"{lc:.2f}",
                     f"{vc:.2f}", f"{lc / vc:.1f}x", f"{lw:.3f}", f"{vw:.3f}", f"{lw / vw:.1f}x"))
        out[objective] = {"lbfgs_objective": lf.objective, "vpnls_objective": vf.objective,
                          "relative_objective_difference": rel, "lbfgs_cold_s": lc, "vpnls_cold_s": vc,
                          "lbfgs_warm_s": lw, "vpnls_warm_s": vw, "speedup_cold": lc / vc, "speedup_warm": lw / vw,
                          "lbfgs_starts": lf.n_starts, "vpnls_note": next((n for n in vf.notes if "vpnls" in n), "")}
    head = ("objective", "L-BFGS 4500 obj.", "VPNLS obj.", "rel. diff", "L-BFGS cold s", "VPNLS cold s", "cold x",
            "L-BFGS warm s", "VPNLS warm s", "warm x")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    print(f"\nsolvers on epoch_chinchilla (240 points), load {os.getloadavg()[0]:.1f}; warm = best of 3")
    for r in [head] + rows:
        print("  ".join(str(c).rjust(w) for c, w in zip(r, widths)))
    return {"solvers": out}


if __name__ == "__main__":
    sys.exit(main())
