"""scalekit.laws.diagnostics on hand-made fits: each diagnostic's trigger, its threshold on both sides, and its
message; and the warnings attach_diagnostics emits.

Written to kill the mutants `make mutate` found alive. The fits are LawFit objects built from chosen parameters on
data generated from the same Chinchilla law (no optimiser runs), so which diagnostics fire follows from the
thresholds in the module docstring, and each message is written out here.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from scalekit.laws import diagnostics as dg
from scalekit.laws.data import ScalingData
from scalekit.laws.diagnostics import Diagnostic, DiagnosticWarning
from scalekit.laws.forms import LAWS
from scalekit.laws.isoflop import AllocationFit
from scalekit.laws.results import LawFit

LSE = {"a": 6.0, "b": 7.0, "e": 0.5, "alpha": 0.3, "beta": 0.35}
S = dg.SUGGESTION


def grid_data(n_sizes: int = 5, n_tokens: int = 5) -> ScalingData:
    N, D = np.meshgrid(np.geomspace(1e7, 1e10, n_sizes), np.geomspace(1e9, 1e12, n_tokens))
    N, D = N.ravel(), D.ravel()
    loss = math.exp(0.5) + math.exp(6.0) / N ** 0.3 + math.exp(7.0) / D ** 0.35
    return ScalingData.from_arrays(N=N, D=D, loss=loss)


def fit_of(data: ScalingData, **kw) -> LawFit:
    law = LAWS["chinchilla"]
    lse = dict(LSE, **kw.pop("lse", {}))
    base = dict(law=law, lse=lse, params=law.to_natural(lse), objective=0.0, n_converged=1, n_starts=1,
                converged=True, n_points=len(data.loss), delta=1e-3)
    base.update(kw)
    return LawFit(**base)


def codes(ds) -> list[str]:
    return [d.code for d in ds]


def test_a_well_sampled_true_fit_has_no_diagnostics():
    d = grid_data()
    assert dg.diagnose_law(fit_of(d), d) == []


def test_too_few_points_threshold_is_two_per_free_parameter_plus_one():
    d = grid_data()
    # 5 free parameters need 11 points: 11 pass, 10 do not
    assert "too_few_points" not in codes(dg._count_checks(fit_of(d, n_points=11), d))
    out = dg._count_checks(fit_of(d, n_points=10), d)
    assert codes(out) == ["too_few_points"]
    assert out[0].severity == "warning" and out[0].detail == {"n_points": 10, "n_free": 5}
    assert out[0].message == (f"10 points for 5 free parameters of the chinchilla law (fewer than 11): the "
                              f"parameters are not identified and its predictions beyond the data should not be "
                              f"trusted; {S}")
    # a fixed and a tied parameter leave 3 free: 7 points are enough, 6 are not
    fixed_tied = dict(fixed={"e": 0.5}, ties={"beta": "alpha"})
    assert dg._count_checks(fit_of(d, n_points=7, **fixed_tied), d) == []
    assert dg._count_checks(fit_of(d, n_points=6, **fixed_tied), d)[0].detail == {"n_points": 6, "n_free": 3}


def test_an_input_with_two_distinct_values_is_not_identified():
    N = np.repeat([1e8, 1e9], 6)
    D = np.tile(np.geomspace(1e9, 1e12, 6), 2)
    d = ScalingData.from_arrays(N=N, D=D, loss=2.0 + 0 * N)
    out = dg._count_checks(fit_of(d), d)
    assert codes(out) == ["too_few_points"]
    assert out[0].detail == {"input": "N", "distinct": 2}
    assert out[0].message == f"N takes 2 distinct value(s): its exponent alpha is not identified; {S}"
    # with alpha fixed there is nothing to identify
    assert dg._count_checks(fit_of(d, fixed={"alpha": 0.3}, n_points=100), d) == []
    three = ScalingData.from_arrays(N=np.repeat([1e8, 1e9, 1e10], 4), D=np.tile(np.geomspace(1e9, 1e12, 4), 3),
                                    loss=np.full(12, 2.0))
    assert dg._count_checks(fit_of(three), three) == []


def test_below_floor_and_implausible_exponents():
    d = grid_data()
    f = fit_of(d)
    E = math.exp(0.5)
    assert dg.diagnose_law(f, d, floor=E) == []                       # at the floor: fine
    assert dg.diagnose_law(f, d, floor=E * (1 + 0.5e-6)) == []        # within the 1e-6 tolerance
    out = dg.diagnose_law(f, d, floor=2.0)
    assert codes(out) == ["below_floor"]
    assert out[0].message == (f"fitted E = {E:.4g} lies below the known floor 2 of the loss: the law's irreducible "
                              f"term is not what the data say; {S}")
    assert out[0].detail == {"E": pytest.approx(E), "floor": 2.0}
    for value, flagged in ((0.02, False), (1.5, False), (0.0199, True), (1.51, True)):
        g = fit_of(d, lse={"alpha": value})
        found = [x for x in dg.diagnose_law(g, d) if x.code == "implausible_exponent"]
        assert bool(found) is flagged, value
    g = fit_of(d, lse={"beta": 2.0})
    found = [x for x in dg.diagnose_law(g, d) if x.code == "implausible_exponent"]
    assert found[0].message == (f"exponent beta = 2 lies outside [0.02, 1.5], the range of published language-model "
                                f"fits; {S}")
    assert found[0].detail == {"param": "beta", "value": 2.0}
    assert not [x for x in dg.diagnose_law(fit_of(d, lse={"beta": 2.0}, fixed={"beta": 2.0}), d)
                if x.code == "implausible_exponent"]


def test_at_bound_either_side():
    f = fit_of(grid_data(), bounds={"alpha": (0.3, None), "beta": (None, 0.35 + 1e-5), "e": (0.0, 1.0)})
    out = dg._bound_checks(f)
    assert codes(out) == ["at_bound", "at_bound"]
    assert out[0].message == ("alpha = 0.3 sits on its lower bound 0.3: the bound, not the data, set it; widen or "
                              "drop the bound, or report the fit as constrained")
    assert out[0].detail == {"param": "alpha", "value": 0.3, "bound": 0.3, "side": "lower"}
    assert out[1].detail["side"] == "upper" and out[1].detail["param"] == "beta"
    assert dg._bound_checks(fit_of(grid_data(), bounds={"alpha": (0.2998, 0.4)})) == []   # 2e-4 away: off it


def test_wide_intervals():
    # widths: alpha 0.31 > 0.3 (flagged), beta 0.34 < 0.35, E 0.5 < half of e^0.5 = 0.82
    f = fit_of(grid_data(), intervals={"alpha": (0.0, 0.31), "beta": (0.1, 0.44), "E": (1.0, 1.5)}, level=0.9)
    out = dg._interval_checks(f)
    assert codes(out) == ["wide_interval"]
    assert out[0].detail["param"] == "alpha"
    assert out[0].message == (f"the 90% interval of alpha [0, 0.31] is wider than its value 0.3: the data do not pin "
                              f"it down; {S}")
    E = math.exp(0.5)
    g = fit_of(grid_data(), intervals={"E": (0.0, 0.51 * E), "beta": (0.0, 0.36)})
    out = dg._interval_checks(g)
    assert [x.detail["param"] for x in out] == ["beta", "E"]
    assert out[1].message.startswith("the 95% interval of E [0, ")
    assert "is wider than half of its value" in out[1].message
    assert dg._interval_checks(fit_of(grid_data(), intervals={"E": (0.0, 0.49 * E), "alpha": (0.0, np.inf)})) == []


def test_attach_diagnostics_warns_for_warnings_only():
    d = grid_data()
    f = fit_of(d, n_points=3)
    with pytest.warns(DiagnosticWarning) as record:
        out = dg.attach_diagnostics(f, d)
    assert f.diagnostics is out and "too_few_points" in codes(out)
    assert any(str(w.message).startswith("[too_few_points] 3 points for 5 free parameters") for w in record)
    g = fit_of(d, n_points=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dg.attach_diagnostics(g, d, emit=False) == g.diagnostics != []


def test_isoflop_dropped_budgets():
    fit = AllocationFit(approach=2, params={"a": 0.5, "k_N": 0.1, "b": 0.5, "k_D": 1.6}, budgets=np.array([1e18]),
                        n_opt=np.array([1e8]), d_opt=np.array([1e9]), loss_opt=np.array([3.0]), objective=0.0,
                        details={"dropped": [1e19, 3.5e20]})
    out = dg.diagnose_isoflop(fit, None)
    assert codes(out) == ["approach2_dropped"]
    assert out[0].message == "2 IsoFLOP budget(s) gave no usable optimum and were dropped: 1e+19, 3.5e+20"
    assert out[0].detail == {"budgets": [1e19, 3.5e20]} and out[0].severity == "warning"
    fit.details = {}
    assert dg.diagnose_isoflop(fit, None) == []
    assert Diagnostic("c", "info", "m", {"x": np.float64(1.5)}).to_dict() == {"code": "c", "severity": "info",
                                                                            "message": "m", "detail": {"x": 1.5}}


def test_attach_isoflop_diagnostics_warns_by_default():
    fit = AllocationFit(approach=2, params={"a": 0.5, "k_N": 0.1, "b": 0.5, "k_D": 1.6}, budgets=np.array([1e18]),
                        n_opt=np.array([1e8]), d_opt=np.array([1e9]), loss_opt=np.array([3.0]), objective=0.0,
                        details={"dropped": [1e19]})
    with pytest.warns(DiagnosticWarning, match=r"^\[approach2_dropped\] 1 IsoFLOP budget\(s\) gave no usable"):
        out = dg.attach_isoflop_diagnostics(fit, grid_data(), surface=None)
    assert fit.diagnostics is out and codes(out) == ["approach2_dropped"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dg.attach_isoflop_diagnostics(fit, grid_data(), surface=None, emit=False)
