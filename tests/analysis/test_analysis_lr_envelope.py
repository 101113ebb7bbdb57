"""Sweeps with learning-rate grids: the fits see each (size, budget) cell once at its best lr (seeds averaged first),
the learning-rate law is fitted from the cells' interpolated optima, and the report shows both. Frames are built by
hand with known losses; expected values are worked out here, not read from the code."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest

from scalekit.analysis import fit_sweep, results_from_frame
from scalekit.analysis.report import render_html, write_report
from scalekit.laws import chinchilla_loss, chinchilla_optimal, fit_isoflop
from scalekit.laws.data import ScalingData

TRUTH = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
LR_C, LR_K = 0.5, 0.3                      # lr_opt(N) = 0.5 N^-0.3
CURV = 0.05                                # loss penalty 0.05 (log(lr / lr_opt))^2


def _row(key, model, n, d, loss, lr, seed=0, budget=None, status="done"):
    return {"key": key, "name": key, "status": status, "model": model, "n_params": n, "tokens": d,
            "flops_6n": 6.0 * n * d, "eval_loss": loss, "final_loss": loss, "lr": lr, "seed": seed,
            "budget": budget, "wall_time_s": 1.0}


def test_envelope_keeps_the_best_lr_of_each_cell() -> None:
    losses = {("a", 1e-3): 3.00, ("a", 2e-3): 2.80, ("a", 4e-3): 2.90,
              ("b", 1e-3): 2.50, ("b", 2e-3): 2.60, ("b", 4e-3): 2.70}
    rows = [_row(f"{m}{i + 1}", m, 1000 if m == "a" else 4000, 10**6, losses[m, lr], lr, budget=1e10)
            for m in "ab" for i, lr in enumerate((1e-3, 2e-3, 4e-3))]
    res = results_from_frame(pd.DataFrame(rows))
    f = res.frame
    assert list(f["key"]) == ["a2", "b1"]
    assert list(f["loss"]) == [2.80, 2.50]
    assert list(f["lr_best"]) == [2e-3, 1e-3] and list(f["lr_grid_size"]) == [3, 3] and list(f["n_seeds"]) == [1, 1]
    assert res.lr_envelope["n_dropped"] == 4
    assert any("4 runs dropped" in n for n in res.notes)
    assert len(res.lr_frame) == 6


def test_envelope_averages_seeds_before_choosing_the_lr() -> None:
    # lr 1e-3: seeds 2.0 and 3.0 (mean 2.5); lr 2e-3: 2.4 and 2.4 (mean 2.4). The single best run is at 1e-3, the
    # best mean at 2e-3.
    rows = [_row("x0", "m", 1000, 10**6, 2.0, 1e-3, seed=0), _row("x1", "m", 1000, 10**6, 3.0, 1e-3, seed=1),
            _row("y0", "m", 1000, 10**6, 2.4, 2e-3, seed=0), _row("y1", "m", 1000, 10**6, 2.4, 2e-3, seed=1)]
    res = results_from_frame(pd.DataFrame(rows))
    assert len(res) == 1
    r = res.frame.iloc[0]
    assert r["lr_best"] == 2e-3 and r["loss"] == pytest.approx(2.4) and r["n_seeds"] == 2 and r["lr_grid_size"] == 2
    assert any("averaged over seeds" in n for n in res.notes)


def test_sweeps_with_one_lr_per_cell_come_back_unchanged() -> None:
    rows = [_row(f"r{i}{s}", f"m{i}", 1000 * 2 ** i, 10**6, 3.0 - 0.1 * i + 0.01 * s, 1e-3, seed=s, budget=1e12)
            for i in range(3) for s in range(2)]
    df = pd.DataFrame(rows)
    res = results_from_frame(df)
    assert res.lr_frame is None and res.lr_envelope is None and res.notes == []
    assert list(res.frame["key"]) == list(df["key"]) and "lr_best" not in res.frame
    assert list(res.frame["loss"]) == list(df["eval_loss"])
    assert fit_sweep(res, bootstrap=0, compare=False, extrapolate=False).lr_law is None


def test_diverged_runs_count_as_the_worst_lr_of_their_cell() -> None:
    rows = [_row("a1", "a", 1000, 10**6, 2.9, 1e-3), _row("a2", "a", 1000, 10**6, 2.8, 2e-3),
            _row("a3", "a", 1000, 10**6, float("nan"), 4e-3, status="diverged")]
    res = results_from_frame(pd.DataFrame(rows))
    assert list(res.frame["key"]) == ["a2"]
    from scalekit.analysis.lrsweep import lr_optima

    t = lr_optima(res.lr_frame)
    assert t.iloc[0]["lrs"] == [1e-3, 2e-3, 4e-3] and math.isinf(t.iloc[0]["losses"][2])
    assert not t.iloc[0]["at_edge"] and t.iloc[0]["lr_opt"] == 2e-3     # best is inner: no widening needed


def _lr_sweep_frame(offsets=(-2, -1, 0, 1, 2), shift=1.3,
                    budgets=(1e18, 3e18, 1e19, 3e19)) -> tuple[pd.DataFrame, list]:
    """An IsoFLOP sweep whose loss is the Chinchilla law plus CURV (log(lr/lr_opt(N)))^2, each cell trained at
    lr_opt(N) * shift * 2^j for j in offsets. Returns the frame and, per cell, the key of its best-lr run (the grid
    point nearest lr_opt in log lr: j = 0 for shift 1.3 on a factor-2 grid, as |log 1.3| < |log(1.3/2)|)."""
    rows, best = [], []
    for C in budgets:
        n_opt, _ = chinchilla_optimal(C, TRUTH["A"], TRUTH["B"], TRUTH["alpha"], TRUTH["beta"])
        for s in (0.25, 0.5, 1.0, 2.0, 4.0):
            n = int(round(float(n_opt) * s))
            d = int(round(C / (6.0 * n)))
            lopt = LR_C * n ** -LR_K
            errs = [abs(math.log(shift * 2.0 ** j)) for j in offsets]
            for j in offsets:
                lr = lopt * shift * 2.0 ** j
                loss = float(chinchilla_loss(n, d, **TRUTH)) + CURV * math.log(lr / lopt) ** 2
                key = f"C{C:.0e}_s{s}_j{j}"
                rows.append(_row(key, f"m{s}_C{C:.0e}", n, d, loss, lr, budget=C))
                if errs[offsets.index(j)] == min(errs):
                    best.append(key)
    return pd.DataFrame(rows), best


@pytest.fixture(scope="module")
def lr_fits():
    df, best = _lr_sweep_frame()
    res = results_from_frame(df, source="lr-sweep")
    return df, best, res, fit_sweep(res, bootstrap=0, compare=False)


def test_fits_use_the_best_lr_of_every_cell(lr_fits) -> None:
    df, best, res, fits = lr_fits
    assert sorted(res.frame["key"]) == sorted(best) and len(res) == 20
    # approach 2 on the enveloped sweep equals approach 2 on the best-lr runs picked by hand
    sub = df[df["key"].isin(best)]
    data = ScalingData.from_arrays(N=sub["n_params"].to_numpy(float), D=sub["tokens"].to_numpy(float),
                                   C=6.0 * sub["n_params"].to_numpy(float) * sub["tokens"].to_numpy(float),
                                   loss=sub["eval_loss"].to_numpy(float), budget=sub["budget"].to_numpy(float))
    assert fits.isoflop.params["a"] == pytest.approx(fit_isoflop(data).params["a"], rel=1e-9)
    assert fits.law is not None and len(fits.results) == 20


def test_lr_law_recovers_the_exponent_from_the_grids(lr_fits) -> None:
    _, _, _, fits = lr_fits
    lr = fits.lr_law
    assert lr is not None and lr.n_at_edge == 0 and len(lr.grid_cells()) == 20
    # the loss is exactly quadratic in log lr, so each cell's parabola hits lr_opt(N) = 0.5 N^-0.3 exactly
    t = lr.table
    assert np.allclose(t["lr_opt"], LR_C * t["n_params"].to_numpy(float) ** -LR_K, rtol=1e-6)
    assert lr.law.k == pytest.approx(LR_K, abs=1e-6) and lr.law.c == pytest.approx(LR_C, rel=1e-4)
    lo, hi = lr.law.intervals["k"]
    assert lo <= LR_K + 1e-9 and hi >= LR_K - 1e-9
    js = fits.to_dict()["lr_law"]
    assert js["law"]["k"] == pytest.approx(LR_K, abs=1e-6) and len(js["cells"]) == 20
    assert "lr law: lr_opt(N) = 0.5" in fits.summary()


def test_grids_that_miss_the_optimum_are_flagged_at_the_edge() -> None:
    # grids lr_opt * 1.3 * 2^j for j = 1..3 all lie above lr_opt: the best is the smallest lr, at the edge
    df, _ = _lr_sweep_frame(offsets=(1, 2, 3), budgets=(1e18,))
    res = results_from_frame(df)
    from scalekit.analysis.lrsweep import fit_sweep_lr_law

    lr = fit_sweep_lr_law(res)
    assert lr.n_at_edge == 5 and set(lr.table["edge"]) == {"low"}
    assert np.allclose(lr.table["lr_opt"], LR_C * lr.table["n_params"].to_numpy(float) ** -LR_K * 2.6, rtol=1e-9)
    assert any("widen the grid" in n for n in lr.notes)
    assert fit_sweep_lr_law(res, exclude_edge=True).law is None        # nothing left to fit


def test_report_has_the_learning_rate_section_only_with_grids(lr_fits, tmp_path) -> None:
    _, _, res, fits = lr_fits
    rep = write_report(res, tmp_path / "rep", fits=fits)
    html = rep.html.read_text()
    assert "Learning rate per model size" in html and "interpolated lr_opt" in html
    assert "lr_opt(N) = 0.5 * N^(-0.3)" in html
    assert "lr_sweep" in rep.pngs and rep.pngs["lr_sweep"].read_bytes()[:4] == b"\x89PNG"
    assert json.loads(rep.json.read_text())["lr_law"]["n_at_edge"] == 0
    plain = render_html(dataclasses.replace(fits, lr_law=None), {})
    assert "Learning rate per model size" not in plain


def test_fit_cli_on_a_sweep_directory_uses_the_envelope(tmp_path, capsys) -> None:
    from scalekit.cli.fit import main as fit_main
    from scalekit.sweep.store import open_store

    df, best = _lr_sweep_frame(budgets=(1e18, 3e18, 1e19))
    store = open_store(tmp_path / "sweep")
    store.add_done([{"key": r["key"], "name": r["name"], "n_params": r["n_params"], "n_params_nonembed": r["n_params"],
                     "tokens": r["tokens"], "flops": r["flops_6n"], "flops_6n": r["flops_6n"],
                     "final_loss": r["eval_loss"], "eval_loss": r["eval_loss"], "wall_time_s": 1.0,
                     "fields": {"model": r["model"], "lr": r["lr"], "seed": 0, "budget": r["budget"]}}
                    for r in df.to_dict("records")], source="test")
    store.close()
    assert fit_main([str(tmp_path / "sweep"), "--approach", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert any("60 runs dropped" in n for n in out["conventions"])
    sub = df[df["key"].isin(best)]
    data = ScalingData.from_arrays(N=sub["n_params"].to_numpy(float), D=sub["tokens"].to_numpy(float),
                                   C=sub["flops_6n"].to_numpy(float), loss=sub["eval_loss"].to_numpy(float),
                                   budget=sub["budget"].to_numpy(float))
    assert out["params"]["a"] == pytest.approx(fit_isoflop(data).params["a"], rel=1e-9)
