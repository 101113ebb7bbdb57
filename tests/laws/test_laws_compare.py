"""`compare_laws`: every (form, objective, approach) fitted below the top budget and ranked by its error on the
held-out runs, on a synthetic Chinchilla surface with a known answer (0.3% noise)."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

from scalekit.laws import chinchilla_loss, chinchilla_optimal
from scalekit.laws.compare import LawComparison, compare_laws

TRUTH = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
BUDGETS = (1e18, 3e18, 1e19, 3e19, 1e20)
SIZES = 7


def surface(noise: float = 0.003, seed: int = 0, budget_column: bool = True) -> dict[str, np.ndarray]:
    """An IsoFLOP sweep on the Chinchilla law: 7 sizes from N_opt/4 to 4 N_opt at each budget, D = C / 6N."""
    rng = np.random.default_rng(seed)
    cols: dict[str, list] = {"N": [], "D": [], "loss": [], "budget": []}
    for C in BUDGETS:
        n_opt, _ = chinchilla_optimal(C, TRUTH["A"], TRUTH["B"], TRUTH["alpha"], TRUTH["beta"])
        for s in np.geomspace(0.25, 4.0, SIZES):
            n = float(n_opt) * s
            d = C / (6 * n)
            cols["N"].append(n)
            cols["D"].append(d)
            cols["budget"].append(C)
            cols["loss"].append(float(chinchilla_loss(n, d, **TRUTH)) * (1 + noise * rng.standard_normal()))
    out = {k: np.array(v) for k, v in cols.items()}
    if not budget_column:
        del out["budget"]
    return out


@pytest.fixture(scope="module")
def both() -> LawComparison:
    """The default forms and both approaches, top budget held out and leave-one-budget-out, 20 resamples."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compare_laws(surface(), objectives=("huber_log",), holdout="both", bootstrap=20)


def test_the_true_form_ranks_first_among_the_laws_and_predicts_the_top_budget(both: LawComparison) -> None:
    laws = [r for r in both.rows if r["approach"] == 3 and r["error"] is None]
    assert {r["form"] for r in laws} == {"chinchilla", "chinchilla_tied", "kaplan_nd", "gadre"}
    assert [r["form"] for r in laws].index("chinchilla") <= 1            # first, or near-first
    chin = next(r for r in laws if r["form"] == "chinchilla")
    assert chin["heldout_mean_abs_rel_err"] < 0.006 and chin["heldout_max_abs_rel_err"] < 0.012
    assert chin["n_heldout"] == SIZES and chin["n_train"] == SIZES * (len(BUDGETS) - 1)
    assert chin["a"] == pytest.approx(TRUTH["beta"] / (TRUTH["alpha"] + TRUTH["beta"]), abs=0.05)
    assert chin["E"] == pytest.approx(TRUTH["E"], rel=0.1)
    assert both.winner["form"] in ("chinchilla", "chinchilla_tied", "gadre") and both.winner["metric"] == "runs"
    assert both.winner["heldout_mean_abs_rel_err"] <= chin["heldout_mean_abs_rel_err"]
    # ranked by the held-out error: ranks 1..n, errors non-decreasing among the fitted rows
    assert [r["rank"] for r in both.rows] == list(range(1, len(both.rows) + 1))
    errs = [r["heldout_mean_abs_rel_err"] for r in both.rows if r["error"] is None]
    assert errs == sorted(errs)


def test_approach2_rows_predict_the_optimum_and_are_marked(both: LawComparison) -> None:
    rows = [r for r in both.rows if r["approach"] == 2]
    assert {r["optimum"] for r in rows} == {"robust", "parabola"}
    for r in rows:
        assert r["error"] is None, r["error"]
        assert r["metric"] == "L_opt"
        assert abs(r["n_opt_rel_err"]) < 0.15                      # N_opt at the held-out budget
        assert r["heldout_mean_abs_rel_err"] < 0.02                  # its optimal loss, from L_opt(C) = E + A/C^a
        assert r["heldout"]["budget"] == BUDGETS[-1]
    assert "L_opt" in both.summary()


def test_lobo_has_one_fold_per_budget_but_the_smallest(both: LawComparison) -> None:
    assert both.folds == list(BUDGETS[1:])
    for r in both.rows:
        if r["error"] is None:
            assert sorted(r["lobo_folds"]) == list(BUDGETS[1:])
            assert r["lobo_mean_abs_rel_err"] == pytest.approx(np.mean(list(r["lobo_folds"].values())))


def test_prediction_intervals_cover_the_held_out_runs(both: LawComparison) -> None:
    for r in both.rows:
        if r["approach"] == 3 and r["error"] is None:
            assert 0.0 <= r["coverage"] <= 1.0
            assert r["n_covered"] == round(r["coverage"] * r["n_heldout"])
            h = r["heldout"]
            assert np.all(h["lower"] < h["upper"])
    chin = next(r for r in both.rows if r["form"] == "chinchilla")
    assert chin["coverage"] >= 0.7                                   # a well-specified law, 90% intervals
    # the interval is a prediction interval: wider than the 0.3% scatter of the runs alone
    h = chin["heldout"]
    assert np.median((h["upper"] - h["lower"]) / h["predicted"]) > 2 * 1.645 * 0.003 * 0.9


