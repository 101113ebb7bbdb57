"""`LawComparison`: the ranked result of `scalekit.laws.compare.compare_laws`, as text, HTML, JSON and plots."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field

import numpy as np

from scalekit.laws import render
from scalekit.laws.data import ScalingData
from scalekit.laws.intervals import predictive_interval
from scalekit.laws.isoflop import budgets_of


@dataclass(repr=False)
class LawComparison:
    """The ranked comparison. `rows` (best first) are dicts with: rank, form, objective, approach, metric
    ("runs": each held-out run's loss; "L_opt": the held-out budget's optimal loss), heldout_mean_abs_rel_err,
    heldout_max_abs_rel_err, lobo_mean_abs_rel_err, lobo_folds, coverage, n_covered, n_heldout, a, E,
    n_opt_rel_err (approach 2), error (None, or why the fit failed), warnings, heldout (observed, predicted and
    interval per held-out run). `winner` is the best row on the held-out runs (see the module docstring),
    `winner_fit` its law refitted on ALL runs with bootstrap intervals."""

    rows: list[dict]
    holdout: str
    threshold: float | None
    heldout_budgets: tuple[float, ...]
    folds: list[float]
    level: float
    bootstrap: int
    n_points: int
    winner_fit: object | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    data: ScalingData | None = field(default=None, repr=False)
    _fits: dict = field(default_factory=dict, repr=False)     # row id -> (training fit, split mask) for plots

    @property
    def winner(self) -> dict | None:
        """The best row measured on the held-out runs themselves (metric "runs"); an approach-2 row (metric
        "L_opt": one number per held-out budget, compared with an estimate of its optimum) wins only when no law
        in N and D could be fitted."""
        ok = [r for r in self.rows if r["error"] is None]
        return next((r for r in ok if r["metric"] == "runs"), ok[0] if ok else None)

    @property
    def score_name(self) -> str:
        return "lobo_mean_abs_rel_err" if self.holdout == "lobo" else "heldout_mean_abs_rel_err"

    def describe_winner(self) -> str:
        w = self.winner
        if w is None:
            return "no law could be fitted"
        err = w[self.score_name]
        what = "LOBO" if self.holdout == "lobo" else "held-out"
        metric = "" if w["metric"] == "runs" else " (loss at the optimum)"
        return (f"{w['form']} / {w['objective']} (approach {w['approach']}): {what} mean |rel. error| "
                f"{err:.3%}{metric}")

    # ---------------------------------------------------------------------------------------------- tables
    def _header(self) -> tuple[str, ...]:
        pct = f"{round(self.level * 100):g}%"
        return ("rank", "form", "objective", "appr.", "metric", "held-out mean |err|", "max |err|", "LOBO mean |err|",
                f"{pct} PI coverage", "a", "E", "N_opt err", "note")

    def table_rows(self) -> list[tuple[str, ...]]:
        def pct(v):
            return "" if v is None or not np.isfinite(v) else f"{v:.2%}"

        def num(v, d=3):
            return "" if v is None or not np.isfinite(v) else f"{v:.{d}f}"

        out = []
        for r in self.rows:
            cov = "" if r["coverage"] is None else f"{r['coverage']:.0%} ({r['n_covered']}/{r['n_heldout']})"
            note = r["error"] or ("winner" if r is self.winner else "")
            out.append((str(r["rank"]), r["form"], r["objective"], str(r["approach"]), r["metric"],
                        pct(r["heldout_mean_abs_rel_err"]), pct(r["heldout_max_abs_rel_err"]),
                        pct(r["lobo_mean_abs_rel_err"]), cov, num(r["a"]), num(r["E"], 4),
                        "" if r["n_opt_rel_err"] is None else f"{r['n_opt_rel_err']:+.1%}",
                        note if len(note) < 90 else note[:87] + "..."))
        return out

    def _caption(self) -> str:
        parts = [f"{self.n_points} runs"]
        if self.holdout in ("top", "both"):
            parts.append(("held out: the top budget " if self.threshold is None else
                          f"held out: C > {self.threshold:.3g}, budgets ")
                         + ", ".join(f"{b:.3g}" for b in self.heldout_budgets))
        if self.folds:
            parts.append(f"LOBO over {len(self.folds)} folds (every budget but the smallest)")
        parts.append(f"{round(self.level * 100):g}% prediction intervals from {self.bootstrap} bootstrap resamples "
                     "x in-sample log residuals" if self.bootstrap else "no intervals (bootstrap=0)")
        if any(r["approach"] == 2 for r in self.rows):
            parts.append("metric 'L_opt': approach 2 predicts the held-out budget's optimal loss, not each run's; "
                         "the winner is the best row on the runs themselves")
        return "; ".join(parts)

    def summary(self) -> str:
        lines = ["law comparison: " + self._caption(),
                 render.text_table(self.table_rows(), self._header()),
                 f"winner: {self.describe_winner()}"]
        lines += [f"failed: {r['form']} / {r['objective']}: {r['error']}" for r in self.rows if r["error"]]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        return f"LawComparison({len(self.rows)} rows; winner: {self.describe_winner()})"

    def html_table(self) -> str:
        """The ranked table as HTML (without the figure: see `_repr_html_`)."""
        return render.html_table(f"law comparison; winner: {self.describe_winner()}", self.table_rows(),
                                 self._header(), self._caption())

    def _repr_html_(self) -> str:
        parts = [self.html_table()]
        try:
            import matplotlib.pyplot as plt

            fig = self.plot()
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=110)
            plt.close(fig)
            b64 = base64.b64encode(buf.getvalue()).decode()
            parts.append(f"<img alt='law comparison: the winner against the held-out runs' "
                         f"src='data:image/png;base64,{b64}'>")
        except Exception as err:       # no winner, or nothing to draw: the table still renders
            parts.append(f"<p><small>no figure: {html.escape(str(err))}</small></p>")
        return "\n".join(parts)

    def to_dict(self) -> dict:
        rows = [{k: v for k, v in r.items() if not k.startswith("_")} for r in self.rows]
        wf = self.winner_fit
        return render.jsonable({
            "holdout": self.holdout, "threshold": self.threshold, "heldout_budgets": list(self.heldout_budgets),
            "lobo_folds": list(self.folds), "level": self.level, "bootstrap": self.bootstrap,
            "n_points": self.n_points, "ranked_by": self.score_name,
            "interval_method": "percentiles of bootstrap predictions x exp(in-sample log residual draws, inflated "
                               "by sqrt(n/(n-p)))",
            "rows": rows, "winner": self.describe_winner(),
            "winner_fit": wf.to_dict() if wf is not None and hasattr(wf, "to_dict") else None,
            "notes": self.notes, "seconds": self.seconds})

    # ---------------------------------------------------------------------------------------------- plot
    def plot(self, ax=None):
        """The winner (fitted on the training runs) against the held-out runs it predicts: loss against N per
        held-out budget, its curve along that budget with the prediction band, and its interval at each run.
        For an approach-2 winner: the vertex losses against C and the power law L_opt(C) through them."""
        import matplotlib.pyplot as plt

        w = self.winner
        if w is None:
            raise ValueError("no fitted law to plot: every fit failed")
        if ax is None:
            fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
        else:
            fig = ax.figure
        if w["approach"] == 2:
            return self._plot_approach2(ax, w)
        fit, test_mask, train_mask, resid = self._fits[w["_id"]]
        d = self.data
        test = d.subset(test_mask)
        B = budgets_of(d)
        colors = plt.get_cmap("cividis")(np.linspace(0.1, 0.85, max(len(np.unique(B[test_mask])), 1)))
        rng = np.random.default_rng(0)
        top_train = d.subset(train_mask & (B == np.max(B[train_mask])))
        ax.plot(top_train["N"], top_train.loss, "o", color="0.6", ms=5, mfc="none",
                label=f"largest training budget ({B[train_mask].max():.3g})")
        for col, b in zip(colors, np.unique(B[test_mask])):
            m = B[test_mask] == b
            N, D, L = test["N"][m], test["D"][m], test.loss[m]
            k = float(np.median(N * D))                          # the budget's N * D (D = k / N along it)
            ns = np.geomspace(N.min() / 1.3, N.max() * 1.3, 60)
            inp = {"N": ns, "D": k / ns}
            if "U" in fit.law.inputs:
                inp["U"] = np.full_like(ns, float(np.median(test["U"][m])))
            ax.plot(ns, fit.predict(inp), "-", color=col, lw=1.8,
                    label=f"{w['form']} / {w['objective']}, fitted below, at C = {b:.3g}")
            if fit.samples is not None and len(fit.samples) and resid is not None:
                lo, hi = predictive_interval(fit, inp, resid, self.level, rng)
                ax.fill_between(ns, lo, hi, color=col, alpha=0.18, lw=0,
                                label=f"{round(self.level * 100):g}% prediction band")
            ax.plot(N, L, "o", color="#D55E00", ms=7, mec="white", zorder=4,
                    label="held-out runs (observed)" if b == np.unique(B[test_mask])[0] else None)
        ax.set_xscale("log")
        ax.grid(True, which="both", alpha=0.25)    # loss on a linear axis: a narrow range reads better
        ax.set_xlabel("parameters N")
        ax.set_ylabel("loss")
        err = w[self.score_name]
        ax.set_title(f"winner: {w['form']} / {w['objective']}, held-out mean |error| {err:.2%}", fontsize=10)
        ax.legend(fontsize=7.5, loc="best")
        return fig

    def _plot_approach2(self, ax, w):
        iso, law_c, held = self._fits[w["_id"]]
        Cs = np.geomspace(iso.budgets.min() / 1.5, max(held) * 2, 100)
        ax.plot(iso.budgets, iso.loss_opt, "o", color="#0072B2", ms=7, label="training budgets' vertex losses")
        ax.plot(Cs, law_c.predict(C=Cs), "-", color="#0072B2", lw=1.6, label="L_opt(C) = E + A / C^alpha")
        ax.plot(held, [w["_observed"]], "*", color="#D55E00", ms=13, label="held-out budget's own vertex loss")
        ax.set_xscale("log")
        ax.grid(True, which="both", alpha=0.25)    # loss on a linear axis: a narrow range reads better
        ax.set_xlabel("compute C (FLOPs)")
        ax.set_ylabel("loss at the IsoFLOP optimum")
        ax.set_title(f"winner: {w['form']} (approach 2), |error| {w[self.score_name]:.2%}", fontsize=10)
        ax.legend(fontsize=7.5, loc="best")
        return ax.figure
