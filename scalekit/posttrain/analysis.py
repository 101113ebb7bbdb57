"""Analysis of post-training and test-time studies: coverage laws, SFT scaling, and the total-compute frontier.

- `coverage_fits`: per run, pass@k from its per-problem correct counts at log-spaced k, fitted with the coverage law
  coverage(k) = exp(a k^b) (`scalekit.laws.fit_coverage`).
- `sft_scaling`: held-out answer loss and test error after SFT against fine-tuning examples X, fitted with
  y = E + A / X^alpha (the laws' `posttrain` power law).
- `total_compute_options` / `frontier`: every way to answer `queries` test queries — a model (its pre-training,
  SFT or GRPO chain) and an inference strategy (greedy; k samples with the verifier choosing, i.e. pass@k; k samples
  with majority voting) — with its accuracy and its TOTAL compute, training chain + queries x inference FLOPs, in
  the same (palm, attention-included) units; the frontier is the best accuracy reachable at each budget.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

from scalekit.infer.metrics import pass_at_k


def _ks(n: int) -> list[int]:
    return [k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if k <= n]


def coverage_fits(df: pd.DataFrame, bootstrap: int = 0) -> pd.DataFrame:
    """One row per run with samples: the coverage law's a and b (and intervals with `bootstrap` resamples)."""
    from scalekit.laws import fit_coverage, log_spaced_ks  # noqa: PLC0415

    rows = []
    for _, r in df[df["correct_counts"].notna()].iterrows():
        c = np.asarray(r["correct_counts"], np.int64)
        n = int(r["n"])
        ks = log_spaced_ks(n, 16)
        curve = np.array([np.mean(pass_at_k(n, c, int(k))) for k in ks])
        rec: dict[str, Any] = {"name": r["name"], "model": r.get("model"), "stage_label": r.get("stage_label"),
                               "n_params": r["n_params"], "train_flops_total": r["train_flops_total"],
                               "pass@1": curve[0], f"pass@{n}": curve[-1], "unsolved": float(np.mean(c == 0)),
                               "ks": ks.tolist(), "coverage": curve.tolist()}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fit = fit_coverage(k=ks, coverage=curve, bootstrap=bootstrap)
            rec.update(a=fit.params["a"], b=fit.params["b"], fit_points=fit.n_points)
            if bootstrap and "b" in fit.intervals:
                rec.update(b_lo=fit.intervals["b"][0], b_hi=fit.intervals["b"][1])
        except Exception as e:  # noqa: BLE001 - a curve at 1 everywhere has nothing to fit: say so in the row
            rec.update(a=np.nan, b=np.nan, fit_points=0, fit_error=f"{type(e).__name__}: {e}")
        rows.append(rec)
    return pd.DataFrame.from_records(rows)


def _fit_power(x: np.ndarray, y: np.ndarray) -> Any:
    from scalekit.laws import ScalingData, fit_law  # noqa: PLC0415

    if len(x) < 3:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit_law(ScalingData.from_arrays(X=x, loss=y), "posttrain")


