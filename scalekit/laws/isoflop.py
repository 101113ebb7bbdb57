"""Approaches 1 and 2 of Hoffmann et al. (2022): compute-optimal N and D straight from the runs, no loss law.

Approach 2 (IsoFLOP profiles): per compute budget, a parabola of loss in log N (or log D); its vertex is N_opt
(D_opt) for that budget; then power laws N_opt = k_N C^a and D_opt = k_D C^b by least squares in log-log.
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
from scalekit.laws.data import as_data
from scalekit.laws.errors import (DroppedPointsWarning, InvalidDataError, NotConvergedWarning,
                                  ParabolaOpensDownwardWarning, TooFewPointsError, VertexOutsideRangeWarning)

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
    by: str = "N"
    flops_per_param_token: float = 6.0
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    samples: np.ndarray | None = field(default=None, repr=False)   # bootstrap rows (a, log k_N, b, log k_D)
    level: float | None = None
    notes: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict, repr=False)

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
        name = {1: "approach 1 (training-curve envelope)", 2: "approach 2 (IsoFLOP parabolas)"}[self.approach]
        lines = [f"{name}: N_opt = k_N C^a, D_opt = k_D C^b  [C = {self.flops_per_param_token:g} N D]",
                 f"optima used: {len(self.budgets)}, residual SS of log {self.by}_opt: {self.objective:.4g}"]
        head = render.header(self.level, bool(self.intervals))
        lines.append(render.text_table(render.param_rows(self.params, self.intervals), head))
        if self.approach == 2:
            rows = [(render.fmt(c), render.fmt(n), render.fmt(d), render.fmt(l))
                    for c, n, d, l in zip(self.budgets, self.n_opt, self.d_opt, self.loss_opt)]
            lines.append(render.text_table(rows, ("C", "N_opt", "D_opt", "loss at vertex")))
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def to_dict(self) -> dict:
        return render.jsonable({
            "approach": self.approach, "params": self.params, "exponents": self.exponents,
            "intervals": {k: list(v) for k, v in self.intervals.items()}, "level": self.level,
            "objective": self.objective, "by": self.by,
            "optima": {"C": self.budgets, "N_opt": self.n_opt, "D_opt": self.d_opt, "loss": self.loss_opt},
            "notes": self.notes})

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


def _weighted_parabola(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Coefficients (p0, p1, p2) of y = p0 + p1 x + p2 x^2 for weight rows w (R, n); x centred by the caller.

    A row whose weighted points have fewer than 3 distinct x (common in bootstrap resamples of a budget with few
    sizes) determines no parabola: its coefficients are NaN, and callers count it as unusable."""
    X = np.stack([np.ones_like(x), x, x * x], 1)                    # (n, 3)
    A = np.einsum("rn,ni,nj->rij", w, X, X)
    b = np.einsum("rn,ni,n->ri", w, X, y)
    _, inverse = np.unique(x, return_inverse=True)
    distinct = (np.einsum("rn,nk->rk", w > 0, np.eye(inverse.max() + 1)[inverse]) > 0).sum(1)
    out = np.full(b.shape, np.nan)
    ok = distinct >= 3
    if ok.any():
        out[ok] = np.linalg.solve(A[ok], b[ok][..., None])[..., 0]
    return out


