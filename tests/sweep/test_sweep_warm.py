"""Warm sweep workers with the real trainer: one long-lived process per worker trains many tiny runs.

They give bit-identical results to a fresh process per run (`--isolate`) in any order, survive a SIGKILL of the
child or of the driver without losing or repeating a finished run, and keep going after a run that diverged or had
a bad config, in the same process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from scalekit.cli import sweep as sweep_cli
from scalekit.sweep import executors as ex
from scalekit.sweep.plan import RunSpec, grid_plan
from scalekit.sweep.store import open_store

ROOT = Path(__file__).resolve().parents[2]
BASE = f"{ROOT / 'configs' / 'train.py'}:tiny"
MODEL_A = {"name": "a16", "d_model": 16, "n_layers": 1, "n_heads": 2}
MODEL_B = {"name": "b24", "d_model": 24, "n_layers": 1, "n_heads": 2}
OVERRIDES = {"data.vocab_size": 16, "data.batch_size": 8, "data.seq_len": 16, "eval_every": 0, "eval_batches": 1,
             "log_every": 4, "progress": False, "checkpoint.every": 0}
CHILD_ENV = {"XLA_FLAGS": ""}  # the children train on one CPU device, not the suite's 8 fake ones

pytestmark = pytest.mark.slow


def _runs(models: list, steps: list[int], lrs: list[float]) -> list[RunSpec]:
    return grid_plan("warm", models, steps=steps, lrs=lrs, base=BASE, overrides=OVERRIDES,
                     warmup_fraction=0.1).expand()


def _plan_file(tmp_path: Path, steps: list[int]) -> Path:
    path = tmp_path / "plan.py"
    path.write_text("from scalekit.sweep.plan import grid_plan\n"
                    f"PLAN = grid_plan('warm', [{MODEL_A!r}], steps={steps!r}, lrs=[1e-2], base={BASE!r}, "
                    f"overrides={OVERRIDES!r}, warmup_fraction=0.1)\n")
    return path


def _sweep(sweep_dir: Path, rows: list[dict], **opts) -> tuple[list[ex.Outcome], dict[str, dict]]:
    """Run `rows` (in this order) through one local worker; (outcomes, store rows by key)."""
    store = open_store(sweep_dir)
    store.add_runs(rows)
    out = ex.run_local(store, sweep_dir, ex.WorkerOptions(keys=[r["key"] for r in rows], env=CHILD_ENV, **opts))
    return out, {r["key"]: r for r in store.rows()}


def _driver(plan: Path, workdir: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, **CHILD_ENV}
    return subprocess.Popen([sys.executable, "-m", "scalekit", "sweep", "run", str(plan), "--workdir", str(workdir),
                             *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _warm_pids(rdir: Path) -> list[int]:
    """The warm worker PIDs named by the attempt banners in a run's stderr.log, in order."""
    text = (rdir / "stderr.log").read_text() if (rdir / "stderr.log").exists() else ""
    return [int(p) for p in re.findall(r"warm worker PID (\d+)", text)]


