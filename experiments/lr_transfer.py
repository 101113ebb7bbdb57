"""The learning-rate transfer study: widths x learning rates on the synthetic language, standard parametrization
against muP (scalekit/model/mup.py), through the sweep driver.

    python experiments/lr_transfer.py --workdir runs/lr_transfer            # the full study, minutes on 2 cores
    python experiments/lr_transfer.py --workdir /tmp/lrt --quick             # a miniature (smoke test)

Four widths spanning 8x (16, 32, 64, 128; two layers, two heads, so head_dim grows with width 8 -> 64; d_ff =
3 d_model so every hidden matrix grows in proportion), each trained over one geometric learning-rate grid (1e-3 to
0.128, factor 2) under both parametrizations, with base_width = 16 (the smallest: at width 16 muP trains exactly as
standard). Every run sees the same tokens (a grid plan: 300 steps of 16 x 64 tokens, 307k tokens) and the preset's
AdamW (warmup 30 steps + cosine, weight decay 0.1, clipping 1.0). The loss is the held-out loss at the end of
training, averaged over seeds per learning rate.

Per (parametrization, width): the optimum interpolated on the grid (`scalekit.laws.lr_law.interpolate_lr_opt`, the
three-point parabola in log lr) and its interval (`scalekit.laws.lr_law.lr_opt_interval`: a least-squares quadratic
in log lr over the best point and up to two neighbours each side, delta-method interval on its vertex), flagged when
the best lr is at the edge of the grid. The drift of a parametrization is max lr_opt / min lr_opt over the widths:
muP's claim is that it stays near 1 (here: < 2x over the 8x width range) while standard parametrization's grows.

All runs live in one sweep directory (`--workdir`, one plan whose model entries carry their parametrization), stored
by the hash of their config: a rerun trains only what is missing. Writes lr_transfer.json, lr_transfer.png there and
prints the table and the drift. Runs are keyed by their config, not by the code: after a change to the muP rules
(scalekit/model/mup.py) or the model, use a fresh --workdir, or the old results are reused.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PARAMETRIZATIONS = ("standard", "mup")
LABEL = {"standard": "standard", "mup": "muP"}
GOAL_MUP = 2.0  # the goal: muP's drift under 2x across the width range, standard's above it

# the full study and the miniature: widths, learning-rate grid, training steps, seeds
FULL: dict[str, Any] = {"widths": (16, 32, 64, 128), "lrs": [2.0 ** e * 1e-3 for e in range(0, 8)],
                        "steps": 300, "seeds": (0,), "warmup": 30, "steps_per_dispatch": 20}
QUICK: dict[str, Any] = {"widths": (16, 32), "lrs": [2e-3, 8e-3, 3.2e-2], "steps": 8, "seeds": (0,), "warmup": 2,
                         "steps_per_dispatch": 8}

OVERRIDES: dict[str, Any] = {
    # the demo's language: 32 symbols, order-2 Markov chain, entropy floor 1.849 nats/token
    "data.source": "synthetic", "data.vocab_size": 32, "data.markov_order": 2, "data.concentration": 0.3,
    "eval_every": 0, "eval_batches": 16, "log_every": 50,
    "progress": False, "checkpoint.every": 0, "peak_flops": 1e11,   # skip the start-up matmul measurement
}


def model_entry(width: int, parametrization: str, base_width: int, n_layers: int = 2, n_heads: int = 2) -> dict:
    """One model of the study: fixed depth and heads (head_dim = width / n_heads), d_ff = 3 width."""
    entry = {"name": f"{'mup' if parametrization == 'mup' else 'sp'}-w{width}", "d_model": width,
             "n_layers": n_layers, "n_heads": n_heads, "d_ff": 3 * width, "parametrization": parametrization}
    if parametrization == "mup":
        entry["base_width"] = base_width
    return entry


def get_plan(arg: str | None = None):
    """The study's grid plan (`:quick` for the miniature), loadable by `scalekit sweep plan/run` too."""
    from scalekit.sweep.plan import grid_plan

    s = QUICK if arg == "quick" else FULL
    if arg not in (None, "", "quick"):
        raise ValueError(f"unknown lr_transfer plan variant {arg!r}; use :quick or nothing")
    base_width = min(s["widths"])
    models = [model_entry(w, p, base_width) for p in PARAMETRIZATIONS for w in s["widths"]]
    overrides = {**OVERRIDES, "optimizer.warmup_steps": s["warmup"], "steps_per_dispatch": s["steps_per_dispatch"]}
    return grid_plan("lr_transfer" + ("_quick" if arg == "quick" else ""), models, steps=[s["steps"]],
                     lrs=list(s["lrs"]), seeds=list(s["seeds"]), base="configs/train.py:tiny", overrides=overrides,
                     throughput=1e10, overhead_s=2.0)


