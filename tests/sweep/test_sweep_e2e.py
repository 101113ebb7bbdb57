"""End to end with the real `scalekit train`: the demo sweep trains to completion, a failing run is recorded without
stopping anything, and the results are fitted."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from scalekit.sweep.plan import load_plan
from scalekit.sweep.store import load_sweep_frame

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "experiments" / "sweep_tiny.py")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("scalekit.cli.train") is None,
                                 reason="scalekit train is not available yet")]


def _env() -> dict[str, str]:
    """The children train on one CPU device (not the suite's 8 fake ones): faster, and what a user runs."""
    env = dict(os.environ)
    flags = " ".join(f for f in env.get("XLA_FLAGS", "").split() if "force_host_platform_device_count" not in f)
    env["XLA_FLAGS"] = flags
    return env


def _sweep(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scalekit", "sweep", *args], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=600, check=False)


def test_tiny_sweep_trains_records_a_failure_and_fits(tmp_path: Path) -> None:
    workdir = tmp_path / "sweep"
    res = _sweep("run", TINY, "--workdir", str(workdir), "--parallel", "2")
    assert res.returncode == 0, res.stdout + res.stderr
    planned = load_plan(TINY).expand()
    df = load_sweep_frame(workdir)
    assert sorted(df.key) == sorted(r.key for r in planned)
    assert (df.status == "done").all() and (df.attempts == 1).all()
    for r in planned:
        row = df[df.key == r.key].iloc[0]
        assert (row.n_params, row.tokens) == (r.n_params, r.tokens)  # the trainer counted what the plan planned
        assert row.flops_6n == pytest.approx(r.flops_6n) and row.flops == pytest.approx(r.flops)
        assert math.isfinite(row.final_loss) and math.isfinite(row.eval_loss) and row.eval_curve
        assert row.eval_curve[-1][0] == r.steps
        assert 0.5 < row.final_loss < 3.0  # between the entropy floor (0.67) and chance (ln 16 = 2.77)
    summary = json.loads((workdir / "runs" / planned[0].key[:12] / "summary.json").read_text())
    assert summary["steps"] == planned[0].steps

    # A run that raises (its init_from does not exist) in the same sweep directory: recorded with its error.
    bad = tmp_path / "bad_plan.py"
    bad.write_text(textwrap.dedent("""
        from scalekit.sweep.plan import grid_plan
        PLAN = grid_plan("bad", ["tiny"], steps=[10], warmup_fraction=0.1,
                         overrides={"init_from": "/nonexistent/checkpoint", "data.vocab_size": 16})
        """))
    res = _sweep("run", str(bad), "--workdir", str(workdir), "--max-attempts", "1")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "failed tiny_S10 after 1 attempt(s)" in res.stdout and "/nonexistent/checkpoint" in res.stdout
    status = json.loads(_sweep("status", str(workdir), "--json").stdout)
    assert status["counts"] == {"pending": 0, "running": 0, "done": len(planned), "failed": 1, "diverged": 0}
    assert "/nonexistent/checkpoint" in status["failures"][0]["error"]

    # Fit the finished runs: through `scalekit fit DIR` when the fit command exists, else the laws API.
    if importlib.util.find_spec("scalekit.cli.fit") is not None:
        res = subprocess.run([sys.executable, "-m", "scalekit", "fit", str(workdir), "--json"], cwd=ROOT,
                             env=_env(), capture_output=True, text=True, timeout=600, check=False)
        assert res.returncode == 0, res.stdout + res.stderr
        # 7 runs for the 5 parameters of the Chinchilla law: the fit says it is not identified, and what to do
        out = json.loads(res.stdout)
        codes = {d["code"] for d in out["diagnostics"]}
        assert "too_few_points" in codes, out["diagnostics"]
        msg = next(d["message"] for d in out["diagnostics"] if d["code"] == "too_few_points")
        assert f"{len(planned)} points for 5 free parameters" in msg and "fix E" in msg and "add runs" in msg
    fit_mod = importlib.util.find_spec("scalekit.laws.fit")
    if fit_mod is None:
        pytest.skip("scalekit.laws is not available: the fit assert is left to the lead")
    from scalekit.laws.fit import fit_law

    done = load_sweep_frame(workdir).query("status == 'done'")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = fit_law(done[["n_params", "tokens", "final_loss"]].astype(float), "chinchilla",
                      columns={"N": "n_params", "D": "tokens", "loss": "final_loss"})
    assert fit.n_points == len(planned)
    assert all(math.isfinite(v) for v in fit.params.values())
