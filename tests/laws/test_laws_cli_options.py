"""`scalekit fit` options: objectives, solvers, ties, bounds, approach-2 optima, --compare, diagnostics, and every
bad value refused before any fitting work (exit 2, one line naming the flag, no traceback)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import scalekit.laws
from scalekit.cli.fit import main
from scalekit.laws import chinchilla_loss

TRUE = {"A": 400.0, "B": 1200.0, "E": 1.8, "alpha": 0.33, "beta": 0.30}
CHIN_PARAMS = "a, b, e, alpha, beta"


def _frame(sigma: float = 0.002, n: int = 7) -> pd.DataFrame:
    N, D = (a.ravel() for a in np.meshgrid(np.geomspace(5e7, 5e9, n), np.geomspace(1e9, 2e11, n)))
    loss = chinchilla_loss(N, D, **TRUE) * np.exp(sigma * np.random.default_rng(0).standard_normal(N.shape))
    return pd.DataFrame({"params": N, "tokens": D, "loss": loss})


def _isoflop_frame(budgets=(1e19, 1e20, 1e21), sizes: int = 7) -> pd.DataFrame:
    rows = []
    for C in budgets:
        for N in np.geomspace(3e7, 3e9, sizes) * (C / 1e19) ** 0.5:
            rows.append({"N": N, "C": C, "loss": chinchilla_loss(N, C / (6 * N), **TRUE)})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def runs_csv(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("cli") / "runs.csv"
    _frame().to_csv(path, index=False)
    return str(path)


@pytest.fixture(scope="module")
def iso_csv(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("cli") / "iso.csv"
    _isoflop_frame().to_csv(path, index=False)
    return str(path)


def _run_json(capsys, argv) -> dict:
    code = main(argv + ["--json"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    out = cap.out.strip().splitlines()
    assert len(out) == 1, cap.out                              # one JSON object
    return json.loads(out[0])


# ------------------------------------------------------------------------------------------------ bad input
BAD = [
    (["--delta", "0"], "--delta"),
    (["--delta", "-1e-3"], "--delta"),
    (["--delta", "nan"], "--delta"),
    (["--level", "0"], "--level"),
    (["--level", "1"], "--level"),
    (["--level", "1.5"], "--level"),
    (["--bootstrap", "-1"], "--bootstrap"),
    (["--bootstrap", "ten"], "--bootstrap"),
    (["--at", "0"], "--at"),
    (["--at", "-1e21"], "--at"),
    (["--at", "inf"], "--at"),
    (["--at", "nan"], "--at"),
    (["--drop-highest-loss", "-1"], "--drop-highest-loss"),
    (["--drop-highest-loss", "49"], "--drop-highest-loss"),        # the file has 49 rows
    (["--drop-highest-loss", "500"], "--drop-highest-loss"),
    (["--flops-per-param-token", "0"], "--flops-per-param-token"),
    (["--flops-per-param-token", "-6"], "--flops-per-param-token"),
    (["--approach", "2", "--window", "2"], "--window"),
    (["--approach", "2", "--window", "x"], "--window"),
    (["--window", "5"], "--window"),                                # approach 2 only
    (["--optimum", "parabola"], "--optimum"),                       # approach 2 only
    (["--fix", "alpha=abc"], "--fix"),
    (["--fix", "alpha"], "--fix"),
    (["--fix", "gamma=0.3"], "--fix"),
    (["--fix", "E=1.8"], "--fix"),                                  # natural name: the fit is in log form
    (["--tie", "alpha=gamma"], "--tie"),
    (["--tie", "alpha"], "--tie"),
    (["--tie", "alpha=alpha"], "--tie"),
    (["--bound", "alpha=0.5:0.2"], "--bound"),
    (["--bound", "alpha=0.3:0.3"], "--bound"),
    (["--bound", "alpha=x:1"], "--bound"),
    (["--bound", "alpha=0.3"], "--bound"),
    (["--bound", "alpha=:"], "--bound"),
    (["--bound", "gamma=0:1"], "--bound"),
    (["--approach", "2", "--budgets", "1e19,abc"], "--budgets"),
    (["--approach", "2", "--budgets", "1e19,-1e20"], "--budgets"),
    (["--approach", "2", "--budgets", "1e19,0"], "--budgets"),
    (["--holdout-above", "0"], "--holdout-above"),
    (["--holdout-above", "-1e20"], "--holdout-above"),
    (["--objective", "l1"], "--objective"),
    (["--solver", "newton"], "--solver"),
    (["--holdout", "random"], "--holdout"),
    (["--approach", "2", "--fix", "alpha=0.3"], "--fix"),
    (["--approach", "2", "--tie", "alpha=beta"], "--tie"),
    (["--approach", "1", "--bound", "alpha=0:1"], "--bound"),
    (["--approach", "2", "--law", "kaplan_n"], "--approach"),
    (["--law", "chinchilla", "--no-irreducible"], "--no-irreducible"),
    (["--law", "coverage", "--floor", "0.5"], "--floor"),
    (["--seed", "-1"], "--seed"),
]


@pytest.fixture
def no_fitting(monkeypatch):
    """Bad options must be refused before any fit starts: every fitter raises if it is reached."""
    def boom(*a, **k):
        raise AssertionError("a fit was started before the options were checked")
    for name in ("fit_law", "fit_isoflop", "fit_envelope", "extrapolation_check"):
        monkeypatch.setattr(scalekit.laws, name, boom)


def _assert_one_line_error(capsys, code, flag):
    cap = capsys.readouterr()
    assert code == 2
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1, cap.err
    assert lines[0].startswith("scalekit fit: error: "), lines[0]
    assert flag in lines[0], lines[0]
    assert "Traceback" not in cap.err + cap.out
    return lines[0]


@pytest.mark.parametrize("bad,flag", BAD, ids=[" ".join(b) for b, _ in BAD])
def test_bad_option_is_one_line_naming_the_flag(runs_csv, capsys, no_fitting, bad, flag):
    _assert_one_line_error(capsys, main([runs_csv] + bad), flag)


def test_unknown_parameter_message_lists_the_laws_parameters(runs_csv, capsys, no_fitting):
    line = _assert_one_line_error(capsys, main([runs_csv, "--fix", "gamma=0.3"]), "--fix")
    assert CHIN_PARAMS in line and "chinchilla" in line
    line = _assert_one_line_error(capsys, main([runs_csv, "--fix", "E=1.8"]), "--fix")
    assert CHIN_PARAMS in line and "log E" in line            # points at the LSE name e = log E
    line = _assert_one_line_error(capsys, main([runs_csv, "--law", "kaplan_n", "--fix", "beta=0.3"]), "--fix")
    assert "kaplan_n" in line and "alpha" in line and "'beta'" in line
    line = _assert_one_line_error(capsys, main([runs_csv, "--tie", "alpha=gamma"]), "--tie")
    assert CHIN_PARAMS in line
    line = _assert_one_line_error(capsys, main([runs_csv, "--bound", "gamma=0:1"]), "--bound")
    assert CHIN_PARAMS in line


def test_bad_option_in_json_mode_is_a_json_error_and_one_stderr_line(runs_csv, capsys, no_fitting):
    assert main([runs_csv, "--delta", "-1", "--json"]) == 2
    cap = capsys.readouterr()
    assert "--delta" in json.loads(cap.out.strip())["error"]
    assert len(cap.err.strip().splitlines()) == 1 and "--delta" in cap.err


def test_delta_with_a_least_squares_objective_is_accepted_with_a_note(runs_csv, capsys):
    res = _run_json(capsys, [runs_csv, "--objective", "lsq_log", "--delta", "0.01"])
    assert res["objective_name"] == "lsq_log" and res["delta"] is None
    assert any("--delta" in n and "ignored" in n for n in res["conventions"])


# ------------------------------------------------------------------------------------------------ objectives
@pytest.mark.parametrize("objective", ["huber_log", "lsq_log", "lsq", "huber"])
def test_each_objective_runs_and_is_named(runs_csv, capsys, objective):
    argv = [runs_csv, "--objective", objective]
    res = _run_json(capsys, argv)
    assert res["objective_name"] == objective
    assert res["solver"] in ("lbfgs", "vpnls")
    if objective.startswith("huber"):
        assert res["delta"] == pytest.approx(1e-3)
    else:
        assert res["delta"] is None
    assert res["params"]["alpha"] == pytest.approx(TRUE["alpha"], abs=0.05)
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"objective: {objective}" in out and f"solver: {res['solver']}" in out
    assert ("delta 0.001" in out) == objective.startswith("huber")


def test_default_is_huber_log_with_auto_solver_and_explicit_lbfgs(runs_csv, capsys):
    res = _run_json(capsys, [runs_csv])
    assert res["objective_name"] == "huber_log" and res["delta"] == pytest.approx(1e-3)
    assert res["solver"] == "vpnls"                            # auto: chinchilla is separable
    lb = _run_json(capsys, [runs_csv, "--solver", "lbfgs", "--grid", "coarse"])
    assert lb["solver"] == "lbfgs" and lb["converged"]["total"] == 243
    assert lb["objective"] == pytest.approx(res["objective"], rel=1e-3)
    delta = _run_json(capsys, [runs_csv, "--delta", "0.01"])
    assert delta["delta"] == pytest.approx(0.01)


# ------------------------------------------------------------------------------------------------ ties, bounds
def test_tie_sets_the_first_equal_to_the_second(runs_csv, capsys):
    res = _run_json(capsys, [runs_csv, "--tie", "alpha=beta"])
    assert res["params"]["alpha"] == pytest.approx(res["params"]["beta"], rel=1e-12)
    assert 0.25 < res["params"]["alpha"] < 0.38
    assert res["ties"] == {"alpha": "beta"}                    # as the library's tie="alpha=beta"
    assert main([runs_csv, "--tie", "alpha=beta"]) == 0
    assert "tied: alpha=beta" in capsys.readouterr().out


@pytest.mark.parametrize("spec,lo,hi", [("alpha=0.3:0.35", 0.3, 0.35), ("alpha=:0.3", None, 0.3),
                                        ("alpha=0.36:", 0.36, None)])
def test_bound_keeps_the_parameter_within_its_bounds(runs_csv, capsys, spec, lo, hi):
    res = _run_json(capsys, [runs_csv, "--bound", spec])
    alpha = res["params"]["alpha"]
    assert (lo is None or alpha >= lo - 1e-9) and (hi is None or alpha <= hi + 1e-9), alpha


def test_fix_holds_the_value(runs_csv, capsys):
    res = _run_json(capsys, [runs_csv, "--fix", "alpha=0.31", "--fix", f"e={np.log(1.8)}"])
    assert res["params"]["alpha"] == 0.31 and res["params"]["E"] == pytest.approx(1.8)


# ------------------------------------------------------------------------------------------------ approach 2
def test_approach2_optimum_and_window(iso_csv, capsys):
    for optimum in ("parabola", "robust", "akima"):
        res = _run_json(capsys, [iso_csv, "--approach", "2", "--optimum", optimum])
        assert res["params"]["a"] == pytest.approx(0.30 / 0.63, abs=0.03), optimum
        assert res["optimum"] == optimum
    res = _run_json(capsys, [iso_csv, "--approach", "2", "--window", "5"])
    assert res["optimum"] == "robust" and res["window"] == 5
    assert res["params"]["a"] == pytest.approx(0.30 / 0.63, abs=0.03)
    res = _run_json(capsys, [iso_csv, "--approach", "2", "--optimum", "parabola", "--window", "5"])
    assert res["window"] is None and any("--window is ignored" in n for n in res["conventions"])
    assert main([iso_csv, "--approach", "2", "--optimum", "parabola"]) == 0
    assert "optimum parabola" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ compare
def test_compare_prints_a_ranked_table(runs_csv, capsys):
    pytest.importorskip("scalekit.laws.compare")
    res = _run_json(capsys, [runs_csv, "--compare"])
    cmp = res["compare"]
    assert cmp["holdout"] == "top" and len(cmp["rows"]) >= 4 and cmp["winner"]
    assert res["objective_name"] == "huber_log"                # the main fit is still reported
    assert main([runs_csv, "--compare", "--holdout", "top"]) == 0
    lines = capsys.readouterr().out.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("rank"))
    ranks = [ln.split()[0] for ln in lines[head + 2:] if ln[:1].isdigit()]
    assert ranks[:3] == ["1", "2", "3"]
    assert any(ln.startswith("winner:") for ln in lines)


# ------------------------------------------------------------------------------------------------ diagnostics
def _seven_points() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for C, sizes in ((1e19, (1e8, 3e8, 9e8)), (1e20, (3e8, 1e9)), (1e21, (1e9, 3e9))):
        for N in sizes:
            D = C / (6 * N)
            rows.append({"N": N, "D": D, "C": C,
                         "loss": chinchilla_loss(N, D, **TRUE) * np.exp(0.003 * rng.standard_normal())})
    return pd.DataFrame(rows)


def test_seven_points_are_flagged_as_not_identifiable(tmp_path, capsys):
    path = tmp_path / "seven.csv"
    _seven_points().to_csv(path, index=False)
    res = _run_json(capsys, [str(path)])
    codes = {d["code"] for d in res["diagnostics"]}
    assert codes & {"too_few_points", "not_identified"}, res["diagnostics"]
    assert any("DiagnosticWarning" in w for w in res["warnings"])
    assert main([str(path)]) == 0                              # text mode: warnings on stderr
    err = capsys.readouterr().err.lower()
    lines = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    flagged = [ln for ln in lines if "identif" in ln or "too few" in ln]
    assert flagged, err
    assert any(s in ln for ln in flagged for s in ("fix", "tie", "add")), flagged


def test_floor_is_passed_to_the_diagnostics(runs_csv, capsys):
    res = _run_json(capsys, [runs_csv, "--floor", "1.9"])     # true E is 1.8, below the stated floor
    assert "below_floor" in {d["code"] for d in res["diagnostics"]}, res["diagnostics"]


# ------------------------------------------------------------------------------------------------ sweeps
def _sweep(tmp_path, budgets) -> str:
    store = pytest.importorskip("scalekit.sweep.store")
    sweep = tmp_path / "sweep"
    rows = []
    for i, (n, d, b) in enumerate(budgets):
        rows.append({"key": f"r{i}", "name": f"run{i}", "n_params": int(n), "n_params_nonembed": int(0.9 * n),
                     "tokens": int(d), "flops": 6.5 * n * d, "flops_6n": 6 * n * d,
                     "eval_loss": float(chinchilla_loss(n, d, **TRUE)),
                     "fields": {"steps": 100, "budget": b}})
    store.open_store(sweep, create=True).add_done(rows, source="test")
    return str(sweep)


def test_grid_sweep_without_budgets_fits(tmp_path, capsys):
    grid = [(n, d, None) for n, d in zip(*(a.ravel() for a in np.meshgrid(np.geomspace(5e7, 5e9, 6),
                                                                         np.geomspace(1e9, 2e11, 6))))]
    res = _run_json(capsys, [_sweep(tmp_path, grid)])
    assert res["params"]["alpha"] == pytest.approx(0.33, rel=1e-2)
    assert any("budget missing for 36 of 36 runs" in n for n in res["conventions"])


def test_sweep_with_partly_missing_budgets_groups_by_c(tmp_path, capsys):
    runs = []
    for j, C in enumerate((1e19, 1e20, 1e21)):
        for i, n in enumerate(np.geomspace(3e7, 3e9, 7) * (C / 1e19) ** 0.5):
            runs.append((n, C / (6 * n), C if i % 2 == 0 else None))
    res = _run_json(capsys, [_sweep(tmp_path, runs), "--approach", "2"])
    assert res["params"]["a"] == pytest.approx(0.30 / 0.63, abs=0.03)
    assert any("budget column not used" in n for n in res["conventions"])


def test_approach2_reports_its_simulated_bias_on_the_grid(tmp_path, capsys):
    """Alpha != beta (0.465 vs 0.155) and every budget's sizes centred 3x above the optimum: the single parabola
    is biased on this grid, and the diagnostic (approach 2 simulated on the approach-3 surface at the same points)
    says so; the robust optimum is not flagged."""
    surf = {"A": 406.4, "B": 410.7, "E": 1.69, "alpha": 0.465, "beta": 0.155}
    G = (surf["alpha"] * surf["A"] / (surf["beta"] * surf["B"])) ** (1 / (surf["alpha"] + surf["beta"]))
    rows = []
    for C in (1e18, 1e19, 1e20, 1e21, 1e22):
        n_opt = G * (C / 6) ** (surf["beta"] / (surf["alpha"] + surf["beta"]))
        for N in 3 * n_opt * np.geomspace(1 / 16, 16, 13):
            rows.append({"N": N, "C": C, "budget": C, "loss": chinchilla_loss(N, C / (6 * N), **surf)})
    path = tmp_path / "iso.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    by = {}
    for optimum in ("parabola", "robust"):
        res = _run_json(capsys, [str(path), "--approach", "2", "--optimum", optimum])
        by[optimum] = next(d for d in res["diagnostics"] if d["code"] == "approach2_bias")
    assert by["parabola"]["severity"] == "warning" and "bias" in by["parabola"]["message"]
    assert by["robust"]["severity"] == "info"
    # a constant offset from the optimum biases N_opt, not the exponent (the same factor at every budget)
    ratio = {k: by[k]["detail"]["n_opt_ratio_at_max_budget"] for k in by}
    assert abs(np.log(ratio["robust"])) < 0.01 < abs(np.log(ratio["parabola"]))


def test_fit_skips_diverged_runs_and_says_how_many(tmp_path, capsys):
    store_mod = pytest.importorskip("scalekit.sweep.store")
    grid = [(n, d, None) for n, d in zip(*(a.ravel() for a in np.meshgrid(np.geomspace(5e7, 5e9, 6),
                                                                         np.geomspace(1e9, 2e11, 6))))]
    sweep = _sweep(tmp_path, grid)
    store = store_mod.open_store(sweep)
    store.add_runs([{"key": "bad", "name": "bad", "config": {}, "fields": {"steps": 10}, "n_params": 10 ** 8}])
    claim = store.claim("test", keys=["bad"])
    assert store.diverge(claim, {"status": "diverged", "step": 3}, "diverged: non-finite loss at step 3", "test")
    res = _run_json(capsys, [sweep])
    assert res["n_points"] == 36                                        # the diverged run is not fitted
    assert any("36 of 37 runs done; skipped: 1 diverged" in n for n in res["conventions"]), res["conventions"]


def test_cli_choices_are_the_librarys():
    """The CLI keeps its own copies of the choices (its --help must not import JAX): they must not drift."""
    from scalekit.cli import fit_args
    from scalekit.laws import LAWS, OBJECTIVES, SOLVERS
    from scalekit.laws.compare import HOLDOUTS
    from scalekit.laws.optimum import OPTIMA

    assert fit_args.OBJECTIVES == OBJECTIVES and fit_args.SOLVERS == SOLVERS
    assert set(fit_args.OPTIMA) == set(OPTIMA) and fit_args.HOLDOUTS == HOLDOUTS
    assert set(fit_args.LAW_CHOICES) - {"kaplan"} == set(LAWS)