def _say(t0: float, msg: str) -> None:
    print(f"[{time.time() - t0:6.0f}s] {msg}", flush=True)


def run_sweep(plan, workdir: Path, parallel: int, t0: float) -> list:
    """Train what is left of the plan in `workdir` (warm local workers); return its RunSpecs."""
    from scalekit.sweep import executors as ex
    from scalekit.sweep.store import open_store

    runs = plan.expand()
    keys = [r.key for r in runs]
    store = open_store(workdir)
    try:
        store.add_runs(r.to_row() for r in runs)
        status = {row["key"]: row["status"] for row in store.rows()}
        todo = [r for r in runs if status.get(r.key) != "done"]
        if not todo:
            _say(t0, f"sweep: all {len(runs)} runs already done in {workdir}; nothing to train")
            return runs
        _say(t0, f"sweep: {len(todo)} of {len(runs)} runs to train, {parallel} at a time; results in "
                 f"{workdir / 'results.db'}")
        n_done = [len(runs) - len(todo)]
        lock = threading.Lock()

        def log(msg: str) -> None:
            parts = msg.split("] ", 1)[-1].split()
            if parts and parts[0] in ("done", "failed", "diverged"):
                with lock:
                    n_done[0] += 1
                    _say(t0, f"  [{n_done[0]}/{len(runs)}] {msg.split('] ', 1)[-1]}")

        ex.run_local(store, workdir, ex.WorkerOptions(keys=keys, max_attempts=2), parallel=parallel, log=log)
        for row in store.rows():
            if row["key"] in set(keys) and row["status"] == "failed":
                _say(t0, f"  FAILED {row['name']}: {ex.error_summary(row['error'])}")
    finally:
        store.close()
    return runs


