"""The optimum of one IsoFLOP profile (loss against log N, or log D, at one compute budget), three ways.

- "parabola": one parabola over all of the budget's points, its vertex (Hoffmann et al. 2022, approach 2).
- "robust": a local polynomial (degree 4 by default) over the `window` sizes nearest the budget's lowest loss; the
  optimum is that polynomial's minimum. An IsoFLOP profile is skewed in log N whenever alpha != beta
  (L - E = K (beta e^{-alpha u} + alpha e^{beta u}) in u = log N/N_opt), and a parabola over a wide window puts its
  vertex on the long side: over +-16x the bias in N_opt is up to 30%. A quartic takes up the skew (the u^3 term)
  and the u^4 term; the first neglected term is u^5. A window of 9 sizes keeps the noise down.
- "akima": Akima's local spline through the points (scipy), its minimum next to the lowest point. No smoothing,
  so it is the noisiest of the three; offered for comparison.

Each function here works on one budget: x = log sizes, y = losses. Points at the same x (bootstrap resamples,
repeated runs) are merged into their mean, weighted by their count, before the local fits.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from scalekit.laws.errors import DroppedPointsWarning, ParabolaOpensDownwardWarning, VertexOutsideRangeWarning

OPTIMA = ("parabola", "robust", "akima")
DEGREES = (2, 3, 4)
SE_FLOOR = 1e-4              # floor of the standard error of log x_opt (natural log): 0.01 % in x_opt
SE_FLOOR_RELATIVE = 0.1      # and at least this fraction of the median standard error over budgets
STATUS = ("ok", "edge", "no_minimum", "outside", "too_few")     # why a budget has (no) optimum
OK, EDGE, NO_MINIMUM, OUTSIDE, TOO_FEW = range(5)


def check_settings(optimum: str, window: int, degree: int, se_resamples: int) -> None:
    """ValueError naming the argument and the allowed values."""
    if optimum not in OPTIMA:
        raise ValueError(f"optimum must be one of {', '.join(repr(o) for o in OPTIMA)}; got {optimum!r}")
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 3:
        raise ValueError(f"window must be an integer >= 3 (the number of sizes in the local fit); got {window!r}")
    if degree not in DEGREES:
        raise ValueError(f"degree must be one of {', '.join(map(str, DEGREES))}; got {degree!r}")
    if isinstance(se_resamples, bool) or not isinstance(se_resamples, (int, np.integer)) or \
            not (se_resamples == 0 or se_resamples >= 10):
        raise ValueError(f"se_resamples must be 0 (no standard errors, equal weights) or an integer >= 10; "
                         f"got {se_resamples!r}")


@dataclass
class Optimum:
    """One budget's optimum: log x_opt and the loss there, or a status saying why there is none."""

    status: str                  # "ok", "edge" (lowest loss at the smallest or largest size), "no_minimum",
    log_x: float = np.nan        # "outside" (the fitted minimum lies outside the sampled sizes), "too_few"
    loss: float = np.nan
    degree: int = 0
    n_fit: int = 0


