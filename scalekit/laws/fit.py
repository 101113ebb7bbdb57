"""Approach 3: fit a law by minimising one of the objectives of `scalekit.laws.objective` with one of two solvers.

Solvers (`solver=`):
- "lbfgs": every start of a grid (Chinchilla's 4,500 by default) in one jitted, batched L-BFGS
  (`scalekit.laws.lbfgs`); the best CONVERGED start wins.
- "vpnls": variable projection (`scalekit.laws.vpnls`) for laws that are sums of power terms: the coefficients
  are solved exactly for every cell of a grid over the exponents, and the best cells are refined by the same
  L-BFGS on all parameters.
- "auto" (default): vpnls for every objective where the law is a sum of power terms (Chinchilla, tied, Gadre, the
  single-variable power laws, coverage) and its coefficients are neither tied nor bounded; lbfgs otherwise (Kaplan
  L(N, D), data-constrained) and whenever a starting grid is given. Why: on every loss table in ../shared/data
  (Epoch's Chinchilla points, the eight Open-Athena sweeps, datablations, the coverage curves) and every objective,
  vpnls reaches the 4,500-start L-BFGS objective to 1e-14 relative, and on epoch_chinchilla it is 17x (huber_log),
  39x (lsq_log), 33x (lsq) and 61x (huber) faster warm (`benchmarks/bench_fit.py --solvers-only`). The L-BFGS
  grid stays the reference, the fallback, and the solver of every bootstrap refit (warm-started at the fit).

Bootstrap resamples run as one lane per resample with multinomial weights on the points, warm-started at the fit.
Everything runs in float64 inside `jax.enable_x64(True)`, scoped to these calls.
"""

from __future__ import annotations

import time
import warnings
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from scalekit.laws import render
from scalekit.laws.data import ScalingData, as_data
from scalekit.laws.errors import DroppedPointsWarning, InvalidDataError, NotConvergedWarning, TooFewPointsError
from scalekit.laws.forms import Law, get_law, product_grid
from scalekit.laws.lbfgs import CONVERGED_CODES, BatchResult, LBFGSOptions, minimize_batch
from scalekit.laws.objective import Problem, check_objective, delta_value
from scalekit.laws.results import LawFit

SOLVERS = ("auto", "lbfgs", "vpnls")


def _targets(law: Law, data: ScalingData) -> tuple[dict[str, np.ndarray], np.ndarray, list[str], np.ndarray]:
    """Inputs and the fitted target y > 0 (coverage becomes -log coverage); returns the rows kept."""
    missing = [k for k in law.inputs if not data.has(k)]
    if missing:
        raise InvalidDataError(f"law {law.name!r} needs columns {law.inputs}; missing {missing} "
                               f"(have {', '.join(data.columns)})")
    y = data.loss
    keep = np.ones(len(y), bool)
    notes = []
    if law.target == "-log coverage":
        if np.any(y > 1):
            raise InvalidDataError("coverage values must lie in (0, 1]")
        keep = y < 1.0
        if not keep.all():
            warnings.warn(f"dropped {int((~keep).sum())} point(s) with coverage 1 (log(-log 1) is undefined)",
                          DroppedPointsWarning, stacklevel=3)
            notes.append(f"dropped {int((~keep).sum())} points with coverage = 1")
        y = -np.log(y[keep])
    inputs = {k: data[k][keep] for k in law.inputs}
    return inputs, y, notes, keep


def _make_grid(law: Law, grid, fixed: dict[str, float]) -> np.ndarray:
    if grid is None or (isinstance(grid, str) and grid == "default"):
        g = law.default_grid()
    elif isinstance(grid, str):
        if grid != "coarse":
            raise ValueError(f"grid must be 'default', 'coarse', a dict or an array, got {grid!r}")
        g = product_grid({k: v[::2] for k, v in law.grid_values}, law.params)
    elif isinstance(grid, Mapping):
        unknown = set(grid) - set(law.params)
        if unknown:
            raise ValueError(f"grid names {sorted(unknown)}, not parameters of the {law.name} law {law.params}")
        vals = dict(law.grid_values)
        vals.update({k: tuple(np.atleast_1d(v)) for k, v in grid.items()})
        g = product_grid(vals, law.params)
    else:
        g = np.atleast_2d(np.array(grid, np.float64))            # a copy: fixed values are written into it
        if g.shape[1] != len(law.params):
            raise ValueError(f"grid must have {len(law.params)} columns {law.params}, got shape {g.shape}")
    for k, v in fixed.items():
        g[:, law.params.index(k)] = v
    return np.unique(g, axis=0) if fixed else g


