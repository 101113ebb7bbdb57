"""Checkpoint faults: same-size content damage is caught by the manifest's hashes, and SIGKILL at any moment of a
save leaves a workdir that the same command resumes from the last complete step, bit-exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from train_helpers import REPO, cli_args, read_metrics, tiny
from scalekit.checkpoint import MANIFEST, verify_step_dir
from scalekit.train.loop import train

TMP_MARK = ".orbax-checkpoint-tmp"  # orbax writes step <s> into <s>.orbax-checkpoint-tmp[-...] and then renames it


def _files(step_dir: Path) -> list[Path]:
    return sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != MANIFEST)


def _largest_file(step_dir: Path) -> Path:
    return max(_files(step_dir), key=lambda p: p.stat().st_size)


def _flip_middle_byte(path: Path) -> None:
    """Same-size damage: one byte in the middle of the file changed (bit rot, a bad overwrite)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _train_lines(workdir: Path) -> int:
    return sum('"kind": "train"' in r for r in (workdir / "metrics.jsonl").read_text().splitlines())


# --- content damage of the same size ---------------------------------------------------------------------------------

def test_manifest_records_sizes_and_hashes_and_old_manifests_check_sizes_only(tmp_path):
    train(tiny(steps=2, checkpoint__every=2), tmp_path)
    step_dir = tmp_path / "checkpoints" / "2"
    manifest = json.loads((step_dir / MANIFEST).read_text())
    assert set(manifest) == {str(p.relative_to(step_dir)) for p in _files(step_dir)}
    assert all(set(e) == {"bytes", "crc32"} and len(e["crc32"]) == 8 for e in manifest.values())
    assert verify_step_dir(step_dir) is None

    victim = _largest_file(step_dir)
    name = str(victim.relative_to(step_dir))
    _flip_middle_byte(victim)
    problem = verify_step_dir(step_dir)
    assert problem is not None and f"file {name} " in problem and "content changed" in problem, problem

    # a manifest from before hashes were recorded (bare sizes) is checked by size only: same-size damage passes,
    # truncation does not
    (step_dir / MANIFEST).write_text(json.dumps({k: e["bytes"] for k, e in manifest.items()}))
    assert verify_step_dir(step_dir) is None
    with open(victim, "r+b") as f:
        f.truncate(victim.stat().st_size - 1)
    assert "truncated" in verify_step_dir(step_dir)


def test_same_size_garbage_in_the_latest_step_falls_back_and_moves_it_aside(tmp_path):
    cfg = tiny(steps=4, checkpoint__every=2)
    train(cfg, tmp_path)
    ckpts = tmp_path / "checkpoints"
    victim = _largest_file(ckpts / "4")
    name = str(victim.relative_to(ckpts / "4"))
    size = victim.stat().st_size
    victim.write_bytes(os.urandom(size))  # garbage, exactly as long as the original
    assert victim.stat().st_size == size
    (tmp_path / "summary.json").unlink()  # else a finished run returns its summary without restoring

    with pytest.warns(RuntimeWarning) as record:
        summary = train(cfg, tmp_path)
    said = [str(w.message) for w in record]
    unusable = [m for m in said if "checkpoint step 4" in m and "unusable" in m]
    assert len(unusable) == 1 and f"file {name} " in unusable[0] and "content changed" in unusable[0], said
    assert any("moved damaged checkpoint step 4 aside" in m for m in said), said
    assert summary["status"] == "done" and summary["steps"] == 4
    assert _train_lines(tmp_path) == 4 + 2  # resumed from step 2: steps 3 and 4 trained again
    aside = [p for p in ckpts.iterdir() if p.name.startswith("4.damaged-")]
    assert len(aside) == 1 and (aside[0] / name).read_bytes() != b""  # kept for inspection
    assert verify_step_dir(ckpts / "4") is None  # saved again, with a fresh manifest


# --- SIGKILL at several moments of checkpointing ---------------------------------------------------------------------

STEPS = 8
KEEP = 3