def merge_repeats(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct sorted x, the mean y at each, and the count of points at each."""
    xu, inv, cnt = np.unique(x, return_inverse=True, return_counts=True)
    yu = np.bincount(inv, weights=y, minlength=len(xu)) / cnt
    return xu, yu, cnt.astype(np.float64)


def effective_degree(degree: int, k: int) -> int:
    """The degree used on k sizes: at most `degree`, and at most k - 3 (two degrees of freedom left) once k >= 5;
    never below 2 (a parabola through 3 or 4 sizes)."""
    return int(max(2, min(degree, k - 3)))


def local_poly_optima(x, y, W, *, window: int = 9, degree: int = 4):
    """Minimum of a weighted least-squares polynomial over the `window` distinct sizes nearest the lowest loss,
    for each row of weights W (R, n) over the budget's points (ones: the fit itself; multinomial counts:
    bootstrap resamples), all rows at once.

    Returns (log_x, loss, status, degree), each (R,); status indexes STATUS (log_x and loss NaN unless OK)."""
    x, y, W = np.asarray(x, np.float64), np.asarray(y, np.float64), np.atleast_2d(np.asarray(W, np.float64))
    R = W.shape[0]
    xu, inv = np.unique(x, return_inverse=True)
    G = np.eye(len(xu))[inv]                                         # (n, nu) point -> size
    cnt = W @ G
    present = cnt > 0
    ym = np.where(present, ((W * y) @ G) / np.where(present, cnt, 1.0), np.inf)
    npres = present.sum(1)
    i = np.argmin(ym, 1)
    first, last = np.argmax(present, 1), len(xu) - 1 - np.argmax(present[:, ::-1], 1)
    status = np.full(R, OK)
    status[(i == first) | (i == last)] = EDGE
    status[npres < 3] = TOO_FEW
    x0 = xu[i]
    dist = np.where(present, np.abs(xu[None, :] - x0[:, None]), np.inf)
    rank = np.empty_like(i, shape=dist.shape)
    np.put_along_axis(rank, np.argsort(dist, 1, kind="stable"), np.arange(len(xu))[None, :].repeat(R, 0), 1)
    k = np.minimum(window, npres)
    inwin = present & (rank < k[:, None])
    deg = np.maximum(2, np.minimum(degree, k - 3))
    h = np.max(np.where(inwin, dist, 0.0), 1)
    U = (xu[None, :] - x0[:, None]) / np.where(h > 0, h, 1.0)[:, None]
    lo = np.min(np.where(inwin, U, np.inf), 1)
    hi = np.max(np.where(inwin, U, -np.inf), 1)
    yw = np.where(present, ym, 0.0)
    wt = np.where(inwin, cnt, 0.0)
    log_x, loss = np.full(R, np.nan), np.full(R, np.nan)
    todo = status == OK
    for dg in np.unique(deg[todo]):
        sel = np.flatnonzero(todo & (deg == dg))
        V = U[sel][..., None] ** np.arange(dg + 1)                   # (S, nu, dg+1)
        A = np.einsum("sn,sni,snj->sij", wt[sel], V, V)
        b = np.einsum("sn,sni,sn->si", wt[sel], V, yw[sel])
        coef = np.linalg.solve(A, b[..., None])[..., 0]              # lowest power first
        u, val = _poly_minima(coef, lo[sel], hi[sel])
        ok = np.isfinite(u)
        status[sel[~ok]] = NO_MINIMUM
        log_x[sel[ok]] = x0[sel[ok]] + h[sel[ok]] * u[ok]
        loss[sel[ok]] = val[ok]
    return log_x, loss, status, deg


def _poly_minima(coef: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of polynomial coefficients (S, d+1), lowest power first: the lowest local minimum in [lo, hi]
    (u and the value there; NaN where there is none)."""
    S, d1 = coef.shape
    j = np.arange(1, d1)
    dc = coef[:, 1:] * j                                             # derivative, (S, d)
    m = d1 - 2                                                       # its degree
    if m == 1:
        roots = (-dc[:, :1] / np.where(dc[:, 1:] != 0, dc[:, 1:], np.nan)).astype(np.complex128)
    else:
        lead = dc[:, -1]
        bad = np.abs(lead) <= 1e-12 * np.max(np.abs(dc), 1)
        comp = np.zeros((S, m, m))
        comp[:, np.arange(1, m), np.arange(m - 1)] = 1.0
        comp[:, :, -1] = -dc[:, :-1] / np.where(bad, 1.0, lead)[:, None]
        roots = np.linalg.eigvals(comp)
        for r in np.flatnonzero(bad):                                # leading term vanishes: fewer roots
            rr = np.roots(dc[r, ::-1])
            roots[r] = np.concatenate([rr, np.full(m - len(rr), np.nan)])
    re = roots.real
    real = np.abs(roots.imag) <= 1e-9 * (1.0 + np.abs(re))
    powers = re[..., None] ** np.arange(d1)                          # (S, m, d+1)
    val = np.einsum("smk,sk->sm", powers, coef)
    curv = np.einsum("smk,sk->sm", powers[..., : d1 - 2], coef[:, 2:] * (j[1:] * j[:-1]))
    cand = real & np.isfinite(re) & (re >= lo[:, None]) & (re <= hi[:, None]) & (curv > 0)
    val = np.where(cand, val, np.inf)
    best = np.argmin(val, 1)
    has = cand.any(1)
    u = np.where(has, re[np.arange(S), best], np.nan)
    return u, np.where(has, val[np.arange(S), best], np.nan)


def local_poly_optimum(x, y, *, window: int = 9, degree: int = 4) -> Optimum:
    """One budget's optimum by `local_poly_optima` with unit weights (each point once)."""
    lx, lv, st, dg = local_poly_optima(x, y, np.ones((1, len(x))), window=window, degree=degree)
    return Optimum(STATUS[st[0]], float(lx[0]), float(lv[0]), int(dg[0]), int(min(window, len(np.unique(x)))))


