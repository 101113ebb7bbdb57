"""Learning-rate laws: the optimal learning rate of each model size from its grid, and lr_opt(N) = c N^(-k).

Porian et al. (2024) showed that training every size at one learning rate biases the compute-optimal exponent; a
study tunes the learning rate per size and folds the tuned values into its fits. This module is the pure math of
that step (numpy and scipy only: nothing here knows about sweeps, stores or training):

- `interpolate_lr_opt(lrs, losses)`: the optimum of one size's grid, a parabola in log lr through the best grid point
  and its two neighbours (its vertex lies between them, so it never leaves the grid). A best point at either end of
  the grid cannot be interpolated: it is returned as is and flagged `at_edge` ("widen the grid"), since the true
  optimum may lie beyond it.
- `lr_opt_interval(lrs, losses)`: an interval on one grid's optimum: a least-squares quadratic in log lr over the
  best learning rate and up to two neighbours on each side (every seed's loss a point of its own), its vertex with a
  delta-method interval (Student-t on the residual variance, or a known per-point noise `sigma`).
- `fit_lr_law(N, lr_opt)`: least squares of log lr_opt against log N, i.e. lr_opt = c N^slope with the exponent's
  sign left free (k = -slope, so a positive k means larger models want smaller learning rates), with t-based or
  bootstrap intervals on k, on c and on the predicted lr_opt at any N.

    opt = interpolate_lr_opt([1e-3, 2e-3, 4e-3, 8e-3], [3.10, 3.02, 3.05, 3.20])
    opt.lr_opt, opt.at_edge
    law = fit_lr_law([1e6, 1e7, 1e8], [4e-3, 2.1e-3, 1e-3])
    law.k, law.intervals["k"], law.predict(1e9), law.predict_interval(1e9)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

__all__ = ["LrOptimum", "LrOptInterval", "LrLawFit", "interpolate_lr_opt", "lr_opt_interval", "fit_lr_law"]


@dataclass(frozen=True)
class LrOptimum:
    """The optimal learning rate of one grid.

    lrs, losses: the grid sorted by lr (a non-finite loss: a run that diverged or is missing; it counts as worse than
    any finite one). lr_best, loss_best: the best grid point. lr_opt: the interpolated optimum (lr_best when it
    cannot be interpolated). at_edge: the best point is the smallest or largest lr of the grid (or the grid has one
    lr): the optimum may lie outside, widen the grid. edge: "low", "high" or None. method: "parabola" (three-point
    parabola in log lr), "edge" (best point at an end), "grid" (a neighbour has no finite loss, or the parabola is
    flat: the best grid point is returned).
    """

    lrs: tuple[float, ...]
    losses: tuple[float, ...]
    lr_best: float
    loss_best: float
    lr_opt: float
    loss_opt: float       # the parabola's value at its vertex (loss_best when not interpolated)
    at_edge: bool
    edge: str | None
    method: str

    def to_dict(self) -> dict[str, Any]:
        return {"lrs": list(self.lrs), "losses": [v if math.isfinite(v) else None for v in self.losses],
                "lr_best": self.lr_best, "loss_best": self.loss_best, "lr_opt": self.lr_opt,
                "loss_opt": self.loss_opt, "at_edge": self.at_edge, "edge": self.edge, "method": self.method}


def _checked(lrs: Sequence[float], losses: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """lrs and losses as float arrays; ValueError for mismatched lengths, an empty grid, non-positive or non-finite
    learning rates."""
    x = np.asarray(lrs, np.float64).ravel()
    y = np.asarray(losses, np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"lrs and losses differ in length ({x.size} and {y.size})")
    if x.size == 0:
        raise ValueError("an empty learning-rate grid has no optimum")
    if not (np.all(np.isfinite(x)) and np.all(x > 0)):
        raise ValueError(f"learning rates must be positive and finite, got {x.tolist()}")
    return x, y


def _grid(lrs: Sequence[float], losses: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x, y = _checked(lrs, losses)
    if len(np.unique(x)) != x.size:
        raise ValueError(f"learning rates repeat in the grid {x.tolist()}: average repeated runs (seeds) first")
    order = np.argsort(x)
    return x[order], y[order]


def interpolate_lr_opt(lrs: Sequence[float], losses: Sequence[float]) -> LrOptimum:
    """The optimal learning rate of one grid: a parabola in log lr through the best point and its neighbours.

    With u = log lr, the parabola through (u_{i-1}, y_{i-1}), (u_i, y_i), (u_{i+1}, y_{i+1}) around the lowest finite
    loss y_i has its vertex between u_{i-1} and u_{i+1} (the middle point is the lowest of the three), so lr_opt stays
    inside the grid. A best point at the smallest or largest lr is returned as is with `at_edge` set. Raises
    ValueError for an empty grid, non-positive, non-finite or repeated lrs, or no finite loss at all.
    """
    x, y = _grid(lrs, losses)
    finite = np.isfinite(y)
    if not finite.any():
        raise ValueError(f"no finite loss on the learning-rate grid {x.tolist()}")
    i = int(np.argmin(np.where(finite, y, np.inf)))
    lr_best, loss_best = float(x[i]), float(y[i])
    base = dict(lrs=tuple(map(float, x)), losses=tuple(map(float, y)), lr_best=lr_best, loss_best=loss_best)
    if i == 0 or i == x.size - 1:
        edge = "low" if i == 0 else "high"
        if x.size == 1:
            edge = "low and high"
        return LrOptimum(**base, lr_opt=lr_best, loss_opt=loss_best, at_edge=True, edge=edge, method="edge")
    if not (finite[i - 1] and finite[i + 1]):
        return LrOptimum(**base, lr_opt=lr_best, loss_opt=loss_best, at_edge=False, edge=None, method="grid")
    u = np.log(x[i - 1:i + 2])
    v = y[i - 1:i + 2]
    # Lagrange form: curvature and slope of the parabola through the three points
    d1 = (v[1] - v[0]) / (u[1] - u[0])
    d2 = (v[2] - v[1]) / (u[2] - u[1])
    a = (d2 - d1) / (u[2] - u[0])              # y = a (u - u0)(u - u1) + d1 (u - u0) + v0
    if not a > 0:                              # three equal losses: a flat parabola has no vertex
        return LrOptimum(**base, lr_opt=lr_best, loss_opt=loss_best, at_edge=False, edge=None, method="grid")
    u_opt = 0.5 * (u[0] + u[1]) - d1 / (2.0 * a)
    u_opt = float(np.clip(u_opt, np.log(x[0]), np.log(x[-1])))
    loss_opt = float(a * (u_opt - u[0]) * (u_opt - u[1]) + d1 * (u_opt - u[0]) + v[0])
    return LrOptimum(**base, lr_opt=float(np.exp(u_opt)), loss_opt=loss_opt, at_edge=False, edge=None,
                     method="parabola")


@dataclass(frozen=True)
class LrOptInterval:
    """The optimum of one learning-rate grid from a least-squares quadratic in log lr, with an interval.

    lr_opt: exp of the quadratic's vertex (lr_best where there is none). lo, hi: the interval on lr_opt at `level`
    (nan where there is none: fewer than three learning rates in the window, a quadratic that is not convex, or no
    residual degrees of freedom and no `sigma`). se_log: the delta-method standard error of log lr_opt. window: the
    learning rates fitted. n_points: the losses fitted (one per seed). curvature: d^2 loss / d(log lr)^2 / 2.
    method: "delta-t" (t on the residual variance, n_points - 3 degrees of freedom), "delta-z" (known sigma) or
    "none". at_edge: the best learning rate is the smallest or largest of the grid. note: why there is no interval,
    or a warning (vertex outside the window).
    """

    lr_opt: float
    lo: float
    hi: float
    level: float
    se_log: float
    lr_best: float
    window: tuple[float, ...]
    n_points: int
    curvature: float
    method: str
    at_edge: bool
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        def f(x: float) -> float | None:
            return x if math.isfinite(x) else None
        return {"lr_opt": self.lr_opt, "lo": f(self.lo), "hi": f(self.hi), "level": self.level,
                "se_log": f(self.se_log), "lr_best": self.lr_best, "window": list(self.window),
                "n_points": self.n_points, "curvature": f(self.curvature), "method": self.method,
                "at_edge": self.at_edge, "note": self.note}


def lr_opt_interval(lrs: Sequence[float], losses: Sequence[float], *, neighbours: int = 2, level: float = 0.95,
                    sigma: float | None = None) -> LrOptInterval:
    """The optimum of one grid with an interval: least squares of loss on (1, u, u^2), u = log lr, over a window.

    `lrs` and `losses` are parallel (an lr may repeat: one point per seed). The best learning rate is the one with
    the lowest mean loss (a non-finite loss, a diverged run, makes its learning rate's mean infinite); the window is
    it and up to `neighbours` grid learning rates on each side, less those with a non-finite mean. With coefficients
    (c0, c1, c2) the vertex is u* = -c1 / (2 c2) and, by the delta method, Var u* = g' Cov g with
    g = (0, -1 / (2 c2), c1 / (2 c2^2)) and Cov = s^2 (X'X)^-1; s^2 is the residual variance RSS / (n - 3) (interval
    u* +- t_{n-3} se) unless `sigma`, a known noise sd of each loss, is given (then s = sigma and a normal quantile).
    The interval is exp of that on log lr. Raises ValueError on mismatched lengths, an empty grid, non-positive or
    non-finite lrs, no finite loss, neighbours < 1 or a level outside (0, 1).
    """
    x, y = _checked(lrs, losses)
    if isinstance(neighbours, bool) or int(neighbours) != neighbours or neighbours < 1:
        raise ValueError(f"neighbours must be a whole number >= 1, got {neighbours!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if sigma is not None and not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a positive finite noise sd, got {sigma!r}")
    y = np.where(np.isnan(y), np.inf, y)
    grid = np.unique(x)
    means = np.array([np.mean(y[x == g]) if np.all(np.isfinite(y[x == g])) else np.inf for g in grid])
    if not np.isfinite(means).any():
        raise ValueError(f"no finite loss on the learning-rate grid {grid.tolist()}")
    i = int(np.argmin(means))
    lr_best = float(grid[i])
    at_edge = i == 0 or i == grid.size - 1
    idx = [j for j in range(max(0, i - int(neighbours)), min(grid.size, i + int(neighbours) + 1))
           if np.isfinite(means[j])]
    window = grid[idx]
    nan = float("nan")
    base = dict(level=float(level), lr_best=lr_best, window=tuple(map(float, window)), at_edge=bool(at_edge))
    keep = np.isin(x, window)
    u, v = np.log(x[keep]), y[keep]
    n = int(u.size)
    if window.size < 3:
        return LrOptInterval(lr_opt=lr_best, lo=nan, hi=nan, se_log=nan, n_points=n, curvature=nan, method="none",
                             note="fewer than three learning rates with finite losses around the best", **base)
    ub = float(u.mean())
    X = np.stack([np.ones_like(u), u - ub, (u - ub) ** 2], axis=1)
    coef, *_ = np.linalg.lstsq(X, v, rcond=None)
    c0, c1, c2 = map(float, coef)
    if not c2 > 0:
        return LrOptInterval(lr_opt=lr_best, lo=nan, hi=nan, se_log=nan, n_points=n, curvature=c2, method="none",
                             note="the fitted quadratic is not convex: no vertex", **base)
    u_opt = ub - c1 / (2.0 * c2)
    note = ""
    if not np.log(window[0]) <= u_opt <= np.log(window[-1]):
        note = "the vertex lies outside the fitted window"
    if at_edge:
        note = (note + "; " if note else "") + "best lr at the edge of the grid: widen the grid"
    dof = n - 3
    if sigma is not None:
        s2, method = float(sigma) ** 2, "delta-z"
        from scipy.stats import norm

        q = float(norm.ppf(0.5 + level / 2.0))
    elif dof > 0:
        resid = v - X @ coef
        s2, method = float(resid @ resid) / dof, "delta-t"
        from scipy.stats import t as student_t

        q = float(student_t.ppf(0.5 + level / 2.0, dof))
    else:
        note = (note + "; " if note else "") + "an exact fit (no residual degrees of freedom): no interval"
        return LrOptInterval(lr_opt=float(np.exp(u_opt)), lo=nan, hi=nan, se_log=nan, n_points=n, curvature=c2,
                             method="none", note=note, **base)
    cov = s2 * np.linalg.inv(X.T @ X)
    g = np.array([0.0, -1.0 / (2.0 * c2), c1 / (2.0 * c2 ** 2)])
    se = float(math.sqrt(max(float(g @ cov @ g), 0.0)))
    return LrOptInterval(lr_opt=float(np.exp(u_opt)), lo=float(np.exp(u_opt - q * se)),
                         hi=float(np.exp(u_opt + q * se)), se_log=se, n_points=n, curvature=c2, method=method,
                         note=note, **base)


@dataclass(repr=False)
class LrLawFit:
    """lr_opt(N) = c N^(-k), fitted by least squares on log lr_opt = log c - k log N.

    N, lr_opt: the points fitted. intervals: {"k": (lo, hi), "c": (lo, hi)} at `level` ("t": Student-t on the
    least-squares standard errors, n - 2 degrees of freedom; "bootstrap": percentiles of refits on resampled points);
    empty with two points (an exact fit says nothing about its error). residual_sd: the standard deviation of the
    log residuals (n - 2 in the denominator; 0 with two points).
    """

    c: float
    k: float
    N: np.ndarray
    lr_opt: np.ndarray
    level: float = 0.95
    method: str = "t"
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    residual_sd: float = 0.0
    samples: np.ndarray | None = None      # bootstrap: (B, 2) rows of (log c, slope)
    notes: list[str] = field(default_factory=list)
    _cov: np.ndarray | None = None         # covariance of (log c, slope) around mean log N (t method)
    _xbar: float = 0.0

    @property
    def slope(self) -> float:
        """d log lr_opt / d log N = -k."""
        return -self.k

    @property
    def n_points(self) -> int:
        return int(self.N.size)

    def predict(self, N: float | np.ndarray) -> np.ndarray | float:
        """lr_opt at N under the fitted law."""
        out = self.c * np.asarray(N, np.float64) ** (-self.k)
        return float(out) if np.ndim(out) == 0 else out

    def predict_interval(self, N: float | np.ndarray, kind: str = "mean") -> tuple[Any, Any]:
        """(lo, hi) of lr_opt at N at `level`: kind "mean" for the law's own uncertainty (a confidence interval of
        the fitted line), "new" to add the scatter of a new size about it (t method only). (nan, nan) without
        an interval (two points)."""
        if kind not in ("mean", "new"):
            raise ValueError(f"kind must be 'mean' or 'new', not {kind!r}")
        x = np.log(np.asarray(N, np.float64))
        scalar = np.ndim(x) == 0
        x = np.atleast_1d(x)
        if self.method == "bootstrap" and self.samples is not None and len(self.samples):
            P = self.samples[:, 0][:, None] + self.samples[:, 1][:, None] * x[None, :]
            if kind == "new":
                P = P + self.residual_sd * np.random.default_rng(0).standard_normal(P.shape)
            q = (1.0 - self.level) / 2.0
            lo, hi = np.exp(np.quantile(P, q, axis=0)), np.exp(np.quantile(P, 1.0 - q, axis=0))
        elif self._cov is not None and self.n_points > 2:
            from scipy.stats import t as student_t

            tq = float(student_t.ppf(0.5 + self.level / 2.0, self.n_points - 2))
            dx = x - self._xbar
            var = self._cov[0, 0] + dx ** 2 * self._cov[1, 1]
            if kind == "new":
                var = var + self.residual_sd ** 2
            centre = np.log(self.c) - self.k * x
            half = tq * np.sqrt(var)
            lo, hi = np.exp(centre - half), np.exp(centre + half)
        else:
            lo = hi = np.full(x.shape, np.nan)
        return (float(lo[0]), float(hi[0])) if scalar else (lo, hi)

    def formula(self) -> str:
        return f"lr_opt(N) = {self.c:.4g} * N^(-{self.k:.4g})" if self.k >= 0 else \
            f"lr_opt(N) = {self.c:.4g} * N^({-self.k:.4g})"

    def summary(self) -> str:
        iv = self.intervals.get("k")
        ivs = f" [{iv[0]:.4g}, {iv[1]:.4g}] ({round(self.level * 100):g}%, {self.method})" if iv else \
            " (no interval: two points)"
        return (f"{self.formula()}: k = {self.k:.4g}{ivs}, from {self.n_points} points over N = "
                f"{self.N.min():.3g}..{self.N.max():.3g}; log residual sd {self.residual_sd:.3g}")

    def to_dict(self) -> dict[str, Any]:
        return {"formula": "lr_opt(N) = c * N^(-k)", "c": self.c, "k": self.k, "slope": self.slope,
                "intervals": {k: list(v) for k, v in self.intervals.items()}, "level": self.level,
                "method": self.method, "residual_sd": self.residual_sd, "n_points": self.n_points,
                "N": self.N.tolist(), "lr_opt": self.lr_opt.tolist(), "notes": list(self.notes)}

    def __repr__(self) -> str:
        return f"LrLawFit({self.summary()})"


def _ols(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(intercept, slope) of y on x."""
    xb = x.mean()
    sxx = float(np.sum((x - xb) ** 2))
    slope = float(np.sum((x - xb) * (y - y.mean())) / sxx)
    return float(y.mean() - slope * xb), slope


