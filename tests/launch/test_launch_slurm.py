"""`scalekit launch slurm`: the sbatch script, and real jobs on a single-node Slurm (the slurm_cluster fixture).

The cluster tests submit through the real sbatch/slurmctld/slurmd: a 2-task job whose processes find each other
from the Slurm environment and train together, a requeue at the time-limit signal that resumes from the
checkpoint, a job array from the sweep executor, and a job array from `render_array`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scalekit.launch import k8s, slurm

REPO = Path(__file__).resolve().parents[2]
TRAIN = ["--config", "configs/train.py:tiny", "--config.optimizer.warmup_steps=1", "--config.peak_flops=1e12",
         "--config.progress=False", "--config.eval_every=0", "--config.eval_batches=1"]


def _launch(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scalekit", "launch", "slurm", *args], capture_output=True,
                          text=True, cwd=REPO, env=env, check=False, timeout=300)


def _wait_for(cluster, job_id: str, states=("COMPLETED",), timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = cluster.job_state(job_id)
        if st.get("JobState") in states:
            return st
        if st.get("JobState") in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            raise AssertionError(f"job {job_id} ended {st.get('JobState')}: {st}")
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} not {states} after {timeout} s: {cluster.job_state(job_id)}\n"
                         + cluster.logs())


def _log(workdir: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(workdir.glob("slurm-*.out")))


# --- the script (no cluster needed) -------------------------------------------------------------------------------

def test_dry_run_script_for_two_h100_nodes(tmp_path: Path) -> None:
    res = _launch("--nodes", "2", "--gpus-per-node", "8", "--partition", "gpu", "--time", "04:00:00", "--preset",
                  "h100", "--preflight", "--dry-run", "--", *TRAIN, "--workdir", str(tmp_path / "run"))
    assert res.returncode == 0, res.stderr
    text = res.stdout
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --partition=gpu", "#SBATCH --time=04:00:00", "#SBATCH --requeue",
                 "#SBATCH --signal=B:USR1@120", "#SBATCH --exclusive", "#SBATCH --open-mode=append",
                 f"#SBATCH --output={tmp_path / 'run'}/slurm-%x-%j.out"):
        assert line + "\n" in text, line
    assert "--gpus-per-task" not in text  # every task sees all GPUs of its node; distributed picks SLURM_LOCALID
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" in text and "NCCL_IB_QPS_PER_CONNECTION" in text
    assert f"{sys.executable} -m scalekit train --config configs/train.py:tiny" in text
    assert "--config.distributed.mode=per_gpu" in text and "-m scalekit preflight --out" in text
    assert 'scontrol requeue "${SLURM_JOB_ID}"' in text and "scancel --signal=TERM" in text
    script = tmp_path / "job.sbatch"
    script.write_text(text)
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    assert not (tmp_path / "run").exists(), "a dry run writes nothing"


def test_bad_requests_are_refused_with_the_fix() -> None:
    res = _launch("--gpus-per-node", "8", "--ntasks-per-node", "4", "--dry-run", "--", *TRAIN, "--workdir", "/w")
    assert res.returncode == 2 and "--ntasks-per-node=4 differs from --gpus-per-node=8" in res.stderr
    res = _launch("--preset", "nope", "--dry-run", "--", *TRAIN, "--workdir", "/w")
    assert res.returncode == 2 and "unknown preset 'nope'" in res.stderr and "aws-efa" in res.stderr
    res = _launch("--dry-run", "--", *TRAIN)
    assert res.returncode == 2 and "--workdir" in res.stderr
    per_node = _launch("--nodes", "3", "--gpus-per-node", "8", "--mode", "per_node", "--dry-run", "--", *TRAIN,
                       "--workdir", "/w").stdout
    assert "#SBATCH --ntasks-per-node=1\n" in per_node and "--config.distributed.mode=per_node" in per_node


def test_every_preset_is_valid_shell_and_its_xla_flags_are_known(clean_env) -> None:
    flags = []
    for preset in sorted(p.stem for p in slurm.PRESET_DIR.glob("*.env")):
        env = k8s.preset_env(preset)  # bash evaluates the preset: a syntax error fails here
        flags += env.get("XLA_FLAGS", "").split()
    flags = [f for f in dict.fromkeys(flags) if "device_count" not in f]
    assert len(flags) >= 5
    # XLA aborts on an unknown flag, so one CPU run with every preset's flags proves this jaxlib knows them all.
    res = subprocess.run([sys.executable, "-c", "import jax; jax.numpy.ones(1).block_until_ready()"],
                         env=clean_env(1, XLA_FLAGS=" ".join(flags)), capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr[-2000:]


def test_array_script_runs_one_command_per_task(tmp_path: Path) -> None:
    job = slurm.SlurmJob(nodes=2, gpus_per_node=4, log_dir=str(tmp_path), preset="gpu")
    text = slurm.render_array(job, [["python", "a.py"], ["python", "b.py", "--x=1 2"]], max_parallel=1)
    assert "#SBATCH --array=0-1%1\n" in text and "#SBATCH --ntasks-per-node=4\n" in text
    assert "  1) CMD=(python b.py '--x=1 2') ;;" in text and "slurm-%x-%A_%a.out" in text
    with pytest.raises(ValueError, match="at least one command"):
        slurm.render_array(job, [])


# --- a real single-node Slurm -------------------------------------------------------------------------------------

@pytest.fixture
def job_env(slurm_cluster, clean_env):
    """The submission environment: the test cluster's SLURM_CONF, CPU JAX, no inherited cluster variables."""
    return clean_env(4, SLURM_CONF=slurm_cluster.env["SLURM_CONF"])


