"""Executors with a stand-in trainer (scalekit.sweep.fake_train, a test double): resume after SIGKILL, racing
drivers, failures and retries, interruption, recovery, timeouts and the Slurm script."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from scalekit.sweep import executors as ex
from scalekit.sweep.plan import load_plan
from scalekit.sweep.store import load_sweep_frame, open_store

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "experiments" / "sweep_tiny.py")
FAKE = ["{python}", "-m", "scalekit.sweep.fake_train", "--config", "{config}", "--workdir", "{workdir}"]
FAKE_STR = " ".join(FAKE)


def _keys() -> list[str]:
    return [r.key for r in load_plan(TINY).expand()]


def _log_events(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _driver(workdir: Path, log: Path, *extra: str, sleep: float = 0.0, fail: str = "") -> subprocess.Popen:
    env = {**os.environ, "SCALEKIT_FAKE_LOG": str(log), "SCALEKIT_FAKE_SLEEP": str(sleep)}
    if fail:
        env["SCALEKIT_FAKE_FAIL"] = fail
    return subprocess.Popen([sys.executable, "-m", "scalekit", "sweep", "run", TINY, "--workdir", str(workdir),
                             "--train-cmd", FAKE_STR, *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


def test_local_sweep_runs_everything_once_and_rerun_does_nothing(tmp_path: Path) -> None:
    keys = _keys()
    store = open_store(tmp_path)
    store.add_runs(r.to_row() for r in load_plan(TINY).expand())
    opts = ex.WorkerOptions(command=FAKE, keys=keys, env={"SCALEKIT_FAKE_LOG": str(tmp_path / "log")})
    outcomes = ex.run_local(store, tmp_path, opts, parallel=2)
    assert sorted(o.key for o in outcomes) == sorted(keys) and {o.status for o in outcomes} == {"done"}
    df = load_sweep_frame(tmp_path)
    assert (df.status == "done").all() and df.final_loss.notna().all() and (df.attempts == 1).all()
    cfg = json.loads((ex.run_dir(tmp_path, keys[0]) / "config.json").read_text())
    assert cfg["steps"] == load_plan(TINY).expand()[0].steps and cfg["progress"] is False
    assert ex.run_local(store, tmp_path, opts, parallel=2) == []
    assert len([e for e in _log_events(tmp_path / "log") if e["event"] == "start"]) == len(keys)


def test_sigkill_mid_sweep_then_resume(tmp_path: Path) -> None:
    workdir, log = tmp_path / "sweep", tmp_path / "fake.log"
    keys = _keys()
    driver = _driver(workdir, log, "--stale-after", "2", sleep=0.7)
    deadline = time.time() + 60
    while time.time() < deadline:  # kill while >= 2 runs are done and another is mid-run
        ev = _log_events(log)
        ends = sum(e["event"] == "end" for e in ev)
        if ends >= 2 and ev[-1]["event"] == "start":
            break
        time.sleep(0.05)
    else:
        pytest.fail("the driver never got two runs done")
    driver.send_signal(signal.SIGKILL)
    driver.communicate(timeout=30)
    orphan = _log_events(log)[-1]["pid"]
    for _ in range(100):  # the in-flight trainer dies with its driver
        if not _alive(orphan):
            break
        time.sleep(0.05)
    assert not _alive(orphan)
    before = {r["key"]: r for r in open_store(workdir).rows() if r["status"] == "done"}
    assert len(before) >= 2
    assert any(r["status"] == "running" for r in open_store(workdir).rows())

    out, _ = _driver(workdir, log, "--stale-after", "2").communicate(timeout=120)
    assert "reclaimed" in out or "recovered" in out, out
    rows = open_store(workdir).rows()
    assert sorted(r["key"] for r in rows) == sorted(keys)
    assert all(r["status"] == "done" for r in rows)
    for key, old in before.items():  # finished results kept as they were
        new = next(r for r in rows if r["key"] == key)
        assert (new["final_loss"], new["finished"], new["attempts"]) == (old["final_loss"], old["finished"], 1)
    store = open_store(workdir)
    for key in keys:
        assert [e["event"] for e in store.events(key)].count("done") == 1
    ev = _log_events(log)
    for name in {e["name"] for e in ev}:  # no run started again after it finished
        seq = [e["event"] for e in ev if e["name"] == name]
        assert seq.count("end") == 1 and "start" not in seq[seq.index("end"):], (name, seq)


def test_two_drivers_racing_on_one_store(tmp_path: Path) -> None:
    workdir, log = tmp_path / "sweep", tmp_path / "fake.log"
    drivers = [_driver(workdir, log, "--parallel", "2", sleep=0.3) for _ in range(2)]
    outs = [d.communicate(timeout=120)[0] for d in drivers]
    assert [d.returncode for d in drivers] == [0, 0], outs
    starts = Counter(e["name"] for e in _log_events(log) if e["event"] == "start")
    assert len(starts) == len(_keys()) and set(starts.values()) == {1}, starts
    store = open_store(workdir)
    assert store.counts() == {"pending": 0, "running": 0, "done": len(_keys()), "failed": 0, "diverged": 0}
    claims = Counter(e["key"] for e in store.events() if e["event"] in ("claimed", "reclaimed", "retry"))
    assert set(claims.values()) == {1}
    assert sum("this driver: 0 attempts" not in o for o in outs) >= 1


def test_failing_run_is_recorded_retried_and_does_not_stop_the_sweep(tmp_path: Path) -> None:
    workdir, log = tmp_path / "sweep", tmp_path / "fake.log"
    out, _ = (d := _driver(workdir, log, "--max-attempts", "2", fail="^tiny_C1.2e10$")).communicate(timeout=120)
    assert d.returncode == 1, out
    df = load_sweep_frame(workdir)
    bad = df[df.name == "tiny_C1.2e10"].iloc[0]
    assert bad.status == "failed" and bad.attempts == 2
    assert "exit code 1" in bad.error and "RuntimeError: fake failure for tiny_C1.2e10" in bad.error
    assert (df[df.name != "tiny_C1.2e10"].status == "done").all()
    assert "failed tiny_C1.2e10 after 2 attempt(s) (at the limit" in out
    status = subprocess.run([sys.executable, "-m", "scalekit", "sweep", "status", str(workdir), "--json"],
                            capture_output=True, text=True, cwd=ROOT, check=True)
    st = json.loads(status.stdout)
    assert st["counts"]["failed"] == 1 and st["failures"][0]["name"] == "tiny_C1.2e10"
    assert "fake failure" in st["failures"][0]["error"]
    table = subprocess.run([sys.executable, "-m", "scalekit", "sweep", "status", str(workdir)],
                           capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert "failures:" in table and "RuntimeError: fake failure for tiny_C1.2e10" in table
    # Rerun: nothing left to retry at the limit; --retry-failed (after a "fix") runs it again.
    out, _ = _driver(workdir, log, "--max-attempts", "2").communicate(timeout=120)
    assert "this driver: 0 attempts" in out
    out, _ = (d := _driver(workdir, log, "--max-attempts", "2", "--retry-failed")).communicate(timeout=120)
    assert d.returncode == 0, out
    starts = Counter(e["name"] for e in _log_events(log) if e["event"] == "start")
    assert starts["tiny_C1.2e10"] == 3 and starts["t32_C6e9"] == 1


def test_interrupted_driver_gives_runs_back(tmp_path: Path) -> None:
    workdir, log = tmp_path / "sweep", tmp_path / "fake.log"
    driver = _driver(workdir, log, sleep=30)
    while not any(e["event"] == "start" for e in _log_events(log)):
        time.sleep(0.05)
    driver.send_signal(signal.SIGINT)
    out, _ = driver.communicate(timeout=60)
    assert driver.returncode == 1 and "1 interrupted" in out, out
    assert not _alive(_log_events(log)[0]["pid"])
    rows = open_store(workdir).rows()
    assert {r["status"] for r in rows} == {"pending"} and {r["attempts"] for r in rows} == {0}


def test_existing_summary_is_recorded_without_rerunning(tmp_path: Path) -> None:
    runs = load_plan(TINY).expand()[:1]
    store = open_store(tmp_path)
    store.add_runs(r.to_row() for r in runs)
    rdir = ex.run_dir(tmp_path, runs[0].key)
    rdir.mkdir(parents=True)
    (rdir / "summary.json").write_text(json.dumps({"final_loss": 1.25, "eval_loss": 1.3, "eval_curve": []}))
    outcomes = ex.run_local(store, tmp_path, ex.WorkerOptions(command=["false"]))
    assert outcomes[0].recovered and outcomes[0].status == "done"
    assert store.rows()[0]["final_loss"] == 1.25


def test_timeout_and_missing_summary_fail_with_reasons(tmp_path: Path) -> None:
    runs = load_plan(TINY).expand()[:2]
    store = open_store(tmp_path)
    store.add_runs(r.to_row() for r in runs)
    opts = ex.WorkerOptions(command=[sys.executable, "-c", "import time; time.sleep(60)"], max_attempts=1,
                            timeout_s=0.5, stale_after=2, keys=[runs[0].key])
    t0 = time.time()
    assert ex.run_local(store, tmp_path, opts)[0].status == "failed"
    assert time.time() - t0 < 30
    opts = ex.WorkerOptions(command=["true"], max_attempts=1, keys=[runs[1].key])
    ex.run_local(store, tmp_path, opts)
    errors = [r["error"] for r in store.rows()]
    assert errors[0].startswith("timed out after 0.5 s") and errors[1].startswith("exit code 0 but no valid")


def test_stop_event_releases(tmp_path: Path) -> None:
    runs = load_plan(TINY).expand()[:1]
    store = open_store(tmp_path)
    store.add_runs(r.to_row() for r in runs)
    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    out = ex.run_local(store, tmp_path, ex.WorkerOptions(command=["sleep", "60"], stale_after=1), stop=stop)
    assert out[0].status == "released" and store.rows()[0]["status"] == "pending"


def test_cpu_slots_share_the_cores() -> None:
    assert ex.cpu_slots(1, [0, 1]) == [([], 0)]
    assert ex.cpu_slots(2, [0, 1, 2, 3]) == [([0, 1], 2), ([2, 3], 2)]
    assert ex.cpu_slots(3, [0, 1]) == [([0], 1), ([1], 1), ([0], 1)]
    assert "--xla_cpu_multi_thread_eigen=false" in ex.thread_env(1)["XLA_FLAGS"]
    assert ex.thread_env(0) == {}


def test_slurm_dry_run_writes_the_array_script(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "scalekit", "sweep", "run", TINY, "--workdir", str(tmp_path),
                          "--executor", "slurm", "--parallel", "3", "--dry-run", "--train-cmd", FAKE_STR,
                          "--slurm-time", "00:30:00", "--slurm-gres", "gpu:1", "--max-attempts", "4"],
                         capture_output=True, text=True, cwd=ROOT, check=False)
    assert res.returncode == 0, res.stderr
    assert "dry run: wrote" in res.stdout
    scripts = list((tmp_path / "slurm").glob("*.sbatch"))
    assert len(scripts) == 1
    text = scripts[0].read_text()
    assert text.startswith("#!/bin/bash") and "#SBATCH --array=0-2" in text
    for piece in ("#SBATCH --time=00:30:00", "#SBATCH --gres=gpu:1", "-m scalekit sweep work",
                  str(tmp_path.resolve()), "--max-attempts 4", "--train-cmd", "scalekit.sweep.fake_train",
                  "SLURM_ARRAY_TASK_ID"):
        assert piece in text, piece
    assert subprocess.run(["bash", "-n", str(scripts[0])], check=False).returncode == 0
    assert open_store(tmp_path).counts()["pending"] == len(_keys())  # planned, nothing run
    # What each array task runs: the same claim-run-record loop.
    res = subprocess.run([sys.executable, "-m", "scalekit", "sweep", "work", str(tmp_path), "--train-cmd", FAKE_STR,
                          "--worker-id", "slurm-1_0"], capture_output=True, text=True, cwd=ROOT, check=False)
    assert res.returncode == 0 and f"{len(_keys())} done" in res.stdout, res.stdout + res.stderr


def test_run_waits_while_an_earlier_trainer_holds_its_directory(tmp_path: Path) -> None:
    import fcntl

    runs = load_plan(TINY).expand()[:1]
    store = open_store(tmp_path)
    store.add_runs(r.to_row() for r in runs)
    rdir = ex.run_dir(tmp_path, runs[0].key)
    rdir.mkdir(parents=True)
    held = open(rdir / ".lock", "a+")  # noqa: SIM115 - an orphaned trainer of a dead driver still works here
    fcntl.flock(held, fcntl.LOCK_EX)
    log = tmp_path / "fake.log"

    def orphan_finishes() -> None:
        (rdir / "summary.json").write_text(json.dumps({"final_loss": 0.5}))
        held.close()

    threading.Timer(1.0, orphan_finishes).start()
    out = ex.run_local(store, tmp_path, ex.WorkerOptions(command=FAKE, env={"SCALEKIT_FAKE_LOG": str(log)}))
    assert out[0].status == "done" and out[0].recovered  # its result recorded, not run a second time
    assert store.rows()[0]["final_loss"] == 0.5 and not log.exists()