def fit_lr_law(N: Sequence[float], lr_opt: Sequence[float], *, level: float = 0.95, bootstrap: int = 0,
               seed: int = 0) -> LrLawFit:
    """Fit lr_opt(N) = c N^(-k) by least squares of log lr_opt on log N (the exponent's sign is free).

    Intervals on k, c and predictions at `level`: Student-t on the standard errors (n - 2 degrees of freedom) when
    `bootstrap` is 0, else percentiles of `bootstrap` refits on points drawn with replacement (draws with fewer
    than two distinct N are skipped). Needs two or more distinct positive N and positive finite lr_opt (raises
    ValueError otherwise); with exactly two points there is no interval.
    """
    n_arr = np.asarray(N, np.float64).ravel()
    l_arr = np.asarray(lr_opt, np.float64).ravel()
    if n_arr.shape != l_arr.shape:
        raise ValueError(f"N and lr_opt differ in length ({n_arr.size} and {l_arr.size})")
    if not (np.all(np.isfinite(n_arr)) and np.all(n_arr > 0) and np.all(np.isfinite(l_arr)) and np.all(l_arr > 0)):
        raise ValueError("N and lr_opt must be positive and finite")
    if len(np.unique(n_arr)) < 2:
        raise ValueError(f"a learning-rate law needs two or more model sizes, got {len(np.unique(n_arr))}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    x, y = np.log(n_arr), np.log(l_arr)
    b0, b1 = _ols(x, y)
    n = x.size
    resid = y - (b0 + b1 * x)
    sd = float(np.sqrt(np.sum(resid ** 2) / (n - 2))) if n > 2 else 0.0
    xb = float(x.mean())
    sxx = float(np.sum((x - xb) ** 2))
    fit = LrLawFit(c=float(np.exp(b0)), k=-b1, N=n_arr, lr_opt=l_arr, level=level, residual_sd=sd, _xbar=xb)
    if n <= 2:
        fit.notes.append("two points: an exact fit, no interval")
        return fit
    # covariance of (mean of y at xbar, slope): independent; Var(a_xbar) = s^2/n, Var(slope) = s^2/Sxx
    fit._cov = np.array([[sd ** 2 / n, 0.0], [0.0, sd ** 2 / sxx]])
    if bootstrap:
        rng = np.random.default_rng(seed)
        rows = []
        for _ in range(bootstrap):
            idx = rng.integers(0, n, n)
            if len(np.unique(x[idx])) < 2:
                continue
            rows.append(_ols(x[idx], y[idx]))
        S = np.array(rows, np.float64).reshape(-1, 2)
        q = (1.0 - level) / 2.0
        fit.method, fit.samples = "bootstrap", S
        k_lo, k_hi = np.quantile(-S[:, 1], [q, 1.0 - q])
        c_lo, c_hi = np.quantile(np.exp(S[:, 0]), [q, 1.0 - q])
        fit.intervals = {"k": (float(k_lo), float(k_hi)), "c": (float(c_lo), float(c_hi))}
        fit.notes.append(f"bootstrap: {len(rows)}/{bootstrap} resamples of the points usable")
        return fit
    from scipy.stats import t as student_t

    tq = float(student_t.ppf(0.5 + level / 2.0, n - 2))
    se_slope = sd / math.sqrt(sxx)
    se_b0 = sd * math.sqrt(1.0 / n + xb ** 2 / sxx)
    fit.intervals = {"k": (fit.k - tq * se_slope, fit.k + tq * se_slope),
                     "c": (float(np.exp(b0 - tq * se_b0)), float(np.exp(b0 + tq * se_b0)))}
    return fit
