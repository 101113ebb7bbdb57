"""Post-training scaling: test accuracy after supervised fine-tuning against fine-tuning data and compute.

From one pre-trained base (packed problems, a short budget), fine-tunes with the answer-masked loss for a range of
steps (`scalekit train` with init_from, as sweep runs), evaluates greedy accuracy on 128 held-out problems, and fits
y(X) = E + A / X^alpha to test error against fine-tuning examples X (the laws library's `posttrain` law). Also
reports the GRPO runs of the study next to it (same base family): accuracy per post-training FLOP. The held-out
answer-token loss is fitted with the same law: it is smooth from the first step, while error only becomes a power law
once accuracy has taken off.

    .venv/bin/python experiments/posttrain_sft_scaling.py [--sweep-dir /tmp/scalekit_posttrain] [--quick]

Writes <sweep-dir>/posttrain_sft_scaling.{json,png}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from scalekit.posttrain.analysis import sft_scaling  # noqa: E402
from scalekit.posttrain.plots import plot_sft_scaling  # noqa: E402
from scalekit.posttrain.study import StudyPlan, load_results, run_stages, select  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Run (or resume) the base, its SFT runs and the GRPO runs; fit and save."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep-dir", default="/tmp/scalekit_posttrain")
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    plan = StudyPlan.quick() if args.quick else StudyPlan()
    model, pre = plan.sft_scaling_base
    base = f"pre_{model}_{pre}"
    specs = [s for s in plan.pretrain() if s.name == base] + plan.sft_scaling() + [
        s for s in plan.pretrain() if s.name in {p for s2 in plan.grpo_stages() for p in [s2.parent]}
    ] + plan.grpo_stages()
    dirs = run_stages(args.sweep_dir, specs, parallel=args.parallel)
    df = select(load_results(args.sweep_dir), dirs)
    table, fits = sft_scaling(df, base)
    print(f"SFT from {base} ({plan.task}, difficulty {plan.difficulty}):")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    result = {"base": base, "table": table.to_dict(orient="records")}
    result["fits"] = {}
    for what, fit in fits.items():
        if fit is not None:
            print(f"fit of {what}: y(X) = E + A / X^alpha: {fit.params} ({fit.n_points} points)")
            result["fits"][what] = {"params": fit.params, "objective": fit.objective, "converged": fit.converged,
                                    "n_points": fit.n_points}
    grpo = df[df["stage_label"] == "grpo"]
    rows = []
    for _, g in grpo.iterrows():
        parent = df[df["name"] == g["parent"]].iloc[0]
        rows.append({"name": g["name"], "base": g["parent"], "grpo_flops": g["grpo_flops"],
                     "greedy": (parent["greedy_accuracy"], g["greedy_accuracy"]),
                     "sampled": (parent["sample_accuracy"], g["sample_accuracy"])})
        print(f"GRPO {g['name']}: {g['grpo_flops']:.2e} FLOPs; greedy accuracy {parent['greedy_accuracy']:.3f} -> "
              f"{g['greedy_accuracy']:.3f}, sampled (T=1) {parent['sample_accuracy']:.3f} -> "
              f"{g['sample_accuracy']:.3f}")
    result["grpo"] = rows
    out = Path(args.sweep_dir)
    (out / "posttrain_sft_scaling.json").write_text(json.dumps(result, indent=1, default=float))
    import matplotlib.pyplot as plt  # noqa: PLC0415

    axes = plot_sft_scaling(table, fits)
    axes[0].set_title(f"SFT from {base}: answer loss")
    axes[1].set_title(f"SFT from {base}: test error")
    axes[0].figure.tight_layout()
    axes[0].figure.savefig(out / "posttrain_sft_scaling.png", dpi=120)
    print(f"wrote {out / 'posttrain_sft_scaling.json'} and {out / 'posttrain_sft_scaling.png'}")
    plt.close("all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
