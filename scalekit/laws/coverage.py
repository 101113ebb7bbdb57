"""Inference-time scaling: pass@k from per-problem samples, coverage curves, and the coverage law.

Unbiased pass@k (Chen et al. 2021) from n samples of which c are correct:

    pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n - c + 1}^{n} (1 - k / i),   and 1 where n - c < k.

Coverage(k) is the mean of pass@k over problems. Brown et al. (2024) model it as coverage(k) = exp(a k^b) with
a < 0, b < 0: -log coverage is a power law in k, fitted here in log space with the same Huber machinery as the
loss laws (`fit_law(..., law="coverage")`).
"""

from __future__ import annotations

import numpy as np

from scalekit.laws.data import ScalingData
from scalekit.laws.errors import InvalidDataError


def pass_at_k(n, c, k) -> np.ndarray:
    """Unbiased pass@k for n samples with c correct (broadcast over n, c, k); exact product form in log space.

    Cost is O(max n) per distinct (n, k) pair: the sums of log(1 - k/i) are shared through cumulative sums.
    """
    n, c, k = np.broadcast_arrays(np.asarray(n), np.asarray(c), np.asarray(k))
    if np.any(n < 1) or np.any(c < 0) or np.any(c > n) or np.any(k < 1):
        raise InvalidDataError("pass@k needs n >= 1, 0 <= c <= n and k >= 1")
    if np.any(k > n):
        raise InvalidDataError("pass@k is defined for k <= n (unbiased estimator)")
    n, c, k = n.astype(np.int64), c.astype(np.int64), k.astype(np.int64)
    out = np.empty(n.shape, np.float64)
    flat_n, flat_c, flat_k, flat_o = n.ravel(), c.ravel(), k.ravel(), out.ravel()
    pairs = np.unique(np.stack([flat_n, flat_k], 1), axis=0)
    for nn, kk in pairs:
        m = (flat_n == nn) & (flat_k == kk)
        # rc[j] = sum of log(1 - k/i) over the top j values i = n, n-1, ..., n-j+1 (a sum from the top, so the
        # product for c correct samples is rc[c] exactly, with no cancellation)
        i = np.arange(nn, 0, -1, dtype=np.float64)
        terms = np.log1p(-kk / np.maximum(i, kk + 1.0))
        rc = np.concatenate([[0.0], np.cumsum(terms)])
        cc = flat_c[m]
        flat_o[m] = np.where(nn - cc < kk, 1.0, 0.0 - np.expm1(rc[np.minimum(cc, nn)]))
    return out


def coverage_curve(n, c, ks) -> np.ndarray:
    """Mean pass@k over problems, for each k in `ks` (n, c: per-problem samples and correct counts)."""
    n = np.asarray(n)
    c = np.asarray(c)
    ks = np.asarray(ks)
    return np.array([pass_at_k(n, c, k).mean() for k in ks])


def log_spaced_ks(k_max: int, num: int = 40) -> np.ndarray:
    """Distinct integers of `num` log-spaced values from 1 to k_max, rounded (the llmonkeys curves: 37 distinct k
    up to 10,000)."""
    return np.unique(np.round(np.logspace(0, np.log10(k_max), num)).astype(np.int64))


def coverage_data(k, coverage) -> ScalingData:
    """A coverage curve as data for `fit_law(..., law="coverage")` (the `loss` column holds coverage)."""
    return ScalingData.from_arrays(k=k, loss=coverage)


def fit_coverage(k=None, coverage=None, *, n=None, c=None, ks=None, **fit_kw):
    """Fit coverage(k) = exp(a k^b) to a curve (k, coverage), or to per-problem samples (n, c) at `ks`.

    Points with coverage 1 are dropped with a warning (log(-log 1) is undefined); the fitted parameters are
    `params['a']`, `params['b']`. Extra keyword arguments go to `fit_law` (delta, grid, bootstrap, ...).
    """
    from scalekit.laws.fit import fit_law

    if n is not None or c is not None:
        if n is None or c is None:
            raise ValueError("give both n and c (per-problem samples and correct counts)")
        ks = log_spaced_ks(int(np.min(n))) if ks is None else np.asarray(ks)
        coverage = coverage_curve(n, c, ks)
        k = ks
    if k is None or coverage is None:
        raise ValueError("give (k, coverage) or (n, c)")
    return fit_law(coverage_data(k, coverage), "coverage", **fit_kw)
