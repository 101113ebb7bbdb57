"""Sweep guards: runs never share a checkpoint directory, a diverged run is never stored as done, and the trainer's
checkpoints carry the same run key as the store (one hash, below both sweep/ and train/)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

from scalekit import runkey
from scalekit.sweep import executors as ex
from scalekit.sweep.plan import load_plan, run_key
from scalekit.sweep.store import load_sweep_frame, open_store

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "experiments" / "sweep_tiny.py")

# A stand-in trainer that diverges: writes what `scalekit train` writes for a non-finite loss and exits with its code.
DIVERGING = """import json, pathlib, sys
workdir = pathlib.Path(sys.argv[1])
(workdir / "ran").write_text("1")
(workdir / "summary.json").write_text(json.dumps({"status": "diverged", "step": 3, "reason": "loss", "loss": "nan",
                                                  "grad_norm": "nan", "steps": 10}))
sys.exit(int(sys.argv[2]))
"""


def test_a_shared_checkpoint_dir_becomes_one_directory_per_run(tmp_path):
    plain = load_plan(TINY)
    shared = dataclasses.replace(plain, overrides={**plain.overrides, "checkpoint.dir": str(tmp_path / "ckpt")})
    shared._origin = plain._origin  # type: ignore[attr-defined]
    runs, plain_runs = shared.expand(), plain.expand()
    assert [r.key for r in runs] == [r.key for r in plain_runs]  # where checkpoints go is not part of the identity
    dirs = [r.config["checkpoint"]["dir"] for r in runs]
    assert len(set(dirs)) == len(runs) > 1
    for r, d in zip(runs, dirs):
        assert d == f"{tmp_path / 'ckpt'}/{r.key[:12]}"
    assert all(not r.config["checkpoint"]["dir"] for r in plain_runs)


def test_the_executor_gives_each_run_its_own_checkpoint_dir_even_for_old_stores(tmp_path):
    """A store written before plans split checkpoint.dir still never lets two runs share one."""
    script = tmp_path / "echo_ckpt.py"
    script.write_text("import json, pathlib, sys\nw = pathlib.Path(sys.argv[1])\n"
                      "c = json.loads((w / 'config.json').read_text())\n"
                      "(w / 'summary.json').write_text(json.dumps({'final_loss': 1.0, "
                      "'ckpt': c['checkpoint']['dir']}))\n")
    runs = load_plan(TINY).expand()[:2]
    store = open_store(tmp_path / "sweep")
    rows = []
    for r in runs:
        row = r.to_row()
        row["config"] = {**row["config"], "checkpoint": {**row["config"]["checkpoint"], "dir": str(tmp_path / "c")}}
        rows.append(row)
    store.add_runs(rows)
    opts = ex.WorkerOptions(command=["{python}", str(script), "{workdir}"], keys=[r.key for r in runs])
    outcomes = ex.run_local(store, tmp_path / "sweep", opts)
    assert {o.status for o in outcomes} == {"done"}
    seen = [json.loads((ex.run_dir(tmp_path / "sweep", r.key) / "summary.json").read_text())["ckpt"] for r in runs]
    assert seen == [f"{tmp_path / 'c'}/{r.key[:12]}" for r in runs]


def _row(store, key):
    return next(r for r in store.rows() if r["key"] == key)


def test_a_diverged_run_is_stored_as_diverged_never_done_and_never_retried(tmp_path):
    script = tmp_path / "diverge.py"
    script.write_text(DIVERGING)
    runs = load_plan(TINY).expand()[:2]
    store = open_store(tmp_path / "sweep")
    store.add_runs([r.to_row() for r in runs])
    for run, rc in zip(runs, (ex.EXIT_DIVERGED, 0)):  # the trainer's exit code, and a command that exits 0 anyway
        opts = ex.WorkerOptions(command=["{python}", str(script), "{workdir}", str(rc)], keys=[run.key],
                                max_attempts=3)
        [out] = ex.run_local(store, tmp_path / "sweep", opts)
        assert out.status == "diverged" and out.error.startswith("diverged: non-finite loss at step 3"), out.error
        row = _row(store, run.key)
        assert row["status"] == "diverged" and row["error"].startswith("diverged:")
        assert ex.run_local(store, tmp_path / "sweep", opts) == []           # not retried
    assert store.counts()["diverged"] == 2 and store.counts()["done"] == 0
    frame = load_sweep_frame(tmp_path / "sweep")
    assert set(frame.loc[frame["key"].isin([r.key for r in runs]), "status"]) == {"diverged"}


class _StoreWithoutDiverged:
    """The real store without `diverge` (as a store of another backend might be): the executor's fallback."""

    def __init__(self, real):
        self.real = real

    def __getattr__(self, name):
        if name == "diverge":
            raise AttributeError(name)
        return getattr(self.real, name)


def test_without_a_diverged_status_the_run_is_failed_with_the_reason(tmp_path):
    script = tmp_path / "diverge.py"
    script.write_text(DIVERGING)
    run = load_plan(TINY).expand()[0]
    real = open_store(tmp_path / "sweep")
    real.add_runs([run.to_row()])
    store = _StoreWithoutDiverged(real)
    opts = ex.WorkerOptions(command=["{python}", str(script), "{workdir}", str(ex.EXIT_DIVERGED)], keys=[run.key],
                            max_attempts=1)
    [out] = ex.run_local(store, tmp_path / "sweep", opts)
    assert out.status == "failed" and out.error.startswith("diverged: non-finite loss at step 3"), out.error
    assert _row(real, run.key)["status"] == "failed"
    # a later attempt that finds the diverged summary records the failure without training again
    real.reset_failed([run.key])
    rdir = ex.run_dir(tmp_path / "sweep", run.key)
    (rdir / "summary.json").write_text(json.dumps({"status": "diverged", "step": 2, "reason": "grad_norm"}))
    (rdir / "ran").unlink()
    opts = ex.WorkerOptions(command=["{python}", str(script), "{workdir}", "0"], keys=[run.key], max_attempts=1)
    [out] = ex.run_local(store, tmp_path / "sweep", opts)
    assert out.status == "failed" and out.recovered and out.error.startswith("diverged: non-finite grad_norm")
    assert not (rdir / "ran").exists() and _row(real, run.key)["status"] == "failed"


def test_the_trainer_records_the_store_key():
    """The key a checkpoint carries is the store's key of the run (after the executor's own config changes)."""
    import ml_collections

    from scalekit.train.loop import run_identity

    assert run_key is runkey.run_key
    for run in load_plan(TINY).expand()[:3]:
        config = {**run.config, "progress": False, "compilation_cache_dir": "/tmp/x"}  # what the executor writes
        assert run_identity(ml_collections.ConfigDict(config))["run_key"] == run.key


def test_checkpoint_and_runkey_import_no_higher_layer():
    code = ("import sys, scalekit.checkpoint, scalekit.runkey; "
            "bad = sorted(m for m in sys.modules if m.startswith(('scalekit.train', 'scalekit.sweep'))); "
            "assert not bad, bad")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
