"""Every plot draws into the axes it is given and returns that figure, with log axes and the curves it promises;
`fit_sweep` recovers a known law and degrades by name (not by crash) when an approach cannot run."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from scalekit.analysis import fit_sweep, load_sweep, plots, results_from_frame, synthetic_sweep  # noqa: E402
from scalekit.analysis.style import OKABE_ITO, ROLE  # noqa: E402
from scalekit.laws import coverage_curve, fit_coverage, log_spaced_ks  # noqa: E402

BUDGETS = (1e18, 3e18, 1e19, 3e19)
TRUTH = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    sweep = synthetic_sweep(tmp_path_factory.mktemp("plots") / "sweep", law=TRUTH, budgets=BUDGETS, noise=0.002,
                            seed=3)
    results = load_sweep(sweep)
    return results, fit_sweep(results, bootstrap=20)


def test_fit_sweep_recovers_the_law_and_sets_targets(fitted) -> None:
    results, fits = fitted
    assert set(fits.approaches) == {1, 2, 3} and not fits.errors
    true_a = TRUTH["beta"] / (TRUTH["alpha"] + TRUTH["beta"])
    assert fits.exponent(3)[0] == pytest.approx(true_a, abs=0.03)
    assert fits.exponent(2)[0] == pytest.approx(true_a, abs=0.05)
    lo, hi = fits.exponent(3)[1]
    assert lo < hi
    assert fits.floor_check()["floor"] == TRUTH["E"]
    assert list(fits.targets) == pytest.approx([3e20, 3e21, 3e22])
    assert "approach 3" in fits._repr_html_() and "<table>" in fits._repr_html_()
    assert "approach 2: N_opt ~ C^a" in fits.summary()


def test_each_plot_draws_into_the_given_axes(fitted) -> None:
    results, fits = fitted
    cases = [
        (lambda ax: plots.plot_isoflop(results, fits.isoflop, ax=ax), "log", "log"),
        (lambda ax: plots.plot_loss_vs_compute(results, fits, ax=ax), "log", "log"),
        (lambda ax: plots.plot_loss_surface(fits.law, results, ax=ax), "log", "log"),
        (lambda ax: plots.plot_residuals(fits.law, results, ax=ax), "log", "linear"),
        (lambda ax: plots.plot_training_curves(results, ax=ax), "log", "log"),
        (lambda ax: plots.plot_extrapolation(fits.extrapolation, ax=ax), "linear", "linear"),
    ]
    for draw, xscale, yscale in cases:
        fig, ax = plt.subplots()
        assert draw(ax) is fig
        assert (ax.get_xscale(), ax.get_yscale()) == (xscale, yscale)
        assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
        plt.close(fig)
    fig, axes = plt.subplots(1, 2)
    assert plots.plot_optimal_allocation(fits, axes=axes) is fig
    assert all(a.get_xscale() == "log" and a.get_yscale() == "log" for a in axes)
    plt.close(fig)


def test_isoflop_plot_shows_parabolas_minima_and_floor(fitted) -> None:
    results, fits = fitted
    fig = plots.plot_isoflop(results, fits.isoflop)
    ax = fig.axes[0]
    lines = ax.get_lines()
    parabolas = [ln for ln in lines if ln.get_linestyle() == "-" and len(ln.get_xdata()) == 100]
    assert len(parabolas) == len(BUDGETS)
    stars = [ln for ln in lines if ln.get_marker() == "*"]
    assert len(stars) == 1 and np.allclose(stars[0].get_xdata(), fits.isoflop.n_opt)
    floor = [ln for ln in lines if ln.get_linestyle() == "--"]
    assert floor and floor[0].get_ydata()[0] == pytest.approx(TRUTH["E"])
    assert floor[0].get_color().lower() == ROLE["floor"].lower() and ROLE["floor"] in OKABE_ITO
    plt.close(fig)


def test_allocation_plot_has_bands_and_extrapolates_to_the_targets(fitted) -> None:
    results, fits = fitted
    fig = plots.plot_optimal_allocation(fits)
    axn = fig.axes[0]
    assert axn.get_xlim()[1] >= fits.targets[-1]
    assert len(axn.collections) >= 2                       # bootstrap bands of approaches 2 and 3
    verticals = [ln for ln in axn.get_lines() if ln.get_linestyle() == ":" and len(set(ln.get_xdata())) == 1]
    assert sorted(v.get_xdata()[0] for v in verticals) == pytest.approx(list(fits.targets))
    plt.close(fig)


def test_coverage_plot_and_fit() -> None:
    from scalekit.analysis import synthetic_coverage

    df = synthetic_coverage({"weak": (0.1, 3.0), "strong": (0.3, 1.5)}, n_problems=64, n_samples=200)
    curves, fits = {}, {}
    for model, g in df.groupby("model"):
        ks = log_spaced_ks(200, 12)
        cov = coverage_curve(g["n_samples"], g["n_correct"], ks)
        curves[model] = (ks, cov)
        fits[model] = fit_coverage(ks, cov)
    fig, ax = plt.subplots()
    assert plots.plot_coverage(curves, fits, ax=ax) is fig
    assert ax.get_xscale() == "log" and len(ax.get_lines()) == 4
    assert curves["strong"][1][-1] > curves["weak"][1][-1]
    plt.close(fig)


def test_fit_sweep_names_what_it_could_not_fit() -> None:
    rng = np.random.default_rng(0)
    N = np.array([1e6, 2e6, 4e6, 1e6, 2e6, 4e6])
    D = np.array([1e8, 7e7, 2e7, 3e8, 1.5e8, 9e7])       # every run its own budget
    loss = 1.7 + 400 / N ** 0.34 + 400 / D ** 0.28 + 0.001 * rng.standard_normal(6)
    frame = pd.DataFrame({"key": [f"r{i}" for i in range(6)], "name": [f"r{i}" for i in range(6)],
                          "status": "done", "n_params": N, "tokens": D, "flops_6n": 6 * N * D,
                          "eval_loss": loss, "budget": 6 * N * D})
    fits = fit_sweep(results_from_frame(frame), bootstrap=0)
    assert 3 in fits.approaches                            # 6 points, 5 parameters: approach 3 still fits
    assert "2" in fits.errors and "budget" in fits.errors["2"]  # one run per budget: no IsoFLOP profile
    assert fits.extrapolation is None                      # too few runs to hold out a budget
    assert "not fitted" in fits.summary()
