"""pass@k against exact enumeration; coverage curves and fits on llmonkeys_coverage (read in place)."""

from __future__ import annotations

import itertools
import warnings
from math import comb
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scalekit.laws import (DroppedPointsWarning, InvalidDataError, coverage_curve, fit_coverage, log_spaced_ks,
                           pass_at_k)

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def _enumerate(n: int, c: int, k: int) -> float:
    """Fraction of the k-subsets of n samples (c correct) that contain a correct one."""
    correct = set(range(c))
    subsets = list(itertools.combinations(range(n), k))
    return sum(bool(correct & set(s)) for s in subsets) / len(subsets)


def test_pass_at_k_equals_exact_enumeration():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(_enumerate(n, c, k), abs=1e-13), (n, c, k)


def test_pass_at_k_large_n_matches_binomial_ratio_and_broadcasts():
    n, c = 10000, np.array([0, 1, 37, 9990, 10000])
    k = 100
    exact = np.array([1 - comb(n - ci, k) / comb(n, k) for ci in c])
    np.testing.assert_allclose(pass_at_k(n, c, k), exact, rtol=1e-12, atol=1e-15)
    assert pass_at_k(10, 3, np.array([1, 2, 8])).shape == (3,)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    with pytest.raises(InvalidDataError):
        pass_at_k(10, 11, 1)
    with pytest.raises(InvalidDataError):
        pass_at_k(10, 3, 11)


@pytest.fixture(scope="module")
def monkeys():
    folder = SHARED_DATA / "llmonkeys_coverage"
    if not folder.is_dir():
        pytest.skip(f"reference data not found at {folder} (a user's clone has no ../shared)")
    return (pd.read_csv(folder / "math_pythia_per_problem_n_c.csv"),
            pd.read_csv(folder / "math_pythia_coverage_curve.csv"))


def test_coverage_curves_reproduce_the_published_curves(monkeys):
    per_problem, curves = monkeys
    assert per_problem.groupby("model").size().eq(128).all()
    for model, g in per_problem.groupby("model"):
        ref = curves[curves.model == model].sort_values("k")
        ours = coverage_curve(g.n_samples.to_numpy(), g.n_correct.to_numpy(), ref.k.to_numpy())
        np.testing.assert_allclose(ours, ref.coverage.to_numpy(), atol=1e-12)
    assert list(log_spaced_ks(10000)) == sorted(curves.k.unique())


def test_coverage_law_fits_each_pythia_model(monkeys):
    per_problem, curves = monkeys
    fitted = {}
    for model, ref in curves.groupby("model"):
        ref = ref.sort_values("k")
        fit = fit_coverage(ref.k.to_numpy(), ref.coverage.to_numpy())
        a, b = fit.params["a"], fit.params["b"]
        assert a < 0 and -1 < b < 0, model
        assert fit.converged and fit.n_converged == fit.n_starts
        pred = fit.predict(k=ref.k.to_numpy())
        assert np.max(np.abs(pred - ref.coverage.to_numpy())) < 0.05, model
        # -log coverage is a power law in k: the fit explains its log almost entirely
        y = np.log(-np.log(ref.coverage.to_numpy()))
        r = y - np.log(-np.log(pred))
        assert 1 - np.sum(r ** 2) / np.sum((y - y.mean()) ** 2) > 0.98, model
        fitted[model] = fit
    # bigger Pythia models cover more problems at k = 10,000
    big, small = fitted["Pythia 12B"], fitted["Pythia 70M"]
    assert big.predict(k=10000) > small.predict(k=10000)
    assert big.params["a"] > small.params["a"]


def test_fit_from_per_problem_samples_equals_fit_from_the_curve(monkeys):
    per_problem, curves = monkeys
    g = per_problem[per_problem.model == "Pythia 1B"]
    ref = curves[curves.model == "Pythia 1B"].sort_values("k")
    from_samples = fit_coverage(n=g.n_samples.to_numpy(), c=g.n_correct.to_numpy())
    from_curve = fit_coverage(ref.k.to_numpy(), ref.coverage.to_numpy())
    for k in ("a", "b"):
        assert from_samples.params[k] == pytest.approx(from_curve.params[k], rel=1e-8)


def test_coverage_of_one_is_dropped_with_a_named_warning():
    k = np.array([1, 2, 4, 8, 16, 32])
    cov = np.exp(-0.8 * k ** -0.5)
    cov[-1] = 1.0
    with pytest.warns(DroppedPointsWarning):
        fit = fit_coverage(k, cov)
    assert fit.n_points == 5
    assert fit.params["a"] == pytest.approx(-0.8, rel=1e-6) and fit.params["b"] == pytest.approx(-0.5, rel=1e-6)
    with pytest.raises(InvalidDataError):
        fit_coverage(k, cov * 1.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit_coverage(k[:-1], cov[:-1])
