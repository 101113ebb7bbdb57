"""scalekit.laws.render and the AllocationFit result object: number formats, tables, JSON conversion, intervals,
and what an allocation fit prints, predicts and exports.

Written to kill the mutants `make mutate` found alive. Expected strings are written out by hand from the format
rules in the code's docstrings; numbers come from the closed forms (k C^a) and numpy's quantile.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from scalekit.laws import render
from scalekit.laws.isoflop import AllocationFit


# --- render -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("v, s", [(None, "-"), (0, "0"), (0.0, "0"), (1.5, "1.5"), (123456.0, "1.2346e+05"),
                                  (99999.0, "99999"), (1e5, "1e+05"), (0.001, "0.001"), (0.00099, "0.00099"),
                                  (-2e-4, "-0.0002"), (-1e6, "-1e+06"), (1.23456789, "1.23457"),
                                  (float("inf"), "inf"), (float("nan"), "nan"), (np.float32(2.5), "2.5")])
def test_fmt(v, s):
    assert render.fmt(v) == s


def test_header_and_param_rows():
    assert render.header(0.95, True) == ("param", "value", "95% interval")
    assert render.header(0.9, False) == ("param", "value")
    assert render.header(None, True) == ("param", "value", "0% interval")
    assert render.header(0.683, True) == ("param", "value", "68% interval")
    params = {"a": 0.5, "k_N": 123456.0}
    assert render.param_rows(params, {}) == [("a", "0.5"), ("k_N", "1.2346e+05")]
    assert render.param_rows(params, {"a": (0.25, 0.75)}) == [("a", "0.5", "[0.25, 0.75]"),
                                                             ("k_N", "1.2346e+05", "")]


def test_text_table_pads_aligns_and_rules():
    out = render.text_table([("a", "1"), ("long_name", "22", "extra"), ("b",)], ("p", "value"))
    assert out == ("p          value\n"
                   "---------  -----\n"
                   "a          1\n"
                   "long_name  22\n"
                   "b")


def test_html_table_escapes():
    out = render.html_table("T<1>", [("a&b", "1")], ("p", "v"), footer="n < 3")
    assert out == ("<div><b>T&lt;1&gt;</b><table><thead><tr><th>p</th><th>v</th></tr></thead>"
                   "<tbody><tr><td>a&amp;b</td><td>1</td></tr></tbody></table><p><small>n &lt; 3</small></p></div>")
    assert render.html_table("T", [], ("p",)) == ("<div><b>T</b><table><thead><tr><th>p</th></tr></thead><tbody>"
                                                  "</tbody></table></div>")


def test_jsonable():
    v = {1: np.array([1.0, np.nan]), "t": (np.int64(3), np.float32(0.5), np.bool_(True)), "inf": float("inf"),
         "s": "x", "n": None, "i": 7}
    out = render.jsonable(v)
    assert out == {"1": [1.0, None], "t": [3, 0.5, True], "inf": None, "s": "x", "n": None, "i": 7}
    assert type(out["t"][0]) is int and type(out["t"][1]) is float and type(out["t"][2]) is bool
    json.dumps(out, allow_nan=False)


def test_percentile_interval():
    s = np.array([np.nan, 5.0, 1.0, 3.0, 2.0, 4.0, np.inf])
    lo, hi = render.percentile_interval(s, 0.5)
    assert (lo, hi) == (float(np.quantile([1, 2, 3, 4, 5], 0.25)), float(np.quantile([1, 2, 3, 4, 5], 0.75)))
    assert (lo, hi) == (2.0, 4.0)
    assert render.percentile_interval(s, 0.0) == (3.0, 3.0)
    nan_lo, nan_hi = render.percentile_interval(np.array([np.nan]), 0.9)
    assert math.isnan(nan_lo) and math.isnan(nan_hi)


# --- AllocationFit ------------------------------------------------------------------------------------------

def allocation(approach: int = 2, **kw) -> AllocationFit:
    budgets = np.array([1e18, 1e19])
    base = dict(approach=approach, params={"a": 0.5, "k_N": 0.1, "b": 0.5, "k_D": 1.6}, budgets=budgets,
                n_opt=np.array([1e8, 3e8]), d_opt=np.array([1.6e9, 5e9]), loss_opt=np.array([3.1, 2.9]),
                objective=0.0123456, details={"optimum": "parabola"}, opt_se=np.array([0.05, 0.02]))
    base.update(kw)
    return AllocationFit(**base)


def test_predict_and_compute_optimal_follow_k_c_to_the_a():
    f = allocation(params={"a": 0.4, "k_N": 2.0, "b": 0.6, "k_D": 0.5})
    p = f.predict(1e20)
    assert float(p["N_opt"]) == pytest.approx(2.0 * 1e20 ** 0.4, rel=1e-12)
    assert float(p["D_opt"]) == pytest.approx(0.5 * 1e20 ** 0.6, rel=1e-12)
    assert f.exponents == {"a": 0.4, "b": 0.6}
    al = f.compute_optimal(1e20)
    assert al.N_opt == pytest.approx(2.0 * 1e20 ** 0.4, rel=1e-12)
    assert al.tokens_per_param == pytest.approx(0.25 * 1e20 ** 0.2, rel=1e-12)
    assert al.convention == "C = 6 N D" and al.intervals == {}
    arr = f.compute_optimal(np.array([1e18, 1e22]))
    np.testing.assert_allclose(arr.N_opt, 2.0 * np.array([1e18, 1e22]) ** 0.4, rtol=1e-12)


def test_compute_optimal_intervals_from_bootstrap_samples():
    # rows (a, log k_N, b, log k_D): N_opt at C = 1 is e^{log k_N}, so its quantiles are those of e^{column 1}
    samples = np.array([[0.5, np.log(k), 0.5, np.log(2 * k)] for k in (1.0, 2.0, 3.0, 4.0, 5.0)])
    f = allocation(samples=samples, level=0.5)
    al = f.compute_optimal(1.0)
    assert al.intervals["N_opt"] == pytest.approx((2.0, 4.0))
    assert al.intervals["D_opt"] == pytest.approx((4.0, 8.0))
    assert al.intervals["tokens_per_param"] == pytest.approx((2.0, 2.0))
    al2 = f.compute_optimal(np.array([1.0, 100.0]))
    lo, hi = al2.intervals["N_opt"]
    np.testing.assert_allclose(lo, [2.0, 20.0]) and np.testing.assert_allclose(hi, [4.0, 40.0])


def test_summary_approach2_lists_each_optimum():
    f = allocation(notes=["two budgets only"])
    assert f.summary() == "\n".join([
        "approach 2 (IsoFLOP parabolas): N_opt = k_N C^a, D_opt = k_D C^b  [C = 6 N D]",
        "optima used: 2, residual SS of log N_opt: 0.01235",
        "param  value",
        "-----  -----",
        "a      0.5",
        "k_N    0.1",
        "b      0.5",
        "k_D    1.6",
        "C      N_opt  D_opt    loss at optimum  se of log N_opt",
        "-----  -----  -------  ---------------  ---------------",
        "1e+18  1e+08  1.6e+09  3.1              0.05",
        "1e+19  3e+08  5e+09    2.9              0.02",
        "note: two budgets only"])
    assert str(f) == f.summary()


def test_summary_other_methods_approach1_intervals_and_missing_se():
    f = allocation(details={"optimum": "lowess"}, opt_se=None, by="D", flops_per_param_token=8.0)
    lines = f.summary().splitlines()
    assert lines[0] == "approach 2 (IsoFLOP optima: lowess): N_opt = k_N C^a, D_opt = k_D C^b  [C = 8 N D]"
    assert lines[1] == "optima used: 2, residual SS of log D_opt: 0.01235"
    assert lines[-4].split()[-1] == "D_opt"
    assert lines[-2].split()[-1] == "nan" and lines[-1].split()[-1] == "nan"
    g = allocation(approach=1, intervals={"a": (0.4, 0.6)}, level=0.9)
    lines = g.summary().splitlines()
    assert lines[0] == "approach 1 (training-curve envelope): N_opt = k_N C^a, D_opt = k_D C^b  [C = 6 N D]"
    assert lines[2] == "param  value  90% interval"
    assert lines[4] == "a      0.5    [0.4, 0.6]"
    assert len(lines) == 8                                     # no per-optimum table for approach 1


def test_to_dict_and_html():
    f = allocation(intervals={"a": (0.4, 0.6)}, level=0.9)
    d = f.to_dict()
    assert d["approach"] == 2 and d["params"] == {"a": 0.5, "k_N": 0.1, "b": 0.5, "k_D": 1.6}
    assert d["exponents"] == {"a": 0.5, "b": 0.5} and d["intervals"] == {"a": [0.4, 0.6]} and d["level"] == 0.9
    assert d["objective"] == 0.0123456 and d["by"] == "N" and d["optimum"] == "parabola"
    assert d["optima"] == {"C": [1e18, 1e19], "N_opt": [1e8, 3e8], "D_opt": [1.6e9, 5e9], "loss": [3.1, 2.9],
                           "log_opt_se": [0.05, 0.02]}
    assert d["diagnostics"] == [] and d["notes"] == []
    assert allocation(approach=1).to_dict()["optimum"] is None
    h = f._repr_html_()
    assert h.startswith("<div><b>approach 2: N_opt = k_N C^a, D_opt = k_D C^b</b>")
    assert "<th>90% interval</th>" in h and "<td>[0.4, 0.6]</td>" in h
    assert h.endswith("<p><small>2 optima; residual SS 0.01235</small></p></div>")