def analyse(runs: list, workdir: Path) -> dict[str, Any]:
    """Per parametrization and width: the grid, seed-mean losses, best lr, lr_opt with its interval, at-edge."""
    import numpy as np

    from scalekit.laws.lr_law import interpolate_lr_opt, lr_opt_interval
    from scalekit.sweep.store import load_sweep_frame

    frame = load_sweep_frame(workdir)
    by_key = {r["key"]: r for r in frame.to_dict("records")}
    out: dict[str, Any] = {}
    for p in PARAMETRIZATIONS:
        widths = sorted({r.config["model"]["d_model"] for r in runs if r.config["model"]["parametrization"] == p})
        rows = []
        for w in widths:
            mine = [r for r in runs if r.config["model"]["parametrization"] == p and r.config["model"]["d_model"] == w]
            lrs = sorted({r.lr for r in mine})
            per_seed: dict[float, list[float]] = {lr: [] for lr in lrs}
            for r in mine:
                row = by_key.get(r.key, {})
                status = row.get("status")
                loss = row.get("eval_loss")
                if loss is None or not math.isfinite(float(loss)):
                    loss = row.get("final_loss")
                if status == "diverged" or (status == "done" and (loss is None or not math.isfinite(float(loss)))):
                    per_seed[r.lr].append(math.inf)
                elif status == "done":
                    per_seed[r.lr].append(float(loss))
            lr_have = [lr for lr in lrs if per_seed[lr]]
            if len(lr_have) < 1:
                continue
            mean = [float(np.mean(per_seed[lr])) for lr in lr_have]
            opt = interpolate_lr_opt(lr_have, mean)
            seeds_lr = [lr for lr in lr_have for _ in per_seed[lr]]
            seeds_loss = [v for lr in lr_have for v in per_seed[lr]]
            iv = lr_opt_interval(seeds_lr, seeds_loss)
            rows.append({"width": w, "n_params": mine[0].n_params, "lrs": lr_have,
                         "losses": [v if math.isfinite(v) else None for v in mean],
                         "losses_per_seed": [[v if math.isfinite(v) else None for v in per_seed[lr]]
                                             for lr in lr_have],
                         "lr_best": opt.lr_best, "loss_best": opt.loss_best, "lr_opt": opt.lr_opt,
                         "loss_opt": opt.loss_opt, "method": opt.method, "at_edge": opt.at_edge, "edge": opt.edge,
                         "lr_opt_quadratic": iv.lr_opt, "interval": [iv.lo, iv.hi], "interval_level": iv.level,
                         "interval_method": iv.method, "interval_points": iv.n_points, "interval_note": iv.note})
        finite = [r["lr_opt"] for r in rows]
        drift = max(finite) / min(finite) if finite else float("nan")
        quad = [r["lr_opt_quadratic"] for r in rows]
        out[p] = {"widths": rows, "drift": drift, "drift_quadratic": max(quad) / min(quad) if quad else float("nan"),
                  "any_at_edge": any(r["at_edge"] for r in rows)}
    return out


