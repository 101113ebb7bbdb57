"""sbatch scripts for `scalekit train` on Slurm: one task per GPU, environment presets, requeue on preemption.

`render_sbatch(job, train_args)` writes a self-contained script: the #SBATCH header, the environment preset from
deploy/slurm/<preset>.env copied in (XLA, NCCL and EFA settings you can edit in the script or the preset), a free
coordinator port chosen on the batch host, and `srun python -m scalekit train ...`. Every task finds its place in
the job from SLURM_PROCID/SLURM_LOCALID (scalekit.parallel.distributed). `render_array(job, commands)` is the same
for a job array whose task i runs commands[i] (the sweep driver's multi-node runs). `submit` calls sbatch.

Process-to-GPU mapping (mode "per_gpu", the default): --ntasks-per-node equals --gpus-per-node and every task sees
all GPUs of its node; task SLURM_LOCALID drives GPU SLURM_LOCALID. No --gpus-per-task binding: hiding the other
GPUs from a task stops NCCL from using NVLink peer-to-peer paths between tasks on some clusters. Mode "per_node":
one task per node drives all the node's GPUs.

Preemption: the job is requeueable (--requeue) and asks for SIGUSR1 `signal_s` seconds before its time limit
(--signal=B:USR1@...). On SIGUSR1 (or a preemption's SIGTERM) the script sends SIGTERM to the training step
(which saves a checkpoint and exits cleanly), waits for it, and requeues the job; the next start resumes from the
checkpoint in the run's workdir.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from scalekit.launch import checks

PRESET_DIR = Path(__file__).resolve().parents[2] / "deploy" / "slurm"
PORT_CMD = 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'


@dataclasses.dataclass
class SlurmJob:
    """What to ask Slurm for; every field maps to an #SBATCH line or a line of the script."""

    nodes: int = 1
    gpus_per_node: int = 0  # 0 = no GPU request (CPU runs, the cpu-test preset)
    ntasks_per_node: int = 0  # 0 = gpus_per_node in per_gpu mode (at least 1), 1 in per_node mode
    mode: str = "per_gpu"  # "per_gpu" | "per_node"
    partition: str = ""
    time: str = ""  # Slurm time limit, e.g. "04:00:00"
    account: str = ""
    qos: str = ""
    job_name: str = "scalekit"
    preset: str = ""  # a name in deploy/slurm/ (h100, aws-efa, gpu, cpu-test) or a path to a .env file
    cpus_per_task: int = 0
    mem: str = ""
    log_dir: str = ""  # where slurm-*.out goes ("" = the run's --workdir, else the current directory)
    chdir: str = ""  # the job's working directory ("" = the current directory)
    python: str = sys.executable
    requeue: bool = True
    signal_s: int = 120  # SIGUSR1 this many seconds before the time limit
    preflight: bool = False  # run `scalekit preflight` as a first step and keep its report in the log dir
    preflight_args: Sequence[str] = ()  # e.g. ("--size", "8192", "--fail-on-stragglers")
    extra_sbatch: Sequence[str] = ()  # raw directives, e.g. ("--constraint=h100", "--reservation=big")
    env: dict[str, str] = dataclasses.field(default_factory=dict)

    def tasks_per_node(self) -> int:
        """Processes per node: one per GPU (per_gpu) or one (per_node); an explicit value wins."""
        if self.ntasks_per_node:
            return self.ntasks_per_node
        return max(self.gpus_per_node, 1) if self.mode == "per_gpu" else 1

    def validate(self) -> None:
        """Raise ValueError (naming the flag) for a value that cannot go into the script as given, and for
        combinations that would map processes to GPUs wrongly."""
        if self.mode not in ("per_gpu", "per_node"):
            raise ValueError(f"--mode {self.mode!r} must be 'per_gpu' or 'per_node'")
        checks.int_range("--nodes", self.nodes, 1, 100_000)
        checks.int_range("--gpus-per-node", self.gpus_per_node, 0, 1024)
        checks.int_range("--ntasks-per-node", self.ntasks_per_node, 0, 4096)
        checks.int_range("--cpus-per-task", self.cpus_per_task, 0, 100_000)
        checks.int_range("--signal-seconds", self.signal_s, 1, 65535)
        checks.matches("--name", self.job_name, checks.SLURM_NAME,
                       "a job name is 1-128 letters, digits, '_', '.', '+' or '-', starting with a letter, digit "
                       "or '_'")
        if self.time:
            checks.slurm_time("--time", self.time)
        for flag, value in (("--partition", self.partition), ("--account", self.account), ("--qos", self.qos)):
            if value:
                checks.matches(flag, value, checks.SLURM_LIST,
                               "letters, digits, '_', '.', '@', '+', '-' (and ',' between several names)")
        if self.mem:
            checks.matches("--mem", self.mem, checks.SLURM_MEM, "a size in MB or with a unit, e.g. 64G or 512000")
        checks.no_control("--workdir (the log directory)", self.log_dir)
        checks.no_space("--workdir (the log directory)", str(Path(self.log_dir or ".").resolve()))
        checks.no_space("the job's working directory (--chdir, default the current one)",
                        str(Path(self.chdir or os.getcwd()).resolve()))
        checks.no_control("--python", self.python)
        checks.no_control("--preset", self.preset)
        checks.no_control_all("--preflight-args", self.preflight_args)
        for d in self.extra_sbatch:
            checks.no_control("--sbatch", d)
            if not d.startswith("-"):
                raise ValueError(f"--sbatch {d!r} is not an sbatch option: give it as --sbatch=--constraint=h100")
        checks.env_vars("--env", self.env)
        t = self.tasks_per_node()
        if self.mode == "per_gpu" and self.gpus_per_node and t != self.gpus_per_node:
            raise ValueError(f"per_gpu mode runs one task per GPU: --ntasks-per-node={t} differs from "
                             f"--gpus-per-node={self.gpus_per_node} (use --mode per_node for one process per node)")
        if self.mode == "per_node" and t != 1:
            raise ValueError(f"per_node mode runs one task per node, not {t}")


