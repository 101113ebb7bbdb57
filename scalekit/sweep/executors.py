"""Executors: run a sweep's runs locally (one or K at a time) or as a Slurm job array, through one code path.

Every executor is a set of workers, and every worker runs the same loop (`work`): claim a run from the store, run
the training command for it as a subprocess in `<sweep_dir>/runs/<key[:12]>`, refresh the claim's heartbeat while
it runs, then record the result (`summary.json`) or the failure (exit code and the tail of stderr) in one
transaction. The local executor starts K such workers as threads of one driver; the Slurm executor writes an array
job whose every task runs `scalekit sweep work DIR`, the same loop.

The training command is a template (default `python -m scalekit train --config {config} --workdir {workdir}`), so
tests and users can run anything that writes `summary.json`. The child is started through a small launcher that
pins it to its share of the cores and asks the kernel to kill it if the driver dies (Linux PR_SET_PDEATHSIG), so a
SIGKILLed driver leaves no orphan training in a run directory that the next driver will reclaim.

With the default command each worker keeps one warm child (scalekit.sweep.warm) that imports JAX once and trains
its runs in-process one after another, reusing compiled steps across runs of the same shapes; it is recycled after
`WorkerOptions.worker_max_runs` runs (or past `worker_max_rss_mb`) and replaced when it dies. A custom command, or
`isolate=True` (`--isolate`), runs every run in a fresh process instead. Both report the same exit codes, logs and
failures.

A run whose summary says it diverged (`"status": "diverged"`, written by the trainer, which then exits with
EXIT_DIVERGED) is never stored as done: it is recorded through the store's `diverge(claim, summary, error, worker)`
when the store has one, else as failed with an error starting "diverged:"; a later attempt that finds that summary
records the same outcome without training again (delete the run directory to retry it).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from scalekit.sweep.plan import per_run_checkpoint_dir
from scalekit.sweep.store import Claim, ResultsStore
from scalekit.sweep.warm import START_FAILURE, WarmWorker, kill_group, read_tail

DEFAULT_TRAIN_COMMAND = ("{python}", "-m", "scalekit", "train", "--config", "{config}", "--workdir", "{workdir}")
ERROR_TAIL_CHARS = 4000
EXIT_DIVERGED = 3  # `scalekit train`'s exit code for a run stopped by a non-finite loss or gradient norm

# Runs the command after: die with the parent (Linux), exit if the parent is already gone, pin to the given cores.
_LAUNCHER = """import ctypes, os, sys
parent, cpus = int(sys.argv[1]), sys.argv[2]
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
except Exception:
    pass
if os.getppid() != parent:
    sys.exit(137)
if cpus and hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
os.execvp(sys.argv[3], sys.argv[3:])
"""


@dataclasses.dataclass
class WorkerOptions:
    """How a worker claims and runs: the command template, retry limit, staleness, and the child's environment."""

    command: Sequence[str] = DEFAULT_TRAIN_COMMAND
    max_attempts: int = 3
    stale_after: float = 120.0  # seconds without a heartbeat before a 'running' run is reclaimed
    timeout_s: float = 0.0  # per-run limit (0 = none)
    env: dict[str, str] = dataclasses.field(default_factory=dict)  # extra environment for the children
    keys: Sequence[str] | None = None  # only claim these runs (the current plan); None = any
    wait: bool = True  # when nothing is claimable, wait for runs other workers hold (they may fail or die)
    worker: str = ""
    isolate: bool = False  # a fresh process per run even with the default command (no warm worker)
    worker_max_runs: int = 200  # a warm worker is replaced after this many runs (bounds leaks; 0 = never)
    worker_max_rss_mb: float = 0.0  # ... or once its resident memory passes this after a run (0 = no limit)

    @property
    def warm(self) -> bool:
        """Whether runs go to a warm worker: the default training command, not isolated."""
        return not self.isolate and tuple(self.command) == DEFAULT_TRAIN_COMMAND

    @property
    def heartbeat_s(self) -> float:
        """Seconds between heartbeats: a quarter of the staleness timeout, at most 10 s."""
        return max(0.1, min(self.stale_after / 4.0, 10.0))


@dataclasses.dataclass
class Outcome:
    """What happened to one claimed run."""

    key: str
    name: str
    status: str  # done | failed | diverged | released (interrupted) | lost (claim taken over) | dropped (already done)
    attempt: int
    error: str = ""
    wall_s: float = 0.0
    reclaimed: bool = False
    retry: bool = False
    recovered: bool = False  # its summary.json was already there: recorded without running again
    pid: int = 0  # the process that trained it (a warm worker's PID repeats across the runs it trains)


