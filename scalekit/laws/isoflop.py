"""Approaches 1 and 2 of Hoffmann et al. (2022): compute-optimal N and D straight from the runs, no loss law.

Approach 2 (IsoFLOP profiles): per compute budget, the minimum of loss in log N (or log D) is N_opt (D_opt) for
that budget; then power laws N_opt = k_N C^a and D_opt = k_D C^b by least squares in log-log. The minimum is
Hoffmann et al.'s parabola vertex (optimum="parabola") or, by default, a local fit around the lowest loss that
stays unbiased on wide, off-centre grids (optimum="robust"; see fit_isoflop and scalekit.laws.optimum).
`isoflop_bias` measures how biased approach 2 is on a given grid, on a known surface.
Approach 1 (training-curve envelope): for each FLOP count, the lowest loss any run reaches there and the N of
that run; then the same power laws over the envelope.

Convention: D = C / (6 N) whenever D is derived (the fit with by="N" reports D_opt = C / (6 N_opt), so b = 1 - a).
Logs are natural logs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from scalekit.laws import render
from scalekit.laws.allocate import Allocation
from scalekit.laws.data import ScalingData, as_data
from scalekit.laws.errors import (DroppedPointsWarning, InvalidDataError, NotConvergedWarning,  # noqa: F401
                                  ParabolaOpensDownwardWarning, TooFewPointsError, VertexOutsideRangeWarning)
from scalekit.laws.optimum import (check_settings, floored_se, local_optima, optimum_se, parabola_optima,
                                   resampled_optima, resampled_vertices, weighted_parabola)

# The IsoFLOP budgets of Chinchilla (Hoffmann et al. 2022, Fig. 3), FLOPs.
CHINCHILLA_BUDGETS = (6e18, 1e19, 3e19, 6e19, 1e20, 3e20, 6e20, 1e21, 3e21)


@dataclass
class AllocationFit:
    """Power laws N_opt = k_N C^a, D_opt = k_D C^b fitted on per-budget optima (approach 1 or 2)."""

    approach: int
    params: dict[str, float]                 # a, k_N, b, k_D
    budgets: np.ndarray                      # C of each optimum used
    n_opt: np.ndarray
    d_opt: np.ndarray
    loss_opt: np.ndarray
    objective: float                         # residual sum of squares of the log N_opt (or log D_opt) fit
                                             # (unweighted, also when the fit is weighted)
    by: str = "N"
    flops_per_param_token: float = 6.0
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    samples: np.ndarray | None = field(default=None, repr=False)   # bootstrap rows (a, log k_N, b, log k_D)
    level: float | None = None
    notes: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict, repr=False)
    opt_se: np.ndarray | None = None         # approach 2: standard error of each optimum's log N_opt (log D_opt)
    diagnostics: list = field(default_factory=list)      # scalekit.laws.diagnostics.Diagnostic

    @property
    def exponents(self) -> dict[str, float]:
        return {"a": self.params["a"], "b": self.params["b"]}

    def predict(self, C) -> dict[str, np.ndarray]:
        """N_opt and D_opt at budget(s) C from the fitted power laws."""
        C = np.asarray(C, np.float64)
        p = self.params
        return {"N_opt": p["k_N"] * C ** p["a"], "D_opt": p["k_D"] * C ** p["b"]}

    def compute_optimal(self, C) -> Allocation:
        p = self.predict(C)
        n, d = p["N_opt"], p["D_opt"]
        scalar = np.ndim(C) == 0
        al = Allocation(C=C, N_opt=float(n) if scalar else n, D_opt=float(d) if scalar else d,
                        tokens_per_param=float(d / n) if scalar else d / n,
                        convention=f"C = {self.flops_per_param_token:g} N D")
        if self.samples is not None:
            lo = (1 - self.level) / 2
            Cs = np.asarray(C, np.float64)
            ns = np.exp(self.samples[:, 1][:, None]) * np.atleast_1d(Cs)[None, :] ** self.samples[:, 0][:, None]
            ds = np.exp(self.samples[:, 3][:, None]) * np.atleast_1d(Cs)[None, :] ** self.samples[:, 2][:, None]
            for name, arr in (("N_opt", ns), ("D_opt", ds), ("tokens_per_param", ds / ns)):
                q = np.nanquantile(arr, lo, axis=0), np.nanquantile(arr, 1 - lo, axis=0)
                al.intervals[name] = (float(q[0][0]), float(q[1][0])) if scalar else q
        return al

    def summary(self) -> str:
        method = self.details.get("optimum", "parabola")
        name = {1: "approach 1 (training-curve envelope)",
                2: "approach 2 (IsoFLOP " + ("parabolas)" if method == "parabola" else f"optima: {method})")
                }[self.approach]
        lines = [f"{name}: N_opt = k_N C^a, D_opt = k_D C^b  [C = {self.flops_per_param_token:g} N D]",
                 f"optima used: {len(self.budgets)}, residual SS of log {self.by}_opt: {self.objective:.4g}"]
        head = render.header(self.level, bool(self.intervals))
        lines.append(render.text_table(render.param_rows(self.params, self.intervals), head))
        if self.approach == 2:
            se = self.opt_se if self.opt_se is not None else np.full(len(self.budgets), np.nan)
            rows = [(render.fmt(c), render.fmt(n), render.fmt(d), render.fmt(l), render.fmt(e))
                    for c, n, d, l, e in zip(self.budgets, self.n_opt, self.d_opt, self.loss_opt, se)]
            lines.append(render.text_table(rows, ("C", "N_opt", "D_opt", "loss at optimum",
                                                  f"se of log {self.by}_opt")))
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def to_dict(self) -> dict:
        return render.jsonable({
            "approach": self.approach, "params": self.params, "exponents": self.exponents,
            "intervals": {k: list(v) for k, v in self.intervals.items()}, "level": self.level,
            "objective": self.objective, "by": self.by,
            "optima": {"C": self.budgets, "N_opt": self.n_opt, "D_opt": self.d_opt, "loss": self.loss_opt,
                       "log_opt_se": self.opt_se},
            "optimum": self.details.get("optimum") if self.approach == 2 else None,
            "diagnostics": [d.to_dict() for d in self.diagnostics], "notes": self.notes})

    def _repr_html_(self) -> str:
        head = render.header(self.level, bool(self.intervals))
        return render.html_table(f"approach {self.approach}: N_opt = k_N C^a, D_opt = k_D C^b",
                                 render.param_rows(self.params, self.intervals), head,
                                 f"{len(self.budgets)} optima; residual SS {self.objective:.4g}")


def _loglog_fit(C: np.ndarray, Y: np.ndarray, w: np.ndarray | None = None) -> tuple[float, float, float]:
    """Least squares log Y = log k + s log C (optionally weighted); returns (s, log k, residual SS)."""
    x, y = np.log(C), np.log(Y)
    w = np.ones_like(x) if w is None else w
    X = np.stack([np.ones_like(x), x], 1)
    coef = np.linalg.solve(X.T @ (w[:, None] * X), X.T @ (w * y))
    res = y - X @ coef
    return float(coef[1]), float(coef[0]), float(np.sum(w * res * res))


def _power_params(s: float, logk: float, by: str, f: float) -> dict[str, float]:
    """a, k_N, b, k_D from the fitted quantity, the other derived through D = C / (f N)."""
    if by == "N":
        return {"a": s, "k_N": float(np.exp(logk)), "b": 1.0 - s, "k_D": float(np.exp(-logk) / f)}
    return {"a": 1.0 - s, "k_N": float(np.exp(-logk) / f), "b": s, "k_D": float(np.exp(logk))}


# ------------------------------------------------------------------------------------------------ approach 2


def group_budgets(C: np.ndarray, budgets=None, max_log10_distance: float | None = None,
                  gap_log10: float = 0.05) -> np.ndarray:
    """Budget of each point: snapped to the nearest of `budgets` in log10 (NaN beyond `max_log10_distance`
    when one is given), or,
    without budgets, clusters of C values whose sorted log10 values are less than `gap_log10` apart (the
    cluster's geometric mean)."""
    lc = np.log10(np.asarray(C, np.float64))
    if budgets is not None:
        lb = np.log10(np.asarray(budgets, np.float64))
        dist = np.abs(lc[:, None] - lb[None, :])
        j = np.argmin(dist, axis=1)
        out = np.asarray(budgets, np.float64)[j]
        if max_log10_distance is not None:
            out[dist[np.arange(len(lc)), j] > max_log10_distance] = np.nan
        return out
    order = np.argsort(lc)
    out = np.empty_like(lc)
    start = 0
    for i in range(1, len(lc) + 1):
        if i == len(lc) or lc[order[i]] - lc[order[i - 1]] >= gap_log10:
            idx = order[start:i]
            out[idx] = 10 ** lc[idx].mean()
            start = i
    return out


def budgets_of(data) -> np.ndarray:
    """The budget of each run: the `budget` column when there is one, else clusters of C (`group_budgets`)."""
    return np.asarray(data["budget"] if data.has("budget") else group_budgets(data["C"]), np.float64)


_weighted_parabola = weighted_parabola          # the old private name


def fit_isoflop(data, *, by: str = "N", budgets=None, max_log10_distance: float | None = None, min_points: int = 3,
                bootstrap: int = 0, seed: int = 0, level: float = 0.95, flops_per_param_token: float = 6.0,
                optimum: str = "robust", window: int = 9, degree: int = 4, se_resamples: int = 200
                ) -> AllocationFit:
    """Approach 2. Points are grouped by a `budget` column when the data have one, else snapped to `budgets`
    (e.g. CHINCHILLA_BUDGETS), else clustered by C. Each budget needs `min_points` points; at least two budgets
    must remain. Bootstrap resamples points within each budget (the weights of a robust fit stay fixed).

    `optimum` says how each budget's optimum is found (scalekit.laws.optimum):

    - "robust" (default): the minimum of a degree-`degree` polynomial in log N (log D) fitted by least squares
      over the `window` distinct sizes nearest the budget's lowest loss (fewer on a budget with fewer sizes; the
      degree is lowered to the number of sizes used - 3, never below 2, so window=5 is a parabola over 5 sizes).
      Budgets whose lowest loss is at their smallest or largest size, or whose local fit has no minimum among its
      sizes, are dropped (VertexOutsideRangeWarning, ParabolaOpensDownwardWarning). Each optimum's standard
      error of log x_opt is estimated from `se_resamples` resamples of the budget's points, and log x_opt is fitted
      on log C by weighted least squares with weights 1/se^2 (se floored at max(1e-4, 0.1 x the median se), so no
      budget takes all the weight).
    - "akima": the minimum of Akima's spline through the points, next to the lowest point; dropped and weighted
      as "robust". No smoothing.
    - "parabola": Hoffmann et al.'s method as published: one parabola over all of a budget's points, vertices
      outside the sampled range kept (with a VertexOutsideRangeWarning), ordinary least squares. Use it to
      reproduce published numbers.

    Why the default: an IsoFLOP profile is skewed in log N whenever alpha != beta, and a parabola over a wide
    grid puts its vertex on the long side. Noise-free Chinchilla surface, alpha 0.465, beta 0.155, 5 budgets
    1e18-1e22, +-16x grids of 9/11/13/15 sizes centred on, 3x above, 3x below or drifting across the optimum;
    worst error of N_opt extrapolated to 1e24: one parabola 27-30%; a parabola over the 5 nearest sizes 2.8-8.4%,
    over 3 sizes 0.8-2.5%; Akima 1.3-3.3%; a cubic over 7 sizes 0.2-3.1%; the quartic over 9 sizes 0.12-0.5%
    (1.3% with only 9 sizes, where its window is the whole grid). With 0.1/0.3/1% noise on the loss its RMS
    error of log N_opt at 1e24 is 0.02/0.08/0.21, within about 1.2x of the best window tried and 1.4-14x below the
    one parabola's (0.28-0.30, nearly all bias); a quartic over 7 sizes is less biased but noisier, one over 11
    sizes the reverse. Under heavy noise (digitised points, several percent) one parabola can be the less noisy
    choice.

    The standard errors are in `opt_se` (and `details["log_opt_se"]`) for every method; `details` also holds the
    weights, the budgets dropped (`dropped`, and `dropped_reasons`) and the settings (to rerun, e.g. in
    `isoflop_bias`).
    """
    if by not in ("N", "D"):
        raise ValueError("by must be 'N' or 'D'")
    check_settings(optimum, window, degree, se_resamples)
    d = as_data(data)
    for col in (by, "C", "loss"):
        d[col]
    C, X, L = d["C"], d[by], d.loss
    notes = list(d.notes)
    if d.has("budget"):
        B = d["budget"]
        notes.append("grouped by the budget column")
    else:
        B = group_budgets(C, budgets, max_log10_distance)
        if budgets is not None:
            far = np.isnan(B)
            if far.any():
                warnings.warn(f"{int(far.sum())} point(s) farther than {max_log10_distance} dex from every budget "
                              "were dropped", DroppedPointsWarning, stacklevel=2)
            notes.append(f"snapped to the nearest of {len(budgets)} budgets"
                         + (f" (within {max_log10_distance} dex; {int(far.sum())} points dropped)"
                            if max_log10_distance is not None else ""))
    groups = [b for b in np.unique(B[np.isfinite(B)])]
    if len(groups) < 2:
        raise InvalidDataError(f"approach 2 needs at least two compute budgets; the data have {len(groups)}")
    if optimum == "parabola":
        kept, opts, dropped = parabola_optima(groups, B, X, L, by, min_points)
        notes.append("optimum: one parabola per budget over all its points (vertices outside the sampled range "
                     f"kept: {len(dropped['outside_kept'])})")
    else:
        kept, opts, dropped = local_optima(groups, B, X, L, by, min_points, optimum, window, degree)
        notes.append(f"optimum: {optimum}" + (f" (degree-{degree} polynomial over the {window} sizes nearest the "
                                              "lowest loss)" if optimum == "robust" else " spline"))
        if dropped["outside"]:
            notes.append(f"{len(dropped['outside'])} budget(s) dropped: optimum outside the sampled sizes (C = "
                         + ", ".join(f"{b:.3g}" for b in dropped["outside"]) + ")")
    if len(kept) < 2:
        raise InvalidDataError(f"only {len(kept)} budget(s) left with a usable optimum; approach 2 needs two")
    Cb = np.array([k[0] for k in kept])
    opt = np.array([p[0] for p in opts])
    loss_opt = np.array([p[1] for p in opts])
    se = optimum_se(kept, X, L, optimum, window, degree, se_resamples, seed)
    w, floor = None, float("nan")
    if optimum != "parabola" and se_resamples:
        se_used, floor = floored_se(se)
        w = 1.0 / se_used ** 2
    s, logk, chi2 = _loglog_fit(Cb, opt, w)
    rss = float(np.sum((np.log(opt) - logk - s * np.log(Cb)) ** 2))
    if w is not None:
        notes.append(f"log {by}_opt fitted on log C with weights 1/se^2 (se from {se_resamples} resamples per "
                     f"budget, floored at {floor:.3g})")
    f = flops_per_param_token
    other = Cb / (f * opt)
    n_opt, d_opt = (opt, other) if by == "N" else (other, opt)
    fit = AllocationFit(approach=2, params=_power_params(s, logk, by, f), budgets=Cb, n_opt=n_opt, d_opt=d_opt,
                        loss_opt=loss_opt, objective=rss, by=by, flops_per_param_token=f, notes=notes, opt_se=se,
                        details={"optimum": optimum, "window": window, "degree": degree, "log_opt_se": se,
                                 "weights": w, "se_floor": floor, "weighted_ss": chi2,
                                 "dropped": sorted(b for k, v in dropped.items() if k != "outside_kept" for b in v),
                                 "dropped_reasons": {k: v for k, v in dropped.items() if k != "outside_kept"},
                                 "outside_kept": dropped.get("outside_kept", []),
                                 "settings": {"optimum": optimum, "window": window, "degree": degree,
                                              "se_resamples": se_resamples, "min_points": min_points,
                                              "budgets": budgets, "max_log10_distance": max_log10_distance,
                                              "seed": seed}})
    if bootstrap:
        _bootstrap_isoflop(fit, kept, X, L, bootstrap, seed, level, optimum, window, degree, w)
    return fit


def _bootstrap_isoflop(fit: AllocationFit, kept, X, L, R: int, seed: int, level: float, optimum: str = "parabola",
                       window: int = 9, degree: int = 4, w: np.ndarray | None = None) -> None:
    rng = np.random.default_rng(seed)
    verts = []
    for b, m, xc in kept:
        if optimum == "parabola":
            verts.append(resampled_vertices(np.log(X[m]), L[m], xc, R, rng))
        else:
            verts.append(np.exp(resampled_optima(np.log(X[m]), L[m], optimum, window, degree, R, rng)))
    V = np.stack(verts, 1)                                             # (R, budgets)
    Cb = fit.budgets
    rows = []
    for r in range(R):
        ok = np.isfinite(V[r])
        if ok.sum() < 2:
            continue
        s, logk, _ = _loglog_fit(Cb[ok], V[r, ok], None if w is None else w[ok])
        p = _power_params(s, logk, fit.by, fit.flops_per_param_token)
        rows.append((p["a"], np.log(p["k_N"]), p["b"], np.log(p["k_D"])))
    fit.notes.append(f"bootstrap: {len(rows)}/{R} resamples usable (points resampled within each budget)")
    if len(rows) < max(10, R // 2):
        warnings.warn(f"only {len(rows)}/{R} approach-2 bootstrap resamples gave two or more usable optima"
                      + ("; no intervals" if len(rows) < 10 else ""), NotConvergedWarning, stacklevel=3)
        if len(rows) < 10:
            return
    S = np.array(rows)
    fit.samples, fit.level = S, level
    fit.intervals = {"a": render.percentile_interval(S[:, 0], level),
                     "k_N": render.percentile_interval(np.exp(S[:, 1]), level),
                     "b": render.percentile_interval(S[:, 2], level),
                     "k_D": render.percentile_interval(np.exp(S[:, 3]), level)}


def isoflop_bias(data, loss_fn, *, by: str = "N", flops_per_param_token: float = 6.0, **fit_isoflop_kwargs) -> dict:
    """How biased approach 2 is on this grid: the same fit on a known surface.

    `loss_fn(N, D)` (vectorised numpy) is evaluated, noise-free, at exactly the data's (N, D) points, grouped into
    the data's budgets as `fit_isoflop` groups them; approach 2 is fitted to it with the same settings
    (`fit_isoflop_kwargs`, e.g. optimum="parabola"). The truth: loss_fn minimised numerically along each budget's
    IsoFLOP line C = f N D (allocate.numeric_optimal), a power law through those optima over the budgets the fit
    kept. Returns a_fit, a_true, a_bias = a_fit - a_true, N_opt of both power laws at the largest budget kept and
    their ratio (fit / true), the budgets and the fit itself.
    """
    from scalekit.laws.allocate import numeric_optimal

    d = as_data(data)
    cols = {"N": d["N"], "D": d["D"], "C": d["C"], "loss": np.asarray(loss_fn(d["N"], d["D"]), np.float64)}
    if d.has("budget"):
        cols["budget"] = d["budget"]
    sim = ScalingData.from_arrays(**cols)
    fit = fit_isoflop(sim, by=by, flops_per_param_token=flops_per_param_token, **fit_isoflop_kwargs)
    n_true, _ = numeric_optimal(loss_fn, fit.budgets, flops_per_param_token=flops_per_param_token)
    a_true, logk, _ = _loglog_fit(fit.budgets, np.atleast_1d(n_true))
    c_max = float(fit.budgets.max())
    n_fit_max = float(fit.predict(c_max)["N_opt"])
    n_true_max = float(np.exp(logk) * c_max ** a_true)
    return {"a_fit": fit.params["a"], "a_true": a_true, "a_bias": fit.params["a"] - a_true,
            "n_opt_fit_at_max_budget": n_fit_max, "n_opt_true_at_max_budget": n_true_max,
            "n_opt_ratio_at_max_budget": n_fit_max / n_true_max, "max_budget": c_max,
            "budgets": fit.budgets, "optimum": fit.details["optimum"], "fit": fit}


# ------------------------------------------------------------------------------------------------ approach 1


def training_envelope(run: np.ndarray, N: np.ndarray, C: np.ndarray, loss: np.ndarray, n_grid: int = 200):
    """The lowest loss reached at each FLOP count across runs, and the N of the run that reaches it.

    Runs with two or more points are interpolated linearly in log C within their own FLOP range; the envelope at
    a FLOP count is the minimum over the runs covering it, on `n_grid` log-spaced counts. With one point per run
    (final losses only), the envelope is the Pareto front: points no cheaper point beats.
    Returns (C, loss, N) arrays of the envelope.
    """
    ids = np.unique(run)
    curves = []
    for r in ids:
        m = run == r
        if m.sum() >= 2:
            o = np.argsort(C[m])
            curves.append((np.log(C[m][o]), loss[m][o], float(np.median(N[m]))))
    if len(curves) == len(ids):
        lo = min(c[0][0] for c in curves)
        hi = max(c[0][-1] for c in curves)
        grid = np.linspace(lo, hi, n_grid)
        best = np.full(n_grid, np.inf)
        best_n = np.full(n_grid, np.nan)
        for lc, ls, n in curves:
            inside = (grid >= lc[0]) & (grid <= lc[-1])
            val = np.where(inside, np.interp(grid, lc, ls), np.inf)
            better = val < best
            best = np.where(better, val, best)
            best_n = np.where(better, n, best_n)
        ok = np.isfinite(best)
        return np.exp(grid[ok]), best[ok], best_n[ok]
    o = np.argsort(C, kind="stable")
    cur = np.inf
    keep = []
    for i in o:
        if loss[i] < cur:
            keep.append(i)
            cur = loss[i]
    keep = np.array(keep)
    return C[keep], loss[keep], N[keep]


def fit_envelope(data, *, n_grid: int = 200, flops_per_param_token: float = 6.0) -> AllocationFit:
    """Approach 1: power laws of the envelope's N (and D = C / (6 N)) against C. Needs a `run` column for
    training curves; without it every row is its own run (final points, Pareto front). FLOP counts where the
    smallest or largest model is best are left out (the optimum may lie outside the sizes run)."""
    d = as_data(data)
    C, N, L = d["C"], d["N"], d.loss
    run = d["run"] if d.has("run") else np.arange(len(C))
    Ce, Le, Ne = training_envelope(run, N, C, L, n_grid)
    # where the smallest or the largest model attains the envelope, the optimum may lie beyond the sizes run:
    # those FLOP counts are censored, not optima
    inner = (Ne > N.min()) & (Ne < N.max())
    if inner.sum() >= 2 and len(np.unique(Ne[inner])) >= 2:
        Ce, Le, Ne = Ce[inner], Le[inner], Ne[inner]
    if len(np.unique(Ne)) < 2:
        raise TooFewPointsError("the envelope is reached by a single model size: approach 1 needs runs of "
                                "several sizes whose curves cross")
    s, logk, rss = _loglog_fit(Ce, Ne)
    f = flops_per_param_token
    return AllocationFit(approach=1, params=_power_params(s, logk, "N", f), budgets=Ce, n_opt=Ne,
                         d_opt=Ce / (f * Ne), loss_opt=Le, objective=rss, by="N", flops_per_param_token=f,
                         notes=list(d.notes) + [f"envelope over {len(np.unique(run))} runs, {len(Ce)} FLOP counts "
                                                "(those won by the smallest or largest model excluded)"])