def akima_optimum(x, y) -> Optimum:
    """Minimum of Akima's spline through the (merged) points, between the lowest point's two neighbours."""
    from scipy.interpolate import Akima1DInterpolator

    xu, yu, _ = merge_repeats(np.asarray(x, np.float64), np.asarray(y, np.float64))
    if len(xu) < 3:
        return Optimum("too_few")
    i = int(np.argmin(yu))
    if i in (0, len(xu) - 1):
        return Optimum("edge")
    s = Akima1DInterpolator(xu, yu)
    lo, hi = xu[i - 1], xu[i + 1]
    r = np.asarray(s.derivative().roots(extrapolate=False), np.float64)
    r = r[np.isfinite(r) & (r >= lo) & (r <= hi)]
    cand = np.concatenate([r, [xu[i]]])            # the spline passes through the lowest point: never empty
    vals = s(cand)
    j = int(np.argmin(vals))
    return Optimum("ok", float(cand[j]), float(vals[j]), 3, len(xu))


def budget_optimum(x, y, optimum: str, window: int, degree: int) -> Optimum:
    if optimum == "akima":
        return akima_optimum(x, y)
    return local_poly_optimum(x, y, window=window, degree=degree)


def resampled_optima(x, y, optimum: str, window: int, degree: int, R: int, rng) -> np.ndarray:
    """log x_opt of R resamples of the budget's points (multinomial counts, i.e. drawn with replacement); NaN
    where a resample has no optimum inside its sizes."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = len(x)
    W = rng.multinomial(n, np.full(n, 1.0 / n), size=R).astype(np.float64)
    if optimum == "robust":
        lx, _, st, _ = local_poly_optima(x, y, W, window=window, degree=degree)
        return np.where(st == OK, lx, np.nan)
    out = np.full(R, np.nan)
    for r in range(R):
        idx = np.repeat(np.arange(n), W[r].astype(int))
        o = budget_optimum(x[idx], y[idx], optimum, window, degree)
        if o.status == "ok":
            out[r] = o.log_x
    return out


def floored_se(se: np.ndarray) -> tuple[np.ndarray, float]:
    """Standard errors for the 1/se^2 weights: NaN (too few usable resamples) becomes the largest finite one, and
    all are floored at max(SE_FLOOR, SE_FLOOR_RELATIVE * median), so no optimum takes all the weight."""
    se = np.asarray(se, np.float64).copy()
    ok = np.isfinite(se)
    if not ok.any():
        return np.ones_like(se), float("nan")
    se[~ok] = se[ok].max()
    floor = max(SE_FLOOR, SE_FLOOR_RELATIVE * float(np.median(se)))
    return np.maximum(se, floor), floor


def weighted_parabola(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
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


def resampled_vertices(x: np.ndarray, y: np.ndarray, xc: float, R: int, rng) -> np.ndarray:
    """Vertices (in x, not log x) of the all-points parabola over R multinomial resamples of the budget's points;
    NaN where a resample's parabola is degenerate or opens downward."""
    n = len(x)
    w = rng.multinomial(n, np.full(n, 1.0 / n), size=R).astype(np.float64)
    p = weighted_parabola(x - xc, y, w)
    opens_up = np.nan_to_num(p[:, 2], nan=-1.0) > 0
    return np.where(opens_up, np.exp(xc - p[:, 1] / (2 * np.where(opens_up, p[:, 2], 1.0))), np.nan)


def resample_se(log_opts: np.ndarray, min_usable: int = 10) -> float:
    """Standard deviation of the finite resampled log x_opt; NaN with fewer than `min_usable` of them."""
    v = log_opts[np.isfinite(log_opts)]
    return float(np.std(v, ddof=1)) if len(v) >= min_usable else float("nan")


# ------------------------------------------------------------------ every budget of a fit (called by fit_isoflop)


