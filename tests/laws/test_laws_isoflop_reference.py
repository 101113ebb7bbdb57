"""Approach 2 (fit_isoflop) against the closed-form optimum of a noise-free Chinchilla surface, by="N" and by="D".

Surface: L(N, D) = E + A / N^alpha + B / D^beta, with C = 6 N D (the convention isoflop.py documents).
Closed form, worked here (not taken from scalekit.laws.allocate): along C = 6 N D, dL/dN = 0 gives
alpha A N^-alpha = beta B D^-beta, so
    G     = (alpha A / (beta B))^(1 / (alpha + beta))
    N_opt = G (C/6)^a,      a = beta / (alpha + beta)
    D_opt = (C/6)^b / G,    b = alpha / (alpha + beta) = 1 - a,   and N_opt D_opt = C / 6
    k_N   = G 6^-a,  k_D = 6^-b / G    (N_opt = k_N C^a, D_opt = k_D C^b), so 6 k_N k_D = 1.

Why the vertex is exact: write u = log N - log N_opt. Along a budget's line
    L(u) = E + K(C) [exp(-alpha u) / alpha + exp(beta u) / beta],  K(C) = alpha A N_opt^-alpha,
so every budget's profile has the SAME shape in u, only scaled by K(C) and shifted by E. With alpha == beta it is
E + (2K/alpha) cosh(alpha u): even in u, and a least-squares parabola (or the robust quartic) over a grid
symmetric in u has no odd terms, so its vertex is at u = 0 to float precision. In log D the profile is the
mirror image (log D = log(C/6) - log N), so a grid symmetric in log N is symmetric in log D too.
With alpha != beta the vertex is biased, but by the same u at every budget (same shape, same relative grid), so
the fitted exponent a is still exact and only k_N carries a constant bias: the second group of tests checks that.

Tolerances (float64 throughout): exponents to 1e-9 absolute; N_opt, D_opt to 1e-9 relative when alpha == beta;
the vertex loss to 1e-5 relative for the parabola over +-2x (a parabola fitted to the cosh misses its quartic
term, which biases the intercept; measured 5.2e-6) and 1e-8 for the robust quartic (measured 2e-10).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from scalekit.laws.isoflop import fit_isoflop

E, A, B = 1.69, 406.4, 410.7
BUDGETS = np.geomspace(1e18, 1e22, 5)
SIZES = 13          # grid points per budget (robust's default window of 9 is then centred on the optimum)
SPAN = 2.0          # grid over [x_opt / SPAN, x_opt * SPAN], log-spaced, x_opt in the middle


def truth(C, alpha, beta):
    C = np.asarray(C, np.float64)
    G = (alpha * A / (beta * B)) ** (1.0 / (alpha + beta))
    a, b = beta / (alpha + beta), alpha / (alpha + beta)
    n = G * (C / 6.0) ** a
    d = (C / 6.0) ** b / G
    loss = E + A / n ** alpha + B / d ** beta
    return {"a": a, "b": b, "k_N": G * 6.0 ** -a, "k_D": 6.0 ** -b / G, "N": n, "D": d, "loss": loss}


def grid(alpha, beta, by: str, sizes: int = SIZES, span: float = SPAN) -> dict:
    """Per budget, `sizes` points log-spaced symmetrically around the true optimum in log N (by="N") or log D."""
    t = truth(BUDGETS, alpha, beta)
    N, D, C = [], [], []
    for c, n_opt, d_opt in zip(BUDGETS, t["N"], t["D"]):
        r = np.geomspace(1.0 / span, span, sizes)
        if by == "N":
            n = n_opt * r
            d = c / (6.0 * n)
        else:
            d = d_opt * r
            n = c / (6.0 * d)
        N.append(n), D.append(d), C.append(np.full(sizes, c))
    N, D, C = map(np.concatenate, (N, D, C))
    loss = E + A / N ** alpha + B / D ** beta
    return {"N": N, "D": D, "C": C, "loss": loss, "budget": C}


def fit(data, by, optimum):
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # a centred, noise-free grid must not need any warning
        return fit_isoflop(data, by=by, optimum=optimum)


OPTIMA = ["parabola", "robust"]
LOSS_RTOL = {"parabola": 1e-5, "robust": 1e-8}   # measured 5.2e-6 and 2e-10


# ------------------------------------------------------------------ alpha == beta: per-budget optima are exact

ALPHA = BETA = 0.34       # a = b = 0.5; A != B so G != 1 and k_N != k_D (a swap of N and D is visible)


@pytest.mark.parametrize("optimum", OPTIMA)
@pytest.mark.parametrize("by", ["N", "D"])
def test_symmetric_optima_exact(by, optimum):
    t = truth(BUDGETS, ALPHA, BETA)
    assert t["k_N"] / t["k_D"] > 1.01 or t["k_D"] / t["k_N"] > 1.01   # the test can tell them apart
    f = fit(grid(ALPHA, BETA, by), by, optimum)
    assert f.by == by
    np.testing.assert_allclose(f.budgets, BUDGETS, rtol=1e-12)
    np.testing.assert_allclose(f.n_opt, t["N"], rtol=1e-9)
    np.testing.assert_allclose(f.d_opt, t["D"], rtol=1e-9)
    np.testing.assert_allclose(f.loss_opt, t["loss"], rtol=LOSS_RTOL[optimum])
    for k in ("a", "b"):
        assert f.params[k] == pytest.approx(t[k], abs=1e-9)
    assert f.params["k_N"] == pytest.approx(t["k_N"], rel=1e-8)
    assert f.params["k_D"] == pytest.approx(t["k_D"], rel=1e-8)
    assert f.objective == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("optimum", OPTIMA)
@pytest.mark.parametrize("by", ["N", "D"])
def test_derived_side_consistent_with_c_equals_6nd(by, optimum):
    f = fit(grid(ALPHA, BETA, by), by, optimum)
    p = f.params
    assert p["a"] + p["b"] == pytest.approx(1.0, abs=1e-12)          # b = 1 - a under C = 6 N D
    assert 6.0 * p["k_N"] * p["k_D"] == pytest.approx(1.0, rel=1e-12)  # D = C / (6 N) at every C
    np.testing.assert_allclose(6.0 * f.n_opt * f.d_opt, f.budgets, rtol=1e-12)
    pred = f.predict(BUDGETS)
    np.testing.assert_allclose(6.0 * pred["N_opt"] * pred["D_opt"], BUDGETS, rtol=1e-10)
    np.testing.assert_allclose(pred["N_opt"], f.n_opt, rtol=1e-8)     # the power law passes through the optima
    np.testing.assert_allclose(pred["D_opt"], f.d_opt, rtol=1e-8)


# ------------------------------------------------------------------ alpha != beta: exponents still exact

ALPHA2, BETA2 = 0.465, 0.155   # Chinchilla's fitted exponents: a = 0.25, b = 0.75


@pytest.mark.parametrize("optimum", OPTIMA)
@pytest.mark.parametrize("by", ["N", "D"])
def test_skewed_surface_exponents_exact_and_bias_constant(by, optimum):
    t = truth(BUDGETS, ALPHA2, BETA2)
    f = fit(grid(ALPHA2, BETA2, by), by, optimum)
    assert f.params["a"] == pytest.approx(0.25, abs=1e-9)
    assert f.params["b"] == pytest.approx(0.75, abs=1e-9)
    # the per-budget vertex is off by the same factor at every budget (same profile shape in u)
    ratio = f.n_opt / t["N"]
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-9)
    # ... and that factor is small on a +-2x grid: measured +1.74% (parabola) and -8.8e-6 (robust quartic)
    assert abs(np.log(ratio[0])) < {"parabola": 0.025, "robust": 1e-4}[optimum]
    assert f.params["k_N"] == pytest.approx(t["k_N"] * ratio[0], rel=1e-8)
    assert f.params["k_D"] == pytest.approx(t["k_D"] / ratio[0], rel=1e-8)
    # the vertex loss: E + K(C) * const, so (loss_opt - E) / (true loss - E) is the same at every budget and ~1
    excess = (f.loss_opt - E) / (t["loss"] - E)
    np.testing.assert_allclose(excess, excess[0], rtol=1e-7)
    assert excess[0] == pytest.approx(1.0, abs={"parabola": 1e-4, "robust": 1e-7}[optimum])  # -2.4e-5, 9e-10


@pytest.mark.parametrize("optimum", OPTIMA)
@pytest.mark.parametrize("alpha,beta", [(ALPHA, BETA), (ALPHA2, BETA2)])
def test_by_n_and_by_d_agree_on_the_same_runs(alpha, beta, optimum):
    """log D = log(C/6) - log N on every budget: the profile in log D is the mirror of the one in log N, so
    both modes must find the same optima and the same power laws (to float rounding) on the same runs."""
    data = grid(alpha, beta, "N")
    fn, fd = fit(data, "N", optimum), fit(data, "D", optimum)
    np.testing.assert_allclose(fd.n_opt, fn.n_opt, rtol=1e-9)
    np.testing.assert_allclose(fd.d_opt, fn.d_opt, rtol=1e-9)
    np.testing.assert_allclose(fd.loss_opt, fn.loss_opt, rtol=1e-12)
    for k in ("a", "b"):
        assert fd.params[k] == pytest.approx(fn.params[k], abs=1e-9)
    for k in ("k_N", "k_D"):
        assert fd.params[k] == pytest.approx(fn.params[k], rel=1e-8)


@pytest.mark.parametrize("optimum", OPTIMA)
def test_loss_opt_is_the_vertex_value_not_the_grid_minimum(optimum):
    """Optimum between grid points (12 sizes, none at the optimum): the reported loss is the fitted curve's value
    at its minimum, below the lowest sampled loss and close to the true minimum (not the lowest point's loss)."""
    t = truth(BUDGETS, ALPHA, BETA)
    d = grid(ALPHA, BETA, "N", sizes=12)
    f = fit(d, "N", optimum)
    lowest = np.array([d["loss"][d["budget"] == c].min() for c in BUDGETS])
    assert np.all(f.loss_opt < lowest)
    np.testing.assert_allclose(f.loss_opt, t["loss"], rtol=LOSS_RTOL[optimum])    # measured 5.3e-6, 5.9e-10
    # parabola: all 12 points, symmetric, vertex exact; robust: its 9-size window is one step off-centre,
    # measured 4e-8
    np.testing.assert_allclose(f.n_opt, t["N"], rtol={"parabola": 1e-9, "robust": 1e-6}[optimum])
    assert f.params["a"] == pytest.approx(0.5, abs=1e-9)


@pytest.mark.parametrize("optimum", OPTIMA)
@pytest.mark.parametrize("by", ["N", "D"])
def test_off_centre_grid_vertex_loss(by, optimum):
    """Every budget's grid centred at 1.5x the true N_opt (so D at 1/1.5x): no longer symmetric, the optimum
    between grid points. The vertex loss must still be the fitted curve's minimum, close to the true minimum
    (the value at the grid's centre is ~1e-3 higher), N_opt close (measured |log error| 1.8e-3 parabola,
    1.7e-7 robust), and a exact (same relative grid at every budget)."""
    t = truth(BUDGETS, ALPHA, BETA)
    d = grid(ALPHA, BETA, by)
    d["N"], d["D"] = d["N"] * 1.5, d["D"] / 1.5                     # same C = 6 N D
    d["loss"] = E + A / d["N"] ** ALPHA + B / d["D"] ** BETA
    f = fit(d, by, optimum)
    lowest = np.array([d["loss"][d["budget"] == c].min() for c in BUDGETS])
    np.testing.assert_allclose(f.loss_opt, t["loss"], rtol={"parabola": 3e-5, "robust": 1e-8}[optimum])
    if optimum == "robust":
        assert np.all(f.loss_opt < lowest)                           # lowest point is 6.7e-5 above the truth
    assert np.max(np.abs(np.log(f.n_opt / t["N"]))) < {"parabola": 3e-3, "robust": 1e-6}[optimum]
    np.testing.assert_allclose(6.0 * f.n_opt * f.d_opt, BUDGETS, rtol=1e-12)
    assert f.params["a"] == pytest.approx(0.5, abs=1e-9)
