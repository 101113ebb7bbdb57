"""The Huber objective on log residuals, summed over points, with its gradient; and the problem set-up around it.

objective(theta) = sum_i w_i Huber_delta(log y_model(theta, x_i) - log y_i),
Huber_delta(r) = r^2 / 2 for |r| <= delta, else delta (|r| - delta / 2)   (scipy.special.huber's convention).

The sum (not the mean) is the convention of Besiroglu et al. 2024: Chinchilla's averaged loss let the optimiser
stop early. Weights w_i are 1 for a plain fit and multinomial counts for a bootstrap resample, so every resample
has the same shapes and they all run in one vmapped program.

For sums of power terms the value and gradient are written by hand (one pass over the points, no logsumexp
bookkeeping: about twice as fast as autodiff on CPU), and the log features are centred: the optimiser moves
c' = c - s * mean(log x) instead of c, which decorrelates intercept and exponent and halves the L-BFGS iterations.
The centring is an exact reparameterisation; results are mapped back.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from scalekit.laws.forms import Law, PowerTerms


def huber_np(r: np.ndarray, delta: float) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


@functools.lru_cache(maxsize=None)
def power_value_and_grad(spec: PowerTerms, n_params: int):
    """(theta, feats (F, K), logy (K,), w (K,), delta ()) -> (objective, gradient) for a power-term law.

    Each parameter index appears in one role only (no tied exponents).
    """
    terms, const = spec.terms, spec.const

    def vg(theta, feats, logy, w, delta):
        if const is not None:                     # pred = e + log(1 + sum_j exp(c_j - e - s_j x_j))
            e = theta[const]
            us = [jnp.exp(theta[c] - e - theta[s] * feats[f]) for c, s, f in terms]
            tot = 1.0 + sum(us)
            pred = e + jnp.log(tot)
        elif len(terms) == 1:                     # pred = c - s x
            c, s, f = terms[0]
            pred = theta[c] - theta[s] * feats[f]
            us, tot = [None], None
        else:                                     # LSE without a constant, shifted by the first term
            c0, s0, f0 = terms[0]
            t0 = theta[c0] - theta[s0] * feats[f0]
            us = [None] + [jnp.exp(theta[c] - theta[s] * feats[f] - t0) for c, s, f in terms[1:]]
            tot = 1.0 + sum(us[1:])
            pred = t0 + jnp.log(tot)
        r = pred - logy
        a = jnp.abs(r)
        h = jnp.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))
        hp = w * jnp.clip(r, -delta, delta)       # d Huber / d pred
        if tot is not None:
            hp = hp / tot
        grad = [None] * n_params
        for (c, s, f), u in zip(terms, us):
            q = hp if u is None else hp * u       # d objective / d c_j per point
            grad[c] = jnp.sum(q)
            grad[s] = -jnp.dot(q, feats[f])
        if const is not None:
            grad[const] = jnp.sum(hp)
        # separate reductions: ~30% faster on CPU than one reduction over a stacked array
        return jnp.sum(w * h), jnp.stack(grad)

    return vg


@functools.lru_cache(maxsize=None)
def autodiff_value_and_grad(law: Law):
    """Value and gradient by jax autodiff for laws without the power-term structure (e.g. data-constrained)."""

    def value(theta, feats, logy, w, delta):
        r = law.log_predict(jnp, theta, feats) - logy
        a = jnp.abs(r)
        return jnp.sum(w * jnp.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta)))

    return jax.value_and_grad(value)


@functools.lru_cache(maxsize=None)
def with_fixed(vg, free: tuple[int, ...], n_params: int):
    """Optimise only the `free` indices; the full vector is rebuilt from `base` (an extra data argument)."""
    free_idx = np.asarray(free)

    def vg_free(theta_free, feats, logy, w, delta, base):
        full = base.at[free_idx].set(theta_free)
        f, g = vg(full, feats, logy, w, delta)
        return f, g[free_idx]

    return vg_free


@dataclass(frozen=True)
class Problem:
    """A law bound to data: centred log features, log targets, and the maps between user and optimiser space."""

    law: Law
    feats: np.ndarray          # (F, K) log inputs, centred for power-term laws
    logy: np.ndarray           # (K,)
    shift: np.ndarray          # (F,) the centring subtracted from each log feature
    free: tuple[int, ...]      # indices of the parameters being fitted
    base: np.ndarray           # (P,) values of the fixed parameters (free slots ignored)

    @classmethod
    def build(cls, law: Law, inputs: dict[str, np.ndarray], y: np.ndarray, fixed: dict[str, float] | None = None):
        feats = np.stack([np.log(np.asarray(inputs[k], np.float64)) for k in law.inputs])
        fixed = dict(fixed or {})
        unknown = set(fixed) - set(law.params)
        if unknown:
            raise ValueError(f"cannot fix {sorted(unknown)}: law {law.name!r} has parameters {law.params}")
        shift = np.zeros(len(law.inputs))
        if law.power is not None:
            # centre a feature only when every term using it has a free intercept (a fixed intercept with a free
            # exponent would stop being fixed in the centred coordinates)
            for f in range(len(law.inputs)):
                if all(law.params[c] not in fixed for c, s, ff in law.power.terms if ff == f):
                    shift[f] = feats[f].mean()
        base = np.array([fixed.get(k, 0.0) for k in law.params], np.float64)
        free = tuple(i for i, k in enumerate(law.params) if k not in fixed)
        if not free:
            raise ValueError("every parameter is fixed: nothing to fit")
        return cls(law, feats - shift[:, None], np.log(np.asarray(y, np.float64)), shift, free, base)

    @property
    def n_free(self) -> int:
        return len(self.free)

    def _shift_matrix(self, sign: float) -> np.ndarray:
        """Affine map on the full vector: c' = c + sign * s * shift_f for every power term (c, s, f)."""
        P = len(self.law.params)
        M = np.eye(P)
        if self.law.power is not None:
            for c, s, f in self.law.power.terms:
                M[c, s] += sign * self.shift[f]
        return M

    def to_opt(self, theta_full: np.ndarray) -> np.ndarray:
        """User (LSE) parameters, rows (S, P), to the optimiser's free centred parameters (S, n_free)."""
        z = np.atleast_2d(theta_full) @ self._shift_matrix(-1.0).T
        return z[:, list(self.free)]

    def from_opt(self, theta_free: np.ndarray) -> np.ndarray:
        """Optimiser rows (S, n_free) back to full user (LSE) parameter rows (S, P)."""
        theta_free = np.atleast_2d(theta_free)
        full = np.tile(self.base_centred(), (theta_free.shape[0], 1))
        full[:, list(self.free)] = theta_free
        return full @ self._shift_matrix(+1.0).T

    def base_centred(self) -> np.ndarray:
        return (self._shift_matrix(-1.0) @ self.base)

    def value_and_grad(self):
        """The hashable value-and-grad function the batched L-BFGS runs, and whether it takes `base`."""
        law = self.law
        P = len(law.params)
        vg = power_value_and_grad(law.power, P) if law.power is not None else autodiff_value_and_grad(law)
        if len(self.free) == P:
            return vg, False
        return with_fixed(vg, self.free, P), True

    def objective_np(self, theta_full: np.ndarray, w: np.ndarray | None = None, delta: float = 1e-3) -> float:
        """The summed Huber objective at user parameters, in float64 numpy (for reporting and checks)."""
        feats = self.feats + self.shift[:, None]
        inputs = {k: np.exp(feats[i]) for i, k in enumerate(self.law.inputs)}
        r = self.law.log_predict_np(np.asarray(theta_full, np.float64), inputs) - self.logy
        w = np.ones_like(r) if w is None else w
        return float(np.sum(w * huber_np(r, delta)))