def test_two_task_job_trains_together(slurm_cluster, job_env, tmp_path: Path) -> None:
    run = tmp_path / "run"
    res = _launch("--nodes", "1", "--ntasks-per-node", "2", "--preset", "cpu-test", "--name", "two-tasks",
                  "--preflight", "--preflight-args=--size 128 --iters 2 --collective-mb 0.0625", "--wait", "--",
                  *TRAIN, "--config.steps=4", "--workdir", str(run), env=job_env)
    log = _log(run)
    assert res.returncode == 0, res.stdout + res.stderr + log[-5000:] + slurm_cluster.logs()
    job_id = res.stdout.split()[2].rstrip(":")
    assert slurm_cluster.job_state(job_id)["JobState"] == "COMPLETED"
    for i in range(2):  # each process found its place from SLURM_PROCID / SLURM_STEP_NUM_TASKS / the nodelist
        assert f"scalekit.distributed: process {i} of 2 (source slurm, coordinator localhost:" in log, log[-5000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["process_count"] == 2 and summary["steps"] == 4
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[:4] == [1, 2, 3, 4]
    pre = json.loads((run / f"preflight-{job_id}.json").read_text())
    assert pre["process_count"] == 2 and pre["device_count"] == 8
    assert {c["scope"] for c in pre["collectives"]} == {"all", "inter", "intra"}


def test_time_limit_signal_requeues_and_the_run_resumes(slurm_cluster, job_env, tmp_path: Path) -> None:
    run = tmp_path / "run"
    res = _launch("--nodes", "1", "--ntasks-per-node", "1", "--preset", "cpu-test", "--name", "requeue", "--",
                  *TRAIN, "--config.steps=200", "--config.checkpoint.every=5", "--workdir", str(run), env=job_env)
    assert res.returncode == 0, res.stderr
    job_id = res.stdout.split()[2].rstrip(":")
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 8):
        assert time.monotonic() < deadline, _log(run)[-4000:]
        assert slurm_cluster.job_state(job_id).get("JobState") in ("PENDING", "RUNNING"), _log(run)[-4000:]
        time.sleep(0.3)
    # What Slurm sends signal_s before the time limit: SIGUSR1 to the batch shell.
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], env=job_env, check=True)
    st = _wait_for(slurm_cluster, job_id, states=("PENDING",), timeout=60)
    assert st["Restarts"] == "1"
    # Slurm holds a requeued job for two minutes (BeginTime); let it start now, once the first run's processes
    # are gone from the node (starting it while slurmd still cleans up the old instance fails the job).
    deadline = time.monotonic() + 60
    while "CPUAlloc=0 " not in subprocess.run(["scontrol", "-o", "show", "node", "localhost"], env=job_env,
                                               capture_output=True, text=True).stdout:
        assert time.monotonic() < deadline, slurm_cluster.logs()
        time.sleep(0.5)
    time.sleep(1.0)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], env=job_env, check=True)
    _wait_for(slurm_cluster, job_id, timeout=240)
    log = _log(run)
    assert "caught USR1" in log and "scalekit: requeued" in log and "restart 1 on localhost" in log, log[-4000:]
    assert "resumed from checkpoint at step" in log, log[-4000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 200


def test_sweep_executor_job_array(slurm_cluster, job_env, tmp_path: Path) -> None:
    from scalekit.sweep.store import open_store
    fake = "{python} -m scalekit.sweep.fake_train --config {config} --workdir {workdir}"
    res = subprocess.run([sys.executable, "-m", "scalekit", "sweep", "run", "experiments/sweep_tiny.py",
                          "--workdir", str(tmp_path), "--executor", "slurm", "--parallel", "2", "--train-cmd", fake],
                         capture_output=True, text=True, cwd=REPO, env=job_env, check=False, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    job_id = res.stdout.split("submitted Slurm array job ")[1].split()[0]
    deadline = time.monotonic() + 120
    while True:
        queue = subprocess.run(["squeue", "-h", "-j", job_id], env=job_env, capture_output=True, text=True).stdout
        if not queue.strip():
            break
        assert time.monotonic() < deadline, queue + slurm_cluster.logs()
        time.sleep(0.5)
    counts = open_store(tmp_path).counts()
    logs = "\n".join(p.read_text() for p in (tmp_path / "slurm").glob("*.out"))
    assert counts.get("done", 0) == sum(counts.values()) > 0, (counts, logs[-4000:])
    assert len(list((tmp_path / "slurm").glob("*_0.out"))) == 1 and len(list((tmp_path / "slurm").glob("*_1.out"))) == 1


def test_render_array_runs_each_command_in_its_own_task(slurm_cluster, job_env, tmp_path: Path) -> None:
    probe = "import os; print('ARRAY', os.environ['SLURM_ARRAY_TASK_ID'], os.environ['SLURM_STEP_NUM_TASKS'])"
    job = slurm.SlurmJob(ntasks_per_node=1, preset="cpu-test", log_dir=str(tmp_path), python=sys.executable,
                         job_name="array")
    job_id = slurm.submit_array(job, [[sys.executable, "-c", probe]] * 2, tmp_path / "array.sbatch", env=job_env)
    for i in range(2):
        _wait_for(slurm_cluster, f"{job_id}_{i}")
    outs = [p.read_text() for p in sorted(tmp_path.glob("slurm-array-*_*.out"))]
    assert len(outs) == 2 and "ARRAY 0 1" in outs[0] and "ARRAY 1 1" in outs[1], outs


def test_sweep_job_array_shares_one_postgres_store(slurm_cluster, job_env, pg_server, pg_url, tmp_path: Path) -> None:
    """Three array tasks claim from one PostgreSQL store: they find it through DIR/store.json, and the password
    through PGPASSWORD in sbatch's environment, never in the script or any file of the sweep."""
    from collections import Counter

    from scalekit.sweep.plan import load_plan
    from scalekit.sweep.store import open_store, url_without_password

    pw = pg_server.password
    workdir, log = tmp_path / "sweep", tmp_path / "fake.log"
    names = {r.key: r.name for r in load_plan("experiments/sweep_tiny.py").expand()}
    env = {k: v for k, v in job_env.items() if not k.startswith("PG")}
    env.update(SCALEKIT_FAKE_LOG=str(log), SCALEKIT_FAKE_SLEEP="0.3", PGPASSFILE="/dev/null")
    fake = "{python} -m scalekit.sweep.fake_train --config {config} --workdir {workdir}"
    res = subprocess.run([sys.executable, "-m", "scalekit", "sweep", "run", "experiments/sweep_tiny.py", "--workdir",
                          str(workdir), "--store", pg_url, "--executor", "slurm", "--parallel", "3", "--train-cmd",
                          fake], capture_output=True, text=True, cwd=REPO, env=env, check=False, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert pw not in res.stdout + res.stderr and "(3 tasks)" in res.stdout, res.stdout
    job_id = res.stdout.split("submitted Slurm array job ")[1].split()[0]
    deadline = time.monotonic() + 120
    while subprocess.run(["squeue", "-h", "-j", job_id], env=job_env, capture_output=True, text=True).stdout.strip():
        assert time.monotonic() < deadline, slurm_cluster.logs()
        time.sleep(0.5)
    outs = {p.name: p.read_text(errors="replace") for p in (workdir / "slurm").glob("*.out")}
    assert len(outs) == 3, outs
    assert all("worker done:" in text for text in outs.values()), outs
    for i in range(3):
        st = slurm_cluster.job_state(f"{job_id}_{i}")
        assert (st.get("JobState"), st.get("ExitCode")) == ("COMPLETED", "0:0"), (st, outs)

    store = open_store(f"{pg_url}?sweep=sweep", create=False, readonly=True)
    try:
        rows, events = store.rows(), store.events()
    finally:
        store.close()
    logs = "\n".join(outs.values())[-4000:]
    assert sorted(r["key"] for r in rows) == sorted(names) and {r["status"] for r in rows} == {"done"}, logs
    assert Counter(e["key"] for e in events if e["event"] == "done") == Counter(list(names))
    assert Counter(e["key"] for e in events if e["event"] == "claimed") == Counter(list(names))
    assert {r["attempts"] for r in rows} == {1}
    workers = {e["worker"] for e in events if e["event"] == "claimed"}
    assert workers <= {f"slurm-{job_id}_{i}" for i in range(3)} and len(workers) >= 2, workers  # they shared it
    starts = Counter(json.loads(x)["name"] for x in log.read_text().splitlines() if '"start"' in x)
    assert starts == Counter(names.values()), starts  # each run trained exactly once across the tasks

    scripts = list((workdir / "slurm").glob("*.sbatch"))
    assert len(scripts) == 1
    script = scripts[0].read_text()
    assert "#SBATCH --array=0-2" in script and "sweep work" in script
    assert "--store" not in script and "postgresql" not in script and "PGPASSWORD" not in script
    assert json.loads((workdir / "store.json").read_text()) == {"url": url_without_password(pg_url), "sweep": "sweep"}
    for p in [p for p in workdir.rglob("*") if p.is_file()]:
        assert pw.encode() not in p.read_bytes(), p