def test_the_winner_is_refitted_on_every_run_with_bootstrap_intervals(both: LawComparison) -> None:
    fit = both.winner_fit
    assert fit is not None and fit.n_points == SIZES * len(BUDGETS)
    assert fit.law.name == both.winner["form"]
    assert fit.samples is not None and len(fit.samples) >= 15 and fit.intervals
    al = fit.compute_optimal(np.array([1e21, 1e22]))
    lo, hi = al.intervals["N_opt"]
    assert np.all(lo <= al.N_opt) and np.all(al.N_opt <= hi)


def test_repr_html_has_the_table_and_an_embedded_figure(both: LawComparison) -> None:
    page = both._repr_html_()
    assert "<table" in page and "<img" in page and "data:image/png;base64," in page
    assert "chinchilla" in page and "winner" in page
    d = both.to_dict()
    json.dumps(d, allow_nan=False)
    assert len(d["rows"]) == len(both.rows) and d["winner"] == both.describe_winner()
    text = both.summary()
    assert "rank" in text and "held-out mean |err|" in text and "LOBO" in text


def test_a_form_that_cannot_fit_is_a_row_with_its_error_ranked_last() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = compare_laws(surface(), forms=("data_constrained", "chinchilla", "no_such_law"),
                         objectives=("huber_log", "not_an_objective"), approaches=(3,), bootstrap=0, refit=False)
    assert len(c.rows) == 6
    ok = [r for r in c.rows if r["error"] is None]
    assert [(r["form"], r["objective"]) for r in ok] == [("chinchilla", "huber_log")]
    assert c.rows[0] is ok[0] and c.rows[0]["rank"] == 1 and c.winner is ok[0]
    failed = c.rows[1:]
    assert all(r["error"] for r in failed) and [r["rank"] for r in failed] == [2, 3, 4, 5, 6]
    errors = {(r["form"], r["objective"]): r["error"] for r in failed}
    assert "U" in errors[("data_constrained", "huber_log")]                  # needs unique tokens: the data lack U
    assert "no_such_law" in errors[("no_such_law", "huber_log")]
    assert "not_an_objective" in errors[("chinchilla", "not_an_objective")]
    assert ok[0]["coverage"] is None                                          # bootstrap=0: no intervals
    assert "failed" in c.summary()


def test_lobo_only_ranks_by_the_mean_over_folds_and_threshold_holds_out_above_it() -> None:
    data = surface(seed=1)
    c = compare_laws(data, forms=("chinchilla",), objectives=("huber_log",), approaches=(3,), holdout="lobo",
                     bootstrap=0, refit=False)
    (r,) = c.rows
    assert c.score_name == "lobo_mean_abs_rel_err" and c.folds == list(BUDGETS[1:])
    assert sorted(r["lobo_folds"]) == list(BUDGETS[1:]) and r["lobo_mean_abs_rel_err"] < 0.01
    assert r["n_heldout"] == SIZES * (len(BUDGETS) - 1)                  # the folds' runs, pooled

    t = compare_laws(data, forms=("chinchilla",), objectives=("huber_log",), approaches=(3,), threshold=2e19,
                     bootstrap=0, refit=False)
    assert t.heldout_budgets == (3e19, 1e20) and t.rows[0]["n_heldout"] == 2 * SIZES
    with pytest.raises(ValueError, match="holdout"):
        compare_laws(data, holdout="sideways")


def test_budgets_come_from_clusters_of_C_without_a_budget_column() -> None:
    c = compare_laws(surface(budget_column=False), forms=("chinchilla",), objectives=("huber_log",),
                     approaches=(3,), bootstrap=0, refit=False)
    assert c.heldout_budgets[0] == pytest.approx(BUDGETS[-1], rel=1e-6)
    assert c.rows[0]["n_heldout"] == SIZES and c.rows[0]["error"] is None


def test_compare_imports_nothing_above_the_laws_layer() -> None:
    code = ("import sys, scalekit.laws.compare; "
            "bad = [m for m in sys.modules if m.split('.')[:2] in (['scalekit', 'train'], ['scalekit', 'sweep'], "
            "['scalekit', 'analysis'])]; print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_known_floor_adds_forms_with_e_fixed_to_it() -> None:
    """With the floor of the loss known (here the truth, E = 1.69), each form that has an irreducible term is also
    fitted with E fixed to it; those rows fix e = log(floor) exactly, and Kaplan's law (no E) gets no such row."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = compare_laws(surface(), objectives=("lsq_log",), approaches=(3,), bootstrap=0, floor=TRUTH["E"])
    forms = {r["form"] for r in c.rows}
    assert {"chinchilla (E = floor)", "chinchilla_tied (E = floor)", "gadre (E = floor)"} <= forms
    assert "kaplan_nd (E = floor)" not in forms
    pinned = next(r for r in c.rows if r["form"] == "chinchilla (E = floor)")
    assert pinned["error"] is None and pinned["E"] == pytest.approx(TRUTH["E"], rel=1e-12)
    assert pinned["heldout_mean_abs_rel_err"] < 0.01
    if c.winner["form"].endswith("(E = floor)"):
        assert c.winner_fit.fixed == {"e": pytest.approx(np.log(TRUTH["E"]))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        no_floor = compare_laws(surface(), forms=("chinchilla (E = floor)",), objectives=("lsq_log",),
                                approaches=(3,), bootstrap=0, refit=False)
    assert "pass floor=" in no_floor.rows[0]["error"]            # asked for without a floor: a row with the reason
