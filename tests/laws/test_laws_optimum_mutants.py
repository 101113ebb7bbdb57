"""The IsoFLOP helpers in scalekit.laws.optimum and scalekit.laws.isoflop: settings checks, merging repeats, the
degree rule, the weighted parabola, standard-error floors, budget grouping and the power-law parameters.

Written to kill the mutants `make mutate` found alive. Expectations are worked out by hand or with a plain numpy
reference (np.polyfit, np.std) on small inputs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from scalekit.laws import isoflop, optimum as opt


def test_check_settings_messages():
    opt.check_settings("parabola", 3, 2, 0)
    opt.check_settings("akima", np.int64(9), 4, 10)
    cases = [
        (("lowess", 9, 4, 0), "optimum must be one of 'parabola', 'robust', 'akima'; got 'lowess'"),
        (("robust", 2, 4, 0), "window must be an integer >= 3 (the number of sizes in the local fit); got 2"),
        (("robust", 9.0, 4, 0), "window must be an integer >= 3 (the number of sizes in the local fit); got 9.0"),
        (("robust", True, 4, 0), "window must be an integer >= 3 (the number of sizes in the local fit); got True"),
        (("robust", 9, 5, 0), "degree must be one of 2, 3, 4; got 5"),
        (("robust", 9, 4, 9), "se_resamples must be 0 (no standard errors, equal weights) or an integer >= 10; "
                              "got 9"),
        (("robust", 9, 4, True), "se_resamples must be 0 (no standard errors, equal weights) or an integer >= 10; "
                                 "got True"),
        (("robust", 9, 4, 10.0), "se_resamples must be 0 (no standard errors, equal weights) or an integer >= 10; "
                                 "got 10.0"),
    ]
    for args, msg in cases:
        with pytest.raises(ValueError) as e:
            opt.check_settings(*args)
        assert str(e.value) == msg, args


def test_merge_repeats_and_effective_degree():
    xu, yu, cnt = opt.merge_repeats(np.array([2.0, 1.0, 2.0, 3.0, 2.0]), np.array([1.0, 5.0, 3.0, 7.0, 5.0]))
    np.testing.assert_array_equal(xu, [1, 2, 3])
    np.testing.assert_allclose(yu, [5.0, 3.0, 7.0])
    np.testing.assert_array_equal(cnt, [1, 3, 1]) and cnt.dtype == np.float64
    assert [opt.effective_degree(4, k) for k in (3, 4, 5, 6, 7, 20)] == [2, 2, 2, 3, 4, 4]
    assert opt.effective_degree(3, 20) == 3 and opt.effective_degree(2, 20) == 2


def test_weighted_parabola_matches_polyfit_and_flags_degenerate_rows():
    x = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
    y = 1.0 + 0.5 * x + 2.0 * x ** 2 + np.array([0.1, -0.2, 0.05, 0.0, 0.1])
    w = np.array([[1, 1, 1, 1, 1], [2, 0, 1, 3, 1], [0, 0, 4, 1, 0]], np.float64)
    p = opt.weighted_parabola(x, y, w)
    np.testing.assert_allclose(p[0], np.polyfit(x, y, 2)[::-1], rtol=1e-10)
    keep = w[1] > 0
    np.testing.assert_allclose(p[1], np.polyfit(x[keep], y[keep], 2, w=np.sqrt(w[1][keep]))[::-1], rtol=1e-10)
    assert np.isnan(p[2]).all()                       # two distinct x with weight: no parabola
    assert isoflop._weighted_parabola is opt.weighted_parabola      # the old private name still works


def test_resampled_vertices_and_resample_se():
    x = np.log(np.array([1.0, 2.0, 4.0, 8.0, 16.0]))
    xc = float(np.log(4.0))
    y = (x - xc) ** 2 + 3.0                            # vertex exactly at x = xc: every resample finds 4
    v = opt.resampled_vertices(x, y, xc, 50, np.random.default_rng(0))
    finite = v[np.isfinite(v)]
    assert len(finite) > 30
    np.testing.assert_allclose(finite, 4.0, rtol=1e-8)
    down = opt.resampled_vertices(x, -y, xc, 20, np.random.default_rng(0))
    assert np.isnan(down).all()                       # opens downward: no vertex
    vals = np.arange(12, dtype=np.float64)
    assert opt.resample_se(np.concatenate([vals, [np.nan, np.inf]])) == pytest.approx(np.std(vals, ddof=1))
    assert math.isnan(opt.resample_se(vals[:9]))
    assert opt.resample_se(vals[:5], min_usable=5) == pytest.approx(np.std(vals[:5], ddof=1))


def test_floored_se():
    se, floor = opt.floored_se(np.array([0.02, np.nan, 0.04, 0.001]))
    # NaN -> the largest finite (0.04); floor = max(1e-4, 0.1 * median(0.02, 0.04, 0.04, 0.001) = 0.003)
    assert floor == pytest.approx(0.003)
    np.testing.assert_allclose(se, [0.02, 0.04, 0.04, 0.003])
    tiny, floor = opt.floored_se(np.array([1e-7, 1e-7]))
    assert floor == opt.SE_FLOOR == 1e-4 and (tiny == 1e-4).all()
    ones, floor = opt.floored_se(np.array([np.nan, np.nan]))
    assert (ones == 1.0).all() and math.isnan(floor)


def test_loglog_fit_and_power_params():
    C = np.array([1e18, 1e19, 1e20, 1e21])
    s, logk, ss = isoflop._loglog_fit(C, 0.3 * C ** 0.45)
    assert s == pytest.approx(0.45) and logk == pytest.approx(math.log(0.3)) and ss == pytest.approx(0, abs=1e-18)
    Y = 0.3 * C ** 0.45 * np.array([1.1, 0.9, 1.05, 1.0])
    s_w, logk_w, ss_w = isoflop._loglog_fit(C, Y, np.array([1.0, 1.0, 1.0, 0.0]))
    ref = np.polyfit(np.log(C[:3]), np.log(Y[:3]), 1)
    assert s_w == pytest.approx(ref[0]) and logk_w == pytest.approx(ref[1])
    s_u, logk_u, ss_u = isoflop._loglog_fit(C, Y)
    ref = np.polyfit(np.log(C), np.log(Y), 1)
    assert s_u == pytest.approx(ref[0]) and ss_u == pytest.approx(np.sum((np.log(Y) - np.polyval(ref, np.log(C)))
                                                                          ** 2))
    # by N: N_opt = k_N C^a and D_opt = C / (f N_opt) = C^(1-a) / (f k_N)
    assert isoflop._power_params(0.45, math.log(0.3), "N", 6.0) == pytest.approx(
        {"a": 0.45, "k_N": 0.3, "b": 0.55, "k_D": 1 / (6 * 0.3)})
    assert isoflop._power_params(0.55, math.log(2.0), "D", 8.0) == pytest.approx(
        {"a": 0.45, "k_N": 1 / (8 * 2.0), "b": 0.55, "k_D": 2.0})


def test_group_budgets():
    C = np.array([1e18, 1.05e18, 3e19, 2.9e19, 1e21])
    g = isoflop.group_budgets(C)
    assert g[0] == g[1] == pytest.approx(math.sqrt(1e18 * 1.05e18))
    assert g[2] == g[3] == pytest.approx(math.sqrt(3e19 * 2.9e19))
    assert g[4] == pytest.approx(1e21)
    # clusters break where sorted log10 C jumps by gap_log10 or more
    close = np.array([1.0, 10 ** 0.049, 10 ** 0.098])
    assert len(set(isoflop.group_budgets(close))) == 1
    assert len(set(isoflop.group_budgets(np.array([1.0, 10 ** 0.051])))) == 2
    assert len(set(isoflop.group_budgets(close, gap_log10=0.04))) == 3
    snapped = isoflop.group_budgets(C, budgets=[1e18, 3e19, 1e21])
    np.testing.assert_array_equal(snapped, [1e18, 1e18, 3e19, 3e19, 1e21])
    far = isoflop.group_budgets(np.array([1e18, 5e18]), budgets=[1e18], max_log10_distance=0.5)
    assert far[0] == 1e18 and np.isnan(far[1])                     # log10(5) = 0.7 > 0.5
    edge = isoflop.group_budgets(np.array([10 ** 18.5]), budgets=[1e18], max_log10_distance=0.5)
    assert edge[0] == 1e18                                         # exactly at the distance: kept


def test_budgets_of_prefers_the_budget_column():
    from scalekit.laws.data import ScalingData

    d = ScalingData.from_arrays(N=[1, 2], D=[1e18, 1.01e18], loss=[1, 1], budget=[7e17, 8e17])
    np.testing.assert_array_equal(isoflop.budgets_of(d), [7e17, 8e17])
    e = ScalingData.from_arrays(N=[1, 1], C=[1e18, 1.01e18], loss=[1, 1])
    b = isoflop.budgets_of(e)
    assert b[0] == b[1] == pytest.approx(math.sqrt(1e18 * 1.01e18)) and b.dtype == np.float64


def test_group_budgets_with_integer_budgets_marks_far_points_nan():
    far = isoflop.group_budgets(np.array([1e18, 5e18]), budgets=[10 ** 18], max_log10_distance=0.5)
    assert far.dtype == np.float64 and far[0] == 1e18 and np.isnan(far[1])


def isoflop_grid(sizes_per_budget=3, budgets=(1e18, 1e19, 1e20)):
    """Points on a Chinchilla surface (A = e^6, B = e^7, E = e^0.5, alpha 0.3, beta 0.4) around each optimum."""
    from scalekit.laws.allocate import chinchilla_optimal
    from scalekit.laws.data import ScalingData

    A, B, E = math.exp(6.0), math.exp(7.0), math.exp(0.5)
    N, C = [], []
    for c in budgets:
        n_opt, _ = chinchilla_optimal(c, A, B, 0.3, 0.4)
        N += list(n_opt * np.geomspace(0.25, 4.0, sizes_per_budget))
        C += [c] * sizes_per_budget
    N, C = np.array(N), np.array(C)
    D = C / (6 * N)
    return ScalingData.from_arrays(N=N, D=D, C=C, loss=E + A / N ** 0.3 + B / D ** 0.4)


def test_fit_isoflop_keeps_a_budget_with_exactly_min_points_and_records_its_settings():
    d = isoflop_grid(3)
    fit = isoflop.fit_isoflop(d, min_points=3, se_resamples=0, window=5, degree=4)
    assert len(fit.budgets) == 3
    assert fit.details["optimum"] == "robust" and fit.details["window"] == 5 and fit.details["degree"] == 4
    assert fit.details["settings"] == {"optimum": "robust", "window": 5, "degree": 4, "se_resamples": 0,
                                       "min_points": 3, "budgets": None, "max_log10_distance": None, "seed": 0}
    assert fit.details["dropped"] == [] and fit.details["weights"] is None
    from scalekit.laws.errors import InvalidDataError

    with pytest.warns(Warning) as record:
        with pytest.raises(InvalidDataError, match=r"^only 0 budget\(s\) left with a usable optimum; approach 2 "
                                                   r"needs two$"):
            isoflop.fit_isoflop(d, min_points=4, se_resamples=0)    # every budget has 3 points: all dropped
    assert any(str(w.message) == "budget C=1e+18 has 3 point(s) at 3 size(s), fewer than 4: dropped"
               for w in record)