def preset_path(preset: str) -> Path:
    """The preset file: a path as given, or deploy/slurm/<name>.env."""
    p = Path(preset)
    if p.suffix == ".env" and p.exists():
        return p
    p = PRESET_DIR / f"{preset}.env"
    if not p.exists():
        names = sorted(f.stem for f in PRESET_DIR.glob("*.env"))
        raise ValueError(f"unknown preset {preset!r}: choose one of {names} or give a path to a .env file")
    return p


def load_preset(preset: str) -> tuple[list[str], str]:
    """(#SBATCH directives, the rest of the file) of a preset; ([], "") for none."""
    if not preset:
        return [], ""
    path = preset_path(preset)
    directives, body = [], [f"# --- environment preset {preset!r}, from {path} (edit here or there)"]
    for line in path.read_text().splitlines():
        (directives if line.startswith("#SBATCH") else body).append(line)
    return directives, "\n".join(body).rstrip() + "\n"


def workdir_of(argv: Sequence[str]) -> str:
    """The value of --workdir in a train command line ("" if absent)."""
    for i, a in enumerate(argv):
        if a == "--workdir" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--workdir="):
            return a.split("=", 1)[1]
    return ""


def train_argv(job: SlurmJob, train_args: Sequence[str]) -> list[str]:
    """`python -m scalekit train <args>`, telling the trainer the process-to-GPU mode the job was sized for."""
    argv = [job.python, "-m", "scalekit", "train", *train_args]
    if not any(a.startswith("--config.distributed.mode") for a in train_args):
        argv.append(f"--config.distributed.mode={job.mode}")
    return argv