def sft_scaling(df: pd.DataFrame, base: str, examples_per_step: int = 32,
                tail_error: float = 0.5) -> tuple[pd.DataFrame, dict[str, Any]]:
    """(table of the base and its SFT runs, power-law fits against fine-tuning examples X = steps x batch).

    Fits y(X) = E + A / X^alpha (the laws' `posttrain` law) to two measures of the SFT runs:
    - "answer_loss": the held-out answer-token loss (nats/token; the trainer's eval loss on test problems), a smooth
      measure that follows a power law from the first steps;
    - "error": test error = 1 - greedy accuracy, on the runs past the transition (error < `tail_error`): accuracy is
      a thresholded measure, sigmoid in log X while the answer loss is still high, a power law only in its tail.
    """
    rows = df[(df["name"] == base) | ((df["parent"] == base) & (df["stage_label"] == "sft"))].copy()
    rows["sft_examples"] = np.where(rows["stage_label"] == "sft", rows["stage_steps"].astype(float)
                                    * examples_per_step, 0.0)
    rows["error"] = 1.0 - rows["greedy_accuracy"].astype(float)
    rows = rows.sort_values("sft_examples")
    sft = rows[rows["sft_examples"] > 0]
    loss_rows = sft[sft["eval_loss"].astype(float) > 0]
    tail = sft[(sft["error"] > 0) & (sft["error"] < tail_error)]
    fits = {"answer_loss": _fit_power(loss_rows["sft_examples"].to_numpy(), loss_rows["eval_loss"].to_numpy(float)),
            "error": _fit_power(tail["sft_examples"].to_numpy(), tail["error"].to_numpy())}
    cols = ["name", "stage_steps", "sft_examples", "sft_flops", "train_flops_total", "eval_loss", "greedy_accuracy",
            "error", "sample_accuracy"]
    return rows[cols].reset_index(drop=True), fits


def total_compute_options(df: pd.DataFrame, queries: float = 1e4, ks: list[int] | None = None) -> pd.DataFrame:
    """Every (run, inference strategy) with its accuracy on the test problems and its total compute."""
    out = []
    for _, r in df.iterrows():
        train = float(r["train_flops_total"])
        base = {"name": r["name"], "model": r.get("model"), "stage_label": r.get("stage_label"),
                "train_flops": train, "pretrain_flops": r["pretrain_flops"],
                "posttrain_flops": float(r["sft_flops"]) + float(r["grpo_flops"])}
        inf = queries * float(r["greedy_flops_per_problem"])
        out.append({**base, "method": "greedy", "k": 1, "accuracy": float(r["greedy_accuracy"]),
                    "inference_flops": inf, "total_flops": train + inf})
        if r.get("correct_counts") is None or not isinstance(r["correct_counts"], list):
            continue
        n, c = int(r["n"]), np.asarray(r["correct_counts"])
        for k in (ks or _ks(n)):
            if k > n:
                continue
            inf = queries * k * float(r["flops_per_sample"])
            out.append({**base, "method": "verifier best-of-k", "k": k,
                        "accuracy": float(np.mean(pass_at_k(n, c, k))), "inference_flops": inf,
                        "total_flops": train + inf})
            maj = (r.get("majority_at_k") or {}).get(str(k))
            if maj is not None:
                out.append({**base, "method": "majority vote", "k": k, "accuracy": float(maj),
                            "inference_flops": inf, "total_flops": train + inf})
    t = pd.DataFrame.from_records(out)
    t["inference_share"] = t["inference_flops"] / t["total_flops"]
    t["posttrain_share"] = t["posttrain_flops"] / t["total_flops"]
    return t


def frontier(options: pd.DataFrame, methods: tuple[str, ...] | None = None) -> pd.DataFrame:
    """The Pareto frontier: options, cheapest first, each more accurate than every cheaper one.

    Row i is the best choice for any budget in [its total_flops, the next row's); ties go to the cheaper option.
    """
    t = options if methods is None else options[options["method"].isin(methods)]
    t = t.sort_values(["total_flops", "accuracy"], ascending=[True, False])
    keep, best = [], -np.inf
    for idx, acc in zip(t.index, t["accuracy"]):
        if acc > best + 1e-12:
            keep.append(idx)
            best = acc
    return t.loc[keep].reset_index(drop=True)


def describe_frontier(front: pd.DataFrame) -> list[str]:
    """One line per frontier point: from which total budget it wins, and where its compute goes."""
    lines = []
    for _, r in front.iterrows():
        lines.append(f"budget >= {r['total_flops']:.2e}: {r['name']} + {r['method']} k={int(r['k'])} -> accuracy "
                     f"{r['accuracy']:.3f} (pre-train {r['pretrain_flops']:.1e}, post-train "
                     f"{r['posttrain_flops']:.1e}, inference {r['inference_flops']:.1e})")
    return lines
