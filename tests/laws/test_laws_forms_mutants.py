"""scalekit.laws.forms law by law: each law's prediction against its formula written out in natural units with
numpy, its parameter conversions both ways, its grid and features, and the registry's lookups.

Written to kill the mutants `make mutate` found alive. Every expected value is computed here from the formula in
the law's docstring or from the paper's definition (never from forms.py's own helpers).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from scalekit.laws import forms
from scalekit.laws.forms import LAWS, get_law

N = np.array([1e7, 3e8, 2e9, 7e10])
D = np.array([2e8, 5e9, 4e10, 1e12])


def predict(law, params: dict[str, float], **inputs) -> np.ndarray:
    theta = np.array([params[k] for k in law.params])
    return np.exp(law.log_predict_np(theta, inputs))


# --- predictions against the formulas ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["chinchilla", "chinchilla_tied"])
def test_chinchilla_predicts_e_plus_two_power_terms(name):
    law = LAWS[name]
    p = {"a": 6.0, "b": 7.5, "e": 0.4, "alpha": 0.34, "beta": 0.28}
    A, B, E = math.exp(6.0), math.exp(7.5), math.exp(0.4)
    np.testing.assert_allclose(predict(law, p, N=N, D=D), E + A / N ** 0.34 + B / D ** 0.28, rtol=1e-12)
    assert law.to_natural(p) == pytest.approx({"A": A, "B": B, "E": E, "alpha": 0.34, "beta": 0.28}, rel=1e-14)
    assert law.from_natural({"A": A, "B": B, "E": E, "alpha": 0.34, "beta": 0.28}) == pytest.approx(p, rel=1e-14)
    np.testing.assert_allclose(forms.chinchilla_loss(N, D, A, B, E, 0.34, 0.28), E + A / N ** 0.34 + B / D ** 0.28,
                               rtol=1e-14)
    assert law.inputs == ("N", "D") and law.params == ("a", "b", "e", "alpha", "beta")
    assert law.separable and law.target == "loss"
    assert law.ties == ((("beta", "alpha"),) if name == "chinchilla_tied" else ())


def test_gadre_predicts_its_over_training_form():
    law = LAWS["gadre"]
    p = {"log_a": 3.0, "log_b": 4.0, "e": 0.5, "eta": 0.17}
    a, b, E, eta = math.exp(3.0), math.exp(4.0), math.exp(0.5), 0.17
    M, C = D / N, 6.0 * N * D
    np.testing.assert_allclose(predict(law, p, N=N, D=D), E + (a * M ** eta + b * M ** -eta) * C ** -eta, rtol=1e-12)
    # features: log(6 N^2) and log(6 D^2)
    np.testing.assert_allclose(law.features({"N": N, "D": D}), np.log([6 * N ** 2, 6 * D ** 2]), rtol=1e-14)
    assert law.to_natural(p) == pytest.approx({"a": a, "b": b, "E": E, "eta": eta}, rel=1e-14)
    assert law.from_natural({"a": a, "b": b, "E": E, "eta": eta}) == pytest.approx(p, rel=1e-14)
    assert set(law.from_natural({"a": a, "b": b, "E": E, "eta": eta})) == set(law.params)


def test_kaplan_nd_predicts_eq_1_5():
    law = LAWS["kaplan_nd"]
    p = {"log_nc": math.log(8.8e13), "log_dc": math.log(5.4e13), "alpha_n": 0.076, "alpha_d": 0.095}
    expected = ((8.8e13 / N) ** (0.076 / 0.095) + 5.4e13 / D) ** 0.095
    np.testing.assert_allclose(predict(law, p, N=N, D=D), expected, rtol=1e-12)
    nat = {"N_c": 8.8e13, "D_c": 5.4e13, "alpha_N": 0.076, "alpha_D": 0.095}
    assert law.to_natural(p) == pytest.approx(nat, rel=1e-14)
    assert law.from_natural(nat) == pytest.approx(p, rel=1e-14)
    assert not law.separable


@pytest.mark.parametrize("name, var", [("kaplan_n", "N"), ("kaplan_d", "D"), ("kaplan_c", "C"), ("posttrain", "X")])
def test_single_variable_power_laws(name, var):
    law = LAWS[name]
    X = np.array([1e3, 1e6, 1e9])
    p = {"a": 4.0, "e": -0.3, "alpha": 0.25}
    A, E = math.exp(4.0), math.exp(-0.3)
    np.testing.assert_allclose(predict(law, p, **{var: X}), E + A / X ** 0.25, rtol=1e-12)
    assert law.inputs == (var,) and law.params == ("a", "e", "alpha") and law.name == name
    assert law.natural_names == ("A", "alpha", "E", f"{var}_c")
    assert law.to_natural(p) == pytest.approx({"A": A, "alpha": 0.25, "E": E, f"{var}_c": math.exp(4.0 / 0.25)},
                                              rel=1e-14)
    assert law.to_natural(dict(p, alpha=0.0))[f"{var}_c"] == math.inf
    assert law.from_natural({"A": A, "alpha": 0.25, "E": E}) == pytest.approx(p, rel=1e-14)
    assert law.formula == f"y({var}) = E + A / {var}^alpha"

    no_e = get_law(name, irreducible=False)
    assert no_e.name == f"{name}_noE" and no_e.params == ("a", "alpha")
    assert no_e.natural_names == ("A", "alpha", f"{var}_c")
    q = {"a": 4.0, "alpha": 0.25}
    np.testing.assert_allclose(predict(no_e, q, **{var: X}), A / X ** 0.25, rtol=1e-12)
    assert no_e.to_natural(q) == pytest.approx({"A": A, "alpha": 0.25, f"{var}_c": math.exp(16.0)}, rel=1e-14)
    assert "E" not in no_e.to_natural(q) and no_e.from_natural({"A": A, "alpha": 0.25}) == pytest.approx(q)
    assert no_e.default_grid().shape == (6 * 5, 2)
    assert no_e.formula == f"y({var}) = A / {var}^alpha = ({var}_c / {var})^alpha"


def test_coverage_law():
    law = LAWS["coverage"]
    k = np.array([1.0, 10.0, 100.0])
    p = {"log_neg_a": math.log(0.8), "neg_b": 0.35}       # coverage(k) = exp(a k^b) with a = -0.8, b = -0.35
    np.testing.assert_allclose(predict(law, p, k=k), 0.8 * k ** -0.35, rtol=1e-12)   # y = -log coverage
    assert law.to_natural(p) == pytest.approx({"a": -0.8, "b": -0.35}, rel=1e-14)
    assert law.from_natural({"a": -0.8, "b": -0.35}) == pytest.approx(p, rel=1e-14)
    assert law.target == "-log coverage"


def test_data_constrained_law_against_muennighoff_definitions():
    law = LAWS["data_constrained"]
    p = dict(forms.DATABLATIONS_PUBLISHED)
    A, B, E = math.exp(p["a"]), math.exp(p["b"]), math.exp(p["e"])
    alpha, beta = p["alpha"], p["beta"]
    rn, rd = 5.309743, 15.387756
    n = np.array([1e8, 1e9, 8e9])
    d = np.array([1e10, 1e11, 4e11])
    u = np.array([1e10, 2e10, 1e10])
    # the compute-optimal N for D = U, from the Chinchilla first-order condition alpha A / N^alpha = beta B / D^beta
    n_opt_u = (alpha * A / (beta * B) * u ** beta) ** (1 / alpha)
    u_n = np.minimum(n, n_opt_u)
    r_n = np.maximum(n / u_n - 1, 0)
    r_d = np.maximum(d / u - 1, 0)
    n_eff = u_n + u_n * rn * (1 - np.exp(-r_n / rn))
    d_eff = u + u * rd * (1 - np.exp(-r_d / rd))
    expected = E + A / n_eff ** alpha + B / d_eff ** beta
    np.testing.assert_allclose(forms.data_constrained_loss(n, d, u), expected, rtol=1e-10)
    np.testing.assert_allclose(predict(law, p, N=n, D=d, U=u), expected, rtol=1e-10)
    other = dict(p, log_rd_star=math.log(2.0))
    d_eff2 = u + u * 2.0 * (1 - np.exp(-r_d / 2.0))
    np.testing.assert_allclose(forms.data_constrained_loss(n, d, u, other),
                               E + A / n_eff ** alpha + B / d_eff2 ** beta, rtol=1e-10)
    nat = law.to_natural(p)
    assert nat == pytest.approx({"A": A, "B": B, "E": E, "alpha": alpha, "beta": beta, "R_N*": rn, "R_D*": rd},
                                rel=1e-6)
    assert law.from_natural(nat) == pytest.approx(p, rel=1e-12)


def test_n_opt_for_tokens_satisfies_the_first_order_condition():
    a, b, alpha, beta = 6.0, 7.0, 0.3, 0.4
    tokens = np.array([1e9, 1e11])
    n = forms.chinchilla_n_opt_for_tokens(np, a, b, alpha, beta, tokens)
    np.testing.assert_allclose(alpha * math.exp(a) / n ** alpha, beta * math.exp(b) / tokens ** beta, rtol=1e-10)


# --- grids, features and the registry --------------------------------------------------------------------------

def test_default_grids():
    g = LAWS["chinchilla"].default_grid()
    assert g.shape == (4500, 5)
    np.testing.assert_array_equal(g[0], [0.0, 0.0, -1.0, 0.0, 0.0])
    np.testing.assert_array_equal(g[1], [0.0, 0.0, -1.0, 0.0, 0.5])       # the last parameter varies fastest
    np.testing.assert_array_equal(g[-1], [25.0, 25.0, 1.0, 2.0, 2.0])
    assert LAWS["gadre"].default_grid().shape == (4 * 4 * 5 * 5, 4)
    assert LAWS["kaplan_nd"].default_grid().shape == (4 ** 4, 4)
    np.testing.assert_allclose(LAWS["kaplan_nd"].default_grid()[0], [math.log(1e8), math.log(1e8), 0.03, 0.03])
    assert LAWS["coverage"].default_grid().shape == (25, 2)
    assert LAWS["data_constrained"].default_grid().shape == (4500 * 25, 7)
    pg = forms.product_grid({"x": (1.0, 2.0), "y": (3.0, 4.0, 5.0)}, ("y", "x"))
    np.testing.assert_array_equal(pg, [[3, 1], [3, 2], [4, 1], [4, 2], [5, 1], [5, 2]])


def test_features_are_log_inputs_without_a_feature_map():
    f = LAWS["chinchilla"].features({"N": N, "D": D, "ignored": N})
    np.testing.assert_allclose(f, np.log([N, D]), rtol=1e-15)
    assert f.dtype == np.float64


def test_get_law_names_and_errors():
    assert get_law("Chinchilla-Tied") is LAWS["chinchilla_tied"]
    assert get_law(LAWS["gadre"]) is LAWS["gadre"]
    assert get_law("kaplan_n", irreducible=True) is LAWS["kaplan_n"]
    with pytest.raises(ValueError) as e:
        get_law("no_such")
    assert str(e.value) == "unknown law 'no_such'; known: " + ", ".join(LAWS)
    for name in ("chinchilla", "kaplan_nd", "coverage"):
        with pytest.raises(ValueError) as e:
            get_law(name, irreducible=False)
        assert str(e.value) == f"law {name!r} has no optional irreducible term"
    assert list(LAWS) == ["chinchilla", "chinchilla_tied", "gadre", "kaplan_nd", "kaplan_n", "kaplan_d", "kaplan_c",
                          "posttrain", "coverage", "data_constrained"]
