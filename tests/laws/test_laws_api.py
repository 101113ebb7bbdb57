"""Bad input gives a clear error or a named warning; result objects; the batched L-BFGS; x64 stays scoped."""

from __future__ import annotations

import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scalekit.laws import (STATUS, DroppedPointsWarning, InvalidDataError, LBFGSOptions, NotConvergedWarning,
                           ParabolaOpensDownwardWarning, ScalingData, TooFewPointsError, VertexOutsideRangeWarning,
                           chinchilla_loss, fit_isoflop, fit_law, minimize_batch)
from scalekit.laws import lbfgs

TRUE = {"A": 400.0, "B": 1200.0, "E": 1.8, "alpha": 0.33, "beta": 0.30}
GRID = {"a": (3.0, 6.0, 9.0), "b": (3.0, 6.0, 9.0), "e": (0.0, 0.5), "alpha": (0.2, 0.5), "beta": (0.2, 0.5)}


def _points():
    N, D = (a.ravel() for a in np.meshgrid(np.geomspace(5e7, 5e9, 8), np.geomspace(1e9, 2e11, 8)))
    return {"N": N, "D": D, "loss": chinchilla_loss(N, D, **TRUE)}


@pytest.fixture(scope="module")
def fit():
    return fit_law(_points(), "chinchilla", grid=GRID, bootstrap=50)


# --------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("bad", [np.nan, np.inf, 0.0, -1.0])
def test_invalid_values_are_an_error_naming_the_column(bad):
    p = _points()
    p["loss"] = p["loss"].copy()
    p["loss"][3] = bad
    with pytest.raises(InvalidDataError, match="loss: 1 row"):
        ScalingData.from_arrays(**p)
    with pytest.warns(DroppedPointsWarning, match="dropped 1 of 64"):
        d = ScalingData.from_arrays(**p, drop_invalid=True)
    assert len(d) == 63


def test_missing_values_in_a_frame_and_missing_columns():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"params": [1e8, 2e8, None], "flops": [1e18, 2e18, 3e18], "loss": [3.0, 2.9, 2.8]})
    with pytest.raises(InvalidDataError, match="missing"):
        ScalingData.from_frame(df)
    with pytest.warns(DroppedPointsWarning):
        d = ScalingData.from_frame(df, drop_invalid=True)
    assert len(d) == 2 and "D = C / (6 N) (tokens absent)" in d.notes
    np.testing.assert_allclose(d["D"], d["C"] / (6 * d["N"]))
    with pytest.raises(InvalidDataError, match="not in the data"):
        ScalingData.from_frame(df, {"N": "nparams"})
    with pytest.raises(InvalidDataError, match="needs columns"):
        fit_law({"N": [1e8, 2e8], "loss": [3.0, 2.9]}, "chinchilla")
    with pytest.raises(InvalidDataError, match="different lengths"):
        ScalingData.from_arrays(N=[1.0, 2.0], loss=[1.0])


def test_fewer_points_than_parameters():
    p = {k: v[:4] for k, v in _points().items()}
    with pytest.raises(TooFewPointsError, match="4 points for 5 free parameters"):
        fit_law(p, "chinchilla")


def test_unknown_law_and_unknown_fixed_parameter():
    with pytest.raises(ValueError, match="unknown law"):
        fit_law(_points(), "chinchila")
    with pytest.raises(ValueError, match="cannot fix"):
        fit_law(_points(), "chinchilla", fixed={"gamma": 1.0})


def test_no_converged_start_is_a_named_warning():
    with pytest.warns(NotConvergedWarning, match="none of the"):
        f = fit_law(_points(), "chinchilla", grid=GRID, options=LBFGSOptions(max_iter=2))
    assert not f.converged and f.n_converged == 0
    assert "did NOT converge" in f.summary()


def _isoflop_points(budgets=(1e19, 1e20, 1e21)):
    rows = []
    for C in budgets:
        N = np.geomspace(3e7, 3e9, 7) * (C / 1e19) ** 0.5
        rows.append((N, np.full(N.shape, C)))
    N, C = (np.concatenate(x) for x in zip(*rows))
    D = C / (6 * N)
    return {"N": N, "C": C, "loss": chinchilla_loss(N, D, **TRUE)}


