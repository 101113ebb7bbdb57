"""Test-time scaling: coverage (pass@k) against the number of samples k for several model sizes, with coverage laws.

Pre-trains models of three sizes at two budgets (and fine-tunes each), samples 64 completions for each of 128 test
problems, and fits coverage(k) = exp(a k^b) to each model's pass@k curve (unbiased estimator, log-spaced k). Every
stage is a run of the sweep driver; results land in the sweep's results store.

    .venv/bin/python experiments/testtime_coverage.py [--sweep-dir /tmp/scalekit_posttrain] [--parallel 2] [--quick]

Writes <sweep-dir>/testtime_coverage.{json,png}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from scalekit.posttrain.analysis import coverage_fits  # noqa: E402
from scalekit.posttrain.plots import plot_coverage  # noqa: E402
from scalekit.posttrain.study import StudyPlan, load_results, run_stages, select  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Run (or resume) the stages, fit the coverage law per run, print and save the table and figure."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep-dir", default="/tmp/scalekit_posttrain")
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="a miniature study (seconds, for smoke tests)")
    ap.add_argument("--bootstrap", type=int, default=200)
    args = ap.parse_args(argv)
    plan = StudyPlan.quick() if args.quick else StudyPlan()
    specs = plan.pretrain() + plan.sft()
    dirs = run_stages(args.sweep_dir, specs, parallel=args.parallel)
    df = select(load_results(args.sweep_dir), dirs)
    fits = coverage_fits(df, bootstrap=args.bootstrap).sort_values(["stage_label", "n_params", "name"])
    cols = [c for c in ("name", "n_params", "train_flops_total", "pass@1", f"pass@{plan.eval_samples}", "unsolved",
                        "a", "b", "b_lo", "b_hi") if c in fits]
    print(fits[cols].to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    out = Path(args.sweep_dir)
    fits.to_json(out / "testtime_coverage.json", orient="records", indent=1)
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, label in zip(axes, ("pretrain", "sft")):
        plot_coverage(fits[fits["stage_label"] == label], ax)
        ax.set_title(f"{label}: coverage(k) = exp(a k^b)")
    fig.tight_layout()
    fig.savefig(out / "testtime_coverage.png", dpi=120)
    print(f"wrote {out / 'testtime_coverage.json'} and {out / 'testtime_coverage.png'}")
    print(json.dumps({r["name"]: {"a": r["a"], "b": r["b"]} for _, r in fits.iterrows()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