def _clean(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def plot(results: dict[str, Any], path: Path) -> None:
    """Two panels (standard, muP): loss vs lr per width, log-x, the interpolated optimum and its interval marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.2), sharey=True, constrained_layout=True)
    widths = sorted({r["width"] for p in PARAMETRIZATIONS for r in results[p]["widths"]})
    cmap = plt.get_cmap("viridis")
    colour = {w: cmap(0.1 + 0.8 * i / max(len(widths) - 1, 1)) for i, w in enumerate(widths)}
    finite_losses = [v for p in PARAMETRIZATIONS for r in results[p]["widths"] for v in r["losses"] if v is not None]
    for ax, p in zip(axes, PARAMETRIZATIONS):
        for r in results[p]["widths"]:
            x = np.array(r["lrs"], float)
            y = np.array([np.nan if v is None else v for v in r["losses"]], float)
            c = colour[r["width"]]
            ax.plot(x, y, "o-", color=c, lw=1.6, ms=4, label=f"width {r['width']}")
            ax.plot([r["lr_opt"]], [r["loss_opt"]], marker="*", ms=13, color=c, mec="black", mew=0.6, zorder=5)
            lo, hi = r["interval"]
            if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi):
                # the interval of the quadratic fit's vertex, a bar at the optimum's loss
                ax.plot([lo, hi], [r["loss_opt"]] * 2, "-", color=c, lw=1.2, alpha=0.8, zorder=4)
                ax.plot([lo, hi], [r["loss_opt"]] * 2, "|", color=c, ms=8, mew=1.2, zorder=4)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (peak, Adam)")
        drift = results[p]["drift"]
        ax.set_title(f"{LABEL[p]}: lr_opt drift {drift:.2f}x over widths")
        ax.grid(True, which="both", alpha=0.25)
    axes[0].set_ylabel("held-out loss (nats/token)")
    if finite_losses:
        lo_y = min(finite_losses)
        top = sorted(finite_losses)[int(0.85 * (len(finite_losses) - 1))]
        axes[0].set_ylim(lo_y - 0.03 * (top - lo_y + 1e-9), top + 0.05 * (top - lo_y + 1e-9))
    axes[1].legend(title="* interpolated optimum, bar: 95% interval", fontsize=8, title_fontsize=8, loc="lower left")
    fig.savefig(path, dpi=150)
    plt.close(fig)


def table(results: dict[str, Any]) -> str:
    head = (f"{'param':<9} {'width':>5} {'N':>9} {'best lr':>9} {'loss':>7} {'lr_opt':>9} {'quad opt':>9} "
            f"{'95% interval':>21} {'edge':>5}")
    lines = [head, "-" * len(head)]
    for p in PARAMETRIZATIONS:
        for r in results[p]["widths"]:
            lo, hi = r["interval"]
            ivs = f"[{lo:.3g}, {hi:.3g}]" if lo is not None and math.isfinite(lo) else "n/a"
            edge = "yes" if r["at_edge"] else "no"
            lines.append(f"{LABEL[p]:<9} {r['width']:>5} {r['n_params']:>9,} {r['lr_best']:>9.3g} "
                         f"{r['loss_best']:>7.4f} {r['lr_opt']:>9.3g} {r['lr_opt_quadratic']:>9.3g} {ivs:>21} "
                         f"{edge:>5}")
    lines.append("lr_opt: three-point parabola in log lr (interpolate_lr_opt); quad opt and its 95% interval: "
                 "least-squares quadratic over the best lr +- 2 neighbours, delta method (lr_opt_interval)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="runs/lr_transfer", help="sweep directory and output location")
    ap.add_argument("--quick", action="store_true", help="a miniature (2 widths, 3 lrs, a few steps): smoke test")
    ap.add_argument("--parallel", type=int, default=min(2, os.cpu_count() or 1), help="runs trained at once")
    args = ap.parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    from experiments.demo import child_environment  # the demo's: one CPU device per child, a compile cache

    child_environment(workdir)
    t0 = time.time()
    plan = get_plan("quick" if args.quick else None)
    _say(t0, f"lr transfer study{' (quick)' if args.quick else ''} in {workdir.resolve()}")
    runs = run_sweep(plan, workdir, args.parallel, t0)
    results = analyse(runs, workdir)
    goal = {"mup_drift": results["mup"]["drift"], "standard_drift": results["standard"]["drift"],
            "threshold": GOAL_MUP,
            "holds": bool(results["mup"]["drift"] < GOAL_MUP < results["standard"]["drift"]
                          and not results["mup"]["any_at_edge"] and not results["standard"]["any_at_edge"])}
    s = QUICK if args.quick else FULL
    doc = {"study": "lr_transfer", "quick": bool(args.quick),
           "setup": {"widths": list(s["widths"]), "lrs": list(s["lrs"]), "steps": s["steps"], "seeds": list(s["seeds"]),
                     "base_width": min(s["widths"]), "tokens": runs[0].tokens, "overrides": OVERRIDES},
           "parametrizations": results, "goal": goal}
    (workdir / "lr_transfer.json").write_text(json.dumps(_clean(doc), indent=1))
    plot(results, workdir / "lr_transfer.png")
    print(table(results))
    for p in PARAMETRIZATIONS:
        r = results[p]
        print(f"drift {LABEL[p]:<8}: max lr_opt / min lr_opt = {r['drift']:.2f}x over widths "
              f"{min(s['widths'])}..{max(s['widths'])} (quadratic fit's vertices: {r['drift_quadratic']:.2f}x)"
              + ("  (some best lr at the grid edge!)" if r["any_at_edge"] else ""))
    print(f"goal (muP < {GOAL_MUP:g}x, standard > {GOAL_MUP:g}x, no optimum at an edge): "
          f"{'HOLDS' if goal['holds'] else 'NOT MET'}")
    _say(t0, f"wrote {workdir / 'lr_transfer.json'} and {workdir / 'lr_transfer.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
