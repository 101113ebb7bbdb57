"""`scalekit train --config configs/train.py:<preset> --workdir DIR [--config.field=value ...]`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from scalekit.config import ConfigError

USAGE = """usage: scalekit train --config FILE[:PRESET] --workdir DIR [--config.FIELD=VALUE ...]

Train a model; resumes from DIR's checkpoints when there are any. Examples:
  scalekit train --config configs/train.py:tiny --workdir runs/tiny
  scalekit train --config configs/train.py:s --workdir runs/s --config.steps=500 --config.mesh.fsdp=2
Metrics go to DIR/metrics.jsonl; the final summary to DIR/summary.json ("status": "done" or "diverged").
One trainer per DIR: a second one exits at once, naming the PID of the one holding DIR/trainer.lock.

Exit codes:
  0  trained to the last step (or preempted by SIGTERM/SIGINT after saving a checkpoint)
  2  bad config, data or checkpoint (including another run's checkpoint in DIR); nothing trained
  3  diverged: the loss or gradient norm became non-finite; summary.json says "status": "diverged" and the step
  4  DIR is in use by another live trainer"""

EXIT_CONFIG = 2
EXIT_DIVERGED = 3
EXIT_BUSY = 4


class UsageError(Exception):
    """A bad command line: printed as one line `<prog>: error: ...`, exit code 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error raises UsageError (one line) instead of printing the usage block."""

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


def one_line(text: object) -> str:
    """Any message as one line (newlines and runs of spaces collapsed)."""
    return " ".join(str(text).split())


def fail(prog: str, message: object) -> int:
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr)
    return EXIT_CONFIG


def check_workdir(workdir: str, flag: str = "--workdir") -> None:
    """Refuse a workdir that is a file, lies under a file, or cannot be written; raise ConfigError naming it."""
    if not workdir.strip():
        raise ConfigError(f"{flag} is empty; give a directory, e.g. {flag} runs/tiny")
    path = Path(workdir).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {workdir}: is a file, not a directory; give a new or existing directory")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError(f"{flag} {workdir}: {probe} is a file, so the directory cannot be created; give another "
                          "path")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {workdir}: {probe} is not writable; give a directory you can write to")


_CACHE_DIR: str | None = None  # the persistent compilation cache this process uses (set once)


def use_compilation_cache(directory: str) -> None:
    """Point JAX's persistent compilation cache at `directory`, once per process.

    JAX reads the directory at its first compile, so a warm sweep worker that trains many runs keeps the first
    directory it was given; a later, different one is ignored with a note on stderr.
    """
    global _CACHE_DIR
    directory = os.path.expanduser(directory)
    if _CACHE_DIR is not None:
        if directory != _CACHE_DIR:
            print(f"[scalekit] compilation_cache_dir={directory!r} ignored: this process already caches compiles "
                  f"in {_CACHE_DIR!r}", file=sys.stderr, flush=True)
        return
    import jax
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    _CACHE_DIR = directory


def main(argv: list[str], *, in_process: bool = False) -> int:
    """Run `scalekit train ARGV`; return its exit code (see USAGE). Other exceptions propagate (exit code 1).

    in_process: called by a warm sweep worker that trains many runs in one process, one after another: no
    multi-host initialisation (a warm worker is a single process), and the compilation cache is set only once.
    """
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    from scalekit.cli.configs import parse_config_args
    from scalekit.config import validate
    parser = OneLineParser(prog="scalekit train", usage=USAGE)
    parser.add_argument("--workdir", required=True, help="where metrics, checkpoints and the summary go")
    try:
        cfg, rest = parse_config_args(argv)
        args = parser.parse_args(rest)
        validate(cfg)  # again in train(); here so that a bad config is refused before the workdir is touched
        check_workdir(args.workdir)
    except (ConfigError, UsageError) as e:
        return fail("scalekit train", e)

    initialize = None
    if not in_process:  # multi-host initialisation must come before any other JAX call
        from scalekit.parallel.distributed import initialize
        initialize(cfg.distributed)
    if cfg.compilation_cache_dir:
        use_compilation_cache(cfg.compilation_cache_dir)

    from scalekit.checkpoint import CheckpointError
    from scalekit.data.errors import DataError
    from scalekit.train.guards import WorkdirBusy
    from scalekit.train.loop import train
    try:
        summary = train(cfg, args.workdir)
    except (ConfigError, DataError, CheckpointError, WorkdirBusy) as e:
        if initialize is not None:
            from scalekit.parallel.distributed import report_failure
            report_failure(f"config error: {e}")  # peers exit instead of waiting for this process
        fail("scalekit train", e)
        return EXIT_BUSY if isinstance(e, WorkdirBusy) else EXIT_CONFIG
    except BaseException as e:
        if initialize is not None:
            from scalekit.parallel.distributed import report_failure
            report_failure(f"{type(e).__name__}: {e}")
        raise
    if summary.get("status") == "diverged":  # the trainer has said so on stderr, in one line
        return EXIT_DIVERGED
    if summary.get("preempted"):
        print(f"preempted at step {summary['step']}; checkpoint saved in {summary['checkpoint']}")
    else:
        print(f"metrics: {os.path.join(args.workdir, 'metrics.jsonl')}")
    return 0
