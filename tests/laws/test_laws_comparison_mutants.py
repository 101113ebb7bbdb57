"""LawComparison's text, HTML and JSON on hand-made rows: the winner rule, the table cells, the caption.

Written to kill the mutants `make mutate` found alive. The rows are made up here (no fits run), so every expected
string is written out from the format rules in scalekit/laws/comparison.py's docstrings.
"""

from __future__ import annotations

import pytest

from scalekit.laws.comparison import LawComparison


def row(rank, form, objective="huber_log", approach=3, metric="runs", err=0.01, mx=0.02, lobo=None, coverage=None,
        covered=0, n=4, a=0.5, E=1.7, n_opt=None, error=None):
    return {"rank": rank, "form": form, "objective": objective, "approach": approach, "metric": metric,
            "heldout_mean_abs_rel_err": err, "heldout_max_abs_rel_err": mx, "lobo_mean_abs_rel_err": lobo,
            "coverage": coverage, "n_covered": covered, "n_heldout": n, "a": a, "E": E, "n_opt_rel_err": n_opt,
            "error": error, "warnings": [], "_id": rank}


def comparison(rows, holdout="top", **kw) -> LawComparison:
    base = dict(rows=rows, holdout=holdout, threshold=None, heldout_budgets=(1e20,), folds=[], level=0.9,
                bootstrap=0, n_points=12)
    base.update(kw)
    return LawComparison(**base)


def test_winner_is_the_best_runs_row_and_approach2_only_without_one():
    a2 = row(1, "isoflop", objective="parabola", approach=2, metric="L_opt", err=0.001, n_opt=-0.034)
    fail = row(2, "broken", err=None, mx=None, a=None, E=None, error="boom")
    r3 = row(3, "chinchilla", err=0.0123, coverage=0.75, covered=3)
    c = comparison([a2, fail, r3])
    assert c.winner is r3
    assert c.describe_winner() == "chinchilla / huber_log (approach 3): held-out mean |rel. error| 1.230%"
    only2 = comparison([a2, fail])
    assert only2.winner is a2
    assert only2.describe_winner() == ("isoflop / parabola (approach 2): held-out mean |rel. error| 0.100% (loss at "
                                       "the optimum)")
    none = comparison([fail])
    assert none.winner is None and none.describe_winner() == "no law could be fitted"
    assert repr(none) == "LawComparison(1 rows; winner: no law could be fitted)"
    with pytest.raises(ValueError, match="no fitted law to plot"):
        none.plot()


def test_lobo_scores_and_words():
    r = row(1, "chinchilla", lobo=0.02)
    c = comparison([r], holdout="lobo", folds=[1e19, 1e20])
    assert c.score_name == "lobo_mean_abs_rel_err"
    assert comparison([r]).score_name == "heldout_mean_abs_rel_err"
    assert c.describe_winner() == "chinchilla / huber_log (approach 3): LOBO mean |rel. error| 2.000%"


def test_table_rows_format_each_cell():
    a2 = row(2, "isoflop", objective="parabola", approach=2, metric="L_opt", err=0.001, mx=0.001, n_opt=-0.034,
             a=None, E=float("nan"))
    r1 = row(1, "chinchilla", err=0.0123, mx=0.05, lobo=0.0201, coverage=0.75, covered=3, a=0.33333, E=1.69123)
    bad = row(3, "kaplan_nd", err=None, mx=None, a=None, E=None, error="x" * 100)
    c = comparison([r1, a2, bad])
    assert c.table_rows() == [
        ("1", "chinchilla", "huber_log", "3", "runs", "1.23%", "5.00%", "2.01%", "75% (3/4)", "0.333", "1.6912",
         "", "winner"),
        ("2", "isoflop", "parabola", "2", "L_opt", "0.10%", "0.10%", "", "", "", "", "-3.4%", ""),
        ("3", "kaplan_nd", "huber_log", "3", "runs", "", "", "", "", "", "", "", "x" * 87 + "..."),
    ]
    assert comparison([row(1, "c", error="y" * 89)]).table_rows()[0][-1] == "y" * 89


def test_header_caption_and_summary():
    r1 = row(1, "chinchilla", err=0.0123)
    a2 = row(2, "isoflop", objective="parabola", approach=2, metric="L_opt", err=0.02)
    bad = row(3, "kaplan_nd", err=None, mx=None, a=None, E=None, error="did not converge")
    c = comparison([r1, a2, bad], holdout="both", heldout_budgets=(1e20, 3e20), threshold=5e19,
                   folds=[1e19, 1e20, 3e20], bootstrap=200, level=0.8, notes=["small sweep"])
    assert c._header() == ("rank", "form", "objective", "appr.", "metric", "held-out mean |err|", "max |err|",
                           "LOBO mean |err|", "80% PI coverage", "a", "E", "N_opt err", "note")
    assert c._caption() == ("12 runs; held out: C > 5e+19, budgets 1e+20, 3e+20; LOBO over 3 folds (every budget but "
                            "the smallest); 80% prediction intervals from 200 bootstrap resamples x in-sample log "
                            "residuals; metric 'L_opt': approach 2 predicts the held-out budget's optimal loss, not "
                            "each run's; the winner is the best row on the runs themselves")
    plain = comparison([r1])
    assert plain._caption() == "12 runs; held out: the top budget 1e+20; no intervals (bootstrap=0)"
    assert comparison([r1], holdout="lobo", folds=[1.0])._caption() == ("12 runs; LOBO over 1 folds (every budget but "
                                                                        "the smallest); no intervals (bootstrap=0)")
    lines = c.summary().splitlines()
    assert lines[0] == "law comparison: " + c._caption()
    assert lines[-3] == "winner: chinchilla / huber_log (approach 3): held-out mean |rel. error| 1.230%"
    assert lines[-2] == "failed: kaplan_nd / huber_log: did not converge"
    assert lines[-1] == "note: small sweep"
    assert str(c) == c.summary()
    assert repr(c) == "LawComparison(3 rows; winner: " + c.describe_winner() + ")"
    h = c.html_table()
    assert h.startswith("<div><b>law comparison; winner: chinchilla / huber_log (approach 3): held-out mean |rel. "
                        "error| 1.230%</b>")
    assert "<th>80% PI coverage</th>" in h and h.endswith("</small></p></div>")


