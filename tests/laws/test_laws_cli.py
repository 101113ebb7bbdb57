"""`scalekit fit`: CSV, JSONL and sweep-directory inputs, JSON output, conventions printed, errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from scalekit.cli.fit import main
from scalekit.laws import chinchilla_loss

TRUE = {"A": 400.0, "B": 1200.0, "E": 1.8, "alpha": 0.33, "beta": 0.30}


def _frame(sigma: float = 0.002) -> pd.DataFrame:
    N, D = (a.ravel() for a in np.meshgrid(np.geomspace(5e7, 5e9, 7), np.geomspace(1e9, 2e11, 7)))
    loss = chinchilla_loss(N, D, **TRUE) * np.exp(sigma * np.random.default_rng(0).standard_normal(N.shape))
    return pd.DataFrame({"params": N, "flops": 6 * N * D, "train_loss": loss, "tok": D})


def _run_json(capsys, argv) -> dict:
    assert main(argv + ["--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1                                       # one JSON object
    return json.loads(out[0])


def test_csv_json_output_with_intervals_and_derived_tokens(tmp_path, capsys):
    path = tmp_path / "runs.csv"
    _frame().to_csv(path, index=False)
    res = _run_json(capsys, [str(path), "--law", "chinchilla", "--n-col", "params", "--c-col", "flops",
                             "--loss-col", "train_loss", "--bootstrap", "40", "--grid", "coarse", "--at", "1e21"])
    assert set(res["params"]) == {"A", "B", "E", "alpha", "beta"}
    assert res["params"]["alpha"] == pytest.approx(0.33, abs=0.05)
    assert res["params"]["E"] == pytest.approx(1.8, rel=0.05)
    assert set(res["intervals"]) >= {"A", "B", "E", "alpha", "beta"}
    assert res["exponents"]["a"] == pytest.approx(res["params"]["beta"] / (res["params"]["alpha"]
                                                                            + res["params"]["beta"]))
    assert res["objective"] > 0 and res["converged"]["total"] == 243
    assert "D = C / (6 N) (tokens absent)" in res["notes"]
    assert res["compute_optimal"][0]["N_opt"] > 0


def test_text_output_prints_the_convention(tmp_path, capsys):
    path = tmp_path / "runs.csv"
    _frame().to_csv(path, index=False)
    assert main([str(path), "--n-col", "params", "--c-col", "flops", "--loss-col", "train_loss",
                 "--grid", "coarse"]) == 0
    out = capsys.readouterr().out
    assert "D = C / (6 N) (tokens absent)" in out and "alpha" in out and "starts converged" in out


def test_jsonl_with_tokens_and_holdout(tmp_path, capsys):
    path = tmp_path / "runs.jsonl"
    df = _frame()
    df.to_json(path, orient="records", lines=True)
    c_mid = float(np.quantile(df.flops, 0.8))
    res = _run_json(capsys, [str(path), "--n-col", "params", "--d-col", "tok", "--c-col", "flops",
                             "--loss-col", "train_loss", "--grid", "coarse", "--holdout-above", str(c_mid)])
    assert not any("tokens absent" in n for n in res["notes"])
    ex = res["extrapolation"]
    assert ex["n_fit"] + ex["n_holdout"] == len(df) and ex["mean_abs_rel_error"] < 0.02


def test_approach2_and_approach1(tmp_path, capsys):
    rows = []
    for C in (1e19, 1e20, 1e21):
        for N in np.geomspace(3e7, 3e9, 7) * (C / 1e19) ** 0.5:
            rows.append({"N": N, "C": C, "loss": chinchilla_loss(N, C / (6 * N), **TRUE)})
    path = tmp_path / "iso.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    res = _run_json(capsys, [str(path), "--approach", "2", "--bootstrap", "50"])
    assert res["approach"] == 2 and set(res["params"]) == {"a", "k_N", "b", "k_D"}
    assert res["params"]["a"] == pytest.approx(0.30 / 0.63, abs=0.02)
    assert set(res["intervals"]) == {"a", "k_N", "b", "k_D"}
    res1 = _run_json(capsys, [str(path), "--approach", "1"])
    assert res1["approach"] == 1 and 0 < res1["params"]["a"] < 1


def test_bad_input_is_a_clear_error_or_a_named_warning(tmp_path, capsys):
    df = _frame()
    df.loc[3, "train_loss"] = np.nan
    df.loc[5, "params"] = -1.0
    path = tmp_path / "bad.csv"
    df.to_csv(path, index=False)
    argv = [str(path), "--n-col", "params", "--c-col", "flops", "--loss-col", "train_loss", "--grid", "coarse"]
    assert main(argv) == 2
    assert "missing" in capsys.readouterr().err
    res = _run_json(capsys, argv + ["--drop-invalid"])
    assert any("DroppedPointsWarning" in w for w in res["warnings"])
    one = tmp_path / "one_budget.csv"
    pd.DataFrame({"N": [1e8, 2e8, 4e8], "C": [1e19] * 3, "loss": [3.0, 2.9, 3.1]}).to_csv(one, index=False)
    assert main([str(one), "--approach", "2"]) == 2
    assert "two compute budgets" in capsys.readouterr().err
    assert main([str(tmp_path / "nope.csv")]) != 0


def test_sweep_directory(tmp_path, capsys):
    store = pytest.importorskip("scalekit.sweep.store")
    sweep = tmp_path / "sweep"
    rows = []
    for i, (n, d) in enumerate(zip(*(a.ravel() for a in np.meshgrid(np.geomspace(5e7, 5e9, 6),
                                                                     np.geomspace(1e9, 2e11, 6))))):
        rows.append({"key": f"r{i}", "name": f"run{i}", "n_params": int(n), "n_params_nonembed": int(0.9 * n),
                     "tokens": int(d), "flops": 6.5 * n * d, "flops_6n": 6 * n * d,
                     "final_loss": float(chinchilla_loss(n, d, **TRUE)) + 0.01,
                     "eval_loss": float(chinchilla_loss(n, d, **TRUE)), "fields": {"steps": 100}})
    for r in rows:                                             # eval curves: loss after step/100 of the tokens
        r["eval_curve"] = [[s, float(chinchilla_loss(r["n_params"], r["tokens"] * s / 100, **TRUE))]
                           for s in range(5, 101, 5)]
    store.open_store(sweep, create=True).add_done(rows, source="test")
    res = _run_json(capsys, [str(sweep), "--grid", "coarse"])
    assert res["params"]["alpha"] == pytest.approx(0.33, rel=1e-3)
    assert any("36 of 36 runs done" in n for n in res["conventions"])
    assert any("flops_6n" in n for n in res["conventions"])
    env = _run_json(capsys, [str(sweep), "--approach", "1"])
    assert any("eval curves of 36 runs" in n for n in env["conventions"])
    assert 0.3 < env["params"]["a"] < 0.7


def test_coverage_from_per_problem_counts_grouped(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rows = []
    for model, scale in (("small", 0.2), ("big", 1.0)):
        for p in range(60):
            rate = scale * rng.beta(0.3, 3.0)
            rows.append({"model": model, "n_samples": 1000, "n_correct": int(rng.binomial(1000, rate))})
    path = tmp_path / "pp.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    res = _run_json(capsys, [str(path), "--law", "coverage", "--group-col", "model", "--holdout-above", "100"])
    assert set(res["fits"]) == {"small", "big"}
    for f in res["fits"].values():
        assert f["params"]["a"] < 0 and f["params"]["b"] < 0
        assert f["extrapolation"]["n_holdout"] > 0 and f["extrapolation"]["column"] == "k"