def default_worker_id() -> str:
    """host:pid, naming the driver in the store and the audit log."""
    return f"{socket.gethostname()}:{os.getpid()}"


def run_dir(sweep_dir: str | Path, key: str) -> Path:
    """Where one run keeps its config, logs, checkpoints and summary."""
    return Path(sweep_dir) / "runs" / key[:12]


def parse_command(text: str) -> list[str]:
    """A command template from a shell-like string (placeholders {python}, {config}, {workdir})."""
    return shlex.split(text)


def cpu_slots(parallel: int, cpus: Sequence[int] | None = None) -> list[tuple[list[int], int]]:
    """Share the cores among `parallel` workers: each gets (its cores to pin to, threads it should use).

    With one worker nothing is pinned. With K <= cores each worker gets a disjoint block of cores; with more workers
    than cores they share cores round-robin and run single-threaded.
    """
    avail = sorted(cpus if cpus is not None else (os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity")
                                                  else range(os.cpu_count() or 1)))
    if parallel <= 1:
        return [([], 0)]
    if parallel <= len(avail):
        per = len(avail) // parallel
        return [(avail[i * per:(i + 1) * per], per) for i in range(parallel)]
    return [([avail[i % len(avail)]], 1) for i in range(parallel)]


def thread_env(threads: int) -> dict[str, str]:
    """Environment limiting a child to `threads` threads (XLA's CPU Eigen pool, OpenMP, BLAS)."""
    if threads <= 0:
        return {}
    env = {v: str(threads) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    if threads == 1:
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_cpu_multi_thread_eigen" not in flags:
            env["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false").strip()
    return env


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Failure)\b|\berror:|^Killed\b")


def error_summary(text: str | None) -> str:
    """The most telling line of an error text: the last exception line of a traceback, else the last line."""
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if _EXCEPTION_LINE.search(ln):
            return ln
    return lines[-1] if lines else ""


def read_summary(path: Path) -> dict[str, Any] | None:
    """The run's summary.json if it exists and parses to a dict with a final loss, else None."""
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict):
        return None
    return summary if "final_loss" in summary or summary.get("status") == "diverged" else None


def diverged_error(summary: dict[str, Any]) -> str | None:
    """The failure text of a summary that says the run diverged ("diverged: ..."), else None."""
    if summary.get("status") != "diverged":
        return None
    return (f"diverged: non-finite {summary.get('reason', 'loss')} at step {summary.get('step', '?')} "
            f"(loss {summary.get('loss')}, grad_norm {summary.get('grad_norm')})")


def _record(store: ResultsStore, claim: Claim, summary: dict[str, Any], opts: WorkerOptions, out: Outcome) -> Outcome:
    """Store a finished run's summary: done, or failed with a "diverged:" error when it diverged."""
    error = diverged_error(summary)
    if error is not None:
        out.error = f"{error}; attempt {claim.attempt} on {socket.gethostname()}"
        diverge = getattr(store, "diverge", None)  # a store with a 'diverged' status records it as such
        if diverge is not None:
            out.status = "diverged" if diverge(claim, summary, out.error, opts.worker) else "dropped"
        else:  # today's store: failed, with the error saying why
            out.status = "failed"
            store.fail(claim, out.error, opts.worker)
        return out
    out.status = "done" if store.finish(claim, summary, opts.worker) else "dropped"
    return out


def _lock_run_dir(rdir: Path, store: ResultsStore, claim: Claim, opts: WorkerOptions,
                  stop: threading.Event) -> Any:
    """Lock the run directory (flock), waiting while an earlier trainer still runs there; None if stopped/lost.

    The trainer inherits the locked descriptor, so the lock lives as long as the trainer does, even when its driver
    died on a system without PR_SET_PDEATHSIG: the next driver then waits for it instead of starting a second one.
    """
    f = open(rdir / ".lock", "a+")  # noqa: SIM115 - returned open, closed by the caller
    last_beat = time.time()
    while not stop.is_set():
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return f
        except BlockingIOError:
            pass
        if time.time() - last_beat >= opts.heartbeat_s:
            last_beat = time.time()
            if not store.heartbeat(claim):
                break
        time.sleep(0.2)
    f.close()
    return None