def _bucket(n: int, step: int) -> int:
    return -(-n // step) * step


def _padded_sizes(n_starts: int, n_points: int) -> tuple[int, int]:
    """Shapes are rounded up so that fits of similar size share one compiled program: points to a multiple of
    32 (of 128 past 512), starts to a power of two up to 64 and a multiple of 64 past it. Padded points have
    weight 0; padded starts repeat the first and are dropped."""
    k = _bucket(n_points, 32 if n_points <= 512 else 128)
    s = max(8, 1 << (n_starts - 1).bit_length()) if n_starts <= 64 else _bucket(n_starts, 64)
    return s, k


def _run(problem: Problem, x0: np.ndarray, weights: np.ndarray | None, delta: float | None,
         options: LBFGSOptions) -> BatchResult:
    """Run the batched L-BFGS on padded shapes; return numpy results for the real starts only."""
    vg, takes_base = problem.value_and_grad()
    S, K = x0.shape[0], problem.logy.shape[0]
    S_pad, K_pad = _padded_sizes(S, K)
    feats = np.zeros((problem.feats.shape[0], K_pad))
    feats[:, :K] = problem.feats
    logy = np.zeros(K_pad)
    logy[:K] = problem.logy
    x = np.concatenate([x0, np.repeat(x0[:1], S_pad - S, axis=0)])
    per_start = weights is not None and weights.ndim == 2
    if per_start:
        w = np.zeros((S_pad, K_pad))
        w[:S, :K] = weights
        w[S:, :K] = weights[:1]
    else:
        w = np.zeros(K_pad)
        w[:K] = 1.0 if weights is None else weights
    with jax.enable_x64(True):
        data = [jnp.asarray(feats), jnp.asarray(logy), jnp.asarray(w), jnp.asarray(delta_value(delta), jnp.float64)]
        axes = [None, None, 0 if per_start else None, None]
        if takes_base:
            data += [jnp.asarray(a) for a in problem.map_data()]
            axes += [None] * 5
        res = minimize_batch(vg, jnp.asarray(x, jnp.float64), tuple(data), tuple(axes), options)
        res = jax.tree.map(np.asarray, res)
    return res._replace(**{f: getattr(res, f)[:S] for f in ("x", "f", "grad_norm", "status", "n_iter", "n_eval")})


def fit_law(data, law: str | Law = "chinchilla", *, objective: str = "huber_log", delta: float | None = None,
            solver: str = "auto", grid=None, fixed: dict[str, float] | None = None, tie=None, bounds=None,
            irreducible: bool = True, options: LBFGSOptions | None = None, bootstrap: int = 0, seed: int = 0,
            level: float = 0.95, columns: Mapping[str, str] | None = None, floor: float | None = None,
            diagnose: bool = True) -> LawFit:
    """Fit `law` to `data` (ScalingData, DataFrame, or dict of columns N, D, C, U, X, k, loss).

    objective: "huber_log" (Huber on log residuals, delta 1e-3 as in Chinchilla), "lsq_log" (least squares on log
    loss), "lsq" (least squares on the loss), "huber" (Huber on the loss, delta in loss units); see
    `scalekit.laws.objective`. solver: "auto", "lbfgs" or "vpnls" (module docstring). grid: L-BFGS starting points,
    an (S, P) array in the law's LSE parameters, a dict overriding some parameters' grid values, "coarse" or None
    (the law's default: 4,500 starts for Chinchilla). fixed: LSE parameters held constant. tie: {"beta": "alpha"}
    or "beta=alpha" strings (beta is set equal to alpha). bounds: {"alpha": (lo, hi)}, None for an open side.
    bootstrap: resamples (points drawn with replacement) for percentile intervals at `level`. floor: a known lower
    bound on the loss, for the diagnostics (`scalekit.laws.diagnostics`), which are kept on `fit.diagnostics` and
    emitted as DiagnosticWarning unless diagnose=False.
    """
    t0 = time.perf_counter()
    law = get_law(law, irreducible)
    delta = check_objective(objective, delta)
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    _check_level(level, bootstrap)
    data = as_data(data, **(columns or {}))
    fixed = dict(fixed or {})
    inputs, y, notes, _ = _targets(law, data)
    problem = Problem.build(law, inputs, y, fixed, tie, bounds, objective)
    if len(y) < problem.n_free:
        raise TooFewPointsError(f"{len(y)} points for {problem.n_free} free parameters of the {law.name} law: "
                                "fix or tie parameters, or add points")
    options = options or LBFGSOptions()
    used = "lbfgs" if solver == "auto" and grid is not None else solver    # a grid is L-BFGS's input
    if used in ("auto", "vpnls"):
        from scalekit.laws.vpnls import NotSeparable, vpnls_starts

        try:
            starts, vp_note = vpnls_starts(problem, delta)
            used = "vpnls"
            notes = notes + [vp_note]
        except NotSeparable as err:
            if solver == "vpnls":
                raise ValueError(f"solver 'vpnls' does not apply here: {err}; use solver='lbfgs'") from None
            used = "lbfgs"
    if used == "lbfgs":
        tied = {law.params[t]: 0.0 for t, _ in problem.ties}           # their grid column is overwritten by the map
        starts = _make_grid(law, grid, {**fixed, **tied})
    res = _run(problem, problem.to_opt(starts), None, delta, options)
    out = _best(problem, res, options, used)
    out = LawFit(law=law, lse=out["lse"], params=law.to_natural(out["lse"]), objective=out["f"],
                 n_converged=out["n_conv"], n_starts=out["n"], converged=out["converged"], n_points=len(y),
                 delta=delta, fixed=fixed, notes=list(data.notes) + notes, start_status=res.status,
                 start_objective=res.f, objective_name=objective, solver=used,
                 ties={law.params[t]: law.params[s] for t, s in problem.ties}, bounds=_bounds_of(problem))
    if bootstrap:
        out = bootstrap_fit(out, data, bootstrap, seed=seed, level=level, options=options)
    out.seconds = time.perf_counter() - t0
    if diagnose:
        from scalekit.laws.diagnostics import attach_diagnostics

        attach_diagnostics(out, data, floor=floor)
    return out


def _check_level(level: float, bootstrap: int) -> None:
    if not (0.0 < float(level) < 1.0):
        raise ValueError(f"level must lie strictly between 0 and 1 (e.g. 0.95), got {level!r}")
    if int(bootstrap) != bootstrap or bootstrap < 0:
        raise ValueError(f"bootstrap must be a whole number >= 0 (0: no intervals), got {bootstrap!r}")


def _bounds_of(problem: Problem) -> dict[str, tuple[float | None, float | None]]:
    out = {}
    for j, i in enumerate(problem.free):
        k = int(problem.kind[j])
        if k:
            out[problem.law.params[i]] = (float(problem.lo[j]) if k in (1, 2) else None,
                                          float(problem.hi[j]) if k in (1, 3) else None)
    return out


def _best(problem: Problem, res: BatchResult, options: LBFGSOptions, solver: str) -> dict:
    """The best converged start (or the lowest objective, with a warning, when none converged)."""
    conv = np.isin(res.status, CONVERGED_CODES)
    f = np.where(np.isfinite(res.f), res.f, np.inf)
    if conv.any():
        best = int(np.argmin(np.where(conv, f, np.inf)))
    else:
        best = int(np.argmin(f))
        warnings.warn(f"none of the {len(f)} starts ({solver}) converged (gtol={options.gtol:g}, "
                      f"ftol={options.ftol:g}); reporting the lowest objective reached", NotConvergedWarning,
                      stacklevel=3)
    theta = problem.from_opt(res.x[best])[0]
    return {"lse": dict(zip(problem.law.params, map(float, theta))), "f": float(res.f[best]),
            "n_conv": int(conv.sum()), "n": len(conv), "converged": bool(conv[best])}


def _free_natural(law: Law, lse: dict[str, float], fixed: dict[str, float]) -> list[str]:
    """Natural parameters that depend on a free LSE parameter (fixed ones get no interval)."""
    base = law.to_natural(lse)
    free = set()
    for k in law.params:
        if k in fixed:
            continue
        moved = law.to_natural({**lse, k: lse[k] + 1e-3})
        free |= {n for n in base if moved[n] != base[n]}
    return [n for n in base if n in free]


def bootstrap_fit(fit: LawFit, data, n_resamples: int = 1000, *, seed: int = 0, level: float = 0.95,
                  options: LBFGSOptions | None = None) -> LawFit:
    """Refit on `n_resamples` resamples of the points (with replacement), all at once, each started from the fit.

    Fills `fit.samples` (LSE rows of converged resamples), `fit.intervals` (percentile intervals of every
    parameter in both forms and of the exponents a, b) and `fit.bootstrap_converged`. Returns the same object.
    """
    law = fit.law
    data = as_data(data)
    inputs, y, _, _ = _targets(law, data)
    problem = Problem.build(law, inputs, y, fit.fixed, fit.ties, fit.bounds, fit.objective_name)
    K = len(y)
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(K, np.full(K, 1.0 / K), size=n_resamples).astype(np.float64)
    x0 = np.repeat(problem.to_opt(fit.theta), n_resamples, axis=0)
    res = _run(problem, x0, weights, fit.delta, options or LBFGSOptions())
    conv = np.isin(res.status, CONVERGED_CODES)
    if conv.mean() < 0.95:
        warnings.warn(f"only {int(conv.sum())}/{n_resamples} bootstrap refits converged; intervals use those",
                      NotConvergedWarning, stacklevel=2)
    samples = problem.from_opt(res.x[conv])
    fit.samples = samples
    fit.level = level
    fit.bootstrap_converged = (int(conv.sum()), n_resamples)
    iv: dict[str, tuple[float, float]] = {}
    nat_rows = [law.to_natural(dict(zip(law.params, row))) for row in samples]
    for j, k in enumerate(law.params):
        if k not in fit.fixed:
            iv[k] = render.percentile_interval(samples[:, j], level)
    for k in _free_natural(law, fit.lse, fit.fixed):
        if k not in iv:
            iv[k] = render.percentile_interval(np.array([r[k] for r in nat_rows], np.float64), level)
    if "alpha" in law.params and "beta" in law.params:
        al, be = samples[:, law.params.index("alpha")], samples[:, law.params.index("beta")]
        iv["exponent_a"] = render.percentile_interval(be / (al + be), level)
        iv["exponent_b"] = render.percentile_interval(al / (al + be), level)
    fit.intervals = iv
    return fit
