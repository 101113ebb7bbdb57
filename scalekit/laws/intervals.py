"""Prediction intervals from a bootstrapped fit: parameter resamples times resampled residuals.

For resample b and a point x the draws are pred_b(x) * exp(r*), with r* drawn from the fit's (inflated) in-sample
log residuals, so the interval covers both the uncertainty of the law and the scatter of a new run about it.
"""

from __future__ import annotations

import math

import numpy as np

DRAWS_PER_POINT = 4000          # predictive draws pooled per point (resamples x residual draws)


def sample_predictions(fit, inputs: dict) -> np.ndarray:
    """(resamples, points): the law at `inputs` under each bootstrap sample of its parameters."""
    rows = [fit._predict_with(dict(zip(fit.law.params, map(float, s))), inputs) for s in fit.samples]
    return np.atleast_2d(np.array(rows, np.float64))


def predictive_interval(fit, inputs: dict, residuals: np.ndarray, level: float,
                        rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Percentile prediction interval at `inputs`: bootstrap predictions pred_b(x) times exp(r*), r* drawn from
    `residuals` (see scalekit.laws.compare). Needs a fit with bootstrap samples."""
    P = sample_predictions(fit, inputs)                                 # (B, n)
    draws = max(1, math.ceil(DRAWS_PER_POINT / P.shape[0]))
    r = rng.choice(residuals, size=(P.shape[0], draws, P.shape[1]))
    S = (P[:, None, :] * np.exp(r)).reshape(-1, P.shape[1])
    lo = (1.0 - level) / 2.0
    return np.nanquantile(S, lo, axis=0), np.nanquantile(S, 1.0 - lo, axis=0)
