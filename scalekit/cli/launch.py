"""`scalekit launch slurm|k8s ... -- <train args>`: write (and submit) a multi-node training job."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

USAGE = """usage:
  scalekit launch slurm --nodes N --gpus-per-node G [--partition P] [--time T] [--preset h100|aws-efa|gpu|cpu-test]
                        [--mode per_gpu|per_node] [--dry-run] [--wait] [--preflight] -- <train args>
  scalekit launch k8s   --nodes N --gpus-per-node G [--image I] [--queue Q] [--name NAME] [--dry-run]
                        [--out FILE] -- <train args>

<train args> are those of `scalekit train`, e.g. --config configs/train.py:s --workdir /shared/runs/s.
Slurm: writes <workdir>/launch-<name>.sbatch and submits it (--dry-run prints it instead).
Kubernetes: writes a JobSet manifest (deploy/k8s/<name>.yaml by default) for `kubectl apply -f`; --dry-run prints it.
Presets are editable files in deploy/slurm/*.env (XLA, NCCL, EFA settings)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument gives one line `<prog>: error: ...` and exit code 2 (no usage block)."""

    def error(self, message: str):  # type: ignore[override]
        raise _BadArgument(message)


class _BadArgument(Exception):
    """A bad argument of `scalekit launch ...`: printed as one line, exit code 2."""


def _fail(prog: str, message: str) -> int:
    from scalekit.launch import checks
    print(f"{prog}: error: {checks.printable(str(message))}", file=sys.stderr)
    return 2


def _split(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node (0: a CPU run)")
    p.add_argument("--mode", choices=("per_gpu", "per_node"), default=None,
                   help="one process per GPU or per node (default: per_gpu on Slurm, per_node on Kubernetes)")
    p.add_argument("--name", default="scalekit", help="job name")
    p.add_argument("--preset", default="", help="environment preset: a name in deploy/slurm/ or a .env file")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra environment (repeat)")
    p.add_argument("--preflight", action="store_true", help="run `scalekit preflight` before training")
    p.add_argument("--preflight-args", default="", help="arguments for the preflight, e.g. '--size 8192'")
    p.add_argument("--dry-run", action="store_true", help="print the script/manifest instead of submitting")


def _env(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise _BadArgument(f"--env {pair!r} must be KEY=VALUE")
        k, v = pair.split("=", 1)
        out[k] = v
    return out


def _words(flag: str, text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as e:
        raise _BadArgument(f"{flag} {text!r} is not valid shell words ({e}): close its quotes") from None


def _slurm(argv: list[str], train_args: list[str]) -> int:
    prog = "scalekit launch slurm"
    try:
        return _slurm_main(argv, train_args)
    except (_BadArgument, ValueError) as e:
        return _fail(prog, str(e))


def _slurm_main(argv: list[str], train_args: list[str]) -> int:
    from scalekit.launch import slurm
    p = _Parser(prog="scalekit launch slurm", description=USAGE,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    p.add_argument("--ntasks-per-node", type=int, default=0, help="default: --gpus-per-node (per_gpu) or 1")
    p.add_argument("--partition", default="")
    p.add_argument("--time", default="", help="time limit, e.g. 04:00:00")
    p.add_argument("--account", default="")
    p.add_argument("--qos", default="")
    p.add_argument("--cpus-per-task", type=int, default=0)
    p.add_argument("--mem", default="")
    p.add_argument("--sbatch", action="append", default=[], metavar="DIRECTIVE",
                   help="extra #SBATCH directive, e.g. --sbatch=--constraint=h100 (repeat)")
    p.add_argument("--python", default=sys.executable, help="python on the compute nodes (default: this one)")
    p.add_argument("--no-requeue", action="store_true", help="do not requeue at the time limit")
    p.add_argument("--signal-seconds", type=int, default=120, help="SIGUSR1 this long before the time limit")
    p.add_argument("--script", default="", help="where to write the script (default: <workdir>/launch-<name>.sbatch)")
    p.add_argument("--wait", action="store_true", help="block until the job ends (sbatch --wait)")
    a = p.parse_args(argv)
    job = slurm.SlurmJob(nodes=a.nodes, gpus_per_node=a.gpus_per_node, ntasks_per_node=a.ntasks_per_node,
                         mode=a.mode or "per_gpu", partition=a.partition, time=a.time, account=a.account, qos=a.qos,
                         job_name=a.name, preset=a.preset, cpus_per_task=a.cpus_per_task, mem=a.mem,
                         python=a.python, requeue=not a.no_requeue, signal_s=a.signal_seconds,
                         preflight=a.preflight, preflight_args=_words("--preflight-args", a.preflight_args),
                         extra_sbatch=tuple(a.sbatch), env=_env(a.env))
    if not slurm.workdir_of(train_args):
        raise _BadArgument("give the run a --workdir after `--` (checkpoints there make requeue resume)")
    if a.script:
        from scalekit.launch import checks
        checks.no_control("--script", a.script)
    asked = [x for x in argv if x not in ("--dry-run", "--wait")]
    command = shlex.join(["scalekit", "launch", "slurm", *asked, "--", *train_args])
    text = slurm.render_sbatch(job, train_args, note=command if len(command) < 400 else command[:397] + "...")
    if a.dry_run:
        print(text, end="")
        return 0
    path = a.script or str(Path(slurm.workdir_of(train_args)) / f"launch-{a.name}.sbatch")
    try:
        slurm.write_script(text, path)
    except OSError as e:
        print(f"scalekit launch slurm: error: cannot write the script {path} ({e}): give --script a writable path",
              file=sys.stderr)
        return 1
    try:
        job_id = slurm.submit(path, wait=a.wait)
    except RuntimeError as e:
        print(f"scalekit launch slurm: error: {e}", file=sys.stderr)
        return 1
    print(f"submitted job {job_id}: {path}")
    return 0


def _k8s(argv: list[str], train_args: list[str]) -> int:
    prog = "scalekit launch k8s"
    try:
        return _k8s_main(argv, train_args)
    except (_BadArgument, ValueError) as e:
        return _fail(prog, str(e))


def _k8s_main(argv: list[str], train_args: list[str]) -> int:
    from scalekit.launch import k8s
    p = _Parser(prog="scalekit launch k8s", description=USAGE,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    p.add_argument("--image", default=k8s.DEFAULT_IMAGE, help="container image with scalekit installed")
    p.add_argument("--queue", default="", help="Kueue LocalQueue name (adds kueue.x-k8s.io/queue-name)")
    p.add_argument("--namespace", default="")
    p.add_argument("--port", type=int, default=k8s.DEFAULT_PORT, help="coordinator port")
    p.add_argument("--max-restarts", type=int, default=3, help="JobSet restarts before giving up (resume each time)")
    p.add_argument("--pvc", default="", metavar="CLAIM[:MOUNT]", help="mount a PersistentVolumeClaim (workdirs)")
    p.add_argument("--cpu", default="", help="CPU request per pod, e.g. 32")
    p.add_argument("--memory", default="", help="memory request per pod, e.g. 512Gi")
    p.add_argument("--out", default="", help="manifest file (default: deploy/k8s/<name>.yaml)")
    a = p.parse_args(argv)
    spec = k8s.K8sJob(name=a.name, nodes=a.nodes, gpus_per_node=a.gpus_per_node, mode=a.mode or "per_node",
                      image=a.image, queue=a.queue, namespace=a.namespace, port=a.port, max_restarts=a.max_restarts,
                      pvc=a.pvc, cpu=a.cpu, memory=a.memory, preset=a.preset, preflight=a.preflight,
                      preflight_args=_words("--preflight-args", a.preflight_args), env=_env(a.env))
    if a.out:
        from scalekit.launch import checks
        checks.no_control("--out", a.out)
    text = k8s.render_manifest(spec, train_args)
    if a.dry_run:
        print(text, end="")
        return 0
    out = Path(a.out or k8s.DEPLOY_DIR / f"{a.name}.yaml")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    except OSError as e:
        print(f"scalekit launch k8s: error: cannot write {out} ({e}): give --out a writable path", file=sys.stderr)
        return 1
    print(f"wrote {out}; submit with: kubectl apply -f {out}")
    return 0


def main(argv: list[str]) -> int:
    """Dispatch `scalekit launch slurm|k8s`."""
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    target, rest = argv[0], argv[1:]
    options, train_args = _split(rest)
    if target == "slurm":
        return _slurm(options, train_args)
    if target in ("k8s", "kubernetes"):
        return _k8s(options, train_args)
    return _fail("scalekit launch", f"unknown target {target!r}: use `scalekit launch slurm ...` or "
                 "`scalekit launch k8s ...` (`scalekit launch --help` shows both)")