def test_to_dict_drops_private_keys():
    r1 = row(1, "chinchilla", err=0.0123)
    c = comparison([r1], seconds=1.5, notes=["n"])
    d = c.to_dict()
    assert d["rows"][0] == {k: v for k, v in r1.items() if k != "_id"}
    assert (d["holdout"], d["threshold"], d["heldout_budgets"], d["lobo_folds"], d["level"], d["bootstrap"],
            d["n_points"], d["ranked_by"]) == ("top", None, [1e20], [], 0.9, 0, 12, "heldout_mean_abs_rel_err")
    assert d["winner"] == c.describe_winner() and d["winner_fit"] is None
    assert d["notes"] == ["n"] and d["seconds"] == 1.5
    assert d["interval_method"].startswith("percentiles of bootstrap predictions")
    html = comparison([row(1, "x", error="failed")])._repr_html_()
    assert "<p><small>no figure: no fitted law to plot: every fit failed</small></p>" in html


# --- the figures --------------------------------------------------------------------------------------------------

def test_plots_of_an_approach2_and_an_approach3_winner():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from scalekit.laws.data import ScalingData
    from scalekit.laws.forms import LAWS
    from scalekit.laws.isoflop import AllocationFit
    from scalekit.laws.results import LawFit

    iso = AllocationFit(approach=2, params={"a": 0.5, "k_N": 0.1, "b": 0.5, "k_D": 1.6},
                        budgets=np.array([1e18, 1e19]), n_opt=np.array([1e8, 3e8]), d_opt=np.array([1e9, 3e9]),
                        loss_opt=np.array([3.0, 2.8]), objective=0.0)
    law_c = LawFit(law=LAWS["kaplan_c"], lse={"a": 3.0, "e": 0.5, "alpha": 0.1}, params={}, objective=0.0,
                   n_converged=1, n_starts=1, converged=True, n_points=2, delta=None)
    w2 = row(1, "isoflop (robust)", objective="robust", approach=2, metric="L_opt", err=0.0123)
    w2["_observed"] = 2.7
    c2 = comparison([w2], _fits={1: (iso, law_c, [1e20])})
    fig = c2.plot()
    ax = fig.axes[0]
    assert ax.get_title() == "winner: isoflop (robust) (approach 2), |error| 1.23%"
    assert ax.get_xlabel() == "compute C (FLOPs)" and ax.get_ylabel() == "loss at the IsoFLOP optimum"
    assert ax.get_xscale() == "log"
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == ["training budgets' vertex losses", "L_opt(C) = E + A / C^alpha",
                     "held-out budget's own vertex loss"]
    assert ax.get_legend().get_texts()[0].get_fontsize() == 7.5
    curve = ax.get_lines()[1]
    np.testing.assert_allclose(curve.get_ydata(), law_c.predict(C=curve.get_xdata()))
    assert curve.get_xdata()[0] == 1e18 / 1.5 and curve.get_xdata()[-1] == 2e20
    plt.close(fig)

    law = LAWS["chinchilla"]
    lse = {"a": 6.0, "b": 7.0, "e": 0.5, "alpha": 0.3, "beta": 0.4}
    fit = LawFit(law=law, lse=lse, params=law.to_natural(lse), objective=0.0, n_converged=1, n_starts=1,
                 converged=True, n_points=4, delta=None)
    N = np.array([1e7, 2e7, 1e8, 2e8, 1e9, 2e9])
    C = np.array([1e18, 1e18, 1e19, 1e19, 1e20, 1e20])
    d = ScalingData.from_arrays(N=N, C=C, loss=fit.predict(N=N, D=C / (6 * N)) * 1.01)
    test = C == 1e20
    w3 = row(1, "chinchilla", err=0.01)
    c3 = comparison([w3], data=d, _fits={1: (fit, test, ~test, None)})
    fig = c3.plot()
    ax = fig.axes[0]
    assert ax.get_title() == "winner: chinchilla / huber_log, held-out mean |error| 1.00%"
    assert ax.get_xlabel() == "parameters N" and ax.get_ylabel() == "loss" and ax.get_xscale() == "log"
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == ["largest training budget (1e+19)", "chinchilla / huber_log, fitted below, at C = 1e+20",
                     "held-out runs (observed)"]
    assert ax.get_legend().get_texts()[0].get_fontsize() == 7.5
    lines = ax.get_lines()
    np.testing.assert_array_equal(lines[0].get_xdata(), [1e8, 2e8])       # the largest training budget's runs
    ns = lines[1].get_xdata()
    assert len(ns) == 60 and ns[0] == pytest.approx(1e9 / 1.3) and ns[-1] == pytest.approx(2e9 * 1.3)
    k = float(np.median(N[test] * (C[test] / (6 * N[test]))))
    np.testing.assert_allclose(lines[1].get_ydata(), fit.predict(N=ns, D=k / ns))
    np.testing.assert_array_equal(lines[2].get_xdata(), N[test])
    plt.close(fig)