def _cfg():
    return tiny(steps=STEPS, checkpoint__every=1, checkpoint__keep=KEEP)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run of the same config (in-process; bit-exact with the CLI, as test_checkpoint shows)."""
    workdir = tmp_path_factory.mktemp("faults") / "reference"
    train(_cfg(), workdir)
    return workdir


def _steps_in(ckpts: Path) -> list[str]:
    try:
        return os.listdir(ckpts)
    except FileNotFoundError:
        return []


def _first_save_in_flight(names: list[str]) -> bool:
    return any(n.startswith("1" + TMP_MARK) for n in names)


def _first_step_done(names: list[str]) -> bool:
    return "1" in names


def _later_save_in_flight(names: list[str]) -> bool:
    return any(TMP_MARK in n and int(n.split(".")[0]) >= 3 for n in names)


def _final_save_done(names: list[str]) -> bool:
    return str(STEPS) in names


KILL_POINTS = {"first_save_in_tmp": _first_save_in_flight, "first_save_renamed": _first_step_done, "later_save_in_tmp": _later_save_in_flight,
               "final_save_renamed": _final_save_done}


def _run_and_kill(cfg, workdir: Path, when, timeout: float = 50) -> list[str]:
    """Start `scalekit train`, SIGKILL it as soon as `when(names in the checkpoint dir)` holds; the names then."""
    workdir.mkdir(parents=True)
    log = open(workdir.parent / (workdir.name + ".killed.log"), "w")
    proc = subprocess.Popen([sys.executable, "-m", "scalekit", "train", *cli_args(cfg, workdir)], cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT)
    ckpts = workdir / "checkpoints"
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            names = _steps_in(ckpts)
            if when(names):
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return names
            if proc.poll() is not None:
                raise AssertionError(f"training exited (rc {proc.returncode}) before the kill point; names {names}: "
                                     + Path(log.name).read_text()[-2000:])
            time.sleep(0.002)
        raise AssertionError(f"kill point not reached in {timeout} s; names {_steps_in(ckpts)}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_sigkill_during_checkpointing_resumes_from_the_last_complete_step(reference, tmp_path, point):
    cfg = _cfg()
    run = tmp_path / "run"
    names = _run_and_kill(cfg, run, KILL_POINTS[point])
    assert (run / "trainer.lock").exists()  # left behind by the killed trainer; the kernel dropped its flock
    assert not (run / "summary.json").exists()
    # the steps complete once it is dead (a save may have been renamed between the look and the kill)
    complete = sorted(int(n) for n in _steps_in(run / "checkpoints") if n.isdigit())
    assert set(complete) >= {int(n) for n in names if n.isdigit()} - {min(complete, default=0) - 1}, names
    assert complete or point == "first_save_in_tmp", names

    res = subprocess.run([sys.executable, "-m", "scalekit", "train", *cli_args(cfg, run)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]  # not refused as busy (4), no crash
    assert "Traceback" not in res.stderr and "unusable" not in res.stderr, res.stderr[-3000:]
    # from the last complete step at the kill (a partial <s>.orbax-checkpoint-tmp never counts), or from scratch
    resumed = 0
    if complete:
        resumed = int(res.stderr.split("resumed from checkpoint at step ")[1].split()[0])
        assert resumed == max(complete), (resumed, names)
    else:
        assert "resumed from checkpoint" not in res.stderr, res.stderr[-3000:]
    leftovers = [p.name for p in (run / "checkpoints").iterdir() if TMP_MARK in p.name or "damaged" in p.name]
    assert leftovers == []  # orbax cleans up the partial save
    for step in sorted(int(n) for n in os.listdir(run / "checkpoints") if n.isdigit()):
        assert (run / "checkpoints" / str(step) / MANIFEST).exists() and \
            verify_step_dir(run / "checkpoints" / str(step)) is None

    ref, got = read_metrics(reference), read_metrics(run)
    assert sorted(ref) == list(range(1, STEPS + 1)) and set(got) <= set(ref)
    for step in got:  # bitwise: exact float equality of every logged loss
        assert got[step]["loss"] == ref[step]["loss"], step
    # metrics.jsonl is flushed before each checkpoint save: no step inside a checkpoint is missing from it
    assert sorted(got) == sorted(ref), sorted(set(ref) - set(got))
    ref_summary = json.loads((reference / "summary.json").read_text())
    got_summary = json.loads((run / "summary.json").read_text())
    assert got_summary["status"] == "done" and got_summary["steps"] == STEPS
    # killed after the final save, before summary.json: the rerun trains nothing and takes its losses from the log
    assert got_summary["final_loss"] == ref_summary["final_loss"]
    assert got_summary["eval_loss"] == ref_summary["eval_loss"]
