"""The pieces of scalekit.laws.compare around the fits: the hold-out splits, warning capture, free-parameter counts,
residual inflation, form labels, default forms, grids and fit keywords, and the row bookkeeping.

Written to kill the mutants `make mutate` found alive. Inputs are small and made up; expectations follow the module
docstring (written out by hand), with no fitter run.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from scalekit.laws import compare as cmp
from scalekit.laws.data import ScalingData
from scalekit.laws.errors import InvalidDataError, ScalingLawWarning
from scalekit.laws.forms import LAWS
from scalekit.laws.results import LawFit

B = np.array([1e18, 1e18, 1e19, 1e19, 1e20, 1e20])
C = B * np.array([0.9, 1.1, 0.9, 1.1, 0.9, 1.1])


def test_top_split_and_threshold_split():
    top, folds = cmp._splits(B, C, "top", None)
    assert folds == [] and top.name == "top budget 1e+20" and top.budgets == (1e20,)
    np.testing.assert_array_equal(top.test, B == 1e20) and np.testing.assert_array_equal(top.train, B != 1e20)
    thr, _ = cmp._splits(B, C, "top", 1e19)
    np.testing.assert_array_equal(thr.test, C > 1e19)
    assert thr.name == "C > 1e+19" and thr.budgets == (1e19, 1e20)
    with pytest.raises(InvalidDataError) as e:
        cmp._splits(B, C, "top", 1e30)
    assert str(e.value) == "threshold 1e+30 leaves 6 runs to fit and 0 to predict: both must be non-empty"
    with pytest.raises(InvalidDataError, match=r"leaves 0 runs to fit and 6 to predict"):
        cmp._splits(B, C, "top", 1.0)
    with pytest.raises(InvalidDataError) as e:
        cmp._splits(np.full(3, 1e18), C[:3], "top", None)
    assert str(e.value) == "comparing laws needs runs at two or more compute budgets; the data have 1"


def test_lobo_folds_skip_the_smallest_budget():
    top, folds = cmp._splits(B, C, "lobo", None)
    assert top is None
    assert [f.name for f in folds] == ["budget 1e+19", "budget 1e+20"]
    assert [f.budgets for f in folds] == [(1e19,), (1e20,)]
    np.testing.assert_array_equal(folds[0].test, B == 1e19) and np.testing.assert_array_equal(folds[0].train,
                                                                                             B != 1e19)
    both_top, both_folds = cmp._splits(B, C, "both", None)
    assert both_top.name == "top budget 1e+20" and len(both_folds) == 2


def test_quiet_collects_library_warnings_only():
    def noisy():
        warnings.warn("law warning", ScalingLawWarning)
        warnings.warn("other warning", UserWarning)
        return 42

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out, msgs = cmp._quiet(noisy)
    assert out == 42 and msgs == ["ScalingLawWarning: law warning"]


def fit_of(law="chinchilla", fixed=None, ties=None, lse=None):
    law_ = LAWS[law]
    lse = lse or {"a": 6.0, "b": 7.0, "e": 0.5, "alpha": 0.3, "beta": 0.4}
    return LawFit(law=law_, lse=lse, params=law_.to_natural(lse), objective=0.0, n_converged=1, n_starts=1,
                  converged=True, n_points=10, delta=None, fixed=fixed or {}, ties=ties or {})


def test_n_free_counts_fixed_and_tied_parameters_once():
    assert cmp._n_free(fit_of()) == 5
    assert cmp._n_free(fit_of(fixed={"e": 0.5})) == 4
    assert cmp._n_free(fit_of(ties={"beta": "alpha"})) == 4
    assert cmp._n_free(fit_of("chinchilla_tied")) == 4                     # the law's own tie
    assert cmp._n_free(fit_of("chinchilla_tied", ties={"beta": "alpha"})) == 4
    assert cmp._n_free(fit_of(fixed={"beta": 0.4}, ties={"beta": "alpha"})) == 4   # fixed and tied: counted once
    everything = {k: 0.0 for k in ("a", "b", "e", "alpha", "beta")}
    assert cmp._n_free(fit_of(fixed=everything)) == 1                      # never below 1


def test_log_residuals_are_inflated_by_sqrt_n_over_n_minus_p():
    f = fit_of()
    N = np.geomspace(1e7, 1e9, 8)
    D = np.geomspace(1e9, 1e11, 8)
    pred = f.predict(N=N, D=D)
    r = np.array([0.01, -0.02, 0.0, 0.03, -0.01, 0.02, 0.0, -0.03])
    train = ScalingData.from_arrays(N=N, D=D, loss=pred * np.exp(r))
    np.testing.assert_allclose(cmp._log_residuals(f, train), r * math.sqrt(8 / 3), rtol=1e-9, atol=1e-15)
    few = ScalingData.from_arrays(N=N[:4], D=D[:4], loss=pred[:4] * np.exp(r[:4]))
    np.testing.assert_allclose(cmp._log_residuals(f, few), r[:4], rtol=1e-9, atol=1e-15)    # n <= p: as they are


def test_exponent_a_from_the_law_or_the_numeric_optimum():
    assert cmp._exponent_a(fit_of(), 1e20) == pytest.approx(0.4 / 0.7)
    lse = {"a": 6.0, "b": 7.0, "e": 0.5, "alpha": 0.3, "beta": 0.4, "log_rn_star": 1.0, "log_rd_star": 2.0}
    dc = fit_of("data_constrained", lse=lse)
    assert cmp._exponent_a(dc, 1e20) == pytest.approx(0.4 / 0.7, rel=1e-3)   # U = D: the Chinchilla slope
    assert cmp._exponent_a(fit_of("kaplan_c", lse={"a": 1.0, "e": 0.1, "alpha": 0.2}), 1e20) is None


def test_form_labels_defaults_grids_and_fit_keywords():
    assert cmp.law_of("chinchilla (E = floor)") == "chinchilla" and cmp.law_of("gadre") == "gadre"
    plain = ScalingData.from_arrays(N=[1.0], D=[1.0], loss=[1.0])
    with_u = ScalingData.from_arrays(N=[1.0], D=[1.0], U=[1.0], loss=[1.0])
    assert cmp._default_forms(plain, None) == ("chinchilla", "chinchilla_tied", "kaplan_nd", "gadre")
    assert cmp._default_forms(with_u, None)[-1] == "data_constrained"
    assert cmp._default_forms(plain, 1.7) == ("chinchilla", "chinchilla_tied", "kaplan_nd", "gadre",
                                              "chinchilla (E = floor)", "chinchilla_tied (E = floor)",
                                              "gadre (E = floor)")                 # kaplan_nd has no E
    assert cmp._grid_for("chinchilla", None) is None and cmp._grid_for("chinchilla", "coarse") == "coarse"
    assert cmp._grid_for("chinchilla (E = floor)", {"alpha": [0.3], "eta": [0.1]}) == {"alpha": [0.3]}
    assert cmp._grid_for("kaplan_nd", {"alpha": [0.3]}) is None
    g = cmp._grid_for("chinchilla", [1, 2, 3, 4, 5])
    assert g.shape == (1, 5) and g.dtype == np.float64
    assert cmp._grid_for("gadre", [1, 2, 3, 4, 5]) is None
    assert cmp._fit_kw("chinchilla", None, None) == {}
    assert cmp._fit_kw("chinchilla", "coarse", 1.7) == {"floor": 1.7, "grid": "coarse"}
    assert cmp._fit_kw("chinchilla (E = floor)", None, 1.7) == {"floor": 1.7, "fixed": {"e": math.log(1.7)}}
    assert cmp._fit_kw("data_constrained", None, None) == {"grid": "coarse"}
    assert cmp._fit_kw("data_constrained", {"a": [1.0]}, None) == {"grid": {"a": [1.0]}}
    with pytest.raises(ValueError) as e:
        cmp._fit_kw("gadre (E = floor)", None, None)
    assert str(e.value) == "form 'gadre (E = floor)' fixes E to the floor of the loss: pass floor="


def test_rows_and_failures():
    r = cmp._row("chinchilla", "huber_log", 3, "runs")
    assert (r["form"], r["objective"], r["approach"], r["metric"]) == ("chinchilla", "huber_log", 3, "runs")
    assert r["error"] is None and r["warnings"] == [] and r["lobo_folds"] == {} and r["seconds"] == 0.0
    assert all(r[k] is None for k in ("rank", "heldout_mean_abs_rel_err", "coverage", "a", "E", "n_opt_rel_err",
                                      "n_train", "heldout", "lobo_mean_abs_rel_err"))
    cmp._fail(r, ValueError("bad data"), "LOBO fold 1: ")
    assert r["error"] == "LOBO fold 1: ValueError: bad data"
    cmp._fail(r, RuntimeError("later"))
    assert r["error"] == "LOBO fold 1: ValueError: bad data"            # the first failure is kept
    assert cmp.DEFAULT_FORMS == ("chinchilla", "chinchilla_tied", "kaplan_nd", "gadre")
    assert cmp.APPROACH2_LOSS_OBJECTIVE == "huber_log" and cmp.HOLDOUTS == ("top", "lobo", "both")


def test_compare_laws_refuses_unknown_approaches():
    d = ScalingData.from_arrays(N=np.repeat([1e7, 1e8, 1e9], 2), D=np.tile([1e9, 1e10], 3), loss=np.full(6, 3.0))
    with pytest.raises(ValueError) as e:
        cmp.compare_laws(d, approaches=[3, 4, 1])
    assert str(e.value) == "approaches must be 3 (parametric laws) and/or 2 (IsoFLOP parabolas), got [1, 4]"


def test_refit_of_an_approach2_winner_bootstraps_it():
    from scalekit.laws.allocate import chinchilla_optimal

    A, B_, E = math.exp(6.0), math.exp(7.0), math.exp(0.5)
    N, Cs = [], []
    for c in (1e18, 1e19, 1e20):
        n_opt, _ = chinchilla_optimal(c, A, B_, 0.3, 0.4)
        N += list(n_opt * np.geomspace(0.25, 4.0, 5))
        Cs += [c] * 5
    N, Cs = np.array(N), np.array(Cs)
    D = Cs / (6 * N)
    d = ScalingData.from_arrays(N=N, D=D, C=Cs, loss=E + A / N ** 0.3 + B_ / D ** 0.4)
    fit = cmp._refit({"approach": 2, "optimum": "parabola"}, d, bootstrap=12, level=0.8, seed=3, grid=None,
                     floor=None)
    assert fit.approach == 2 and fit.details["optimum"] == "parabola"
    assert fit.samples is not None and len(fit.samples) == 12 and fit.level == 0.8
    assert set(fit.intervals) >= {"a", "b"}