def execute(store: ResultsStore, sweep_dir: str | Path, claim: Claim, opts: WorkerOptions,
            stop: threading.Event, cpus: Sequence[int] = (), threads: int = 0,
            warm: WarmWorker | None = None) -> Outcome:
    """Run one claimed run to its end and record the outcome in the store (the claim-run-record body).

    With `warm` the run is trained by that worker's warm child, else by a fresh process running opts.command.
    """
    rdir = run_dir(sweep_dir, claim.key)
    rdir.mkdir(parents=True, exist_ok=True)
    out = Outcome(claim.key, claim.name, "failed", claim.attempt, reclaimed=claim.reclaimed, retry=claim.retry)
    lock = _lock_run_dir(rdir, store, claim, opts, stop)
    if lock is None:
        if stop.is_set():
            store.release(claim, opts.worker)
        out.status = "released" if stop.is_set() else "lost"
        return out
    with lock:
        summary = read_summary(rdir / "summary.json")
        if summary is not None:  # finished (or diverged) earlier, but its driver died before recording it
            out.recovered = True
            return _record(store, claim, summary, opts, out)
        if warm is not None and multi_process(claim.config):
            warm = None  # a warm child trains single-process: this run gets a fresh process of its own
        return _run_child(store, sweep_dir, rdir, claim, opts, stop, out, cpus, threads, lock.fileno(), warm)


def multi_process(config: dict[str, Any]) -> bool:
    """Whether a run's config asks for several processes (jax.distributed), which a warm child cannot give it."""
    dist = config.get("distributed") or {}
    return dist.get("enabled") == "on" or int(dist.get("num_processes") or 0) > 1


def _write_config(sweep_dir: str | Path, rdir: Path, claim: Claim) -> Path:
    """Write the run's config.json: the claim's config with the sweep's compile cache and no progress bar."""
    config = dict(claim.config)
    if not config.get("compilation_cache_dir") and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        config["compilation_cache_dir"] = str(Path(sweep_dir).resolve() / "xla_cache")
    config["progress"] = False
    ckpt_cfg = config.get("checkpoint")
    if isinstance(ckpt_cfg, dict) and ckpt_cfg.get("dir"):  # runs never share a checkpoint directory
        config["checkpoint"] = {**ckpt_cfg, "dir": per_run_checkpoint_dir(ckpt_cfg["dir"], claim.key)}
    path = rdir / "config.json"
    path.write_text(json.dumps(config, indent=2, sort_keys=True))
    return path.resolve()


def launcher(cpus: Sequence[int]) -> list[str]:
    """The argv prefix that starts a command pinned to `cpus`, killed by the kernel when this process dies."""
    return [sys.executable, "-c", _LAUNCHER, str(os.getpid()), ",".join(map(str, cpus))]