def test_approach2_single_budget_is_an_error():
    p = _isoflop_points((1e20,))
    with pytest.raises(InvalidDataError, match="at least two compute budgets"):
        fit_isoflop(p)


def test_approach2_downward_parabola_is_dropped_with_a_named_warning():
    p = _isoflop_points()
    m = p["C"] == 1e21
    x = np.log(p["N"][m])
    p["loss"] = p["loss"].copy()
    p["loss"][m] = 3.0 - 0.05 * (x - x.mean()) ** 2          # opens downward
    with pytest.warns(ParabolaOpensDownwardWarning, match="C=1e\\+21"):
        fit = fit_isoflop(p)
    assert list(fit.budgets) == [1e19, 1e20]
    p["loss"][p["C"] == 1e20] = 3.0 - 0.05 * (np.log(p["N"][p["C"] == 1e20]) - 20) ** 2
    with pytest.warns(ParabolaOpensDownwardWarning), pytest.raises(InvalidDataError, match="only 1 budget"):
        fit_isoflop(p)


def test_approach2_vertex_outside_the_sampled_range_and_too_few_points():
    p = _isoflop_points()
    keep = ~((p["C"] == 1e21) & (p["N"] < 2e9))                # only sizes far above the optimum at 1e21
    q = {k: v[keep] for k, v in p.items()}
    with pytest.warns(VertexOutsideRangeWarning):
        fit_isoflop(q)
    keep = ~((p["C"] == 1e21) & (p["N"] < 1e10))              # 2 points left: dropped
    q = {k: v[keep] for k, v in p.items()}
    with pytest.warns(DroppedPointsWarning, match="fewer than 3"):
        fit = fit_isoflop(q)
    assert len(fit.budgets) == 2


# --------------------------------------------------------------------------------------------- results


def test_fit_result_api(fit):
    assert set(fit.params) == {"A", "B", "E", "alpha", "beta"}
    assert set(fit.lse) == {"a", "b", "e", "alpha", "beta"}
    assert fit.params["A"] == pytest.approx(np.exp(fit.lse["a"]))
    assert fit.n_starts == 72 and 0 < fit.n_converged <= 72 and len(fit.start_status) == 72
    assert all(int(s) in STATUS for s in fit.start_status)
    for k in ("A", "B", "E", "alpha", "beta", "a", "b", "e", "exponent_a", "exponent_b"):
        lo, hi = fit.intervals[k]
        assert lo <= hi
    assert fit.bootstrap_converged[1] == 50
    pred = fit.predict(N=np.array([1e8, 1e9]), D=2e10)
    np.testing.assert_allclose(pred, chinchilla_loss(np.array([1e8, 1e9]), 2e10, **TRUE), rtol=1e-6)
    lo, hi = fit.predict_interval(N=1e9, D=2e10)
    assert lo <= fit.predict(N=1e9, D=2e10) <= hi
    d = json.loads(json.dumps(fit.to_dict()))
    assert set(d["params"]) == {"A", "B", "E", "alpha", "beta"}
    assert d["converged"]["total"] == 72 and d["exponents"]["a"] == pytest.approx(fit.exponents["a"])
    s = fit.summary()
    assert "alpha" in s and "95% interval" in s and "starts converged" in s
    html = fit._repr_html_()
    assert "<table>" in html and "alpha" in html
    alloc = fit.compute_optimal(np.array([1e20, 1e22]))
    assert alloc.N_opt.shape == (2,) and alloc.intervals["N_opt"][0].shape == (2,)
    with pytest.raises(ValueError, match="needs inputs"):
        fit.predict(N=1e9)


def test_compute_optimal_needs_a_law_in_n_and_d():
    N = np.geomspace(1e6, 1e10, 20)
    f = fit_law({"N": N, "loss": 1.7 + 300 * N ** -0.4}, "kaplan_n")
    with pytest.raises(ValueError, match="not a law in N and D"):
        f.compute_optimal(1e21)


