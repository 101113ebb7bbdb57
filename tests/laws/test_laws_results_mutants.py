"""LawFit and Allocation on hand-made fits: predictions, the closed-form Chinchilla allocation, the numerical one,
bootstrap intervals, and the text/JSON/HTML a fit prints.

Written to kill the mutants `make mutate` found alive. No fit is run: a LawFit is built from chosen parameters,
so every expected number comes from the formulas (Hoffmann et al. 2022, Appendix D.2, written out below) and
every expected string from the format rules.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from scalekit.laws import allocate
from scalekit.laws.allocate import Allocation
from scalekit.laws.diagnostics import Diagnostic
from scalekit.laws.forms import LAWS, get_law
from scalekit.laws.results import LawFit

LSE = {"a": 6.0, "b": 7.0, "e": 0.5, "alpha": 0.3, "beta": 0.4}
A, B, E = math.exp(6.0), math.exp(7.0), math.exp(0.5)


def chinchilla_fit(**kw) -> LawFit:
    law = LAWS["chinchilla"]
    base = dict(law=law, lse=dict(LSE), params=law.to_natural(LSE), objective=0.00123456789, n_converged=40,
                n_starts=50, converged=True, n_points=30, delta=1e-3)
    base.update(kw)
    return LawFit(**base)


def by_hand_optimum(C, k=6.0):
    """Hoffmann et al. D.2: N_opt = G (C/k)^(beta/(alpha+beta)), D_opt = (C/k)^(alpha/(alpha+beta)) / G."""
    alpha, beta = LSE["alpha"], LSE["beta"]
    G = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
    x = np.asarray(C, np.float64) / k
    return G * x ** (beta / (alpha + beta)), x ** (alpha / (alpha + beta)) / G


# --- allocate --------------------------------------------------------------------------------------------------

def test_optimal_exponents_and_closed_form():
    assert allocate.optimal_exponents(0.3, 0.4) == pytest.approx((0.4 / 0.7, 0.3 / 0.7))
    n, d = allocate.chinchilla_optimal(1e21, A, B, 0.3, 0.4)
    n_ref, d_ref = by_hand_optimum(1e21)
    assert n == pytest.approx(n_ref, rel=1e-12) and d == pytest.approx(d_ref, rel=1e-12)
    assert 6 * n * d == pytest.approx(1e21, rel=1e-12)
    n8, d8 = allocate.chinchilla_optimal(1e21, A, B, 0.3, 0.4, 8.0)
    assert 8 * n8 * d8 == pytest.approx(1e21, rel=1e-12)
    assert n8 == pytest.approx(by_hand_optimum(1e21, 8.0)[0], rel=1e-12)
    kn, kd = allocate.power_optimal(np.array([1.0, 100.0]), 2.0, 0.5, 3.0, 0.25)
    np.testing.assert_allclose(kn, [2.0, 20.0]) and np.testing.assert_allclose(kd, [3.0, 3.0 * 100 ** 0.25])


def test_numeric_optimal_finds_the_closed_form_and_refuses_an_edge():
    def loss(N, D):
        return E + A / N ** 0.3 + B / D ** 0.4

    for C in (1e19, 1e23):
        n, d = allocate.numeric_optimal(loss, C)
        n_ref, d_ref = by_hand_optimum(C)
        assert isinstance(n, float) and n == pytest.approx(n_ref, rel=1e-5) and d == pytest.approx(d_ref, rel=1e-5)
    ns, ds = allocate.numeric_optimal(loss, np.array([1e19, 1e21]), 6.0)
    np.testing.assert_allclose(ns, by_hand_optimum(np.array([1e19, 1e21]))[0], rtol=1e-5)
    n8, _ = allocate.numeric_optimal(loss, 1e21, 8.0)
    assert n8 == pytest.approx(by_hand_optimum(1e21, 8.0)[0], rel=1e-5)
    with pytest.raises(ValueError) as e:
        allocate.numeric_optimal(lambda N, D: 1.0 / N, 1e21)       # always better with more parameters
    assert str(e.value) == ("the loss keeps falling at the edge of the search range at C=1e+21: the law has no "
                            "compute-optimal N there")


def test_allocation_text_and_dict():
    al = Allocation(C=1e21, N_opt=1.234567e9, D_opt=2e10, tokens_per_param=16.2, loss=2.5,
                    intervals={"N_opt": (1e9, 1.5e9)})
    assert str(al) == ("C=1e+21: N_opt=1.235e+09 [1e+09, 1.5e+09], D_opt=2e+10, tokens/param=16.2, loss=2.5  "
                       "(C = 6 N D)")
    assert al.to_dict() == {"C": 1e21, "N_opt": 1.234567e9, "D_opt": 2e10, "tokens_per_param": 16.2, "loss": 2.5,
                            "intervals": {"N_opt": [1e9, 1.5e9]}, "convention": "C = 6 N D"}
    arr = Allocation(C=np.array([1.0, 2.0]), N_opt=np.array([3.0, 4.0]), D_opt=np.array([5.0, 6.0]),
                     tokens_per_param=np.array([7.0, 8.0]), convention="C = 8 N D")
    assert str(arr) == "C=[1. 2.]: N_opt=[3. 4.], D_opt=[5. 6.], tokens/param=[7. 8.]  (C = 8 N D)"
    assert arr.to_dict()["N_opt"] == [3.0, 4.0] and arr.to_dict()["loss"] is None


# --- LawFit ------------------------------------------------------------------------------------------------------

def test_predict_exponents_and_allocation():
    f = chinchilla_fit()
    N, D = np.array([1e8, 1e9]), np.array([1e10, 2e10])
    np.testing.assert_allclose(f.predict(N=N, D=D), E + A / N ** 0.3 + B / D ** 0.4, rtol=1e-12)
    np.testing.assert_allclose(f.predict({"N": N}, D=D), E + A / N ** 0.3 + B / D ** 0.4, rtol=1e-12)
    with pytest.raises(ValueError) as e:
        f.predict(N=N)
    assert str(e.value) == "law 'chinchilla' needs inputs ('N', 'D'); missing ['D']"
    np.testing.assert_array_equal(f.theta, [6.0, 7.0, 0.5, 0.3, 0.4])
    assert f.exponents == pytest.approx({"a": 0.4 / 0.7, "b": 0.3 / 0.7})
    al = f.compute_optimal(1e21)
    n_ref, d_ref = by_hand_optimum(1e21)
    assert al.N_opt == pytest.approx(n_ref, rel=1e-12) and al.D_opt == pytest.approx(d_ref, rel=1e-12)
    assert al.tokens_per_param == pytest.approx(d_ref / n_ref, rel=1e-12)
    assert al.loss == pytest.approx(E + A / n_ref ** 0.3 + B / d_ref ** 0.4, rel=1e-12)
    assert al.convention == "C = 6 N D" and al.intervals == {}
    arr = f.compute_optimal(np.array([1e19, 1e21]))
    np.testing.assert_allclose(arr.N_opt, by_hand_optimum(np.array([1e19, 1e21]))[0], rtol=1e-12)
    f8 = chinchilla_fit(flops_per_param_token=8.0)
    assert f8.compute_optimal(1e21).N_opt == pytest.approx(by_hand_optimum(1e21, 8.0)[0], rel=1e-12)
    assert f8.compute_optimal(1e21).convention == "C = 8 N D"


def test_gadre_and_single_variable_exponents_and_no_allocation():
    g = LawFit(law=LAWS["gadre"], lse={"log_a": 1.0, "log_b": 2.0, "e": 0.1, "eta": 0.2}, params={}, objective=0.0,
               n_converged=1, n_starts=1, converged=True, n_points=5, delta=None)
    assert g.exponents == {"a": 0.5, "b": 0.5}
    assert g.objective_label == "huber_log"
    k = LawFit(law=LAWS["kaplan_c"], lse={"a": 1.0, "e": 0.1, "alpha": 0.2}, params={}, objective=0.0,
               n_converged=1, n_starts=1, converged=True, n_points=5, delta=1e-3, objective_name="lsq")
    assert k.exponents == {} and k.objective_label == "lsq (delta 0.001)"
    with pytest.raises(ValueError) as e:
        k.compute_optimal(1e21)
    assert str(e.value) == ("law 'kaplan_c' is not a law in N and D: it has no compute-optimal allocation (fit "
                            "'chinchilla' or 'data_constrained', or use approach 1/2)")
    with pytest.raises(ValueError, match="no bootstrap samples: fit with bootstrap=K first"):
        k.interval_of(lambda d: d["a"])


def test_coverage_prediction_is_the_coverage_not_minus_its_log():
    law = get_law("coverage")
    f = LawFit(law=law, lse={"log_neg_a": math.log(0.8), "neg_b": 0.35}, params={}, objective=0.0, n_converged=1,
               n_starts=1, converged=True, n_points=5, delta=None)
    k = np.array([1.0, 10.0])
    np.testing.assert_allclose(f.predict(k=k), np.exp(-0.8 * k ** -0.35), rtol=1e-12)


def test_data_constrained_allocation_takes_every_token_as_unique_without_u():
    law = LAWS["data_constrained"]
    lse = dict(LSE, log_rn_star=math.log(5.0), log_rd_star=math.log(15.0))
    f = LawFit(law=law, lse=lse, params={}, objective=0.0, n_converged=1, n_starts=1, converged=True, n_points=5,
               delta=None)
    al = f.compute_optimal(1e21)
    n_ref, d_ref = by_hand_optimum(1e21)      # U = D: no repetition, so the Chinchilla optimum
    assert al.N_opt == pytest.approx(n_ref, rel=1e-4) and al.D_opt == pytest.approx(d_ref, rel=1e-4)
    assert al.loss == pytest.approx(E + A / al.N_opt ** 0.3 + B / al.D_opt ** 0.4, rel=1e-9)
    scarce = f.compute_optimal(1e21, U=d_ref / 100)    # few unique tokens: repeated data is worth less
    assert scarce.loss > al.loss


def test_bootstrap_intervals_of_predictions_and_allocation():
    rows = np.array([[6.0, 7.0, e, 0.3, 0.4] for e in (0.1, 0.2, 0.3, 0.4, 0.5)])
    f = chinchilla_fit(samples=rows, level=0.5)
    lo, hi = f.interval_of(lambda d: d["e"])
    assert (lo, hi) == pytest.approx((0.2, 0.4))
    assert f.interval_of(lambda d: d["e"], level=0.0) == pytest.approx((0.3, 0.3))
    N, D = np.array([1e8, 1e9]), np.array([1e10, 1e10])
    lo, hi = f.predict_interval(N=N, D=D)
    base = A / N ** 0.3 + B / D ** 0.4
    np.testing.assert_allclose(lo, np.exp(0.2) + base, rtol=1e-12)
    np.testing.assert_allclose(hi, np.exp(0.4) + base, rtol=1e-12)
    al = f.compute_optimal(1e21)
    n_ref, d_ref = by_hand_optimum(1e21)      # e does not move the optimum: a zero-width N interval
    assert al.intervals["N_opt"] == pytest.approx((n_ref, n_ref), rel=1e-12)
    assert al.intervals["tokens_per_param"] == pytest.approx((d_ref / n_ref,) * 2, rel=1e-12)
    assert al.intervals["loss"] == pytest.approx((np.exp(0.2) + A / n_ref ** 0.3 + B / d_ref ** 0.4,
                                                  np.exp(0.4) + A / n_ref ** 0.3 + B / d_ref ** 0.4), rel=1e-12)
    assert all(isinstance(v, float) for pair in al.intervals.values() for v in pair)
    arr = f.compute_optimal(np.array([1e19, 1e21]))
    assert arr.intervals["loss"][0].shape == (2,)


def test_summary_to_dict_and_html():
    warn = Diagnostic("implausible_exponent", "warning", "exponent alpha looks off", {"alpha": 3.0})
    info = Diagnostic("fyi", "info", "nothing to see")
    f = chinchilla_fit(fixed={"e": 0.5}, ties={"beta": "alpha"}, bounds={"alpha": (0.0, None), "beta": (None, 2.0)},
                       notes=["a note"], diagnostics=[warn, info], bootstrap_converged=(9, 10), converged=False,
                       start_status=np.array([1, 1, 2, -1, -2, 7]), seconds=1.25)
    lines = f.summary().splitlines()
    assert lines[0] == "chinchilla law: L(N, D) = E + A / N^alpha + B / D^beta"
    assert lines[1] == "points: 30, objective: huber_log (delta 0.001), value 0.0012345679, solver: lbfgs"
    assert lines[2] == "starts converged: 40/50  (the best start did NOT converge)"
    assert lines[3] == "convention: " + LAWS["chinchilla"].convention
    assert lines[4] == "fixed: e=0.5"
    assert lines[5] == "tied: beta=alpha"
    assert lines[6] == "bounds: alpha in [0, inf], beta in [-inf, 2]"
    assert lines[7].split() == ["param", "value"]
    names = [ln.split()[0] for ln in lines[9:9 + 12]]
    assert names == ["A", "B", "E", "alpha", "beta", "a", "b", "e", "exponent", "exponent", "bootstrap:", "note:"]
    assert lines[-3] == "bootstrap: 9/10 resamples converged (percentile intervals)"
    assert lines[-2] == "note: a note"
    assert lines[-1] == "warning [implausible_exponent]: exponent alpha looks off"
    assert chinchilla_fit().summary().splitlines()[2] == "starts converged: 40/50"
    assert str(f) == f.summary()
    np.testing.assert_array_equal(f.start_converged, [True, True, True, False, False, False])

    d = f.to_dict()
    assert d["law"] == "chinchilla" and d["approach"] == 3 and d["formula"] == LAWS["chinchilla"].formula
    assert d["params"] == pytest.approx(LAWS["chinchilla"].to_natural(LSE)) and d["lse_params"] == LSE
    assert d["converged"] == {"n": 40, "total": 50, "best_converged": False,
                              "by_status": {"converged (gtol)": 2, "converged (ftol)": 1, "iteration limit": 1,
                                            "line search failed": 1, "7": 1}}
    assert d["bootstrap"] == {"converged": 9, "resamples": 10}
    assert d["bounds"] == {"alpha": [0.0, None], "beta": [None, 2.0]} and d["ties"] == {"beta": "alpha"}
    assert d["diagnostics"][0] == {"code": "implausible_exponent", "severity": "warning",
                                   "message": "exponent alpha looks off", "detail": {"alpha": 3.0}}
    assert (d["objective"], d["objective_name"], d["delta"], d["solver"], d["seconds"], d["n_points"]) == (
        0.00123456789, "huber_log", 1e-3, "lbfgs", 1.25, 30)
    assert d["fixed"] == {"e": 0.5} and d["notes"] == ["a note"] and d["level"] is None and d["intervals"] == {}
    assert chinchilla_fit().to_dict()["bootstrap"] is None
    assert chinchilla_fit().to_dict()["converged"]["by_status"] == {}

    h = f._repr_html_()
    assert h.startswith("<div><b>chinchilla: L(N, D) = E + A / N^alpha + B / D^beta</b>")
    assert ("<p><small>huber_log (delta 0.001) = 0.00123457 over 30 points (lbfgs); 40/50 starts converged"
            "</small></p></div>") in h
    assert h.endswith("<p>&#9888; exponent alpha looks off</p>") and "nothing to see" not in h


def test_summary_with_intervals_shows_exponent_intervals():
    f = chinchilla_fit(intervals={"A": (1.0, 2.0), "exponent_a": (0.5, 0.6)}, level=0.9)
    lines = f.summary().splitlines()
    head = next(ln for ln in lines if ln.startswith("param"))
    assert head.split("  ")[-1].strip() == "90% interval"
    a_row = next(ln for ln in lines if ln.startswith("A "))
    assert a_row.endswith("[1, 2]")
    ex_row = next(ln for ln in lines if ln.startswith("exponent a"))
    assert ex_row.endswith("[0.5, 0.6]")
    assert next(ln for ln in lines if ln.startswith("exponent b")).endswith(f"{0.3 / 0.7:.6g}")


# --- coverage (pass@k) and prediction intervals ----------------------------------------------------------------

def test_pass_at_k_against_the_binomial_formula():
    from math import comb

    from scalekit.laws import coverage as cov
    from scalekit.laws.errors import InvalidDataError

    n = np.array([10, 10, 10, 10, 7, 7, 1])
    c = np.array([0, 3, 9, 10, 2, 5, 1])
    k = np.array([1, 4, 2, 10, 3, 3, 1])
    expected = [1 - comb(nn - cc, kk) / comb(nn, kk) for nn, cc, kk in zip(n, c, k)]
    np.testing.assert_allclose(cov.pass_at_k(n, c, k), expected, rtol=1e-12, atol=1e-15)
    assert cov.pass_at_k(10, 3, 1) == pytest.approx(0.3)           # pass@1 = c / n
    assert cov.pass_at_k(5, 2, 4) == 1.0                           # n - c < k: always solved
    for bad in ((0, 0, 1), (5, -1, 1), (5, 6, 1), (5, 1, 0)):
        with pytest.raises(InvalidDataError, match=r"^pass@k needs n >= 1, 0 <= c <= n and k >= 1$"):
            cov.pass_at_k(*bad)
    with pytest.raises(InvalidDataError, match=r"^pass@k is defined for k <= n \(unbiased estimator\)$"):
        cov.pass_at_k(5, 1, 6)
    curve = cov.coverage_curve([10, 10], [0, 5], [1, 2])
    np.testing.assert_allclose(curve, [(0 + 0.5) / 2, (0 + 1 - comb(5, 2) / comb(10, 2)) / 2], rtol=1e-12)
    ks = cov.log_spaced_ks(100, 5)
    np.testing.assert_array_equal(ks, np.unique(np.round(np.logspace(0, 2, 5)).astype(int)))
    np.testing.assert_array_equal(ks, [1, 3, 10, 32, 100])
    assert len(cov.log_spaced_ks(10_000)) == 37
    d = cov.coverage_data([1, 2], [0.2, 0.3])
    np.testing.assert_array_equal(d["k"], [1, 2]) and np.testing.assert_array_equal(d.loss, [0.2, 0.3])
    with pytest.raises(ValueError, match=r"^give both n and c"):
        cov.fit_coverage(n=[5])
    with pytest.raises(ValueError, match=r"^give \(k, coverage\) or \(n, c\)$"):
        cov.fit_coverage(k=[1, 2])


def test_predictive_interval_is_predictions_times_residual_draws():
    from scalekit.laws import intervals

    rows = np.array([[6.0, 7.0, 0.5, 0.3, 0.4]] * 4)              # every resample the same law
    f = chinchilla_fit(samples=rows, level=0.5)
    inputs = {"N": np.array([1e8, 1e9]), "D": np.array([1e10, 1e10])}
    P = intervals.sample_predictions(f, inputs)
    assert P.shape == (4, 2)
    np.testing.assert_allclose(P[0], E + A / inputs["N"] ** 0.3 + B / inputs["D"] ** 0.4, rtol=1e-12)
    # two residuals, each drawn about half of 4000 times: the quartiles of the draws are the two values
    resid = np.array([-0.1, 0.1])
    lo, hi = intervals.predictive_interval(f, inputs, resid, 0.5, np.random.default_rng(0))
    np.testing.assert_allclose(lo, P[0] * np.exp(-0.1), rtol=1e-12)
    np.testing.assert_allclose(hi, P[0] * np.exp(0.1), rtol=1e-12)
    assert intervals.DRAWS_PER_POINT == 4000


# --- the extrapolation report ------------------------------------------------------------------------------------

def test_extrapolation_report_numbers_and_text():
    from scalekit.laws.extrapolate import ExtrapolationReport

    obs, pred = np.array([2.0, 4.0]), np.array([2.2, 3.6])        # relative errors +10% and -10%
    r = ExtrapolationReport(threshold=1e20, column="C", n_fit=8, n_holdout=2, observed=obs, predicted=pred,
                            x=np.array([2e20, 4e20]), fit=None, in_sample_rel_error=0.005)
    np.testing.assert_allclose(r.rel_error, [0.1, -0.1])
    assert r.mean_abs_rel_error == pytest.approx(0.1) and r.max_abs_rel_error == pytest.approx(0.1)
    assert r.mean_rel_error == pytest.approx(0.0, abs=1e-15)
    assert r.rmse_log == pytest.approx(math.sqrt((math.log(2 / 2.2) ** 2 + math.log(4 / 3.6) ** 2) / 2))
    assert r.summary() == ("extrapolation check: fitted on 8 points with C <= 1e+20, predicted 2 held-out points\n"
                           "  mean |rel. error| 10.000% (max 10.000%, signed mean +0.000%), RMSE of log loss "
                           f"{r.rmse_log:.4g}; in-sample mean |rel. error| 0.500%")
    assert str(r) == r.summary()
    d = r.to_dict()
    assert (d["threshold"], d["column"], d["n_fit"], d["n_holdout"]) == (1e20, "C", 8, 2)
    assert d["points"] == {"C": [2e20, 4e20], "observed": [2.0, 4.0], "predicted": [2.2, 3.6]}
    assert d["in_sample_mean_abs_rel_error"] == 0.005 and d["rmse_log"] == pytest.approx(r.rmse_log)
    assert d["mean_abs_rel_error"] == pytest.approx(0.1) and d["max_abs_rel_error"] == pytest.approx(0.1)
    h = r._repr_html_()
    assert h.startswith("<div><b>extrapolation above C = 1e+20</b>")
    assert "<tr><td>points fitted</td><td>8</td></tr><tr><td>points held out</td><td>2</td></tr>" in h
    assert "<tr><td>max |rel. error|</td><td>10.000%</td></tr>" in h
    skew = ExtrapolationReport(threshold=1.0, column="N", n_fit=1, n_holdout=2, observed=np.array([1.0, 1.0]),
                               predicted=np.array([1.1, 1.3]), x=np.array([2.0, 3.0]), fit=None)
    assert skew.mean_rel_error == pytest.approx(0.2) and skew.max_abs_rel_error == pytest.approx(0.3)


def test_extrapolation_check_splits_at_the_threshold():
    from scalekit.laws.data import ScalingData
    from scalekit.laws.errors import TooFewPointsError
    from scalekit.laws.extrapolate import extrapolation_check

    N, D = np.meshgrid(np.geomspace(1e7, 1e9, 4), np.geomspace(1e9, 1e11, 4))
    N, D = N.ravel(), D.ravel()
    d = ScalingData.from_arrays(N=N, D=D, loss=E + A / N ** 0.3 + B / D ** 0.4)
    with pytest.raises(ValueError, match=r"^give holdout_above \(a threshold\) or holdout_fraction$"):
        extrapolation_check(d)
    with pytest.raises(TooFewPointsError) as e:
        extrapolation_check(d, holdout_above=1e30)
    assert str(e.value) == ("threshold 1e+30 leaves 16 points to fit and 0 to predict: both must be non-empty")
    with pytest.raises(TooFewPointsError, match=r"leaves 0 points to fit and 16 to predict"):
        extrapolation_check(d, holdout_above=1.0)
    C = 6 * N * D
    threshold = float(np.sort(C)[11])
    r = extrapolation_check(d, "chinchilla", holdout_above=threshold, diagnose=False)
    assert (r.n_fit, r.n_holdout, r.threshold, r.column) == (12, 4, threshold, "C")
    np.testing.assert_allclose(np.sort(r.x), np.sort(C)[12:])
    assert r.mean_abs_rel_error < 1e-3 and r.in_sample_rel_error < 1e-3      # exact data: the law is recovered
    q = extrapolation_check(d, holdout_fraction=0.25, diagnose=False)
    assert q.threshold == pytest.approx(float(np.quantile(C, 0.75))) and q.n_holdout == 4
    n = extrapolation_check(d, holdout_above=float(np.sort(N)[11]), column="N", diagnose=False)
    assert n.column == "N" and n.n_holdout == 4 and set(n.x) == {1e9}


# --- fit plumbing: padded shapes and the variable-projection note --------------------------------------------------

def test_padded_sizes_follow_the_documented_buckets():
    from scalekit.laws.fit import _padded_sizes

    # starts: a power of two (at least 8) up to 64, then a multiple of 64; points: a multiple of 32, of 128 past 512
    assert _padded_sizes(1, 1) == (8, 32)
    assert _padded_sizes(9, 33) == (16, 64)
    assert _padded_sizes(64, 512) == (64, 512)
    assert _padded_sizes(65, 513) == (128, 640)
    assert _padded_sizes(129, 1000) == (192, 1024)
    assert _padded_sizes(4500, 245) == (4544, 256)


def test_a_variable_projection_fit_notes_its_exponent_cells():
    import re

    from scalekit.laws.data import ScalingData
    from scalekit.laws.fit import fit_law

    N, D = np.meshgrid(np.geomspace(1e7, 1e10, 5), np.geomspace(1e9, 1e12, 5))
    N, D = N.ravel(), D.ravel()
    d = ScalingData.from_arrays(N=N, D=D, loss=E + A / N ** 0.3 + B / D ** 0.4)
    fit = fit_law(d, "chinchilla", diagnose=False)
    assert fit.solver == "vpnls"
    notes = [n for n in fit.notes if n.startswith("vpnls:")]
    assert len(notes) == 1
    m = re.fullmatch(r"vpnls: (\d+) exponent cells \((\d+) x (\d+) over alpha, beta\), best (\d+) refined by L-BFGS",
                     notes[0])
    assert m is not None, notes[0]
    cells, na, nb, best = map(int, m.groups())
    assert cells == na * nb and 1 <= best <= 16
    tied = fit_law(d, "chinchilla_tied", diagnose=False)
    note = next(n for n in tied.notes if n.startswith("vpnls:"))
    assert re.fullmatch(r"vpnls: (\d+) exponent cells \((\d+) over alpha\), best \d+ refined by L-BFGS", note), note
