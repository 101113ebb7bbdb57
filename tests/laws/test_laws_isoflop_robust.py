"""Approach 2 on wide, uneven IsoFLOP grids: the robust optimum, its standard errors, dropping extrapolated optima,
`isoflop_bias`, and the Open-Athena reference values of the parabola method (../shared/data, skipped when absent).

The synthetic surface, everywhere below: L = E + A/N^alpha + B/D^beta with E = 1.69, A = 406.4, B = 410.7,
alpha = 0.465, beta = 0.155 (alpha != beta: every IsoFLOP profile is skewed in log N), C = 6 N D. True exponent
a = beta / (alpha + beta) = 0.25; true N_opt, D_opt in closed form (allocate.chinchilla_optimal).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from open_athena_reference import reference_rows
from scalekit.laws import (DroppedPointsWarning, ParabolaOpensDownwardWarning, ScalingData,
                           VertexOutsideRangeWarning, chinchilla_optimal)
from scalekit.laws.isoflop import fit_isoflop, isoflop_bias
from scalekit.laws.optimum import OPTIMA, effective_degree, local_poly_optima


SURFACE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.465, "beta": 0.155}
A_TRUE = SURFACE["beta"] / (SURFACE["alpha"] + SURFACE["beta"])            # 0.25
BUDGETS = np.geomspace(1e18, 1e22, 5)
TARGET = 1e24                                                              # 100x the largest budget


def surface(N, D, p=SURFACE):
    return p["E"] + p["A"] / np.asarray(N, np.float64) ** p["alpha"] + p["B"] / np.asarray(D, np.float64) ** p["beta"]


def n_opt_true(C, p=SURFACE):
    return chinchilla_optimal(C, p["A"], p["B"], p["alpha"], p["beta"])[0]


def off_three(C):
    return 3.0                                     # every grid centred at 3x the true N_opt


def drifting(C):
    return 3.0 ** ((np.log10(C) - 20) / 2)         # centre from 1/3x (1e18) to 3x (1e22) the true N_opt


def isoflop_grid(centre=off_three, sizes: int = 13, span: float = 16.0, budgets=BUDGETS, p=SURFACE,
                 noise: float = 0.0, seed: int = 0) -> dict:
    """`sizes` log-spaced N per budget over [centre/span, centre*span], centre = centre(C) x the true N_opt."""
    rng = np.random.default_rng(seed)
    N, C = [], []
    for c in budgets:
        N.append(centre(c) * n_opt_true(c, p) * np.geomspace(1 / span, span, sizes))
        C.append(np.full(sizes, c))
    N, C = np.concatenate(N), np.concatenate(C)
    D = C / (6 * N)
    loss = surface(N, D, p) * np.exp(rng.normal(0.0, noise, N.shape))
    return {"N": N, "D": D, "C": C, "loss": loss, "budget": C}


def quiet_fit(data, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit_isoflop(data, **kw)


def errors(fit) -> tuple[float, float]:
    """Relative errors of the exponent a and of D_opt at 1e24 FLOPs."""
    d_true = chinchilla_optimal(TARGET, SURFACE["A"], SURFACE["B"], SURFACE["alpha"], SURFACE["beta"])[1]
    return fit.params["a"] / A_TRUE - 1, fit.compute_optimal(TARGET).D_opt / d_true - 1


# ---------------------------------------------------------------------------------------- a. wide, off-centre


@pytest.mark.parametrize("centre", [off_three, drifting], ids=["centred-3x", "drifting-1/3x-to-3x"])
def test_robust_recovers_a_and_d_opt_where_the_parabola_does_not(centre):
    """Surface above; 5 budgets 1e18..1e22, each 13 log-spaced sizes over +-16x around 3x the true N_opt (or
    around a centre drifting from 1/3x to 3x, so each budget's parabola is biased differently and a moves too).
    Robust: a and D_opt at 1e24 within 1%. One parabola per budget: more than 5% off on at least one."""
    data = isoflop_grid(centre)
    robust = fit_isoflop(data)                                 # robust is the default; no warning expected
    assert robust.details["optimum"] == "robust"
    ea, ed = errors(robust)
    assert abs(ea) < 0.01 and abs(ed) < 0.01, (ea, ed)
    parabola = fit_isoflop(data, optimum="parabola")
    pa, pd_ = errors(parabola)
    assert max(abs(pa), abs(pd_)) > 0.05, (pa, pd_)
    assert abs(pd_) > 0.10                                     # 12.5% (3x) and 24% (drifting)
    assert parabola.details["optimum"] == "parabola" and parabola.details["weights"] is None
    akima = fit_isoflop(data, optimum="akima")
    assert max(map(abs, errors(akima))) < max(abs(pa), abs(pd_))
    print(f"{centre.__name__}: a err / D_opt(1e24) err: parabola {pa:+.3%} / {pd_:+.3%}, robust {ea:+.3%} / "
          f"{ed:+.3%}, akima {errors(akima)[0]:+.3%} / {errors(akima)[1]:+.3%}")


def test_robust_by_d_and_a_symmetric_grid():
    data = isoflop_grid(drifting)
    by_d = fit_isoflop(data, by="D")
    ea, ed = errors(by_d)
    assert abs(ea) < 0.01 and abs(ed) < 0.01
    assert by_d.params["a"] + by_d.params["b"] == pytest.approx(1.0)


def test_parabola_is_todays_method_exactly():
    """optimum="parabola": np.polyfit per budget over all points, vertex, OLS of log N_opt on log C."""
    data = isoflop_grid(drifting, sizes=9)
    fit = fit_isoflop(data, optimum="parabola")
    verts = []
    for c in BUDGETS:
        m = data["C"] == c
        p2, p1, _ = np.polyfit(np.log(data["N"][m]), data["loss"][m], 2)
        verts.append(-p1 / (2 * p2))
    slope, icpt = np.polyfit(np.log(BUDGETS), verts, 1)
    assert fit.params["a"] == pytest.approx(slope, abs=1e-10)
    assert fit.params["k_N"] == pytest.approx(np.exp(icpt), rel=1e-8)
    np.testing.assert_allclose(np.log(fit.n_opt), verts, atol=1e-9)


def test_local_fit_matches_a_plain_polyfit_on_random_profiles():
    """The batched local fit (all resamples at once) against np.polyfit, one profile at a time."""
    rng = np.random.default_rng(3)
    checked = 0
    for _ in range(60):
        n = int(rng.integers(4, 16))
        x = np.round(np.sort(rng.normal(20, 1.5, n)), 1)               # repeated sizes happen
        y = 0.1 * (x - 20 + rng.normal(0, 0.5)) ** 2 + 0.02 * rng.normal() * (x - 20) ** 3 + rng.normal(0, .05, n)
        W = rng.multinomial(n, np.full(n, 1 / n), size=5).astype(float)
        for window, degree in ((9, 4), (5, 3), (3, 2)):
            lx, _, status, _ = local_poly_optima(x, y, W, window=window, degree=degree)
            for r in range(len(W)):
                xs, ys = np.repeat(x, W[r].astype(int)), np.repeat(y, W[r].astype(int))
                xu = np.unique(xs)
                ym = np.array([ys[xs == v].mean() for v in xu])
                cnt = np.array([(xs == v).sum() for v in xu])
                i = int(np.argmin(ym)) if len(xu) else 0
                if len(xu) < 3 or i in (0, len(xu) - 1):
                    assert status[r] != 0
                    continue
                k = min(window, len(xu))
                idx = np.sort(np.argsort(np.abs(xu - xu[i]), kind="stable")[:k])
                p = np.polyfit(xu[idx] - xu[i], ym[idx], effective_degree(degree, k), w=np.sqrt(cnt[idx]))
                dp = np.polyder(p)
                roots = np.roots(dp)
                roots = roots[np.abs(roots.imag) < 1e-7].real
                span = xu[idx] - xu[i]
                roots = roots[(roots >= span.min() - 1e-12) & (roots <= span.max() + 1e-12)
                              & (np.polyval(np.polyder(dp), roots) > 0)]
                if not len(roots):
                    assert status[r] != 0
                    continue
                assert status[r] == 0
                assert lx[r] == pytest.approx(xu[i] + roots[np.argmin(np.polyval(p, roots))], abs=1e-7)
                checked += 1
    assert checked > 300


# --------------------------------------------------------------------------- b. optima outside the sampled range


def _grid_with_extrapolated_top_budget():
    """The drifting grid, but at 1e22 only sizes 2x..32x the true N_opt: that budget's optimum is below them."""
    data = isoflop_grid(drifting)
    keep = data["C"] != 1e22
    n = n_opt_true(1e22) * np.geomspace(2, 32, 9)
    top = {"N": n, "D": 1e22 / (6 * n), "C": np.full(9, 1e22), "budget": np.full(9, 1e22),
           "loss": surface(n, 1e22 / (6 * n))}
    return {k: np.concatenate([v[keep], top[k]]) for k, v in data.items()}, n.min()


def test_extrapolated_optimum_dropped_by_robust_kept_by_parabola():
    data, n_min = _grid_with_extrapolated_top_budget()
    for method in ("robust", "akima"):
        with pytest.warns(VertexOutsideRangeWarning, match=r"C=1e\+22 lies outside the sampled range.*dropped"):
            fit = fit_isoflop(data, optimum=method)
        assert 1e22 not in fit.budgets and len(fit.budgets) == 4
        assert fit.details["dropped"] == [1e22] and fit.details["dropped_reasons"]["outside"] == [1e22]
        assert any("1 budget(s) dropped: optimum outside the sampled sizes" in n for n in fit.notes)
        assert abs(errors(fit)[0]) < 0.01                    # the four in-range budgets still give a
    with pytest.warns(VertexOutsideRangeWarning, match=r"C=1e\+22 .* lies outside the sampled range"):
        par = fit_isoflop(data, optimum="parabola")
    assert 1e22 in par.budgets and len(par.budgets) == 5     # kept, as Hoffmann et al. (and Open-Athena) do
    assert par.n_opt[-1] < n_min and par.details["outside_kept"] == [1e22] and par.details["dropped"] == []


def test_concave_profile_and_tiny_budget_under_robust():
    data = isoflop_grid(drifting)
    m = data["C"] == 1e20
    x = np.log(data["N"][m])
    data["loss"] = data["loss"].copy()
    data["loss"][m] = 3.0 - 0.05 * (x - x.mean()) ** 2                  # opens downward: no minimum
    with pytest.warns(ParabolaOpensDownwardWarning, match=r"C=1e\+20.*dropped"):
        fit = fit_isoflop(data)
    assert 1e20 not in fit.budgets and fit.details["dropped_reasons"]["opens_downward"] == [1e20]
    keep = ~((data["C"] == 1e21) & (np.arange(len(m)) % 13 > 1))         # 2 points left at 1e21
    with pytest.warns(DroppedPointsWarning, match="fewer than 3"):
        fit = fit_isoflop({k: v[keep] for k, v in data.items()})
    assert list(fit.budgets) == [1e18, 1e19, 1e22]


# ----------------------------------------------------------------------------- per-budget standard errors, weights


def test_standard_errors_weights_and_floor():
    noisy = fit_isoflop(isoflop_grid(drifting, noise=0.003, seed=1))
    se = noisy.opt_se
    assert se.shape == noisy.budgets.shape and np.all(np.isfinite(se)) and np.all(se > 0)
    np.testing.assert_array_equal(noisy.details["log_opt_se"], se)
    np.testing.assert_allclose(noisy.details["weights"], 1 / np.maximum(se, noisy.details["se_floor"]) ** 2)
    quieter = fit_isoflop(isoflop_grid(drifting, noise=0.0005, seed=1))
    assert np.median(quieter.opt_se) < np.median(se)                    # the se follows the noise
    clean = fit_isoflop(isoflop_grid(drifting))                          # noise-free: se tiny, the floor holds
    assert np.all(np.isfinite(clean.details["weights"]))
    assert clean.details["se_floor"] >= 1e-4 and np.all(1 / np.sqrt(clean.details["weights"]) >= 1e-4)
    par = fit_isoflop(isoflop_grid(drifting, noise=0.003, seed=1), optimum="parabola")
    assert np.all(np.isfinite(par.opt_se)) and par.details["weights"] is None   # reported, not used
    unweighted = fit_isoflop(isoflop_grid(drifting, noise=0.003, seed=1), se_resamples=0)
    assert unweighted.details["weights"] is None and np.all(np.isnan(unweighted.opt_se))
    assert "se of log N_opt" in noisy.summary() and "IsoFLOP optima: robust" in noisy.summary()
    assert noisy.to_dict()["optima"]["log_opt_se"] == pytest.approx(list(se))


def test_a_single_noisy_budget_is_down_weighted():
    """One budget ten times noisier than the rest: the weighted fit leans on the others."""
    data = isoflop_grid(drifting, noise=0.0005, seed=2)
    m = data["C"] == 1e22
    data["loss"] = data["loss"].copy()
    data["loss"][m] *= np.exp(np.random.default_rng(5).normal(0, 0.01, m.sum()))
    fit = fit_isoflop(data)
    assert fit.opt_se[-1] > 3 * np.median(fit.opt_se[:-1])
    w = fit.details["weights"]
    assert w[-1] < 0.2 * np.median(w[:-1])


# ------------------------------------------------------------------------------------------------ e. isoflop_bias


def test_isoflop_bias_large_for_parabola_small_for_robust():
    """Surface above, evaluated noise-free at the grid's own points: approach 2 against the surface's optimum."""
    for name, centre in (("3x", off_three), ("drifting", drifting)):
        data = isoflop_grid(centre)
        par = isoflop_bias(data, surface, optimum="parabola")
        rob = isoflop_bias(data, surface)
        assert par["a_true"] == pytest.approx(A_TRUE, abs=1e-6) and rob["a_true"] == pytest.approx(A_TRUE, abs=1e-6)
        assert par["optimum"] == "parabola" and rob["optimum"] == "robust"
        assert abs(par["n_opt_ratio_at_max_budget"] - 1) > 0.10          # 14% (3x), 30% (drifting)
        assert abs(rob["n_opt_ratio_at_max_budget"] - 1) < 0.01
        assert abs(rob["a_bias"]) < 1e-3
        if name == "drifting":
            assert par["a_bias"] > 0.01                                   # 0.011: a from 0.25 to 0.261
        assert par["max_budget"] == 1e22 and len(par["budgets"]) == 5
        print(f"{name}: parabola a_bias {par['a_bias']:+.4f}, N_opt ratio {par['n_opt_ratio_at_max_budget']:.4f}; "
              f"robust a_bias {rob['a_bias']:+.5f}, N_opt ratio {rob['n_opt_ratio_at_max_budget']:.5f}")


def test_isoflop_bias_vanishes_on_a_symmetric_surface_and_centred_grid():
    sym = {"E": 1.69, "A": 400.0, "B": 400.0, "alpha": 0.3, "beta": 0.3}
    data = isoflop_grid(lambda C: 1.0, p=sym)
    for method in OPTIMA:
        b = isoflop_bias(data, lambda N, D: surface(N, D, sym), optimum=method)
        assert b["a_true"] == pytest.approx(0.5, abs=1e-6)
        assert abs(b["a_bias"]) < 1e-4, method
        assert abs(b["n_opt_ratio_at_max_budget"] - 1) < 1e-3, method


def test_isoflop_bias_without_budget_column_and_by_d():
    data = {k: v for k, v in isoflop_grid(off_three).items() if k != "budget"}     # budgets clustered by C
    b = isoflop_bias(data, surface, by="D", optimum="parabola")
    assert b["a_true"] == pytest.approx(A_TRUE, abs=1e-6) and abs(b["n_opt_ratio_at_max_budget"] - 1) > 0.05


# ------------------------------------------------------------------------------------------- f. bootstrap, errors


@pytest.mark.parametrize("method", OPTIMA)
def test_bootstrap_intervals_for_every_method(method):
    data = isoflop_grid(drifting, noise=0.002, seed=4)
    fit = quiet_fit(data, optimum=method, bootstrap=200, seed=1)
    lo, hi = fit.intervals["a"]
    assert lo < fit.params["a"] < hi and hi - lo < 0.1
    assert fit.samples.shape[1] == 4 and len(fit.samples) >= 100
    al = fit.compute_optimal(TARGET)
    assert al.intervals["N_opt"][0] < al.N_opt < al.intervals["N_opt"][1]
    if method != "parabola":
        assert lo < A_TRUE < hi


def test_parabola_bootstrap_unchanged_by_the_standard_errors():
    """The se resamples use their own random stream: the parabola bootstrap draws what it drew before."""
    data = isoflop_grid(drifting, noise=0.002, seed=4)
    a = fit_isoflop(data, optimum="parabola", bootstrap=50, seed=3, se_resamples=0)
    b = fit_isoflop(data, optimum="parabola", bootstrap=50, seed=3, se_resamples=500)
    np.testing.assert_array_equal(a.samples, b.samples)


@pytest.mark.parametrize("kw, match", [
    ({"optimum": "spline"}, r"optimum must be one of 'parabola', 'robust', 'akima'; got 'spline'"),
    ({"window": 2}, r"window must be an integer >= 3"),
    ({"window": 4.5}, r"window must be an integer >= 3"),
    ({"degree": 5}, r"degree must be one of 2, 3, 4; got 5"),
    ({"se_resamples": 5}, r"se_resamples must be 0 .* or an integer >= 10"),
    ({"by": "C"}, r"by must be 'N' or 'D'"),
])
def test_clear_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        fit_isoflop(isoflop_grid(), **kw)


# ------------------------------------------------------------------------------- c, d. Open-Athena reference values

# the approach-2 column of ../shared/data/open_athena_isoflops/README.md, read in place (within 1e-4 absolute)
OPEN_ATHENA = reference_rows() or [pytest.param(None, marks=pytest.mark.skip(reason="no ../shared/data"))]
COLUMNS = {"N": "params", "D": "tokens", "loss": "loss", "budget": "budget"}


@pytest.fixture(scope="module")
def isoflops(shared_data) -> pd.DataFrame:
    path = shared_data / "open_athena_isoflops" / "isoflops.csv"
    if not path.exists():
        pytest.skip(f"{path} not found")
    df = pd.read_csv(path)
    assert len(df) == 947
    return df


def _rows(df: pd.DataFrame, experiment: str, rows: str) -> ScalingData:
    sub = df[df["experiment"] == experiment]
    if rows == "clean":
        sub = sub[~sub["outlier"].astype(bool)]
    return ScalingData.from_frame(sub, COLUMNS)


@pytest.mark.parametrize("row", OPEN_ATHENA, ids=[r.id for r in reference_rows()] or ["no-shared-data"])
def test_open_athena_parabola_reproduces_the_reference_a(isoflops, row):
    data = _rows(isoflops, row.experiment, "clean" if row.clean else "all")
    assert "C = 6 N D (FLOPs absent)" in data.notes                   # C from params and tokens
    fit = quiet_fit(data, optimum="parabola")
    assert "grouped by the budget column" in fit.notes
    assert len(fit.budgets) == len(np.unique(data["budget"]))          # one parabola per budget, none dropped
    assert fit.params["a"] == pytest.approx(float(row.a), abs=1e-4)


def test_open_athena_methods_table(isoflops):
    """d. a of each method on the clean rows of the eight experiments (printed; no assertion on the values)."""
    lines = [f"{'experiment (clean rows)':44s} {'parabola':>9s} {'robust':>15s} {'akima':>15s}"]
    for experiment in sorted(isoflops["experiment"].unique()):
        data = _rows(isoflops, experiment, "clean")
        fits = {m: quiet_fit(data, optimum=m) for m in OPTIMA}
        for f in fits.values():
            assert np.isfinite(f.params["a"]) and 0 < f.params["a"] < 1
        cell = {m: f"{f.params['a']:.4f} ({len(f.budgets)}/{len(np.unique(data['budget']))})"
                for m, f in fits.items()}
        lines.append(f"{experiment:44s} {fits['parabola'].params['a']:9.5f} {cell['robust']:>15s} "
                     f"{cell['akima']:>15s}")
    print("\n".join(lines))