def test_fixed_parameters_are_held_and_reported():
    f = fit_law(_points(), "chinchilla", grid=GRID, fixed={"alpha": 0.33})
    assert f.lse["alpha"] == 0.33 and f.fixed == {"alpha": 0.33}
    assert f.params["beta"] == pytest.approx(0.30, rel=1e-6)


# --------------------------------------------------------------------------------------------- optimiser


def _rosenbrock(x, scale):
    f = scale * jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)
    return f, jax.grad(lambda z: scale * jnp.sum(100.0 * (z[1:] - z[:-1] ** 2) ** 2 + (1.0 - z[:-1]) ** 2))(x)


def test_minimize_batch_many_starts_and_per_start_data():
    with jax.enable_x64(True):
        x0 = jnp.asarray(np.random.default_rng(0).uniform(-2, 2, (120, 4)))
        opts = LBFGSOptions(pool=64, max_iter=2000, max_evals=8000)
        res = minimize_batch(_rosenbrock, x0, (jnp.asarray(1.0),), options=opts)
        conv = np.isin(np.asarray(res.status), lbfgs.CONVERGED_CODES)
        assert conv.mean() > 0.95
        ok = np.asarray(res.f)[conv] < 1e-10
        np.testing.assert_allclose(np.asarray(res.x)[conv][ok], 1.0, atol=1e-4)
        assert ok.sum() > 80                                  # the other minimum of 4-d Rosenbrock is near -1
        assert int(res.n_trips) < int(np.asarray(res.n_eval).sum()) / 10   # lanes run in parallel
        # per-start data: each lane its own scale; same minimiser, objective scales
        scales = jnp.linspace(0.5, 2.0, 120)
        res2 = minimize_batch(_rosenbrock, x0, (scales,), data_axes=(0,), options=opts)
        assert np.isin(np.asarray(res2.status), lbfgs.CONVERGED_CODES).mean() > 0.95
    assert res.x.dtype == jnp.float64


def test_x64_is_scoped_to_the_fits(fit):
    assert not jax.config.jax_enable_x64
    assert jnp.ones(3).dtype == jnp.float32
    f32 = jax.jit(lambda x: x * 2)
    assert f32(jnp.ones(2)).dtype == jnp.float32
    again = fit_law(_points(), "chinchilla", grid=GRID)       # cached compilation, float64 inside
    assert again.objective < 1e-20                          # float32 could not get near this
    assert f32(jnp.ones(2)).dtype == jnp.float32 and jnp.ones(3).dtype == jnp.float32


def test_compiled_driver_is_reused():
    before = lbfgs._compiled.cache_info().hits
    fit_law(_points(), "chinchilla", grid=GRID)
    fit_law({k: v * 1.0 for k, v in _points().items()}, "chinchilla", grid=GRID)
    assert lbfgs._compiled.cache_info().hits >= before + 1


def test_approach2_bootstrap_with_few_sizes_per_budget_skips_degenerate_resamples():
    """4 sizes per budget: many resamples draw < 3 distinct sizes and fit no parabola; they are skipped, not fatal."""
    rng = np.random.default_rng(0)
    rows = []
    for C in (1e19, 1e20, 1e21):
        N = np.geomspace(1e8, 1e9, 4) * (C / 1e19) ** 0.5
        rows.append((N, np.full(N.shape, C)))
    N, C = (np.concatenate(x) for x in zip(*rows))
    loss = chinchilla_loss(N, C / (6 * N), **TRUE) * np.exp(rng.normal(0, 0.002, N.shape))
    fit = fit_isoflop({"N": N, "C": C, "loss": loss}, bootstrap=200, optimum="parabola")
    lo, hi = fit.intervals["a"]
    assert lo < fit.params["a"] < hi
    usable = int(fit.notes[-1].split("bootstrap: ")[1].split("/")[0])
    assert 0 < usable < 200  # some resamples were degenerate, and they were dropped
