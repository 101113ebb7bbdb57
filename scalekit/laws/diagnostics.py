"""Diagnostics that say when not to trust a fit: each is a `Diagnostic`, kept on the fit and emitted as a warning.

For a parametric law (`diagnose_law`):
- too_few_points: fewer than 2 points per free parameter plus one (so that the residuals keep more degrees of
  freedom than there are parameters), or fewer distinct values of an input than its terms
  need (a power term with its own exponent needs 3 distinct values of its input);
- not_identified: the Jacobian of the residuals at the optimum is (numerically) rank-deficient, so some direction
  of the parameters leaves the fit unchanged; named by the parameters that move along it;
- at_bound: a parameter sits on one of its bounds (the bound, not the data, decided it);
- below_floor: the fitted irreducible loss E is below a known floor of the loss;
- implausible_exponent: a fitted exponent outside [0.02, 1.5] (published language-model fits lie within it);
- wide_interval: a bootstrap interval of an exponent wider than the exponent itself, or of E wider than half of E.
For approach 2 (`diagnose_isoflop`): optima dropped, and the method's bias on this grid, simulated on a law's
surface sampled at the same points (`isoflop_bias`).
Every warning that says a fit is not identified ends with what to do: fix E, tie exponents, or add runs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from scalekit.laws.errors import ScalingLawWarning

EXPONENTS = ("alpha", "beta", "eta", "alpha_n", "alpha_d")
PLAUSIBLE_EXPONENT = (0.02, 1.5)
POINTS_PER_PARAMETER = 2
SUGGESTION = ("fix E to a known floor (--fix e=LOG_E), tie the exponents (--tie beta=alpha or --law chinchilla_tied), "
              "or add runs (more sizes per budget, more budgets)")


class DiagnosticWarning(ScalingLawWarning):
    """A diagnostic of a fit: it ran, but some of what it says should not be trusted (see `fit.diagnostics`)."""


@dataclass
class Diagnostic:
    """One finding about a fit: a stable `code`, a severity, a one-line message and its numbers."""

    code: str
    severity: str
    message: str
    detail: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        from scalekit.laws.render import jsonable

        return jsonable({"code": self.code, "severity": self.severity, "message": self.message,
                         "detail": self.detail})


def attach_diagnostics(fit, data, floor: float | None = None, emit: bool = True) -> list[Diagnostic]:
    """Diagnose `fit`, keep the result on `fit.diagnostics`, and warn (DiagnosticWarning) for each warning."""
    fit.diagnostics = diagnose_law(fit, data, floor=floor)
    if emit:
        for d in fit.diagnostics:
            if d.severity == "warning":
                warnings.warn(f"[{d.code}] {d.message}", DiagnosticWarning, stacklevel=3)
    return fit.diagnostics


def diagnose_law(fit, data, floor: float | None = None) -> list[Diagnostic]:
    """Every diagnostic of a parametric fit (LawFit) on the data it was fitted to."""
    from scalekit.laws.data import as_data

    data = as_data(data)
    out: list[Diagnostic] = []
    out += _count_checks(fit, data)
    out += _rank_check(fit, data)
    out += _bound_checks(fit)
    if floor is not None and "E" in fit.params and fit.params["E"] < floor * (1 - 1e-6):
        out.append(Diagnostic("below_floor", "warning",
                              f"fitted E = {fit.params['E']:.4g} lies below the known floor {floor:.4g} of the loss: "
                              f"the law's irreducible term is not what the data say; {SUGGESTION}",
                              {"E": fit.params["E"], "floor": floor}))
    for k in EXPONENTS:
        if k in fit.lse and k not in fit.fixed:
            v = fit.lse[k]
            lo, hi = PLAUSIBLE_EXPONENT
            if not lo <= v <= hi:
                out.append(Diagnostic("implausible_exponent", "warning",
                                      f"exponent {k} = {v:.3g} lies outside [{lo:g}, {hi:g}], the range of published "
                                      f"language-model fits; {SUGGESTION}", {"param": k, "value": v}))
    out += _interval_checks(fit)
    return out


def _count_checks(fit, data) -> list[Diagnostic]:
    n_free = len(fit.law.params) - len(fit.fixed) - len(fit.ties)
    out = []
    if fit.n_points < POINTS_PER_PARAMETER * n_free + 1:
        out.append(Diagnostic(
            "too_few_points", "warning",
            f"{fit.n_points} points for {n_free} free parameters of the {fit.law.name} law (fewer than "
            f"{POINTS_PER_PARAMETER * n_free + 1}): the parameters are not identified and its predictions beyond "
            f"the data should not be trusted; {SUGGESTION}", {"n_points": fit.n_points, "n_free": n_free}))
    power = fit.law.power
    if power is not None:
        for c, s, f in power.terms:
            name = fit.law.inputs[f]
            if fit.law.params[s] in fit.fixed or not data.has(name):
                continue
            distinct = len(np.unique(np.round(np.log(data[name]), 9)))
            if distinct < 3:
                out.append(Diagnostic(
                    "too_few_points", "warning",
                    f"{name} takes {distinct} distinct value(s): its exponent {fit.law.params[s]} is not identified; "
                    f"{SUGGESTION}", {"input": name, "distinct": distinct}))
    return out


def _rank_check(fit, data) -> list[Diagnostic]:
    """Singular values of the residual Jacobian (free parameters, centred coordinates) at the optimum."""
    from scalekit.laws.fit import _targets
    from scalekit.laws.objective import Problem

    try:
        inputs, y, _, _ = _targets(fit.law, data)
        pb = Problem.build(fit.law, inputs, y, fit.fixed, fit.ties, fit.bounds, fit.objective_name)
    except ValueError:
        return []
    z0 = pb.to_opt(fit.theta)[0]
    r0 = pb.residuals_np(pb.from_opt(z0)[0])
    J = np.empty((len(r0), len(z0)))
    for j in range(len(z0)):
        h = 1e-6 * max(1.0, abs(z0[j]))
        zp, zm = z0.copy(), z0.copy()
        zp[j] += h
        zm[j] -= h
        J[:, j] = (pb.residuals_np(pb.from_opt(zp)[0]) - pb.residuals_np(pb.from_opt(zm)[0])) / (2 * h)
    if not np.all(np.isfinite(J)):
        return []
    scale = np.linalg.norm(J, axis=0)
    scale[scale == 0] = 1.0
    _, sv, vt = np.linalg.svd(J / scale, full_matrices=False)
    ratio = sv[-1] / sv[0] if sv[0] > 0 else 0.0
    if ratio >= 1e-4 and len(sv) == len(z0):
        return []
    names = [fit.law.params[i] for i in pb.free]
    direction = vt[-1]
    moving = [names[j] for j in np.argsort(-np.abs(direction))[:3] if abs(direction[j]) > 0.2]
    return [Diagnostic("not_identified", "warning",
                       f"the data barely constrain the combination of {', '.join(moving)} (residual Jacobian "
                       f"condition {1 / max(ratio, 1e-300):.2g}): many parameter values fit equally well; "
                       f"{SUGGESTION}", {"singular_value_ratio": float(ratio), "direction": dict(zip(names, direction))})]


def _bound_checks(fit) -> list[Diagnostic]:
    out = []
    for k, (lo, hi) in fit.bounds.items():
        v = fit.lse[k]
        for side, b in (("lower", lo), ("upper", hi)):
            if b is not None and abs(v - b) <= 1e-4 * max(1.0, abs(b)):
                out.append(Diagnostic("at_bound", "warning",
                                      f"{k} = {v:.6g} sits on its {side} bound {b:g}: the bound, not the data, set "
                                      "it; widen or drop the bound, or report the fit as constrained",
                                      {"param": k, "value": v, "bound": b, "side": side}))
    return out


def _interval_checks(fit) -> list[Diagnostic]:
    out = []
    for k in EXPONENTS + ("E",):
        iv = fit.intervals.get(k)
        if iv is None:
            continue
        v = fit.params.get(k, fit.lse.get(k))
        width = iv[1] - iv[0]
        limit = 0.5 * abs(v) if k == "E" else abs(v)
        if np.isfinite(width) and width > limit:
            out.append(Diagnostic("wide_interval", "warning",
                                  f"the {round((fit.level or 0.95) * 100)}% interval of {k} [{iv[0]:.3g}, {iv[1]:.3g}] "
                                  f"is wider than {'half of ' if k == 'E' else ''}its value {v:.3g}: the data do not "
                                  f"pin it down; {SUGGESTION}", {"param": k, "interval": list(iv), "value": v}))
    return out


def attach_isoflop_diagnostics(fit, data, surface="fit", emit: bool = True) -> list[Diagnostic]:
    """Diagnose an approach-2 fit, keep the result on `fit.diagnostics` and warn for each warning.

    surface="fit" fits the Chinchilla law (approach 3, variable projection) to the same points to simulate approach
    2's bias on this grid; pass a LawFit to use that one, or None to skip the simulation."""
    if isinstance(surface, str) and surface == "fit":
        from scalekit.laws.fit import fit_law

        try:
            surface = fit_law(data, "chinchilla", diagnose=False)
        except ValueError:
            surface = None
    fit.diagnostics = diagnose_isoflop(fit, data, surface)
    if emit:
        for d in fit.diagnostics:
            if d.severity == "warning":
                warnings.warn(f"[{d.code}] {d.message}", DiagnosticWarning, stacklevel=3)
    return fit.diagnostics


