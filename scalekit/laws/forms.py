"""The scaling-law forms: what each law predicts, its parameters, and its default starting grid.

Every law is fitted in log space: the model gives log y, the residual is log y_observed - log y_model. Laws built
from power terms use the log-sum-exp (LSE) parameterisation of Hoffmann et al. (2022) / Besiroglu et al. (2024):

    log L = LSE(a - alpha log N, b - beta log D, e)   <=>   L = E + A / N^alpha + B / D^beta,  A = e^a, B = e^b, E = e^e

Parameters are reported in both forms: `lse` (a, b, e, alpha, beta: what the optimiser moves) and natural (A, B, E,
alpha, beta). Units are the caller's: N in parameters (say which count: total, non-embedding...), D in tokens,
C in FLOPs (6ND unless the caller says otherwise), loss in nats per token.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

# The Chinchilla starting grid (Hoffmann et al. 2022; Besiroglu et al. 2024): 6 x 6 x 5 x 5 x 5 = 4,500 starts.
CHINCHILLA_GRID_VALUES = {
    "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
    "e": (-1.0, -0.5, 0.0, 0.5, 1.0),
    "alpha": (0.0, 0.5, 1.0, 1.5, 2.0),
    "beta": (0.0, 0.5, 1.0, 1.5, 2.0),
}

# Muennighoff et al. 2023 (datablations), base constants fitted on Chinchilla-style C4 runs (alpha tied to beta)
# and repetition constants fitted on their 182 runs with the base frozen. LSE form.
DATABLATIONS_PUBLISHED = {"a": 6.255414, "b": 7.3049974, "e": 0.6254804, "alpha": 0.3526596, "beta": 0.3526596,
                          "log_rn_star": float(np.log(5.309743)), "log_rd_star": float(np.log(15.387756))}


def product_grid(values: dict[str, tuple[float, ...]], order: tuple[str, ...]) -> np.ndarray:
    """Cartesian product of per-parameter values, columns in `order`, rows in itertools.product order."""
    return np.array(list(itertools.product(*(values[k] for k in order))), dtype=np.float64)


@dataclass(frozen=True)
class PowerTerms:
    """log y = LSE_j(c_j - s_j x_j [, e]) with x_j = log(input_j): indices into the parameter vector.

    `terms` holds (intercept index, exponent index, feature index); `const` the index of e, or None. Hashable, so
    it keys the cached analytic value-and-gradient.
    """

    terms: tuple[tuple[int, int, int], ...]
    const: int | None


@dataclass(frozen=True)
class Law:
    """A law: inputs it needs, fit parameters (LSE form), conversion to natural units, default grid.

    `power` is set for laws that are sums of power terms (analytic gradients, centred features, and variable
    projection: for fixed exponents such a law is linear in its coefficients A_j = e^{c_j} and E = e^e);
    `log_predict(theta, feats)` is the general jax/numpy form (feats, shape (n_inputs, K): the log inputs, or
    `feature_scale * log input + feature_offset` when the law declares a feature map).
    `ties` are the law's own ties (param, source): `param` is always equal to `source` (chinchilla_tied).
    `target` says what y is: "loss" (lower is better), or "-log coverage" for the coverage law.
    `convention` says which N and which C the law expects.
    """

    name: str
    inputs: tuple[str, ...]
    params: tuple[str, ...]
    natural_names: tuple[str, ...]
    to_natural: Callable[[dict[str, float]], dict[str, float]] = field(compare=False)
    from_natural: Callable[[dict[str, float]], dict[str, float]] = field(compare=False)
    grid_values: tuple[tuple[str, tuple[float, ...]], ...] = ()
    power: PowerTerms | None = None
    log_predict: Callable | None = field(default=None, compare=False)
    target: str = "loss"
    formula: str = ""
    feature_scale: tuple[float, ...] | None = None
    feature_offset: tuple[float, ...] | None = None
    ties: tuple[tuple[str, str], ...] = ()
    convention: str = ""

    @property
    def separable(self) -> bool:
        """Whether variable projection applies: a sum of power terms (coefficients enter linearly)."""
        return self.power is not None

    def default_grid(self) -> np.ndarray:
        return product_grid(dict(self.grid_values), self.params)

    def features(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """(F, K) features the law is written in: log inputs, through the law's feature map when it has one."""
        feats = np.stack([np.log(np.asarray(inputs[k], np.float64)) for k in self.inputs])
        if self.feature_scale is not None:
            shape = (-1,) + (1,) * (feats.ndim - 1)
            feats = (np.asarray(self.feature_scale).reshape(shape) * feats
                     + np.asarray(self.feature_offset or (0.0,) * len(self.inputs)).reshape(shape))
        return feats

    def log_predict_np(self, theta: np.ndarray, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """log y for a parameter vector (LSE form, `params` order) and named inputs; float64 numpy."""
        feats = self.features(inputs)
        if self.power is not None:
            return _power_log_predict(np, self.power, np.asarray(theta, np.float64), feats)
        return np.asarray(self.log_predict(np, np.asarray(theta, np.float64), feats))


def _power_log_predict(xp, spec: PowerTerms, theta, feats):
    """Numerically stable LSE of the power terms (works with numpy or jax.numpy)."""
    parts = [theta[c] - theta[s] * feats[f] for c, s, f in spec.terms]
    if spec.const is not None:
        parts.append(theta[spec.const] + 0.0 * feats[0])
    if len(parts) == 1:
        return parts[0]
    stacked = xp.stack(parts)
    m = xp.max(stacked, axis=0)
    return m + xp.log(xp.sum(xp.exp(stacked - m), axis=0))


# --------------------------------------------------------------------------------------------------------------
# Chinchilla L(N, D) = E + A / N^alpha + B / D^beta


def _chin_nat(p: dict[str, float]) -> dict[str, float]:
    return {"A": float(np.exp(p["a"])), "B": float(np.exp(p["b"])), "E": float(np.exp(p["e"])),
            "alpha": p["alpha"], "beta": p["beta"]}


def _chin_lse(p: dict[str, float]) -> dict[str, float]:
    return {"a": float(np.log(p["A"])), "b": float(np.log(p["B"])), "e": float(np.log(p["E"])),
            "alpha": p["alpha"], "beta": p["beta"]}


CHINCHILLA = Law(
    name="chinchilla", inputs=("N", "D"), params=("a", "b", "e", "alpha", "beta"),
    natural_names=("A", "B", "E", "alpha", "beta"), to_natural=_chin_nat, from_natural=_chin_lse,
    grid_values=tuple(CHINCHILLA_GRID_VALUES.items()), power=PowerTerms(((0, 3, 0), (1, 4, 1)), 2),
    formula="L(N, D) = E + A / N^alpha + B / D^beta",
    convention="N: parameters (any count, stated by the caller), D: training tokens; C = 6 N D for allocation")

CHINCHILLA_TIED = Law(
    name="chinchilla_tied", inputs=("N", "D"), params=("a", "b", "e", "alpha", "beta"),
    natural_names=("A", "B", "E", "alpha", "beta"), to_natural=_chin_nat, from_natural=_chin_lse,
    grid_values=tuple(CHINCHILLA_GRID_VALUES.items()), power=PowerTerms(((0, 3, 0), (1, 4, 1)), 2),
    ties=(("beta", "alpha"),), formula="L(N, D) = E + A / N^alpha + B / D^alpha  (beta tied to alpha)",
    convention="N: parameters, D: training tokens; C = 6 N D for allocation (then N_opt ~ C^0.5)")


# --------------------------------------------------------------------------------------------------------------
# Gadre et al. 2024 (over-training): L(C, M) = E + (a M^eta + b M^-eta) C^-eta, M = D / N, C = 6 N D.
# With C / M = 6 N^2 and C M = 6 D^2 the two terms are power terms in those features, sharing the exponent:
#   log L = LSE(log_a - eta log(6 N^2), log_b - eta log(6 D^2), e).
# It is the Chinchilla law with alpha = beta = 2 eta, reparameterised (A = a 6^-eta, B = b 6^-eta): same optimum,
# its own parameters and intervals.


def _gadre_nat(p: dict[str, float]) -> dict[str, float]:
    return {"a": float(np.exp(p["log_a"])), "b": float(np.exp(p["log_b"])), "E": float(np.exp(p["e"])),
            "eta": p["eta"]}


def _gadre_lse(p: dict[str, float]) -> dict[str, float]:
    return {"log_a": float(np.log(p["a"])), "log_b": float(np.log(p["b"])), "e": float(np.log(p["E"])),
            "eta": p["eta"]}


GADRE = Law(
    name="gadre", inputs=("N", "D"), params=("log_a", "log_b", "e", "eta"), natural_names=("a", "b", "E", "eta"),
    to_natural=_gadre_nat, from_natural=_gadre_lse,
    grid_values=(("log_a", (0.0, 5.0, 10.0, 15.0)), ("log_b", (0.0, 5.0, 10.0, 15.0)),
                 ("e", CHINCHILLA_GRID_VALUES["e"]), ("eta", (0.05, 0.15, 0.3, 0.5, 1.0))),
    power=PowerTerms(((0, 3, 0), (1, 3, 1)), 2), feature_scale=(2.0, 2.0),
    feature_offset=(float(np.log(6.0)), float(np.log(6.0))),
    formula="L(C, M) = E + (a M^eta + b M^-eta) C^-eta,  M = D / N (tokens per parameter), C = 6 N D",
    convention="inputs N (parameters) and D (tokens); C = 6 N D and M = D / N as in Gadre et al. 2024")


# --------------------------------------------------------------------------------------------------------------
# Kaplan et al. 2020, eq. 1.5: L(N, D) = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D  (no irreducible term;
# N is the non-embedding parameter count in the paper). Fitted in log form:
#   log L = alpha_D * logaddexp((alpha_N / alpha_D) (log N_c - log N), log D_c - log D).


def _kaplan_nd_log_predict(xp, theta, feats):
    log_nc, log_dc, alpha_n, alpha_d = (theta[i] for i in range(4))
    u = (alpha_n / alpha_d) * (log_nc - feats[0])
    v = log_dc - feats[1]
    m = xp.maximum(u, v)
    return alpha_d * (m + xp.log(xp.exp(u - m) + xp.exp(v - m)))


def _kaplan_nd_nat(p: dict[str, float]) -> dict[str, float]:
    return {"N_c": float(np.exp(p["log_nc"])), "D_c": float(np.exp(p["log_dc"])), "alpha_N": p["alpha_n"],
            "alpha_D": p["alpha_d"]}


def _kaplan_nd_lse(p: dict[str, float]) -> dict[str, float]:
    return {"log_nc": float(np.log(p["N_c"])), "log_dc": float(np.log(p["D_c"])), "alpha_n": p["alpha_N"],
            "alpha_d": p["alpha_D"]}


KAPLAN_ND = Law(
    name="kaplan_nd", inputs=("N", "D"), params=("log_nc", "log_dc", "alpha_n", "alpha_d"),
    natural_names=("N_c", "D_c", "alpha_N", "alpha_D"), to_natural=_kaplan_nd_nat, from_natural=_kaplan_nd_lse,
    grid_values=(("log_nc", tuple(np.log([1e8, 1e11, 1e14, 1e17]))), ("log_dc", tuple(np.log([1e8, 1e11, 1e14, 1e17]))),
                 ("alpha_n", (0.03, 0.076, 0.2, 0.5)), ("alpha_d", (0.03, 0.095, 0.2, 0.5))),
    log_predict=_kaplan_nd_log_predict,
    formula="L(N, D) = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D  (Kaplan et al. 2020, eq. 1.5)",
    convention="N: non-embedding parameters in the paper (say which count you pass), D: training tokens; "
               "C = 6 N D for allocation")


# --------------------------------------------------------------------------------------------------------------
# Single-variable power laws: Kaplan L(N), L(D), L(C); post-training metric against fine-tuning data or compute.


def _single_nat(var: str, irreducible: bool):
    def to_nat(p: dict[str, float]) -> dict[str, float]:
        out = {"A": float(np.exp(p["a"])), "alpha": p["alpha"]}
        if irreducible:
            out["E"] = float(np.exp(p["e"]))
        # Kaplan's form L = (X_c / X)^alpha: X_c = A^(1/alpha)
        out[f"{var}_c"] = float(np.exp(p["a"] / p["alpha"])) if p["alpha"] != 0 else float("inf")
        return out

    def to_lse(p: dict[str, float]) -> dict[str, float]:
        out = {"a": float(np.log(p["A"])), "alpha": p["alpha"]}
        if irreducible:
            out["e"] = float(np.log(p["E"]))
        return out

    return to_nat, to_lse


@functools.lru_cache(maxsize=None)
def power_law(name: str, var: str, irreducible: bool = True) -> Law:
    """y(X) = [E +] A / X^alpha, fitted as log y = LSE(a - alpha log X [, e])."""
    to_nat, to_lse = _single_nat(var, irreducible)
    if irreducible:
        params = ("a", "e", "alpha")
        spec = PowerTerms(((0, 2, 0),), 1)
        grid = (("a", CHINCHILLA_GRID_VALUES["a"]), ("e", CHINCHILLA_GRID_VALUES["e"]),
                ("alpha", CHINCHILLA_GRID_VALUES["alpha"]))
        formula = f"y({var}) = E + A / {var}^alpha"
    else:
        params = ("a", "alpha")
        spec = PowerTerms(((0, 1, 0),), None)
        grid = (("a", CHINCHILLA_GRID_VALUES["a"]), ("alpha", CHINCHILLA_GRID_VALUES["alpha"]))
        formula = f"y({var}) = A / {var}^alpha = ({var}_c / {var})^alpha"
    nat = ("A", "alpha") + (("E",) if irreducible else ()) + (f"{var}_c",)
    return Law(name=name if irreducible else f"{name}_noE", inputs=(var,), params=params, natural_names=nat,
               to_natural=to_nat, from_natural=to_lse, grid_values=grid, power=spec, formula=formula)


# --------------------------------------------------------------------------------------------------------------
# Coverage under repeated sampling: coverage(k) = exp(a k^b), a < 0, b < 0  <=>  -log coverage = (-a) k^b.


def _cov_nat(p: dict[str, float]) -> dict[str, float]:
    return {"a": -float(np.exp(p["log_neg_a"])), "b": -p["neg_b"]}


def _cov_lse(p: dict[str, float]) -> dict[str, float]:
    return {"log_neg_a": float(np.log(-p["a"])), "neg_b": -p["b"]}


COVERAGE = Law(
    name="coverage", inputs=("k",), params=("log_neg_a", "neg_b"), natural_names=("a", "b"),
    to_natural=_cov_nat, from_natural=_cov_lse,
    grid_values=(("log_neg_a", (-6.0, -4.0, -2.0, 0.0, 2.0)), ("neg_b", (0.0, 0.25, 0.5, 1.0, 1.5))),
    power=PowerTerms(((0, 1, 0),), None), target="-log coverage",
    formula="coverage(k) = exp(a k^b); fitted as log(-log coverage) = log(-a) + b log k")


# --------------------------------------------------------------------------------------------------------------
# Data-constrained law (Muennighoff et al. 2023): repeated tokens and excess parameters decay in value.


def chinchilla_n_opt_for_tokens(xp, a, b, alpha, beta, tokens):
    """N that is compute-optimal when the optimal D equals `tokens` under the Chinchilla law (A = e^a, B = e^b).

    From N_opt = G (C/6)^(beta/(alpha+beta)), D_opt = (C/6)^(alpha/(alpha+beta)) / G,
    G = (alpha A/(beta B))^(1/(alpha+beta)).
    """
    G = xp.exp((xp.log(alpha / beta) + a - b) / (alpha + beta))
    return G * (tokens * G) ** (beta / alpha)


def _dc_log_predict(xp, theta, feats):
    a, b, e, alpha, beta, log_rn, log_rd = (theta[i] for i in range(7))
    N, D, U = xp.exp(feats[0]), xp.exp(feats[1]), xp.exp(feats[2])
    rn_star, rd_star = xp.exp(log_rn), xp.exp(log_rd)
    R_D = xp.maximum(D / U - 1.0, 0.0)
    D_eff = U + U * rd_star * (1.0 - xp.exp(-R_D / rd_star))
    U_N = xp.minimum(N, chinchilla_n_opt_for_tokens(xp, a, b, alpha, beta, U))
    R_N = xp.maximum(N / U_N - 1.0, 0.0)
    N_eff = U_N + U_N * rn_star * (1.0 - xp.exp(-R_N / rn_star))
    t1 = a - alpha * xp.log(N_eff)
    t2 = b - beta * xp.log(D_eff)
    m = xp.maximum(xp.maximum(t1, t2), e)
    return m + xp.log(xp.exp(t1 - m) + xp.exp(t2 - m) + xp.exp(e - m))


def _dc_nat(p: dict[str, float]) -> dict[str, float]:
    out = _chin_nat(p)
    out["R_N*"] = float(np.exp(p["log_rn_star"]))
    out["R_D*"] = float(np.exp(p["log_rd_star"]))
    return out


def _dc_lse(p: dict[str, float]) -> dict[str, float]:
    out = _chin_lse(p)
    out["log_rn_star"] = float(np.log(p["R_N*"]))
    out["log_rd_star"] = float(np.log(p["R_D*"]))
    return out


DATA_CONSTRAINED = Law(
    name="data_constrained", inputs=("N", "D", "U"),
    params=("a", "b", "e", "alpha", "beta", "log_rn_star", "log_rd_star"),
    natural_names=("A", "B", "E", "alpha", "beta", "R_N*", "R_D*"), to_natural=_dc_nat, from_natural=_dc_lse,
    grid_values=tuple(CHINCHILLA_GRID_VALUES.items()) + (("log_rn_star", (0.0, 1.0, 2.0, 3.0, 4.0)),
                                                         ("log_rd_star", (0.0, 1.0, 2.0, 3.0, 4.0))),
    log_predict=_dc_log_predict,
    formula="L = E + A / N'^alpha + B / D'^beta, D' = U + U R_D* (1 - exp(-R_D/R_D*)), "
            "N' = U_N + U_N R_N* (1 - exp(-R_N/R_N*))")


LAWS: dict[str, Law] = {
    "chinchilla": CHINCHILLA,
    "chinchilla_tied": CHINCHILLA_TIED,
    "gadre": GADRE,
    "kaplan_nd": KAPLAN_ND,
    "kaplan_n": power_law("kaplan_n", "N"),
    "kaplan_d": power_law("kaplan_d", "D"),
    "kaplan_c": power_law("kaplan_c", "C"),
    "posttrain": power_law("posttrain", "X"),
    "coverage": COVERAGE,
    "data_constrained": DATA_CONSTRAINED,
}


def get_law(name: str | Law, irreducible: bool = True) -> Law:
    """Look a law up by name; `irreducible=False` drops E from the single-variable power laws."""
    if isinstance(name, Law):
        return name
    key = name.lower().replace("-", "_")
    if key not in LAWS:
        raise ValueError(f"unknown law {name!r}; known: {', '.join(LAWS)}")
    law = LAWS[key]
    if not irreducible:
        if law.power is None or law.power.const is None or len(law.inputs) != 1:
            raise ValueError(f"law {law.name!r} has no optional irreducible term")
        return power_law(key, law.inputs[0], irreducible=False)
    return law


def chinchilla_loss(N, D, A: float, B: float, E: float, alpha: float, beta: float):
    """L(N, D) = E + A / N^alpha + B / D^beta (numpy, natural units)."""
    return E + A / np.asarray(N, np.float64) ** alpha + B / np.asarray(D, np.float64) ** beta


def data_constrained_loss(N, D, U, params: dict[str, float] | None = None) -> np.ndarray:
    """The data-constrained law in natural inputs; `params` in LSE form (default: the published datablations fit)."""
    p = dict(DATABLATIONS_PUBLISHED if params is None else params)
    theta = np.array([p[k] for k in DATA_CONSTRAINED.params], np.float64)
    N, D, U = np.broadcast_arrays(*(np.asarray(v, np.float64) for v in (N, D, U)))
    return np.exp(DATA_CONSTRAINED.log_predict_np(theta, {"N": N, "D": D, "U": U}))
