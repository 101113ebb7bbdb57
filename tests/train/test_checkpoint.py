"""Checkpoints survive SIGKILL and SIGTERM bitwise, fall back past damage, and reshard onto other meshes."""

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest

from train_helpers import REPO, cli_args, read_metrics, tiny
from scalekit.checkpoint import Checkpointer, CheckpointError, restore_target
from scalekit.config import resolve
from scalekit.model.functional import define
from scalekit.parallel.mesh import make_mesh
from scalekit.train.loop import train
from scalekit.train.optim import make_optimizer
from scalekit.train.state import abstract_state, state_shardings


def start_training(cfg, workdir: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "scalekit", "train", *cli_args(cfg, workdir)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_step(workdir: Path, step: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (workdir / "metrics.jsonl").exists() and read_metrics_safe(workdir) >= step:
            return
        if proc.poll() is not None:
            raise AssertionError(f"training exited early: {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    raise AssertionError(f"step {step} not reached in {timeout} s")


def read_metrics_safe(workdir: Path) -> int:
    try:
        return max(read_metrics(workdir), default=0)
    except ValueError:  # a half-written line
        return 0


def final_params(workdir: Path, cfg) -> dict:
    """Parameters of the newest checkpoint, restored on one device."""
    rcfg = resolve(cfg, 64)
    rcfg.mesh.data, rcfg.mesh.fsdp, rcfg.mesh.tensor = 1, 1, 1
    mesh = make_mesh(rcfg.mesh, jax.devices()[:1])
    model_def = define(rcfg.model)
    tx = make_optimizer(rcfg.optimizer, rcfg.steps)
    ckpt = Checkpointer(rcfg, workdir)
    state, _ = ckpt.restore_latest(restore_target(abstract_state(model_def, tx), state_shardings(model_def, tx, mesh)))
    ckpt.close()
    return jax.tree.map(np.asarray, state.params), int(state.step)


def test_sigkill_then_resume_is_bitwise_identical(tmp_path):
    cfg = tiny(steps=40, checkpoint__every=5, eval_every=20)
    train(cfg, tmp_path / "reference")

    run = tmp_path / "killed"
    proc = start_training(cfg, run)
    wait_for_step(run, 17, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert max(read_metrics(run)) < 40
    resumed = subprocess.run([sys.executable, "-m", "scalekit", "train", *cli_args(cfg, run)], cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from checkpoint at step" in resumed.stderr

    ref, got = read_metrics(tmp_path / "reference"), read_metrics(run)
    assert sorted(got) == sorted(ref) == list(range(1, 41))
    for step in ref:  # bitwise: exact float equality of every logged loss
        assert got[step]["loss"] == ref[step]["loss"], step
    assert read_metrics(run, "eval")[40]["eval_loss"] == read_metrics(tmp_path / "reference", "eval")[40]["eval_loss"]
    p_ref, s_ref = final_params(tmp_path / "reference", cfg)
    p_got, s_got = final_params(run, cfg)
    assert s_ref == s_got == 40
    for a, b in zip(jax.tree.leaves(p_ref), jax.tree.leaves(p_got)):
        np.testing.assert_array_equal(a, b)


def test_sigterm_saves_exits_zero_and_resumes(tmp_path):
    cfg = tiny(steps=400, checkpoint__every=1000)
    run = tmp_path / "run"
    proc = start_training(cfg, run)
    wait_for_step(run, 8, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "received SIGTERM" in err and "saved step" in err
    saved = int(err.split("saved step ")[1].split()[0])
    assert saved >= 8 and (run / "checkpoints" / str(saved)).is_dir()
    assert not (run / "summary.json").exists()

    cfg.steps = saved + 3
    summary = train(cfg, run)
    assert summary["steps"] == saved + 3
    assert sorted(s for s in read_metrics(run) if s > saved) == [saved + 1, saved + 2, saved + 3]


def _largest_file(step_dir: Path) -> Path:
    return max((p for p in step_dir.rglob("*") if p.is_file() and p.name != "scalekit_manifest.json"),
               key=lambda p: p.stat().st_size)


def test_corrupted_latest_checkpoint_falls_back_with_warning(tmp_path):
    cfg = tiny(steps=10, checkpoint__every=5)
    train(cfg, tmp_path)
    victim = _largest_file(tmp_path / "checkpoints" / "10")
    with open(victim, "r+b") as f:
        f.truncate(victim.stat().st_size // 2)
    cfg.steps = 12
    with pytest.warns(RuntimeWarning, match=r"checkpoint step 10 .* unusable .*truncated"):
        summary = train(cfg, tmp_path)
    assert summary["steps"] == 12
    # it resumed from step 5: steps 6.. were re-logged after the restart
    lines = [r for r in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"kind": "train"' in r]
    assert len(lines) == 10 + 7


def test_every_checkpoint_damaged_is_an_error_not_a_fresh_start(tmp_path):
    cfg = tiny(steps=4, checkpoint__every=2, checkpoint__keep=1)
    train(cfg, tmp_path)
    for p in (tmp_path / "checkpoints").rglob("*"):
        if p.is_file() and p.name != "scalekit_manifest.json":
            p.write_bytes(b"")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CheckpointError, match="no usable checkpoint"):
            train(tiny(steps=6, checkpoint__every=2), tmp_path)


@pytest.mark.parametrize("mesh,n_devices", [((1, 4, 1), 4), ((4, 1, 1), 4), ((1, 1, 1), 1)])
def test_restore_onto_a_different_mesh(tmp_path, mesh, n_devices):
    cfg = tiny(steps=3, mesh__data=2, mesh__fsdp=2, mesh__tensor=2)
    train(cfg, tmp_path)
    rcfg = resolve(cfg, 64)
    model_def = define(rcfg.model)
    tx = make_optimizer(rcfg.optimizer, rcfg.steps)
    saved_mesh = make_mesh(rcfg.mesh)
    ckpt = Checkpointer(rcfg, tmp_path)
    saved, _ = ckpt.restore_latest(restore_target(abstract_state(model_def, tx), state_shardings(model_def, tx, saved_mesh)))
    rcfg.mesh.data, rcfg.mesh.fsdp, rcfg.mesh.tensor = mesh
    new_mesh = make_mesh(rcfg.mesh, jax.devices()[:n_devices])
    restored, data_state = ckpt.restore_latest(
        restore_target(abstract_state(model_def, tx), state_shardings(model_def, tx, new_mesh)))
    ckpt.close()
    assert int(restored.step) == 3 and data_state is not None
    leaf = restored.params["blocks"][0]["mlp"]["up_DF"]
    assert len(leaf.sharding.device_set) == n_devices
    for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_init_from_takes_parameters_only(tmp_path):
    base = tiny(steps=6, checkpoint__every=3)
    train(base, tmp_path / "pretrained")
    ft = tiny(steps=2, init_from=str(tmp_path / "pretrained"), optimizer__lr=1e-9, optimizer__warmup_steps=0)
    train(ft, tmp_path / "finetune")
    first = read_metrics(tmp_path / "finetune")[1]["loss"]
    pre_last = read_metrics(tmp_path / "pretrained")[6]["loss"]
    fresh_first = read_metrics(tmp_path / "pretrained")[1]["loss"]
    # starts where pre-training ended (not from a fresh init), and at step 1 (not the pre-trained step)
    assert abs(first - pre_last) < abs(first - fresh_first)
    assert sorted(read_metrics(tmp_path / "finetune")) == [1, 2]


def test_init_from_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        train(tiny(steps=2, init_from=str(tmp_path / "nope")), tmp_path / "run")


def test_rerunning_a_finished_run_returns_its_summary_and_trains_nothing(tmp_path):
    cfg = tiny(steps=4)
    first = train(cfg, tmp_path)
    lines = (tmp_path / "metrics.jsonl").read_text()
    again = train(cfg, tmp_path)
    assert again["final_loss"] == first["final_loss"] and again["steps"] == 4
    assert (tmp_path / "metrics.jsonl").read_text() == lines