def diagnose_isoflop(fit, data, surface=None) -> list[Diagnostic]:
    """Approach-2 diagnostics: budgets dropped, and (given a fitted law `surface`) the method's simulated bias."""
    out = []
    dropped = fit.details.get("dropped", []) if isinstance(fit.details, dict) else []
    if dropped:
        out.append(Diagnostic("approach2_dropped", "warning",
                              f"{len(dropped)} IsoFLOP budget(s) gave no usable optimum and were dropped: "
                              f"{', '.join(f'{b:.3g}' for b in dropped)}", {"budgets": list(dropped)}))
    if surface is not None:
        try:
            from scalekit.laws.isoflop import isoflop_bias
        except ImportError:
            return out
        kw = dict(fit.details.get("settings", {}) if isinstance(fit.details, dict) else {})
        try:
            bias = isoflop_bias(data, lambda N, D: surface.predict(N=N, D=D), by=fit.by, **kw)
        except (ValueError, np.linalg.LinAlgError) as err:
            return out + [Diagnostic("approach2_bias", "info", f"bias not estimated: {err}", {})]
        b = float(bias.get("a_bias", np.nan))
        ratio = float(bias.get("n_opt_ratio_at_max_budget", np.nan))
        big = (np.isfinite(b) and abs(b) > 0.02) or (np.isfinite(ratio) and abs(np.log(ratio)) > np.log(1.1))
        detail = {k: v for k, v in bias.items() if k != "fit"}
        out.append(Diagnostic("approach2_bias", "warning" if big else "info",
                              f"approach 2 ({kw.get('optimum', 'robust')}) on this grid, simulated on the fitted "
                              f"{surface.law.name} surface sampled at the same points, gives a = "
                              f"{bias.get('a_fit', np.nan):.4f} where the surface's own is "
                              f"{bias.get('a_true', np.nan):.4f} (bias {b:+.4f}; N_opt at the largest budget "
                              f"x{ratio:.3f} of the surface's)", detail))
    return out