def _header(job: SlurmJob, log_name: str, extra: Sequence[str] = ()) -> list[str]:
    d = [f"--job-name={job.job_name}", f"--nodes={job.nodes}", f"--ntasks-per-node={job.tasks_per_node()}"]
    d += [f"--gpus-per-node={job.gpus_per_node}"] * bool(job.gpus_per_node)
    d += [f"--cpus-per-task={job.cpus_per_task}"] * bool(job.cpus_per_task)
    d += [f"--mem={job.mem}"] * bool(job.mem)
    d += [f"--partition={job.partition}"] * bool(job.partition)
    d += [f"--time={job.time}"] * bool(job.time)
    d += [f"--account={job.account}"] * bool(job.account)
    d += [f"--qos={job.qos}"] * bool(job.qos)
    d += [*extra, f"--output={Path(job.log_dir or '.').resolve() / log_name}", "--open-mode=append",
          f"--chdir={Path(job.chdir or os.getcwd()).resolve()}"]
    if job.requeue:
        d += ["--requeue", f"--signal=B:USR1@{job.signal_s}"]
    preset_directives, _ = load_preset(job.preset)
    lines = [f"#SBATCH {x}" for x in d] + preset_directives + [f"#SBATCH {x}" for x in job.extra_sbatch]
    return lines


def _body(job: SlurmJob, command_setup: str, log_dir: str) -> str:
    _, preset_text = load_preset(job.preset)
    py = shlex.quote(job.python)
    env = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(job.env.items()))
    srun = "srun --kill-on-bad-exit=1"
    preflight = ""
    if job.preflight:
        report = shlex.quote(str(Path(log_dir).resolve())) + '"/preflight-${SLURM_JOB_ID}.json"'
        preflight = (f"# Preflight: every process measures its devices and the interconnect before the long run.\n"
                     f"{srun} {shlex.join([job.python, '-m', 'scalekit', 'preflight', *job.preflight_args])} "
                     f"--out {report} "
                     "|| echo 'scalekit: preflight failed'\n")
    requeue = ('if [ "$REQUEUE" = 1 ]; then\n  scontrol requeue "${SLURM_JOB_ID}" && echo "scalekit: requeued"\n'
               '  exit 0\nfi\n') if job.requeue else ""
    return f"""
set -uo pipefail
echo "scalekit: job ${{SLURM_JOB_ID}} restart ${{SLURM_RESTART_COUNT:-0}} on ${{SLURM_JOB_NODELIST}} at $(date -Is)"

{preset_text}
# --- run environment
export PYTHONUNBUFFERED=1
# Coordinator port for jax.distributed, chosen free on the batch host (the first node, where process 0 runs).
export SCALEKIT_COORDINATOR_PORT=${{SCALEKIT_COORDINATOR_PORT:-$({py} -c {shlex.quote(PORT_CMD)})}}
{env}
{command_setup}
{preflight}
# Time limit: SIGUSR1 ({job.signal_s} s before it) -> SIGTERM to the training tasks (scancel signals the steps, not
# srun, which would kill them), which save a checkpoint and exit; then requeue, and the next start resumes from it.
# Preemption and scancel send SIGTERM to the tasks themselves (Slurm requeues a preempted job when
# PreemptMode=REQUEUE): the script only notes it and requeues nothing.
on_usr1() {{
  echo "scalekit: caught USR1 at $(date -Is): asking the training tasks to checkpoint and stop, then requeueing"
  REQUEUE=1
  scancel --signal=TERM "${{SLURM_JOB_ID}}"
}}
REQUEUE=0
trap on_usr1 USR1
trap 'echo "scalekit: caught TERM at $(date -Is) (preemption or scancel)"' TERM
{srun} "${{CMD[@]}}" &
STEP_PID=$!
while true; do
  wait "$STEP_PID"; RC=$?
  kill -0 "$STEP_PID" 2>/dev/null || break  # wait was interrupted by a signal: keep waiting for the step
done
echo "scalekit: job step exited with $RC at $(date -Is)"
{requeue}exit "$RC"
"""


