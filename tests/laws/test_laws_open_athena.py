"""Reproduce, from the command line, every row of the Open-Athena IsoFLOP table
(../shared/data/open_athena_isoflops/README.md): approach 2 (one parabola per budget, OLS of log N_opt on log C)
and approach 3 (the Chinchilla form by least squares on log loss). Skipped with a reason when the data are absent.

Each row runs `scalekit fit` in-process with --json on a CSV of that experiment's rows (clean: outlier == False).
Both solvers (auto, which picks vpnls for Chinchilla, and the 4,500-start L-BFGS grid) reproduce every row.
"""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from open_athena_reference import CSV, ReferenceRow, reference_rows
from scalekit.cli.fit import main

# the README's table, read in place: one parameter per row (a skipped one without ../shared)
ROWS = reference_rows() or [pytest.param(None, marks=pytest.mark.skip(reason=f"reference data not found at {CSV}"))]
IDS = [r.id for r in reference_rows()] or ["no-shared-data"]
COLS = ["--n-col", "params", "--d-col", "tokens", "--loss-col", "loss"]


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    if not CSV.is_file():
        pytest.skip(f"reference data not found at {CSV} (a user's clone has no ../shared)")
    return pd.read_csv(CSV)


@pytest.fixture(scope="module")
def row_csv(table, tmp_path_factory):
    """Path of a temporary CSV holding one reference row's points (written once per row, outside the repo)."""
    paths: dict[str, str] = {}

    def get(row: ReferenceRow) -> str:
        if row.id not in paths:
            g = table[table["experiment"] == row.experiment]
            if row.clean:
                g = g[g["outlier"].astype(str).str.lower() == "false"]
            assert len(g) > 0, row.experiment
            path = tmp_path_factory.mktemp("open_athena") / f"{row.id}.csv"
            g.to_csv(path, index=False)
            paths[row.id] = str(path)
        return paths[row.id]
    return get


def _run_json(capsys, argv) -> dict:
    code = main(argv + ["--json"])
    cap = capsys.readouterr()
    assert code == 0, cap.err + cap.out
    return json.loads(cap.out.strip().splitlines()[-1])


def _tolerance(published: str) -> float:
    """The looser of 0.1% relative and half a unit of the last published decimal."""
    decimals = len(published.split(".")[1]) if "." in published else 0
    return max(1e-3 * abs(float(published)), 0.5 * 10.0 ** -decimals)


def _authors(pub) -> list[str]:
    """--fix flags holding E, alpha, beta at the authors' values (A and B are refitted: they depend on units)."""
    E, alpha, beta = map(float, pub)
    return ["--fix", f"e={math.log(E)!r}", "--fix", f"alpha={alpha!r}", "--fix", f"beta={beta!r}"]


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_approach2_parabola_slope(row, row_csv, capsys):
    row_id, a_pub = row.id, row.a
    res = _run_json(capsys, [row_csv(row), "--approach", "2", "--optimum", "parabola", *COLS,
                             "--budget-col", "budget"])
    assert res["optimum"] == "parabola"
    print(f"{row_id}: approach 2 a = {res['params']['a']:.5f} (table {a_pub})")
    assert abs(res["params"]["a"] - float(a_pub)) <= 1e-4, (res["params"]["a"], a_pub)


@pytest.mark.parametrize("solver", ["auto", "lbfgs"])
@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_approach3_least_squares_on_log_loss(row, solver, row_csv, capsys):
    row_id, pub = row.id, row.e_alpha_beta
    path = row_csv(row)
    res = _run_json(capsys, [path, "--objective", "lsq_log", "--solver", solver, *COLS])
    assert res["objective_name"] == "lsq_log" and res["delta"] is None
    assert res["solver"] == ("vpnls" if solver == "auto" else "lbfgs")
    ours = {k: res["params"][k] for k in ("E", "alpha", "beta")}
    print(f"{row_id} [{res['solver']}]: E, alpha, beta = {ours['E']:.5f}, {ours['alpha']:.5f}, {ours['beta']:.5f}"
          f" (table {', '.join(pub)}); objective {res['objective']:.7g}")
    if row.at_bound:
        theirs = _run_json(capsys, [path, "--objective", "lsq_log", "--solver", "lbfgs", *COLS, *_authors(pub)])
        E, alpha = float(pub[0]), float(pub[1])
        assert theirs["params"]["E"] == pytest.approx(E) and theirs["params"]["alpha"] == alpha
        print(f"{row_id} [{res['solver']}]: objective ours {res['objective']:.7g}, the authors' E, alpha, beta "
              f"(A, B refitted) {theirs['objective']:.7g}")
        assert res["objective"] < theirs["objective"]
        return
    for k, p in zip(("E", "alpha", "beta"), pub):
        assert abs(ours[k] - float(p)) <= _tolerance(p), (k, ours[k], p)


def test_auto_solver_with_every_exponent_fixed(row_csv, capsys):
    row = reference_rows()[-1]
    pub = row.e_alpha_beta
    res = _run_json(capsys, [row_csv(row), "--objective", "lsq_log", *COLS, *_authors(pub)])
    ref = _run_json(capsys, [row_csv(row), "--objective", "lsq_log", "--solver", "lbfgs", *COLS, *_authors(pub)])
    assert res["solver"] == "vpnls"
    assert res["objective"] <= ref["objective"] * (1 + 1e-8)
