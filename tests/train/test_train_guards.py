"""Nothing silently wrong: divergence is a status, a run's identity guards its checkpoints, one trainer per workdir,
and damaged checkpoint steps are moved aside and saved again (restore and init_from alike)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import pytest

from train_helpers import REPO, cli_args, read_metrics, tiny
from scalekit.checkpoint import CheckpointError, load_params, restore_target
from scalekit.cli.train import EXIT_BUSY, EXIT_DIVERGED
from scalekit.config import resolve
from scalekit.model.functional import define
from scalekit.parallel.mesh import make_mesh
from scalekit.train.guards import LOCK_NAME, WorkdirBusy, try_lock
from scalekit.train.loop import train
from scalekit.train.optim import make_optimizer
from scalekit.train.state import state_shardings


def run_cli(cfg, workdir: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scalekit", "train", *cli_args(cfg, workdir)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def _largest_file(step_dir: Path) -> Path:
    return max((p for p in step_dir.rglob("*") if p.is_file() and p.name != "scalekit_manifest.json"),
               key=lambda p: p.stat().st_size)


def _truncate(step_dir: Path) -> None:
    victim = _largest_file(step_dir)
    with open(victim, "r+b") as f:
        f.truncate(victim.stat().st_size // 2)


# --- divergence ------------------------------------------------------------------------------------------------------

def test_nan_loss_is_a_diverged_status_with_its_own_exit_code(tmp_path):
    cfg = tiny(steps=6, optimizer__lr=1e30, optimizer__warmup_steps=0, checkpoint__every=1)
    res = run_cli(cfg, tmp_path / "run")
    assert res.returncode == EXIT_DIVERGED == 3, res.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())  # strict JSON: no NaN literals
    # a finite but absurd learning rate (an infinite one is refused by the config check): the loss or the gradient
    # norm goes non-finite first
    assert summary["status"] == "diverged" and summary["reason"] in ("loss", "grad_norm")
    assert 1 <= summary["step"] < 6 and summary[summary["reason"]] in ("nan", "inf", "-inf")
    said = [ln for ln in res.stderr.splitlines() if "diverged" in ln]
    assert len(said) == 1 and f"at step {summary['step']}" in said[0], res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert max(read_metrics(tmp_path / "run"), default=0) < summary["step"]  # the bad step was not logged
    saved = [int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()]
    assert all(s < summary["step"] for s in saved)  # nothing saved from the diverged step on


def test_a_normal_run_is_done_and_flagged_when_no_better_than_unigram(tmp_path):
    summary = train(tiny(steps=2, optimizer__lr=1e-9), tmp_path)
    assert summary["status"] == "done"
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "done"
    # the synthetic language's unigram loss is exact: H(x_1) under its stationary chain, below log(vocab)
    assert 3.0 < summary["unigram_loss"] < 4.16
    assert summary["eval_loss"] > summary["unigram_loss"]
    assert summary["flags"] == ["no_better_than_unigram"]


# --- identity --------------------------------------------------------------------------------------------------------

def test_resume_refuses_another_runs_checkpoint_but_extends_steps(tmp_path):
    def cfg(steps, **kw):
        return tiny(steps=steps, checkpoint__every=2, optimizer__warmup_steps=2, **kw)

    assert train(cfg(4), tmp_path)["status"] == "done"
    for field, value in (("optimizer__lr", 1e-3), ("model__d_model", 96)):
        with pytest.raises(CheckpointError) as err:
            train(cfg(6, **{field: value}), tmp_path)
        msg = str(err.value)
        assert "\n" not in msg and "another run" in msg, msg
        differs = msg.split("differs in ")[1].split(";")[0]
        assert differs.startswith(field.replace("__", ".") + " (") and "steps" not in differs, msg
    res = run_cli(cfg(6, optimizer__lr=1e-3), tmp_path)
    assert res.returncode == 2 and "optimizer.lr" in res.stderr and "Traceback" not in res.stderr

    summary = train(cfg(6), tmp_path)  # only steps changed: resumes
    assert summary["status"] == "done" and summary["steps"] == 6
    assert sorted(read_metrics(tmp_path)) == [1, 2, 3, 4, 5, 6]
    lines = [r for r in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"kind": "train"' in r]
    assert len(lines) == 6  # resumed at step 4, not restarted


# --- one trainer per workdir -----------------------------------------------------------------------------------------

def test_a_second_trainer_on_a_workdir_fails_at_once_naming_the_pid(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from scalekit.train.guards import try_lock; "
                               f"f = try_lock({str(workdir)!r}); print('locked', flush=True); time.sleep(600)"],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        res = run_cli(tiny(steps=2), workdir, timeout=120)
        assert res.returncode == EXIT_BUSY == 4, res.stderr[-2000:]
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and f"PID {holder.pid}" in lines[0], res.stderr
        with pytest.raises(WorkdirBusy, match=f"PID {holder.pid}"):  # in-process too
            train(tiny(steps=2), workdir)
        assert not (workdir / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder is dead: the kernel dropped its lock, so its stale lock file is taken over
    f = try_lock(workdir)
    assert (workdir / LOCK_NAME).read_text().strip() == str(os.getpid())
    f.close()


def test_a_shared_checkpoint_dir_is_locked_too(tmp_path):
    ckpt = tmp_path / "shared_ckpt"
    cfg = tiny(steps=2, checkpoint__dir=str(ckpt), optimizer__warmup_steps=1)
    assert train(cfg, tmp_path / "a")["status"] == "done"
    f = try_lock(ckpt)  # as if another workdir's trainer were writing there now
    try:
        with pytest.raises(WorkdirBusy, match=f"checkpoint dir .*PID {os.getpid()},"):
            train(cfg, tmp_path / "b")
    finally:
        f.close()
    cfg.steps = 3  # the lock file does not disturb the checkpoints: the same run resumes from them
    assert train(cfg, tmp_path / "a")["steps"] == 3 and sorted(read_metrics(tmp_path / "a")) == [1, 2, 3]


# --- damage repaired -------------------------------------------------------------------------------------------------

def test_damaged_final_step_is_moved_aside_and_saved_again(tmp_path):
    cfg = tiny(steps=4, checkpoint__every=2)
    train(cfg, tmp_path)
    ckpts = tmp_path / "checkpoints"
    _truncate(ckpts / "4")
    with pytest.warns(RuntimeWarning, match=r"moved damaged checkpoint step 4 aside"):
        summary = train(cfg, tmp_path)  # falls back to step 2 and trains 3, 4 again
    assert summary["status"] == "done" and summary["steps"] == 4
    aside = [p.name for p in ckpts.iterdir() if p.name.startswith("4.damaged-")]
    assert len(aside) == 1
    assert (ckpts / "4").is_dir() and (ckpts / "4" / "scalekit_manifest.json").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rewritten step 4 restores cleanly: no fall-back warning
        again = train(cfg, tmp_path)
    assert again["steps"] == 4


def _param_target(cfg):
    rcfg = resolve(cfg, 64)
    rcfg.mesh.data, rcfg.mesh.fsdp, rcfg.mesh.tensor = 1, 1, 1
    mesh = make_mesh(rcfg.mesh, jax.devices()[:1])
    model_def = define(rcfg.model)
    shardings = state_shardings(model_def, make_optimizer(rcfg.optimizer, rcfg.steps), mesh)
    return restore_target(model_def.abstract_params, shardings.params)


def test_init_from_falls_back_past_damage_and_fails_in_one_line(tmp_path):
    cfg = tiny(steps=4, checkpoint__every=2)
    train(cfg, tmp_path / "pre")
    ckpts = tmp_path / "pre" / "checkpoints"
    _truncate(ckpts / "4")
    target = _param_target(cfg)
    with pytest.warns(RuntimeWarning, match=r"used step 2"):
        params = load_params(str(tmp_path / "pre"), target)
    assert jax.tree.structure(params) == jax.tree.structure(target)
    assert (ckpts / "4").is_dir()  # another run's files are left as they are
    _truncate(ckpts / "2")
    with pytest.raises(CheckpointError) as err:
        load_params(str(tmp_path / "pre"), target)
    msg = str(err.value)
    assert "\n" not in msg and "no usable checkpoint" in msg and "step 4" in msg and "step 2" in msg, msg


def test_rl_init_from_without_a_usable_checkpoint_is_one_line(tmp_path):
    res = subprocess.run([sys.executable, "-m", "scalekit", "rl", "--config", "configs/train.py:tiny", "--workdir",
                          str(tmp_path / "rl"), f"--config.init_from={tmp_path / 'nope'}", "--config.data.source=task",
                          "--config.data.task=sort", "--config.data.difficulty=3"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "does not exist" in lines[0], res.stderr[-2000:]


# --- the unigram baseline, unit by unit ------------------------------------------------------------------------------

def test_unigram_flag_and_the_empirical_unigram_loss_of_bytes(tmp_path):
    import math

    from scalekit.train.guards import FLAG_NO_BETTER_THAN_UNIGRAM, summary_flags, unigram_loss

    assert summary_flags(3.0, 3.5) == [] and summary_flags(3.5, 3.5) == [FLAG_NO_BETTER_THAN_UNIGRAM]
    assert summary_flags(float("nan"), 3.5) == [FLAG_NO_BETTER_THAN_UNIGRAM] and summary_flags(9.0, None) == []
    text = tmp_path / "t.txt"
    text.write_bytes(b"ab" * 5000)  # two symbols, equally often: exactly log 2 in the held-out tail too
    cfg = tiny(data__source="bytes", data__path=str(text), data__seq_len=16)
    assert math.isclose(unigram_loss(cfg.data), math.log(2), rel_tol=1e-9)
