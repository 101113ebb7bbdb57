"""The extrapolation check: fit on the points below a compute threshold, predict the rest, report the error.

This is how a user decides whether to trust a law: a law that cannot predict the largest runs from the smaller
ones should not be trusted to predict runs larger still. Errors are relative errors of the predicted loss
((predicted - observed) / observed) and log residuals (log observed - log predicted).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from scalekit.laws import render
from scalekit.laws.data import as_data
from scalekit.laws.errors import TooFewPointsError


@dataclass
class ExtrapolationReport:
    """Errors of a fit made below `threshold` on the held-out points above it."""

    threshold: float
    column: str
    n_fit: int
    n_holdout: int
    observed: np.ndarray
    predicted: np.ndarray
    x: np.ndarray                                 # the held-out points' `column` values
    fit: object = field(repr=False)
    in_sample_rel_error: float = float("nan")     # mean |relative error| on the fitted points

    @property
    def rel_error(self) -> np.ndarray:
        return (self.predicted - self.observed) / self.observed

    @property
    def mean_abs_rel_error(self) -> float:
        return float(np.mean(np.abs(self.rel_error)))

    @property
    def max_abs_rel_error(self) -> float:
        return float(np.max(np.abs(self.rel_error)))

    @property
    def mean_rel_error(self) -> float:
        """Signed: > 0 means the law over-predicts the loss (it is pessimistic) at larger scale."""
        return float(np.mean(self.rel_error))

    @property
    def rmse_log(self) -> float:
        return float(np.sqrt(np.mean((np.log(self.observed) - np.log(self.predicted)) ** 2)))

    def summary(self) -> str:
        return (f"extrapolation check: fitted on {self.n_fit} points with {self.column} <= {self.threshold:.4g}, "
                f"predicted {self.n_holdout} held-out points\n"
                f"  mean |rel. error| {self.mean_abs_rel_error:.3%} (max {self.max_abs_rel_error:.3%}, "
                f"signed mean {self.mean_rel_error:+.3%}), RMSE of log loss {self.rmse_log:.4g}; "
                f"in-sample mean |rel. error| {self.in_sample_rel_error:.3%}")

    def __str__(self) -> str:
        return self.summary()

    def to_dict(self) -> dict:
        return render.jsonable({
            "threshold": self.threshold, "column": self.column, "n_fit": self.n_fit, "n_holdout": self.n_holdout,
            "mean_abs_rel_error": self.mean_abs_rel_error, "max_abs_rel_error": self.max_abs_rel_error,
            "mean_rel_error": self.mean_rel_error, "rmse_log": self.rmse_log,
            "in_sample_mean_abs_rel_error": self.in_sample_rel_error,
            "points": {self.column: self.x, "observed": self.observed, "predicted": self.predicted}})

    def _repr_html_(self) -> str:
        rows = [("points fitted", str(self.n_fit)), ("points held out", str(self.n_holdout)),
                ("mean |rel. error|", f"{self.mean_abs_rel_error:.3%}"),
                ("max |rel. error|", f"{self.max_abs_rel_error:.3%}"), ("RMSE log loss", f"{self.rmse_log:.4g}")]
        return render.html_table(f"extrapolation above {self.column} = {self.threshold:.4g}", rows,
                                 ("quantity", "value"))


def extrapolation_check(data, law: str = "chinchilla", holdout_above: float | None = None, *, column: str = "C",
                        holdout_fraction: float | None = None, **fit_kw) -> ExtrapolationReport:
    """Fit `law` (approach 3) on points with `column` <= holdout_above and report its errors on the others.

    Either give the threshold, or `holdout_fraction` to hold out that fraction of the points with the largest
    `column`. Keyword arguments go to `fit_law` (grid, delta, fixed, options, ...).
    """
    from scalekit.laws.fit import fit_law

    d = as_data(data)
    x = d[column]
    if holdout_above is None:
        if holdout_fraction is None:
            raise ValueError("give holdout_above (a threshold) or holdout_fraction")
        holdout_above = float(np.quantile(x, 1.0 - holdout_fraction))
    lo = x <= holdout_above
    if lo.all() or not lo.any():
        raise TooFewPointsError(f"threshold {holdout_above:g} leaves {int(lo.sum())} points to fit and "
                                f"{int((~lo).sum())} to predict: both must be non-empty")
    fit = fit_law(d.subset(lo), law, **fit_kw)
    held = d.subset(~lo)
    inputs = {k: held[k] for k in fit.law.inputs}
    pred = fit.predict(inputs)
    inside = d.subset(lo)
    pin = fit.predict({k: inside[k] for k in fit.law.inputs})
    return ExtrapolationReport(threshold=float(holdout_above), column=column, n_fit=int(lo.sum()),
                               n_holdout=int((~lo).sum()), observed=held.loss, predicted=pred, x=held[column],
                               fit=fit, in_sample_rel_error=float(np.mean(np.abs(pin - inside.loss) / inside.loss)))
