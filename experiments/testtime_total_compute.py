"""Where does the next FLOP do the most good? Accuracy against TOTAL compute: pre-training + post-training + inference.

Every stage of the study (three model sizes x two pre-training budgets, each with and without SFT, and GRPO from two
bases) is an option, combined with an inference strategy: greedy, k samples with the verifier picking a correct one
(best-of-k = pass@k), or k samples with majority voting. Inference is charged for serving Q queries (default 10^4),
so total = training chain + Q x k x FLOPs per sample, all in the trainer's units (palm convention, attention
included). The frontier is the best accuracy reachable at each budget, and which mix reaches it.

    .venv/bin/python experiments/testtime_total_compute.py [--sweep-dir /tmp/scalekit_posttrain] [--queries 1e4]

Writes <sweep-dir>/testtime_total_compute.{json,png}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from scalekit.posttrain.analysis import describe_frontier, frontier, total_compute_options  # noqa: E402
from scalekit.posttrain.plots import plot_total_compute  # noqa: E402
from scalekit.posttrain.study import StudyPlan, load_results, run_stages, select  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Run (or resume) every stage, build the options and their frontier for each Q, print and save."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep-dir", default="/tmp/scalekit_posttrain")
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--queries", type=float, nargs="+", default=[1e3, 1e4, 1e5])
    args = ap.parse_args(argv)
    plan = StudyPlan.quick() if args.quick else StudyPlan()
    specs = plan.all()
    dirs = run_stages(args.sweep_dir, specs, parallel=args.parallel)
    df = select(load_results(args.sweep_dir), dirs)
    out = Path(args.sweep_dir)
    result = {}
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, len(args.queries), figsize=(6.5 * len(args.queries), 4.5), squeeze=False)
    for ax, q in zip(axes[0], args.queries):
        options = total_compute_options(df, queries=q)
        front = frontier(options, methods=("greedy", "verifier best-of-k", "majority vote"))
        front_noverifier = frontier(options, methods=("greedy", "majority vote"))
        print(f"\n== Q = {q:.0e} queries: frontier with a verifier (best-of-k)")
        print("\n".join(describe_frontier(front)))
        print(f"-- without a verifier (greedy or majority vote)")
        print("\n".join(describe_frontier(front_noverifier)))
        result[f"{q:.0e}"] = {"frontier": front.to_dict(orient="records"),
                              "frontier_no_verifier": front_noverifier.to_dict(orient="records")}
        plot_total_compute(options, front, ax, queries=q)
        ax.set_title(f"Q = {q:.0e} queries")
    fig.tight_layout()
    fig.savefig(out / "testtime_total_compute.png", dpi=120)
    (out / "testtime_total_compute.json").write_text(json.dumps(result, indent=1, default=float))
    print(f"wrote {out / 'testtime_total_compute.json'} and {out / 'testtime_total_compute.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
