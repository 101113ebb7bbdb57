"""Compute-optimal allocation: for a FLOP budget C, the N and D that minimise the loss under C = 6 N D.

Closed form for the Chinchilla law (Hoffmann et al. 2022, Appendix D.2):

    N_opt(C) = G (C/6)^a,   D_opt(C) = G^-1 (C/6)^b,   G = (alpha A / (beta B))^(1/(alpha+beta)),
    a = beta / (alpha + beta),   b = alpha / (alpha + beta),   a + b = 1.

For other laws in N and D (the data-constrained law), a numerical minimisation over log N on the same
constraint. `flops_per_param_token` (6 by default) is the C = k N D convention; use the one the data used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class Allocation:
    """Compute-optimal point(s) for budget(s) C: arrays when C is an array, floats when it is a scalar."""

    C: float | np.ndarray
    N_opt: float | np.ndarray
    D_opt: float | np.ndarray
    tokens_per_param: float | np.ndarray
    loss: float | np.ndarray | None = None
    intervals: dict[str, tuple] = field(default_factory=dict)
    convention: str = "C = 6 N D"

    def to_dict(self) -> dict:
        def conv(v):
            if v is None:
                return None
            a = np.asarray(v, np.float64)
            return float(a) if a.ndim == 0 else a.tolist()

        return {"C": conv(self.C), "N_opt": conv(self.N_opt), "D_opt": conv(self.D_opt),
                "tokens_per_param": conv(self.tokens_per_param), "loss": conv(self.loss),
                "intervals": {k: [conv(v[0]), conv(v[1])] for k, v in self.intervals.items()},
                "convention": self.convention}

    def __str__(self) -> str:
        def f(v):
            a = np.asarray(v)
            return f"{float(a):.4g}" if a.ndim == 0 else np.array2string(a, precision=4)

        def g(name, v):
            iv = self.intervals.get(name)
            return f(v) + (f" [{f(iv[0])}, {f(iv[1])}]" if iv is not None else "")

        s = (f"C={f(self.C)}: N_opt={g('N_opt', self.N_opt)}, D_opt={g('D_opt', self.D_opt)}, "
             f"tokens/param={g('tokens_per_param', self.tokens_per_param)}")
        if self.loss is not None:
            s += f", loss={g('loss', self.loss)}"
        return s + f"  ({self.convention})"


def optimal_exponents(alpha: float, beta: float) -> tuple[float, float]:
    """(a, b) with N_opt ~ C^a, D_opt ~ C^b for the Chinchilla law: a = beta/(alpha+beta), b = alpha/(alpha+beta)."""
    return beta / (alpha + beta), alpha / (alpha + beta)


def chinchilla_optimal(C, A: float, B: float, alpha: float, beta: float, flops_per_param_token: float = 6.0):
    """(N_opt, D_opt) for budget(s) C under C = k N D (closed form; works on arrays and on jax arrays)."""
    G = (alpha * A / (beta * B)) ** (1.0 / (alpha + beta))
    a, b = optimal_exponents(alpha, beta)
    x = np.asarray(C, np.float64) / flops_per_param_token
    return G * x ** a, x ** b / G


def numeric_optimal(loss_fn: Callable[[np.ndarray, np.ndarray], np.ndarray], C,
                    flops_per_param_token: float = 6.0, log10_range: float = 6.0, n_grid: int = 801):
    """(N_opt, D_opt) minimising loss_fn(N, D) with D = C/(k N), by a dense log-N grid then golden-section.

    The grid spans +-`log10_range` decades around N = sqrt(C/k); an optimum on the edge raises.
    """
    Cs = np.atleast_1d(np.asarray(C, np.float64))
    n_out, d_out = np.empty_like(Cs), np.empty_like(Cs)
    gr = (np.sqrt(5.0) - 1.0) / 2.0
    for i, c in enumerate(Cs):
        x = c / flops_per_param_token
        centre = 0.5 * np.log(x)
        logn = np.linspace(centre - log10_range * np.log(10), centre + log10_range * np.log(10), n_grid)
        vals = loss_fn(np.exp(logn), x / np.exp(logn))
        j = int(np.nanargmin(vals))
        if j in (0, n_grid - 1):
            raise ValueError(f"the loss keeps falling at the edge of the search range at C={c:g}: "
                             "the law has no compute-optimal N there")
        lo, hi = logn[j - 1], logn[j + 1]
        for _ in range(80):
            m1, m2 = hi - gr * (hi - lo), lo + gr * (hi - lo)
            f1 = loss_fn(np.exp(np.array([m1])), x / np.exp(np.array([m1])))[0]
            f2 = loss_fn(np.exp(np.array([m2])), x / np.exp(np.array([m2])))[0]
            if f1 < f2:
                hi = m2
            else:
                lo = m1
        n_out[i] = np.exp(0.5 * (lo + hi))
        d_out[i] = x / n_out[i]
    if np.ndim(C) == 0:
        return float(n_out[0]), float(d_out[0])
    return n_out, d_out


def power_optimal(C, k_n: float, a: float, k_d: float, b: float):
    """(N_opt, D_opt) from fitted power laws N_opt = k_n C^a, D_opt = k_d C^b (approaches 1 and 2)."""
    C = np.asarray(C, np.float64)
    return k_n * C ** a, k_d * C ** b
