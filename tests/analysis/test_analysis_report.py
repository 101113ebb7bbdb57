"""`scalekit report DIR` on a small synthetic sweep (a known Chinchilla law plus noise, written into a real sweep
store): the HTML embeds every plot, and the numbers it shows are the fits' numbers, recomputed here independently."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest

from scalekit.analysis import load_sweep, synthetic_sweep
from scalekit.cli.report import main as report_main
from scalekit.laws import fit_isoflop, fit_law
from scalekit.laws.render import fmt

TRUTH = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
BUDGETS = (1e18, 3e18, 1e19, 3e19)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = {"isoflop", "loss_vs_compute", "optimal_allocation", "loss_surface", "residuals", "extrapolation",
           "comparison", "comparison_errors", "training_curves"}


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    """Run `scalekit report` once on a 20-run synthetic sweep; return paths, the parsed JSON and the HTML."""
    root = tmp_path_factory.mktemp("report")
    sweep = synthetic_sweep(root / "sweep", law=TRUTH, budgets=BUDGETS, noise=0.002, seed=1)
    out = root / "out"
    rc = report_main([str(sweep), "--out", str(out), "--bootstrap", "40", "--quiet"])
    assert rc == 0
    return {"sweep": sweep, "out": out, "json": json.loads((out / "fits.json").read_text()),
            "html": (out / "report.html").read_text()}


def test_report_embeds_every_plot_and_writes_the_pngs(report) -> None:
    html = report["html"]
    for name in FIGURES:
        png = (report["out"] / f"{name}.png").read_bytes()
        assert png[:8] == PNG_MAGIC and len(png) > 10_000, name
        assert base64.b64encode(png).decode() in html, f"{name}.png is not embedded in the report"
    assert len(re.findall(r"src='data:image/png;base64,", html)) == len(FIGURES)
    assert "<script" not in html and "http://" not in html and "https://" not in html  # self-contained
    for section in ("What was run", "Fitted laws", "How far the approaches agree", "Extrapolation check",
                    "Law comparison", "Compute-optimal allocation at larger budgets"):
        assert section in html


def test_report_numbers_equal_an_independent_fit(report) -> None:
    js, html = report["json"], report["html"]
    data = load_sweep(report["sweep"]).data()
    assert js["runs"]["done"] == 20 and len(data) == 20

    law = fit_law(data, "chinchilla")                      # the same fit, made here without the report code
    a3 = js["approaches"]["3"]
    for k, v in law.params.items():
        assert a3["params"][k] == pytest.approx(v, rel=1e-9), k
        assert f"<td>{fmt(a3['params'][k])}</td>" in html, k
    for k, (lo, hi) in a3["intervals"].items():          # every interval shown is the bootstrap's
        if k in law.params or k.startswith("exponent"):
            assert lo <= (a3["params"].get(k) or a3["exponents"][k.split("_")[1]]) <= hi, k
    for k in ("E", "alpha", "beta"):
        lo, hi = a3["intervals"][k]
        assert f"[{fmt(lo)}, {fmt(hi)}]" in html
    # the known law is recovered: the report is about the right numbers
    assert law.params["alpha"] == pytest.approx(TRUTH["alpha"], abs=0.06)
    assert law.params["beta"] == pytest.approx(TRUTH["beta"], abs=0.06)

    iso = fit_isoflop(data)
    a2 = js["approaches"]["2"]
    assert a2["params"]["a"] == pytest.approx(iso.params["a"], rel=1e-9)
    assert f"<td>{fmt(iso.params['a'])}</td>" in html
    assert a2["optima"]["N_opt"] == pytest.approx(list(iso.n_opt), rel=1e-9)

    # agreement and the floor check are about these exponents and this E
    ag = js["agreement"]
    assert ag["a2_minus_a3"] == pytest.approx(iso.exponents["a"] - law.exponents["a"], rel=1e-9)
    assert js["floor_check"]["floor"] == pytest.approx(TRUTH["E"])
    assert js["floor_check"]["E"] == pytest.approx(law.params["E"], rel=1e-9)

    # compute-optimal allocation at 10x, 100x, 1000x the largest budget, as the law gives it
    assert js["targets"] == pytest.approx([BUDGETS[-1] * m for m in (10, 100, 1000)])
    for row, C in zip(js["compute_optimal"]["3"], js["targets"]):
        al = law.compute_optimal(C)
        assert row["N_opt"] == pytest.approx(al.N_opt, rel=1e-9)
        assert row["D_opt"] == pytest.approx(al.D_opt, rel=1e-9)
        assert f"<td>{fmt(al.N_opt)}</td>" in html and f"<td>{fmt(al.D_opt)}</td>" in html


def test_report_extrapolation_check_holds_out_the_largest_budget(report) -> None:
    js, html = report["json"], report["html"]
    ex = js["extrapolation"]
    assert ex["n_holdout"] == 5 and ex["n_fit"] == 15
    assert np.sqrt(BUDGETS[-2] * BUDGETS[-1]) == pytest.approx(ex["threshold"])
    data = load_sweep(report["sweep"]).data()
    below = fit_law(data.subset(data["C"] <= ex["threshold"]), "chinchilla")
    held = data.subset(data["C"] > ex["threshold"])
    pred = below.predict(N=held["N"], D=held["D"])
    err = float(np.mean(np.abs(pred - held.loss) / held.loss))
    assert ex["mean_abs_rel_error"] == pytest.approx(err, rel=1e-6)
    assert f"{err:.2%}" in html
    assert err < 0.02                                      # a true law with 0.2% noise extrapolates well


def test_report_cli_refuses_a_missing_sweep(tmp_path: Path, capsys) -> None:
    assert report_main([str(tmp_path / "nowhere")]) == 2
    assert "no sweep results" in capsys.readouterr().err


def test_report_law_comparison_ranks_laws_on_the_held_out_budget_and_the_allocation_uses_the_winner(report) -> None:
    js, html = report["json"], report["html"]
    cmp = js["comparison"]
    assert cmp["holdout"] == "top" and cmp["heldout_budgets"] == [BUDGETS[-1]]
    rows = cmp["rows"]
    forms = {r["form"] for r in rows if r["approach"] == 3}
    assert {"chinchilla", "chinchilla_tied", "kaplan_nd", "gadre"} <= forms
    assert {r["optimum"] for r in rows if r["approach"] == 2} == {"robust", "parabola"}
    ok = [r for r in rows if r["error"] is None and r["approach"] == 3]
    best = min(ok, key=lambda r: r["heldout_mean_abs_rel_err"])
    assert cmp["winner"].startswith(f"{best['form']} / {best['objective']}")
    assert best["heldout_mean_abs_rel_err"] < 0.01                       # a true law with 0.2% noise
    # the same held-out split as the extrapolation check: its Chinchilla / huber_log row is that check's error
    chin = next(r for r in ok if r["form"] == "chinchilla" and r["objective"] == "huber_log")
    assert chin["heldout_mean_abs_rel_err"] == pytest.approx(js["extrapolation"]["mean_abs_rel_error"], rel=1e-6)
    assert "<h2 id=comparison>Law comparison</h2>" in html and cmp["winner"].split(" (")[0] in html
    assert f"{best['heldout_mean_abs_rel_err']:.2%}" in html
    # the allocation at larger budgets comes from the winner refitted on every run
    win = js["compute_optimal_winner"]
    assert win["law"] == cmp["winner"] and len(win["allocations"]) == 3
    assert cmp["winner_fit"]["n_points"] == 20
    assert "law-comparison winner" in html
    for a in win["allocations"]:
        lo, hi = a["intervals"]["N_opt"]
        assert lo <= a["N_opt"] <= hi