def _kill_mid_run(rdir: Path, running: Callable[[], bool], timeout: float = 240) -> int:
    """Wait until the run in `rdir` has logged training steps but not finished; return its warm worker's PID."""
    deadline = time.time() + timeout
    while time.time() < deadline and running():
        metrics = rdir / "metrics.jsonl"
        if metrics.exists() and metrics.stat().st_size and not (rdir / "summary.json").exists():
            return _warm_pids(rdir)[-1]
        time.sleep(0.02)
    pytest.fail(f"the run in {rdir} never got going (or its driver ended first)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not status.exists() or "zombie" not in status.read_text().lower()


def _snapshot(rdir: Path) -> tuple[int, bytes]:
    return (rdir / "summary.json").stat().st_mtime_ns, (rdir / "metrics.jsonl").read_bytes()


# --- (a) same results as a fresh process per run, in any order ------------------------------------------------------

def test_warm_runs_equal_isolated_runs_exactly_in_any_order(tmp_path: Path) -> None:
    runs = _runs([MODEL_A, MODEL_B], steps=[12], lrs=[1e-2, 3e-3])
    runs = [runs[0], runs[1], runs[2]]  # a16 at two lrs (same shapes), then b24 (new shapes)
    rows = [r.to_row() for r in runs]
    warm, warm_rows = _sweep(tmp_path / "warm", rows)
    # reversed: b24 runs first this time, a16@1e-2 after the others; recycled after 2 runs, so the last run also
    # shows a replacement process starting cleanly
    rev, rev_rows = _sweep(tmp_path / "reversed", rows[::-1], worker_max_runs=2)
    iso, iso_rows = _sweep(tmp_path / "isolated", rows, isolate=True)

    for outcomes in (warm, rev, iso):
        assert [o.status for o in outcomes] == ["done"] * 3, [o.error for o in outcomes]
    for r in runs:
        a, b, c = warm_rows[r.key], rev_rows[r.key], iso_rows[r.key]
        assert a["final_loss"] == b["final_loss"] == c["final_loss"], r.name  # exact: same seeds, same CPU
        assert a["eval_loss"] == b["eval_loss"] == c["eval_loss"], r.name
        assert a["eval_curve"] == b["eval_curve"] == c["eval_curve"]
    assert len({o.pid for o in warm}) == 1  # one process trained all three
    assert rev[0].pid == rev[1].pid != rev[2].pid  # recycled after worker_max_runs=2
    assert len({o.pid for o in iso}) == 3  # --isolate: a process per run
    banners = (ex.run_dir(tmp_path / "warm", runs[2].key) / "stderr.log").read_text()
    assert f"warm worker PID {warm[0].pid} (run 3)" in banners


# --- (b) SIGKILL of the child, or of the driver --------------------------------------------------------------------

def test_sigkilled_warm_child_fails_the_attempt_and_a_fresh_child_finishes_the_sweep(tmp_path: Path) -> None:
    first, victim = _runs([MODEL_A], steps=[12, 10000], lrs=[1e-2])
    workdir, result = tmp_path / "sweep", {}
    driver = threading.Thread(target=lambda: result.update(zip(("outcomes", "rows"), _sweep(
        workdir, [first.to_row(), victim.to_row()]))))
    driver.start()
    vdir = ex.run_dir(workdir, victim.key)
    child = _kill_mid_run(vdir, driver.is_alive)
    done_before = _snapshot(ex.run_dir(workdir, first.key))
    os.kill(child, signal.SIGKILL)
    driver.join(timeout=300)
    assert not driver.is_alive()

    outcomes, rows = result["outcomes"], result["rows"]
    assert [(o.name, o.status, o.attempt) for o in outcomes] == [
        (first.name, "done", 1), (victim.name, "failed", 1), (victim.name, "done", 2)], [o.error for o in outcomes]
    assert outcomes[1].error.startswith("exit code -9 (signal 9); attempt 1 on "), outcomes[1].error  # as today
    assert outcomes[0].pid == outcomes[1].pid == child != outcomes[2].pid  # the retry ran in a new child
    assert _warm_pids(vdir) == [child, outcomes[2].pid]
    assert {r["status"] for r in rows.values()} == {"done"}
    assert (rows[first.key]["attempts"], rows[victim.key]["attempts"]) == (1, 2)
    store = open_store(workdir)
    assert [e["event"] for e in store.events(first.key)] == ["added", "claimed", "done"]
    assert [e["event"] for e in store.events(victim.key)] == ["added", "claimed", "failed", "retry", "done"]
    assert _snapshot(ex.run_dir(workdir, first.key)) == done_before  # the finished run was not touched again


def test_sigkilled_driver_takes_its_warm_child_along_and_a_rerun_finishes_each_run_once(tmp_path: Path) -> None:
    plan, workdir = _plan_file(tmp_path, [12, 10000]), tmp_path / "sweep"
    first, victim = _runs([MODEL_A], steps=[12, 10000], lrs=[1e-2])
    driver = _driver(plan, workdir, "--stale-after", "2")
    try:
        child = _kill_mid_run(ex.run_dir(workdir, victim.key), lambda: driver.poll() is None)
    except BaseException:
        driver.kill()
        raise
    driver.send_signal(signal.SIGKILL)
    driver.communicate(timeout=30)
    for _ in range(200):  # PR_SET_PDEATHSIG: the warm child dies with its driver
        if not _alive(child):
            break
        time.sleep(0.05)
    assert not _alive(child)
    store = open_store(workdir)
    before = {r["key"]: r for r in store.rows()}
    assert (before[first.key]["status"], before[victim.key]["status"]) == ("done", "running")
    done_before = _snapshot(ex.run_dir(workdir, first.key))

    out, _ = (rerun := _driver(plan, workdir, "--stale-after", "2")).communicate(timeout=300)
    assert rerun.returncode == 0 and "1 reclaimed from dead drivers" in out, out
    rows = {r["key"]: r for r in store.rows()}
    assert {r["status"] for r in rows.values()} == {"done"}
    old, new = before[first.key], rows[first.key]
    assert (new["final_loss"], new["finished"], new["attempts"]) == (old["final_loss"], old["finished"], 1)
    assert rows[victim.key]["attempts"] == 2
    for key in (first.key, victim.key):
        assert [e["event"] for e in store.events(key)].count("done") == 1
    assert _snapshot(ex.run_dir(workdir, first.key)) == done_before
    summary = json.loads((ex.run_dir(workdir, victim.key) / "summary.json").read_text())
    assert summary["status"] == "done" and summary["steps"] == 10000


def test_sigterm_to_the_driver_lets_the_warm_run_save_and_gives_it_back(tmp_path: Path) -> None:
    plan, workdir = _plan_file(tmp_path, [10000]), tmp_path / "sweep"
    (victim,) = _runs([MODEL_A], steps=[10000], lrs=[1e-2])
    driver = _driver(plan, workdir)
    vdir = ex.run_dir(workdir, victim.key)
    try:
        child = _kill_mid_run(vdir, lambda: driver.poll() is None)
    except BaseException:
        driver.kill()
        raise
    driver.send_signal(signal.SIGTERM)
    out, _ = driver.communicate(timeout=60)
    assert driver.returncode == 1 and "1 interrupted" in out, out
    assert not _alive(child)
    err = (vdir / "stderr.log").read_text()
    # the trainer's PreemptionGuard ran in the child's main thread: it saved, returned, and the child exited
    assert re.search(r"received SIGTERM: saved step \d+ to .*; exiting cleanly", err), err[-2000:]
    assert f"[warm {child}] {vdir.resolve()}: exit code 0" in next((workdir / "workers").glob("*.log")).read_text()
    (row,) = open_store(workdir).rows()
    assert (row["status"], row["attempts"]) == ("pending", 0)


# --- (c, d, e) diverged and bad runs in the middle of a warm worker's runs -----------------------------------------

@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One worker trains: good, diverging (lr 1e30), bad config (lr inf), missing init_from, good (same shapes)."""
    sweep_dir = tmp_path_factory.mktemp("mixed")
    good, good2 = _runs([MODEL_A], steps=[12], lrs=[1e-2, 3e-3])

    def variant(prefix: str, name: str, **changes) -> dict:
        row = good.to_row()
        row["key"], row["name"] = prefix + good.key[len(prefix):], name
        config = json.loads(json.dumps(row["config"]))
        for dotted, value in changes.items():
            node = config
            *parents, leaf = dotted.split("__")
            for p in parents:
                node = node[p]
            node[leaf] = value
        row["config"] = config
        return row

    rows = [good.to_row(), variant("d1ver", "diverges", optimizer__lr=1e30, optimizer__warmup_steps=0),
            variant("badcf", "bad_lr", optimizer__lr=float("inf")),
            variant("noinit", "no_init", init_from="/nonexistent/checkpoint"), good2.to_row()]
    outcomes, by_key = _sweep(sweep_dir, rows, max_attempts=1)
    return {"dir": sweep_dir, "rows": rows, "outcomes": {o.name: o for o in outcomes}, "store": by_key}


def test_diverged_run_is_stored_as_diverged_and_the_worker_goes_on(mixed: dict) -> None:
    o = mixed["outcomes"]["diverges"]
    assert o.status == "diverged" and o.error.startswith("diverged: non-finite"), o.error
    row = next(r for r in mixed["store"].values() if r["name"] == "diverges")
    assert row["status"] == "diverged" and row["attempts"] == 1
    assert Counter(o.status for o in mixed["outcomes"].values()) == {"done": 2, "diverged": 1, "failed": 2}


def test_config_errors_fail_their_run_with_exit_code_2_and_the_worker_goes_on(mixed: dict) -> None:
    bad, no_init = mixed["outcomes"]["bad_lr"], mixed["outcomes"]["no_init"]
    assert bad.status == no_init.status == "failed"
    # the store keeps configs as strict JSON (inf becomes null): refused by the config check either way
    assert bad.error.startswith("exit code 2;") and "scalekit train: error: --config.optimizer.lr" in bad.error
    assert no_init.error.startswith("exit code 2;") and "/nonexistent/checkpoint" in no_init.error
    assert "Traceback" not in bad.error + no_init.error
    assert list(mixed["outcomes"].values())[-1].status == "done"  # the run after them trained


def test_runs_after_failures_reuse_the_same_warm_process(mixed: dict) -> None:
    outcomes = list(mixed["outcomes"].values())
    assert len(outcomes) == 5 and len({o.pid for o in outcomes}) == 1 and outcomes[0].pid > 0
    last = ex.run_dir(mixed["dir"], mixed["rows"][-1]["key"])
    assert f"warm worker PID {outcomes[0].pid} (run 5)" in (last / "stderr.log").read_text()
    log = next((mixed["dir"] / "workers").glob("*.log")).read_text()
    assert log.count(f"[warm {outcomes[0].pid}]") == 5  # the child's own log: one line per run


# --- start-up failures, and which path runs are taken --------------------------------------------------------------

def test_a_warm_worker_that_cannot_start_is_a_one_line_error(tmp_path: Path) -> None:
    fake = tmp_path / "fake_site"
    fake.mkdir()
    (fake / "jax.py").write_text("raise ImportError('this jax is broken on purpose')\n")
    run = _runs([MODEL_A], steps=[12], lrs=[1e-2])[0]
    store = open_store(tmp_path / "sweep")
    store.add_runs([run.to_row()])
    opts = ex.WorkerOptions(keys=[run.key], max_attempts=1, env={**CHILD_ENV, "PYTHONPATH": str(fake)})
    (o,) = ex.run_local(store, tmp_path / "sweep", opts)
    first = o.error.splitlines()[0]
    assert o.status == "failed" and first.startswith("warm worker failed to start: exit code 1; its log "), first
    assert "ImportError: this jax is broken on purpose" in first
    assert store.rows()[0]["status"] == "failed"


def test_a_run_past_its_timeout_kills_the_child_and_the_next_run_gets_a_fresh_one(tmp_path: Path) -> None:
    runs = _runs([MODEL_A], steps=[1_000_000], lrs=[1e-2, 3e-3])
    outcomes, rows = _sweep(tmp_path / "sweep", [r.to_row() for r in runs], timeout_s=2.0, max_attempts=1)
    assert [o.status for o in outcomes] == ["failed", "failed"]
    assert all(o.error.startswith("timed out after 2 s; attempt 1") for o in outcomes), [o.error for o in outcomes]
    assert outcomes[0].pid != outcomes[1].pid and not any(_alive(o.pid) for o in outcomes)


def test_custom_commands_and_isolate_keep_a_process_per_run() -> None:
    assert ex.WorkerOptions().warm
    assert not ex.WorkerOptions(isolate=True).warm
    assert not ex.WorkerOptions(command=["{python}", "-m", "mytrainer", "{config}"]).warm
    script = ex.sbatch_script("/tmp/s", array_size=2, opts=ex.WorkerOptions(isolate=True, worker_max_runs=7))
    assert "--isolate" in script and "--worker-max-runs 7" in script
    assert "--isolate" not in ex.sbatch_script("/tmp/s", array_size=2, opts=ex.WorkerOptions())
    for cmd in (["run", "plan.py", "--workdir", "d"], ["work", "d"]):
        opts = sweep_cli._worker_opts(sweep_cli._parser().parse_args([*cmd, "--isolate", "--worker-max-runs", "5"]))
        assert (opts.isolate, opts.worker_max_runs, opts.warm) == (True, 5, False)
        assert sweep_cli._worker_opts(sweep_cli._parser().parse_args(cmd)).warm


def test_a_multi_process_run_is_never_given_to_a_warm_child():
    from scalekit.sweep.executors import multi_process
    assert multi_process({"distributed": {"enabled": "on"}})
    assert multi_process({"distributed": {"enabled": "auto", "num_processes": 4}})
    assert not multi_process({"distributed": {"enabled": "auto", "num_processes": 0}})
    assert not multi_process({})