def render_sbatch(job: SlurmJob, train_args: Sequence[str], note: str = "") -> str:
    """The sbatch script that runs `scalekit train <train_args>` over the job's nodes and tasks (note: a header
    comment, e.g. the command line that asked for it)."""
    checks.no_control_all("a training argument after --", train_args)
    log_dir = job.log_dir or workdir_of(train_args) or "."
    job = dataclasses.replace(job, log_dir=log_dir)
    job.validate()
    note = checks.printable(note)
    setup = f"CMD=({shlex.join(train_argv(job, train_args))})"
    head = ["#!/bin/bash", f"# Written by scalekit.launch.slurm at {time.strftime('%Y-%m-%d %H:%M:%S')}"
            + (f" for: {note}" if note else "."), "# Edit freely; submit again with `sbatch <this file>`."]
    return "\n".join(head + _header(job, "slurm-%x-%j.out")) + "\n" + _body(job, setup, log_dir)


def render_array(job: SlurmJob, commands: Sequence[Sequence[str]], max_parallel: int = 0) -> str:
    """An sbatch job array: task i runs commands[i] (a full argv) with srun over the job's nodes and tasks.

    This is the entry point for the sweep driver's multi-node runs: each command is usually
    `train_argv(job, ["--config", cfg_json, "--workdir", run_dir])`.
    """
    if not commands:
        raise ValueError("a job array needs at least one command")
    for c in commands:
        checks.no_control_all("a job array command", c)
    log_dir = job.log_dir or "."
    job = dataclasses.replace(job, log_dir=log_dir)
    job.validate()
    if max_parallel < 0:
        raise ValueError(f"max_parallel={max_parallel} must be >= 0 (0: no limit)")
    array = f"--array=0-{len(commands) - 1}" + (f"%{max_parallel}" if max_parallel else "")
    cases = "\n".join(f"  {i}) CMD=({shlex.join(c)}) ;;" for i, c in enumerate(commands))
    setup = (f'case "${{SLURM_ARRAY_TASK_ID}}" in\n{cases}\n'
             '  *) echo "scalekit: no command for array task ${SLURM_ARRAY_TASK_ID}"; exit 2 ;;\nesac')
    head = ["#!/bin/bash", f"# Written by scalekit.launch.slurm.render_array at {time.strftime('%Y-%m-%d %H:%M:%S')}."]
    return "\n".join(head + _header(job, "slurm-%x-%A_%a.out", [array])) + "\n" + _body(job, setup, log_dir)


def write_script(text: str, path: str | os.PathLike) -> Path:
    """Write an sbatch script (and its log directory's parent) and make it executable."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    p.chmod(0o755)
    for line in text.splitlines():
        if line.startswith("#SBATCH --output="):
            Path(line.split("=", 1)[1]).parent.mkdir(parents=True, exist_ok=True)  # Slurm will not create it
    return p


def submit(script: str | os.PathLike, wait: bool = False, env: dict[str, str] | None = None) -> str:
    """Submit with sbatch and return the job id; with wait, block until the job ends (sbatch --wait)."""
    argv = ["sbatch", "--parsable"] + ["--wait"] * wait + [str(script)]
    try:
        res = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    except FileNotFoundError as e:
        raise RuntimeError(f"sbatch not found: is this a Slurm login node? The script is at {script}") from e
    job_id = res.stdout.strip().split(";")[0]
    if res.returncode != 0 and not (wait and job_id):
        raise RuntimeError(f"sbatch failed ({res.returncode}): {res.stderr.strip()}; the script is at {script}")
    if wait and res.returncode != 0:
        raise RuntimeError(f"job {job_id} failed (sbatch --wait exit {res.returncode}); see its log")
    return job_id


def submit_array(job: SlurmJob, commands: Sequence[Sequence[str]], script_path: str | os.PathLike,
                 max_parallel: int = 0, env: dict[str, str] | None = None) -> str:
    """Write and submit an array job (see render_array); returns the array's job id. For the sweep driver."""
    return submit(write_script(render_array(job, commands, max_parallel), script_path), env=env)