def parabola_optima(groups, B, X, L, by, min_points):
    """Hoffmann et al.'s vertices: one parabola per budget over all its points (today's behaviour, unchanged)."""
    kept, parab = [], []
    dropped = {"too_few": [], "opens_downward": [], "outside_kept": []}
    for b in groups:
        m = B == b
        x = np.log(X[m])
        if m.sum() < min_points:
            warnings.warn(f"budget C={b:.3g} has {int(m.sum())} point(s), fewer than {min_points}: dropped",
                          DroppedPointsWarning, stacklevel=3)
            dropped["too_few"].append(float(b))
            continue
        xc = x.mean()
        p0, p1, p2 = weighted_parabola(x - xc, L[m], np.ones((1, m.sum())))[0]
        if not p2 > 0:
            warnings.warn(f"the parabola at budget C={b:.3g} opens downward (curvature {p2:.3g}): it has no "
                          "minimum; budget dropped", ParabolaOpensDownwardWarning, stacklevel=3)
            dropped["opens_downward"].append(float(b))
            continue
        v = xc - p1 / (2 * p2)
        if not (x.min() <= v <= x.max()):
            warnings.warn(f"the optimum at budget C={b:.3g} ({by}={np.exp(v):.3g}) lies outside the sampled range "
                          f"[{X[m].min():.3g}, {X[m].max():.3g}]", VertexOutsideRangeWarning, stacklevel=3)
            dropped["outside_kept"].append(float(b))
        kept.append((b, m, xc))
        parab.append((np.exp(v), p0 - p1 * p1 / (4 * p2)))
    return kept, parab, dropped


def local_optima(groups, B, X, L, by, min_points, optimum, window, degree):
    """Robust / Akima optima; budgets whose optimum is not inside the sampled sizes are dropped, by name."""
    kept, opts = [], []
    dropped = {"too_few": [], "opens_downward": [], "outside": []}
    for b in groups:
        m = B == b
        x, y = np.log(X[m]), L[m]
        rng_txt = f"[{X[m].min():.3g}, {X[m].max():.3g}]"
        if m.sum() < min_points or len(np.unique(x)) < 3:
            warnings.warn(f"budget C={b:.3g} has {int(m.sum())} point(s) at {len(np.unique(x))} size(s), fewer than "
                          f"{max(min_points, 3)}: dropped", DroppedPointsWarning, stacklevel=3)
            dropped["too_few"].append(float(b))
            continue
        o = budget_optimum(x, y, optimum, window, degree)
        if o.status == "edge":
            xc = x.mean()
            p2 = weighted_parabola(x - xc, y, np.ones((1, m.sum())))[0][2]
            if not p2 > 0:
                warnings.warn(f"the profile at budget C={b:.3g} has no minimum (its parabola opens downward, "
                              f"curvature {p2:.3g}, and the lowest loss is at an end of the sizes sampled): "
                              "budget dropped", ParabolaOpensDownwardWarning, stacklevel=3)
                dropped["opens_downward"].append(float(b))
                continue
            end = "smallest" if x[np.argmin(y)] == x.min() else "largest"
            warnings.warn(f"the optimum at budget C={b:.3g} lies outside the sampled range {rng_txt} of {by}: the "
                          f"lowest loss is at the {end} size sampled; budget dropped (an extrapolated optimum is "
                          "not fitted)", VertexOutsideRangeWarning, stacklevel=3)
            dropped["outside"].append(float(b))
            continue
        if o.status == "outside":
            warnings.warn(f"the optimum at budget C={b:.3g} ({by}={np.exp(o.log_x):.3g}) lies outside the sampled "
                          f"range {rng_txt}: budget dropped (an extrapolated optimum is not fitted)",
                          VertexOutsideRangeWarning, stacklevel=3)
            dropped["outside"].append(float(b))
            continue
        if o.status != "ok":
            warnings.warn(f"the local fit at budget C={b:.3g} has no minimum inside its window of sizes: budget "
                          "dropped", ParabolaOpensDownwardWarning, stacklevel=3)
            dropped["opens_downward"].append(float(b))
            continue
        kept.append((b, m, x.mean()))
        opts.append((np.exp(o.log_x), o.loss))
    return kept, opts, dropped


def optimum_se(kept, X, L, optimum, window, degree, R, seed) -> np.ndarray:
    """Standard error of log x_opt per kept budget, from R resamples of its points (NaN when R = 0 or when fewer
    than 10 resamples have an optimum). Its own random stream: the bootstrap's draws are as before."""
    se = np.full(len(kept), np.nan)
    if not R:
        return se
    rng = np.random.default_rng([seed, 0x5E])
    for j, (b, m, xc) in enumerate(kept):
        x, y = np.log(X[m]), L[m]
        if optimum == "parabola":
            se[j] = resample_se(np.log(resampled_vertices(x, y, xc, R, rng)))
        else:
            se[j] = resample_se(resampled_optima(x, y, optimum, window, degree, R, rng))
    return se