class _Fresh:
    """A fresh training process for one run (the isolated path), with the waiting interface of a WarmChild."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc, self.pid, self.failure = proc, proc.pid, ""

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None


def _run_child(store: ResultsStore, sweep_dir: str | Path, rdir: Path, claim: Claim, opts: WorkerOptions,
               stop: threading.Event, out: Outcome, cpus: Sequence[int], threads: int, lock_fd: int,
               warm: WarmWorker | None = None) -> Outcome:
    """Train the run (fresh process, or the warm child), heartbeat while it runs, then record its result or failure."""
    config = _write_config(sweep_dir, rdir, claim)
    fmt = {"python": sys.executable, "config": str(config), "workdir": str(rdir.resolve())}
    cmd = [part.format(**fmt) for part in (opts.command if warm is None else DEFAULT_TRAIN_COMMAND)]
    err_path = rdir / "stderr.log"
    start_err = err_path.stat().st_size if err_path.exists() else 0
    t0 = time.time()
    with open(rdir / "stdout.log", "ab") as out_f, open(err_path, "ab") as err_f:
        task = warm.get() if warm is not None else None
        how = f"warm worker PID {task.pid} (run {task.runs + 1}): " if task is not None else ""
        banner = f"--- attempt {claim.attempt} by {opts.worker} at {time.ctime()}: {how}{shlex.join(cmd)}\n".encode()
        out_f.write(banner)
        err_f.write(banner)
        out_f.flush()
        err_f.flush()
        start_err += len(banner)
        if task is not None:
            task.start_run(fmt["config"], fmt["workdir"], (lock_fd, out_f.fileno(), err_f.fileno()))
        else:
            env = {**os.environ, **thread_env(threads), **opts.env}
            task = _Fresh(subprocess.Popen([*launcher(cpus), *cmd], stdout=out_f, stderr=err_f,
                                           stdin=subprocess.DEVNULL, env=env, cwd=os.getcwd(),
                                           start_new_session=True, pass_fds=(lock_fd,)))
        out.pid = task.pid
        rc, reason, last_beat = None, "", time.time()
        try:
            while rc is None:
                rc = task.wait(min(0.25, opts.heartbeat_s))
                if rc is not None:
                    break
                if stop.is_set():
                    reason = "released"
                elif opts.timeout_s and time.time() - t0 > opts.timeout_s:
                    reason = "timeout"
                elif time.time() - last_beat >= opts.heartbeat_s:
                    last_beat = time.time()
                    reason = "" if store.heartbeat(claim) else "lost"
                if reason:
                    kill_group(task.proc)
                    rc = task.proc.returncode
        except BaseException:  # the store failed under us: never leave an unwatched trainer behind
            kill_group(task.proc)
            if warm is not None:
                warm.finished(healthy=False)
            raise
    out.wall_s = time.time() - t0
    failure = task.failure  # a warm child that failed to start, or broke the protocol
    if warm is not None:  # a killed or dead child is replaced for the next run
        warm.finished(healthy=not reason and not failure and task.proc.poll() is None)
    if reason == "released":
        store.release(claim, opts.worker)
        out.status = "released"
        return out
    if reason == "lost":
        out.status = "lost"
        return out
    summary = read_summary(rdir / "summary.json") if rc in (0, EXIT_DIVERGED) and not failure else None
    if summary is not None and (rc == 0 or diverged_error(summary)):
        summary.setdefault("wall_time_s", out.wall_s)
        summary.setdefault("host", socket.gethostname())
        return _record(store, claim, summary, opts, out)
    tail = (task.startup_log() if failure.startswith(START_FAILURE)
            else read_tail(err_path, start_err, ERROR_TAIL_CHARS))
    if reason == "timeout":
        head = f"timed out after {opts.timeout_s:g} s"
    elif failure:
        head = failure
    elif rc == 0:
        head = "exit code 0 but no valid summary.json"
    else:
        head = f"exit code {rc}" + (f" (signal {-rc})" if rc < 0 else "")
    out.error = f"{head}; attempt {claim.attempt} on {socket.gethostname()}; stderr tail:\n{tail}"
    store.fail(claim, out.error, opts.worker)
    return out


def work(store: ResultsStore, sweep_dir: str | Path, opts: WorkerOptions, stop: threading.Event | None = None,
         log: Callable[[str], None] | None = None, cpus: Sequence[int] = (), threads: int = 0) -> list[Outcome]:
    """The claim-run-record loop: run claimable runs until none is left (and none held elsewhere, if opts.wait)."""
    stop = stop or threading.Event()
    log = log or (lambda msg: None)
    opts.worker = opts.worker or default_worker_id()
    outcomes: list[Outcome] = []
    warm = None
    if opts.warm:
        name = re.sub(r"[^\w.-]", "_", opts.worker)
        warm = WarmWorker(launcher(cpus), {**os.environ, **thread_env(threads), **opts.env},
                          Path(sweep_dir) / "workers" / f"{name}.log", max_runs=opts.worker_max_runs,
                          max_rss_mb=opts.worker_max_rss_mb, log=lambda msg: log(f"[{opts.worker}] {msg}"))
    try:
        _work_loop(store, sweep_dir, opts, stop, log, cpus, threads, warm, outcomes)
    finally:
        if warm is not None:
            warm.close()
    return outcomes


def _work_loop(store: ResultsStore, sweep_dir: str | Path, opts: WorkerOptions, stop: threading.Event,
               log: Callable[[str], None], cpus: Sequence[int], threads: int, warm: WarmWorker | None,
               outcomes: list[Outcome]) -> None:
    while not stop.is_set():
        claim = store.claim(opts.worker, keys=opts.keys, max_attempts=opts.max_attempts,
                            stale_after=opts.stale_after)
        if claim is None:
            if opts.wait and store.counts(opts.keys)["running"] > 0:
                stop.wait(min(opts.heartbeat_s, 1.0))
                continue
            break
        how = " (reclaimed from a dead driver)" if claim.reclaimed else (" (retry)" if claim.retry else "")
        log(f"[{opts.worker}] start {claim.name} attempt {claim.attempt}{how}")
        o = execute(store, sweep_dir, claim, opts, stop, cpus=cpus, threads=threads, warm=warm)
        last = error_summary(o.error)
        log(f"[{opts.worker}] {o.status} {claim.name} in {o.wall_s:.1f} s" + (f": {last}" if last else ""))
        outcomes.append(o)


def run_local(store: ResultsStore, sweep_dir: str | Path, opts: WorkerOptions, parallel: int = 1,
              stop: threading.Event | None = None, log: Callable[[str], None] | None = None) -> list[Outcome]:
    """Run the sweep on this machine with `parallel` workers sharing the cores; return every outcome."""
    stop = stop or threading.Event()
    base = opts.worker or default_worker_id()
    results: list[list[Outcome]] = [[] for _ in range(max(parallel, 1))]
    errors: list[BaseException] = []

    def target(i: int, cpus: list[int], threads: int) -> None:
        wopts = dataclasses.replace(opts, worker=base if parallel <= 1 else f"{base}/{i}")
        try:
            results[i] = work(store, sweep_dir, wopts, stop, log, cpus=cpus, threads=threads)
        except BaseException as e:
            errors.append(e)
            stop.set()

    threads = [threading.Thread(target=target, args=(i, c, t), name=f"sweep-worker-{i}", daemon=True)
               for i, (c, t) in enumerate(cpu_slots(parallel))]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():  # join in slices so the main thread keeps handling signals
            t.join(0.2)
    if errors:
        raise errors[0]
    return [o for r in results for o in r]


# --- Slurm -----------------------------------------------------------------------------------------------------------

def sbatch_script(sweep_dir: str | Path, *, array_size: int, opts: WorkerOptions, job_name: str = "scalekit-sweep",
                  time_limit: str = "", partition: str = "", cpus_per_task: int = 0, gres: str = "",
                  extra: Sequence[str] = ()) -> str:
    """The text of an sbatch array script whose every task runs the claim-run-record loop on the sweep."""
    sdir = Path(sweep_dir).resolve()
    lines = ["#!/bin/bash", f"#SBATCH --job-name={job_name}", f"#SBATCH --array=0-{array_size - 1}",
             f"#SBATCH --output={sdir}/slurm/%x-%A_%a.out", "#SBATCH --ntasks=1"]
    lines += [f"#SBATCH --time={time_limit}"] * bool(time_limit)
    lines += [f"#SBATCH --partition={partition}"] * bool(partition)
    lines += [f"#SBATCH --cpus-per-task={cpus_per_task}"] * bool(cpus_per_task)
    lines += [f"#SBATCH --gres={gres}"] * bool(gres)
    lines += [f"#SBATCH {e}" for e in extra]
    work_cmd = [sys.executable, "-m", "scalekit", "sweep", "work", str(sdir), "--max-attempts",
                str(opts.max_attempts), "--stale-after", f"{opts.stale_after:g}"]
    if opts.timeout_s:
        work_cmd += ["--timeout", f"{opts.timeout_s:g}"]
    if tuple(opts.command) != DEFAULT_TRAIN_COMMAND:
        work_cmd += ["--train-cmd", shlex.join(opts.command)]
    if opts.isolate:
        work_cmd += ["--isolate"]
    if opts.worker_max_runs != WorkerOptions.worker_max_runs:
        work_cmd += ["--worker-max-runs", str(opts.worker_max_runs)]
    env = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(opts.env.items()))
    return ("\n".join(lines) + "\n\nset -euo pipefail\n" + f"cd {shlex.quote(os.getcwd())}\n"
            + "export PYTHONUNBUFFERED=1\n" + env
            + f"exec {shlex.join(work_cmd)} --worker-id \"slurm-${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}\"\n")


def submit_slurm(sweep_dir: str | Path, *, array_size: int, opts: WorkerOptions, dry_run: bool = False,
                 secret_env: dict[str, str] | None = None, **slurm: Any) -> tuple[Path, str | None]:
    """Write `<sweep_dir>/slurm/sweep-<time>.sbatch`; unless dry_run, submit it. Return (script path, job id).
    `secret_env` (e.g. PGPASSWORD) goes to sbatch's environment, which the tasks inherit, never into the script."""
    sdir = Path(sweep_dir)
    (sdir / "slurm").mkdir(parents=True, exist_ok=True)
    path = sdir / "slurm" / f"sweep-{time.strftime('%Y%m%d-%H%M%S')}.sbatch"
    path.write_text(sbatch_script(sdir, array_size=array_size, opts=opts, **slurm))
    path.chmod(0o755)
    if dry_run:
        return path, None
    try:
        res = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True, check=False,
                             env={**os.environ, **(secret_env or {})})
    except FileNotFoundError as e:
        raise RuntimeError(f"sbatch not found: is Slurm installed here? The script is at {path}") from e
    if res.returncode != 0:
        raise RuntimeError(f"sbatch failed ({res.returncode}): {res.stderr.strip()}; the script is at {path}")
    return path, res.stdout.strip().split(";")[0]
