"""Plans: grid and IsoFLOP expansion, content keys, and clear errors for bad plans before anything runs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from scalekit.sweep.plan import PlanError, grid_plan, isoflop_plan, load_plan, run_key

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "experiments" / "sweep_tiny.py")


def _write(tmp_path: Path, body: str, name: str = "plan.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


def test_tiny_isoflop_plan_spends_each_budget() -> None:
    plan = load_plan(TINY)
    runs = plan.expand()
    assert 1 <= len(runs) <= 8
    assert len({r.key for r in runs}) == len(runs)
    for r in runs:
        tokens_per_step = r.config["data"]["batch_size"] * r.config["data"]["seq_len"]
        assert r.tokens == r.steps * tokens_per_step == r.config["steps"] * tokens_per_step
        assert r.steps >= plan.min_steps
        # C = 6 N D within half a step of the budget
        assert abs(r.flops_plan - r.budget) <= 0.5 * 6 * r.n_params * tokens_per_step + 1
        assert r.flops_6n == pytest.approx(6 * r.n_params * r.tokens)
        assert r.flops > r.flops_6n * 0.5  # the palm count includes attention
        assert r.config["optimizer"]["warmup_steps"] == round(0.1 * r.steps)
    assert any("xs" in s and "min_steps" in s for s in plan.skipped)


def test_key_ignores_display_fields_but_not_hyperparameters() -> None:
    run = load_plan(TINY).expand()[0]
    cfg = run.config
    same = {**cfg, "progress": not cfg["progress"], "log_every": 7,
            "observe": {**cfg["observe"], "run_name": "other"}}
    assert run_key(same) == run.key
    other = {**cfg, "optimizer": {**cfg["optimizer"], "lr": cfg["optimizer"]["lr"] * 2}}
    assert run_key(other) != run.key


def test_grid_plan_crosses_all_axes() -> None:
    plan = grid_plan("g", ["tiny", {"name": "w32", "d_model": 32, "n_layers": 1, "n_heads": 2}], steps=[10, 20],
                     lrs=[1e-3, 3e-3], seeds=[0, 1], overrides={"eval_every": 0}, warmup_fraction=0.1)
    runs = plan.expand()
    assert len(runs) == 2 * 2 * 2 * 2
    assert {r.model for r in runs} == {"tiny", "w32"}
    assert {r.config["model"]["d_model"] for r in runs if r.model == "w32"} == {32}
    assert {(r.lr, r.seed) for r in runs} == {(1e-3, 0), (1e-3, 1), (3e-3, 0), (3e-3, 1)}
    assert len({r.name for r in runs}) == len(runs)
    tokens_plan = grid_plan("g", ["tiny"], tokens=[20480], warmup_fraction=0.1).expand()
    assert tokens_plan[0].steps == 20


def test_duplicate_configs_are_planned_once() -> None:
    plan = grid_plan("d", ["tiny", "tiny"], steps=[20])
    assert len(plan.expand()) == 1
    assert any("same config" in s for s in plan.skipped)


@pytest.mark.parametrize("make, message", [
    (lambda: isoflop_plan("p", ["nope"], [1e10]), "unknown model 'nope'"),
    (lambda: isoflop_plan("p", ["tiny", "xs"], [1e6], min_steps=10), "has no runs"),
    (lambda: isoflop_plan("p", ["tiny"], [1e10], flops="7N"), "not one of"),
    (lambda: grid_plan("p", ["tiny"], steps=[20], overrides={"optimizer.lrr": 1.0}), "unknown config field"),
    (lambda: grid_plan("p", [{"d_model": 64, "n_layer": 2}], steps=[20]), "unknown model field"),
    (lambda: grid_plan("p", ["tiny"], steps=[5]), "warmup_fraction"),
    (lambda: grid_plan("p", ["tiny"], steps=[20], overrides={"data.batch_size": "big"}), "data.batch_size"),
])
def test_bad_plans_raise_clear_errors(make, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        make().expand()


def test_bad_plan_files(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="could not be loaded: SyntaxError"):
        load_plan(_write(tmp_path, "def get_plan(:\n", "broken.py"))
    with pytest.raises(PlanError, match="neither get_plan"):
        load_plan(_write(tmp_path, "X = 1\n", "empty.py"))
    with pytest.raises(PlanError, match=r"not a scalekit\.sweep\.plan\.Plan"):
        load_plan(_write(tmp_path, "def get_plan():\n    return 3\n", "wrong.py"))
    with pytest.raises(PlanError, match="does not exist"):
        load_plan(str(tmp_path / "missing.py"))
    arg_plan = _write(tmp_path, """
        from scalekit.sweep.plan import grid_plan
        def get_plan(arg="10"):
            return grid_plan("a", ["tiny"], steps=[int(arg)], warmup_fraction=0.1)
        """, "arg.py")
    assert load_plan(arg_plan + ":30").expand()[0].steps == 30


def test_cli_plan_prints_runs_and_rejects_bad_plans_before_running(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "scalekit", "sweep", "plan", TINY], capture_output=True, text=True,
                         cwd=ROOT, check=False)
    assert res.returncode == 0, res.stderr
    for word in ("N_nonemb", "C_6ND", "est", "t32_C6e9", "skipped: xs"):
        assert word in res.stdout
    bad = _write(tmp_path, """
        from scalekit.sweep.plan import isoflop_plan
        PLAN = isoflop_plan("bad", ["tiny", "huge"], [1e10])
        """)
    workdir = tmp_path / "sweep"
    res = subprocess.run([sys.executable, "-m", "scalekit", "sweep", "run", bad, "--workdir", str(workdir)],
                         capture_output=True, text=True, cwd=ROOT, check=False)
    assert res.returncode == 2
    assert "unknown model 'huge'" in res.stderr
    assert not workdir.exists()
