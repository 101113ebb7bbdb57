"""lr_opt_interval: the least-squares quadratic in log lr and the delta-method interval on its vertex.

Expected values are worked out by hand from orthogonal-polynomial designs (closed forms below), not by the code:
on t = -2..2 the polynomials 1, t, t^2 - 2 are orthogonal (sum t^2 = 10, sum (t^2 - 2)^2 = 14), and the residual
patterns (-1, 2, 0, -2, 1) (cubic) and (1, -4, 6, -4, 1) (quartic) are orthogonal to all three, so a fit of
y = c0 + c1 t + c2 t^2 + e recovers (c0, c1, c2) exactly and RSS = sum e^2.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from scalekit.laws.lr_law import interpolate_lr_opt, lr_opt_interval

LN2 = math.log(2.0)
T975_DF2 = 4.302652729911275     # Student-t 0.975 quantile, 2 degrees of freedom (tables)
T975_DF3 = 3.182446305284263     # ... 3 degrees of freedom
Z975 = 1.959963984540054
CUBIC = np.array([-1.0, 2.0, 0.0, -2.0, 1.0])
QUARTIC = np.array([1.0, -4.0, 6.0, -4.0, 1.0])


def _five_point(c1: float = 0.03, c2: float = 0.05, e3: float = 0.01, e4: float = 0.002, lr0: float = 4e-3):
    t = np.arange(-2, 3, dtype=float)
    y = 1.0 + c1 * t + c2 * t ** 2 + e3 * CUBIC + e4 * QUARTIC
    return lr0 * 2.0 ** t, y


def test_five_points_vertex_and_delta_interval_by_hand() -> None:
    lrs, y = _five_point()
    # y = 1.132, 1.032, 1.012, 1.052, 1.272: best at t = 0, the window is all five
    assert np.allclose(y, [1.132, 1.032, 1.012, 1.052, 1.272])
    c1, c2 = 0.03, 0.05
    t_star = -c1 / (2 * c2)                                         # -0.3 grid steps: lr0 * 2^-0.3
    s2 = (0.01 ** 2 * 10 + 0.002 ** 2 * 70) / (5 - 3)               # RSS / dof = 0.00064
    var_t = (1 / (2 * c2)) ** 2 * s2 / 10 + (c1 / (2 * c2 ** 2)) ** 2 * s2 / 14   # Cov(c1, c2) = 0
    se_log = LN2 * math.sqrt(var_t)                                  # u = log lr0 + t ln 2
    iv = lr_opt_interval(lrs, y)
    assert iv.method == "delta-t" and iv.n_points == 5 and not iv.at_edge and iv.note == ""
    assert iv.lr_opt == pytest.approx(4e-3 * 2 ** t_star, rel=1e-12)
    assert iv.se_log == pytest.approx(se_log, rel=1e-9)
    assert iv.se_log == pytest.approx(0.0621738504, rel=1e-8)        # the same, as a number
    assert iv.lo == pytest.approx(4e-3 * math.exp(t_star * LN2 - T975_DF2 * se_log), rel=1e-9)
    assert iv.hi == pytest.approx(4e-3 * math.exp(t_star * LN2 + T975_DF2 * se_log), rel=1e-9)
    assert iv.lo < iv.lr_opt < iv.hi
    assert iv.curvature == pytest.approx(c2 / LN2 ** 2, rel=1e-9)    # per (log lr)^2, not per grid step^2
    assert iv.window == pytest.approx(tuple(lrs))


def test_known_sigma_uses_a_normal_quantile() -> None:
    lrs, y = _five_point()
    c1, c2, sigma = 0.03, 0.05, 0.02
    var_t = (1 / (2 * c2)) ** 2 * sigma ** 2 / 10 + (c1 / (2 * c2 ** 2)) ** 2 * sigma ** 2 / 14
    se_log = LN2 * math.sqrt(var_t)
    iv = lr_opt_interval(lrs, y, sigma=sigma)
    assert iv.method == "delta-z"
    assert iv.se_log == pytest.approx(se_log, rel=1e-9)
    assert math.log(iv.hi / iv.lr_opt) == pytest.approx(Z975 * se_log, rel=1e-9)
    assert math.log(iv.lr_opt / iv.lo) == pytest.approx(Z975 * se_log, rel=1e-9)


def test_level_narrows_the_interval() -> None:
    lrs, y = _five_point()
    wide, narrow = lr_opt_interval(lrs, y, level=0.95), lr_opt_interval(lrs, y, level=0.5)
    assert narrow.lr_opt == wide.lr_opt
    assert wide.lo < narrow.lo < narrow.hi < wide.hi


def test_symmetric_noise_free_parabola_has_a_zero_width_interval() -> None:
    t = np.arange(-2, 3, dtype=float)
    iv = lr_opt_interval(1e-3 * 2.0 ** t, 2.0 + 0.1 * t ** 2)
    assert iv.lr_opt == pytest.approx(1e-3, rel=1e-12)
    assert iv.se_log == pytest.approx(0.0, abs=1e-9)
    assert iv.lo == pytest.approx(1e-3, rel=1e-7) and iv.hi == pytest.approx(1e-3, rel=1e-7)


def test_window_takes_up_to_two_neighbours_each_side() -> None:
    t = np.arange(-4, 4, dtype=float)                                # eight lrs, best at t = 0 (index 4)
    lrs, y = 1e-3 * 2.0 ** t, 1.0 + 0.05 * t ** 2
    iv = lr_opt_interval(lrs, y)
    assert iv.window == pytest.approx(tuple(1e-3 * 2.0 ** np.arange(-2, 3)))
    assert lr_opt_interval(lrs, y, neighbours=1).window == pytest.approx(tuple(1e-3 * 2.0 ** np.arange(-1, 2)))


def test_three_points_exact_fit_matches_the_parabola_and_has_no_interval() -> None:
    lrs, losses = [1e-3, 2e-3, 4e-3, 8e-3], [3.10, 3.02, 3.05, 3.20]
    iv = lr_opt_interval(lrs[:3], losses[:3])
    assert iv.method == "none" and math.isnan(iv.lo) and math.isnan(iv.hi) and "exact fit" in iv.note
    # the three-point parabola: u* = mid - d1 / (2 a) on log lr, by hand
    u = np.log(lrs[:3])
    d1 = (losses[1] - losses[0]) / (u[1] - u[0])
    d2 = (losses[2] - losses[1]) / (u[2] - u[1])
    a = (d2 - d1) / (u[2] - u[0])
    u_star = 0.5 * (u[0] + u[1]) - d1 / (2 * a)
    assert iv.lr_opt == pytest.approx(math.exp(u_star), rel=1e-10)
    assert iv.lr_opt == pytest.approx(interpolate_lr_opt(lrs[:3], losses[:3]).lr_opt, rel=1e-10)


def test_seeds_give_residual_degrees_of_freedom() -> None:
    # three lrs x two seeds at mean +- d: the quadratic fits the means exactly, RSS = 6 d^2, dof 3, s^2 = 2 d^2;
    # X'X is twice that of one seed on t = -1, 0, 1, where 1, t, t^2 - 2/3 are orthogonal (sum t^2 = 2, sum
    # (t^2 - 2/3)^2 = 2/3): Var c1 = s^2 / (2 * 2), Var c2 = s^2 / (2 * 2/3), Cov = 0.
    t = np.array([-1.0, 0.0, 1.0])
    c1, c2, d = -0.02, 0.04, 0.01
    means = 2.0 + c1 * t + c2 * t ** 2
    lrs = np.repeat(5e-3 * 2.0 ** t, 2)
    losses = np.repeat(means, 2) + np.tile([d, -d], 3)
    s2 = 6 * d ** 2 / 3
    var_t = (1 / (2 * c2)) ** 2 * s2 / 4 + (c1 / (2 * c2 ** 2)) ** 2 * s2 / (4 / 3)
    se_log = LN2 * math.sqrt(var_t)
    iv = lr_opt_interval(lrs, losses)
    assert iv.method == "delta-t" and iv.n_points == 6 and iv.lr_best == pytest.approx(5e-3)
    assert iv.lr_opt == pytest.approx(5e-3 * 2 ** (-c1 / (2 * c2)), rel=1e-12)
    assert iv.se_log == pytest.approx(se_log, rel=1e-9)
    assert iv.hi == pytest.approx(iv.lr_opt * math.exp(T975_DF3 * se_log), rel=1e-9)
    # the seed-mean three-point parabola agrees on the vertex
    assert iv.lr_opt == pytest.approx(interpolate_lr_opt(5e-3 * 2.0 ** t, means).lr_opt, rel=1e-10)


def test_diverged_lr_leaves_the_window_and_counts_as_worst() -> None:
    lrs, y = _five_point()
    y = y.copy()
    y[4] = math.inf                                                  # the largest lr diverged
    iv = lr_opt_interval(lrs, y)
    assert iv.window == pytest.approx(tuple(lrs[:4])) and iv.n_points == 4 and iv.method == "delta-t"
    # one diverged seed makes its lr's mean infinite
    iv2 = lr_opt_interval(np.append(lrs, lrs[2]), np.append(_five_point()[1], math.nan))
    assert iv2.lr_best != pytest.approx(lrs[2])


def test_best_at_the_edge_is_flagged() -> None:
    t = np.arange(0, 5, dtype=float)
    iv = lr_opt_interval(1e-3 * 2.0 ** t, 1.0 + 0.1 * t + 0.01 * t ** 2)   # decreasing lr is better: best at t=0
    assert iv.at_edge and iv.lr_best == pytest.approx(1e-3) and "edge" in iv.note
    assert iv.window == pytest.approx((1e-3, 2e-3, 4e-3))


def test_concave_window_has_no_vertex() -> None:
    lrs = [1e-3, 2e-3, 4e-3, 8e-3]
    iv = lr_opt_interval(lrs, [1.0, 1.5, 1.6, 1.55])   # best at the edge, the window's quadratic is concave
    assert iv.method == "none" and iv.lr_opt == pytest.approx(1e-3) and "not convex" in iv.note
    assert math.isnan(iv.lo)


def test_too_few_finite_lrs() -> None:
    iv = lr_opt_interval([1e-3, 2e-3, 4e-3], [1.0, math.inf, math.inf])
    assert iv.method == "none" and iv.lr_opt == pytest.approx(1e-3) and iv.at_edge


def test_to_dict_replaces_nan_with_none() -> None:
    d = lr_opt_interval([1e-3, 2e-3, 4e-3], [1.1, 1.0, 1.2]).to_dict()
    assert d["lo"] is None and d["hi"] is None and d["method"] == "none" and d["window"] == [1e-3, 2e-3, 4e-3]


@pytest.mark.parametrize("kw, msg", [
    (dict(lrs=[1e-3, 2e-3], losses=[1.0]), "differ in length"),
    (dict(lrs=[], losses=[]), "empty"),
    (dict(lrs=[0.0, 1e-3, 2e-3], losses=[1.0, 1.0, 1.0]), "positive"),
    (dict(lrs=[1e-3, 2e-3, 4e-3], losses=[math.inf] * 3), "no finite loss"),
    (dict(lrs=[1e-3, 2e-3, 4e-3], losses=[1.0, 0.9, 1.0], neighbours=0), "neighbours"),
    (dict(lrs=[1e-3, 2e-3, 4e-3], losses=[1.0, 0.9, 1.0], level=1.0), "level"),
    (dict(lrs=[1e-3, 2e-3, 4e-3], losses=[1.0, 0.9, 1.0], sigma=0.0), "sigma"),
])
def test_bad_inputs_raise(kw, msg) -> None:
    with pytest.raises(ValueError, match=msg):
        lr_opt_interval(**kw)