def fit_isoflop(data, *, by: str = "N", budgets=None, max_log10_distance: float | None = None, min_points: int = 3,
                bootstrap: int = 0, seed: int = 0, level: float = 0.95,
                flops_per_param_token: float = 6.0) -> AllocationFit:
    """Approach 2. Points are grouped by a `budget` column when the data have one, else snapped to `budgets`
    (e.g. CHINCHILLA_BUDGETS), else clustered by C. Each budget needs `min_points` points and a parabola that
    opens upward (else it is dropped with a named warning); at least two budgets must remain.
    Bootstrap resamples points within each budget."""
    if by not in ("N", "D"):
        raise ValueError("by must be 'N' or 'D'")
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
    kept, parab = [], []
    for b in groups:
        m = B == b
        x = np.log(X[m])
        if m.sum() < min_points:
            warnings.warn(f"budget C={b:.3g} has {int(m.sum())} point(s), fewer than {min_points}: dropped",
                          DroppedPointsWarning, stacklevel=2)
            continue
        xc = x.mean()
        p0, p1, p2 = _weighted_parabola(x - xc, L[m], np.ones((1, m.sum())))[0]
        if not p2 > 0:
            warnings.warn(f"the parabola at budget C={b:.3g} opens downward (curvature {p2:.3g}): it has no "
                          "minimum; budget dropped", ParabolaOpensDownwardWarning, stacklevel=2)
            continue
        v = xc - p1 / (2 * p2)
        if not (x.min() <= v <= x.max()):
            warnings.warn(f"the optimum at budget C={b:.3g} ({by}={np.exp(v):.3g}) lies outside the sampled range "
                          f"[{X[m].min():.3g}, {X[m].max():.3g}]", VertexOutsideRangeWarning, stacklevel=2)
        kept.append((b, m, xc))
        parab.append((np.exp(v), p0 - p1 * p1 / (4 * p2)))
    if len(kept) < 2:
        raise InvalidDataError(f"only {len(kept)} budget(s) left with a usable parabola; approach 2 needs two")
    Cb = np.array([k[0] for k in kept])
    opt = np.array([p[0] for p in parab])
    loss_opt = np.array([p[1] for p in parab])
    s, logk, rss = _loglog_fit(Cb, opt)
    f = flops_per_param_token
    other = Cb / (f * opt)
    n_opt, d_opt = (opt, other) if by == "N" else (other, opt)
    fit = AllocationFit(approach=2, params=_power_params(s, logk, by, f), budgets=Cb, n_opt=n_opt, d_opt=d_opt,
                        loss_opt=loss_opt, objective=rss, by=by, flops_per_param_token=f, notes=notes)
    if bootstrap:
        _bootstrap_isoflop(fit, kept, X, L, bootstrap, seed, level)
    return fit


def _bootstrap_isoflop(fit: AllocationFit, kept, X, L, R: int, seed: int, level: float) -> None:
    rng = np.random.default_rng(seed)
    verts = []
    for b, m, xc in kept:
        n = int(m.sum())
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=R).astype(np.float64)
        p = _weighted_parabola(np.log(X[m]) - xc, L[m], w)
        opens_up = np.nan_to_num(p[:, 2], nan=-1.0) > 0
        v = np.where(opens_up, np.exp(xc - p[:, 1] / (2 * np.where(opens_up, p[:, 2], 1.0))), np.nan)
        verts.append(v)
    V = np.stack(verts, 1)                                             # (R, budgets)
    Cb = fit.budgets
    rows = []
    for r in range(R):
        ok = np.isfinite(V[r])
        if ok.sum() < 2:
            continue
        s, logk, _ = _loglog_fit(Cb[ok], V[r, ok])
        p = _power_params(s, logk, fit.by, fit.flops_per_param_token)
        rows.append((p["a"], np.log(p["k_N"]), p["b"], np.log(p["k_D"])))
    fit.notes.append(f"bootstrap: {len(rows)}/{R} resamples usable (points resampled within each budget)")
    if len(rows) < max(10, R // 2):
        warnings.warn(f"only {len(rows)}/{R} approach-2 bootstrap resamples gave two or more usable parabolas"
                      + ("; no intervals" if len(rows) < 10 else ""), NotConvergedWarning, stacklevel=3)
        if len(rows) < 10:
            return
    S = np.array(rows)
    fit.samples, fit.level = S, level
    fit.intervals = {"a": render.percentile_interval(S[:, 0], level),
                     "k_N": render.percentile_interval(np.exp(S[:, 1]), level),
                     "b": render.percentile_interval(S[:, 2], level),
                     "k_D": render.percentile_interval(np.exp(S[:, 3]), level)}


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
