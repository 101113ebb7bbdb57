"""Figures for the post-training and test-time studies (matplotlib; callers pick the backend)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

METHOD_MARKERS = {"greedy": "s", "verifier best-of-k": "o", "majority vote": "^"}


def plot_coverage(fits: pd.DataFrame, ax: Any = None) -> Any:
    """Coverage against k (log x) per run, measured points and the fitted coverage law."""
    import matplotlib.pyplot as plt  # noqa: PLC0415

    ax = ax or plt.subplots(figsize=(6, 4))[1]
    for i, (_, r) in enumerate(fits.iterrows()):
        color = f"C{i % 10}"
        ks = np.asarray(r["ks"], float)
        ax.plot(ks, r["coverage"], "o", color=color, ms=3)
        if np.isfinite(r.get("a", np.nan)):
            kk = np.logspace(0, np.log10(ks.max()), 50)
            ax.plot(kk, np.exp(r["a"] * kk ** r["b"]), "-", color=color,
                    label=f"{r['name']} (N={int(r['n_params']):,}): b={r['b']:.2f}")
        else:
            ax.plot(ks, r["coverage"], "--", color=color, label=f"{r['name']} (no fit)")
    ax.set_xscale("log")
    ax.set_xlabel("samples per problem k")
    ax.set_ylabel("coverage (pass@k)")
    ax.set_title("coverage(k) = exp(a k^b)")
    ax.legend(fontsize=7)
    return ax


def plot_sft_scaling(table: pd.DataFrame, fits: dict[str, Any] | None = None, axes: Any = None) -> Any:
    """Two log-log panels against SFT examples: held-out answer loss and test error, each with its power-law fit."""
    import matplotlib.pyplot as plt  # noqa: PLC0415

    axes = axes if axes is not None else plt.subplots(1, 2, figsize=(11, 4))[1]
    fits = fits or {}
    sft = table[table["sft_examples"] > 0]
    base = table[table["sft_examples"] == 0]
    for ax, col, key, label in ((axes[0], "eval_loss", "answer_loss", "held-out answer loss (nats/token)"),
                                (axes[1], "error", "error", "test error (greedy)")):
        ax.plot(sft["sft_examples"], sft[col], "o", label="after SFT")
        if col == "error" and len(base):
            ax.axhline(float(base["error"].iloc[0]), color="gray", ls=":", label="pre-trained (no SFT)")
        fit = fits.get(key)
        if fit is not None:
            lo = sft["sft_examples"].min() if key != "error" else sft.loc[sft["error"] < 0.5, "sft_examples"].min()
            xx = np.logspace(np.log10(lo), np.log10(sft["sft_examples"].max()), 50)
            p = fit.params
            ax.plot(xx, fit.predict(X=xx), "-",
                    label=f"E + A/X^alpha: E={p.get('E', 0):.3g}, alpha={p['alpha']:.2f}" +
                          (" (fit on error < 0.5)" if key == "error" else ""))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("fine-tuning examples X")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    return axes


def plot_total_compute(options: pd.DataFrame, front: pd.DataFrame | None = None, ax: Any = None,
                       queries: float | None = None) -> Any:
    """Accuracy against total compute: every option (colour = post-training, marker = inference method) and the
    frontier."""
    import matplotlib.pyplot as plt  # noqa: PLC0415

    ax = ax or plt.subplots(figsize=(7, 4.5))[1]
    colors = {"pretrain": "C0", "sft": "C1", "grpo": "C2"}
    for (label, method), g in options.groupby(["stage_label", "method"]):
        ax.scatter(g["total_flops"], g["accuracy"], s=10, alpha=0.5, c=colors.get(label, "C7"),
                   marker=METHOD_MARKERS.get(method, "x"), label=f"{label}, {method}")
    if front is not None:
        xs = list(front["total_flops"]) + [options["total_flops"].max()]
        ys = list(front["accuracy"]) + [front["accuracy"].iloc[-1]]
        ax.step(xs, ys, where="post", color="k", lw=1.2, label="frontier")
    ax.set_xscale("log")
    ax.set_xlabel("total FLOPs: pre-training + post-training + inference" +
                  (f" ({queries:.0e} queries)" if queries else ""))
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=6, ncol=2, loc="lower right")
    return ax
