"""The learning-rate law's math: the optimum of one grid (parabola in log lr), edge flags, and lr_opt(N) = c N^-k with
its intervals. Expected values come from hand algebra, numpy and scipy.stats.linregress, not from the module."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from scalekit.laws.lr_law import fit_lr_law, interpolate_lr_opt

LR_LAW = Path(__file__).resolve().parents[2] / "scalekit" / "laws" / "lr_law.py"


def test_parabola_through_three_points_by_hand() -> None:
    # lrs 1, 2, 4 are t = 0, 1, 2 in log2 units; y = 1.5 t^2 - 3.5 t + 3 passes through (0, 3), (1, 1), (2, 2):
    # its vertex is t = 3.5 / 3 = 7/6 and its value there 23/24.
    opt = interpolate_lr_opt([4.0, 1.0, 2.0], [2.0, 3.0, 1.0])          # unsorted on purpose
    assert opt.lrs == (1.0, 2.0, 4.0) and opt.losses == (3.0, 1.0, 2.0)
    assert opt.lr_best == 2.0 and opt.loss_best == 1.0
    assert opt.lr_opt == pytest.approx(2.0 ** (7.0 / 6.0), rel=1e-12)
    assert opt.loss_opt == pytest.approx(23.0 / 24.0, rel=1e-12)
    assert not opt.at_edge and opt.edge is None and opt.method == "parabola"


@pytest.mark.parametrize("lrs", [
    [1e-3 * 2.0 ** j for j in range(6)],                                 # uniform in log lr
    [2e-4, 7e-4, 1.1e-3, 2.6e-3, 9e-3, 3e-2],                            # uneven spacing
])
def test_parabola_recovers_the_optimum_of_a_quadratic_in_log_lr(lrs) -> None:
    true = 3.3e-3
    losses = [2.5 + 0.07 * (math.log(lr) - math.log(true)) ** 2 for lr in lrs]
    opt = interpolate_lr_opt(lrs, losses)
    assert opt.lr_opt == pytest.approx(true, rel=1e-9)
    assert opt.loss_opt == pytest.approx(2.5, abs=1e-12)
    assert min(lrs) <= opt.lr_opt <= max(lrs)


def test_interpolated_optimum_stays_between_the_neighbours_for_any_convex_bump() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        lrs = np.sort(rng.uniform(-9, -2, 5))
        lrs = np.exp(lrs)
        y = rng.uniform(1, 2, 5)
        i = int(np.argmin(y))
        opt = interpolate_lr_opt(lrs, y)
        if 0 < i < 4:
            assert lrs[i - 1] <= opt.lr_opt <= lrs[i + 1]
            assert opt.loss_opt <= y[i] + 1e-12
        else:
            assert opt.at_edge and opt.lr_opt == lrs[i]


def test_best_lr_at_the_edge_is_flagged_and_not_extrapolated() -> None:
    lrs = [1e-3, 2e-3, 4e-3, 8e-3]
    down = interpolate_lr_opt(lrs, [3.0, 2.9, 2.8, 2.7])                # still falling at the largest lr
    assert down.at_edge and down.edge == "high" and down.lr_opt == 8e-3 and down.method == "edge"
    up = interpolate_lr_opt(lrs, [2.7, 2.8, 2.9, 3.0])
    assert up.at_edge and up.edge == "low" and up.lr_opt == 1e-3
    one = interpolate_lr_opt([3e-3], [2.0])
    assert one.at_edge and one.lr_opt == 3e-3
    inner = interpolate_lr_opt(lrs, [3.0, 2.7, 2.8, 3.0])
    assert not inner.at_edge


def test_diverged_neighbour_counts_as_worst_and_stops_the_parabola() -> None:
    opt = interpolate_lr_opt([1e-3, 2e-3, 4e-3], [2.9, 2.8, float("inf")])
    assert opt.lr_best == 2e-3 and opt.lr_opt == 2e-3
    assert not opt.at_edge and opt.method == "grid"
    nan_best = interpolate_lr_opt([1e-3, 2e-3, 4e-3], [float("nan"), 2.8, 2.9])
    assert nan_best.lr_best == 2e-3


@pytest.mark.parametrize("lrs, losses, message", [
    ([], [], "empty"),
    ([1e-3, -1e-3], [1.0, 2.0], "positive and finite"),
    ([1e-3, float("nan")], [1.0, 2.0], "positive and finite"),
    ([1e-3, 1e-3], [1.0, 2.0], "repeat"),
    ([1e-3, 2e-3], [1.0], "differ in length"),
    ([1e-3, 2e-3], [float("inf"), float("nan")], "no finite loss"),
])
def test_bad_grids_raise(lrs, losses, message) -> None:
    with pytest.raises(ValueError, match=message):
        interpolate_lr_opt(lrs, losses)


def _synthetic(k: float, c: float, sd: float, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    N = np.geomspace(1e6, 1e9, n)
    rng = np.random.default_rng(seed)
    return N, c * N ** (-k) * np.exp(sd * rng.standard_normal(n))


def test_law_recovers_a_known_exponent_and_matches_linregress() -> None:
    N, lr = _synthetic(k=0.35, c=0.2, sd=0.05, n=8, seed=3)
    fit = fit_lr_law(N, lr, level=0.9)
    ref = stats.linregress(np.log(N), np.log(lr))
    assert fit.k == pytest.approx(-ref.slope, rel=1e-10)
    assert fit.c == pytest.approx(math.exp(ref.intercept), rel=1e-10)
    assert fit.k == pytest.approx(0.35, abs=0.05)
    tq = stats.t.ppf(0.95, 8 - 2)
    lo, hi = fit.intervals["k"]
    assert lo == pytest.approx(-ref.slope - tq * ref.stderr, rel=1e-9)
    assert hi == pytest.approx(-ref.slope + tq * ref.stderr, rel=1e-9)
    assert lo < 0.35 < hi
    clo, chi = fit.intervals["c"]
    assert clo == pytest.approx(math.exp(ref.intercept - tq * ref.intercept_stderr), rel=1e-9)
    assert chi == pytest.approx(math.exp(ref.intercept + tq * ref.intercept_stderr), rel=1e-9)
    assert fit.predict(1e7) == pytest.approx(math.exp(ref.intercept + ref.slope * math.log(1e7)), rel=1e-10)


def test_prediction_interval_is_the_textbook_one() -> None:
    N, lr = _synthetic(k=0.3, c=0.1, sd=0.08, n=6, seed=1)
    fit = fit_lr_law(N, lr)
    x, y = np.log(N), np.log(lr)
    b, a = np.polyfit(x, y, 1)
    s = np.sqrt(np.sum((y - a - b * x) ** 2) / (len(x) - 2))
    x0 = math.log(1e10)
    tq = stats.t.ppf(0.975, len(x) - 2)
    se_mean = s * math.sqrt(1 / len(x) + (x0 - x.mean()) ** 2 / np.sum((x - x.mean()) ** 2))
    lo, hi = fit.predict_interval(1e10)
    assert lo == pytest.approx(math.exp(a + b * x0 - tq * se_mean), rel=1e-9)
    assert hi == pytest.approx(math.exp(a + b * x0 + tq * se_mean), rel=1e-9)
    nlo, nhi = fit.predict_interval(1e10, kind="new")
    se_new = math.sqrt(se_mean ** 2 + s ** 2)
    assert nhi == pytest.approx(math.exp(a + b * x0 + tq * se_new), rel=1e-9)
    assert nlo < lo < hi < nhi
    arr_lo, arr_hi = fit.predict_interval(np.array([1e10, 1e11]))
    assert arr_lo.shape == (2,) and arr_lo[0] == pytest.approx(lo)


def test_t_interval_covers_the_truth_at_its_level() -> None:
    hits = 0
    trials = 300
    for seed in range(trials):
        N, lr = _synthetic(k=0.4, c=0.5, sd=0.1, n=5, seed=seed)
        lo, hi = fit_lr_law(N, lr, level=0.9).intervals["k"]
        hits += lo <= 0.4 <= hi
    assert 0.84 <= hits / trials <= 0.96                     # exact 90% under normal errors, binomial slack


def test_bootstrap_interval_covers_the_truth_and_the_sign_is_free() -> None:
    N, lr = _synthetic(k=-0.2, c=1e-4, sd=0.03, n=10, seed=5)   # lr grows with N: k < 0
    fit = fit_lr_law(N, lr, bootstrap=400, seed=0)
    assert fit.method == "bootstrap" and fit.k < 0
    lo, hi = fit.intervals["k"]
    assert lo < -0.2 < hi and hi - lo < 0.1
    plo, phi = fit.predict_interval(3e9)
    assert plo < 1e-4 * 3e9 ** 0.2 < phi
    assert "N^(0.2" in fit.formula()


def test_two_points_fit_exactly_without_an_interval() -> None:
    fit = fit_lr_law([1e6, 1e8], [1e-2, 1e-3])
    assert fit.k == pytest.approx(0.5) and fit.c == pytest.approx(1e-2 * 1e6 ** 0.5)
    assert fit.intervals == {} and all(math.isnan(v) for v in fit.predict_interval(1e7))
    assert "no interval" in fit.summary()


@pytest.mark.parametrize("N, lr, message", [
    ([1e6, 1e6], [1e-3, 2e-3], "two or more model sizes"),
    ([1e6, -1.0], [1e-3, 2e-3], "positive and finite"),
    ([1e6, 1e7], [1e-3, 0.0], "positive and finite"),
    ([1e6, 1e7, 1e8], [1e-3, 2e-3], "differ in length"),
])
def test_law_rejects_bad_points(N, lr, message) -> None:
    with pytest.raises(ValueError, match=message):
        fit_lr_law(N, lr)


def test_lr_law_imports_nothing_from_train_sweep_or_analysis() -> None:
    tree = ast.parse(LR_LAW.read_text())
    mods = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
    mods += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in mods if m.startswith(("scalekit.train", "scalekit.sweep", "scalekit.analysis"))]
