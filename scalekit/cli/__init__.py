"""`scalekit <command> ...`: dispatch to the command's module, each exposing main(argv) -> int."""

from __future__ import annotations

import difflib
import importlib
import sys

COMMANDS = {
    "train": ("scalekit.cli.train", "train a model from a config"),
    "fit": ("scalekit.cli.fit", "fit a scaling law to a CSV/JSONL file or a sweep directory"),
    "sweep": ("scalekit.cli.sweep", "plan, run, inspect and export scaling sweeps"),
    "launch": ("scalekit.cli.launch", "write and submit Slurm or Kubernetes jobs"),
    "preflight": ("scalekit.cli.preflight", "measure device and interconnect throughput, find stragglers"),
    "report": ("scalekit.cli.report", "write an HTML report of a sweep's fits"),
    "rl": ("scalekit.cli.rl", "post-train with GRPO against a task's verifier"),
    "mup-check": ("scalekit.cli.mup_check", "muP coordinate check: activation sizes against width, standard vs muP"),
}


def _usage() -> str:
    lines = ["usage: scalekit <command> [args]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"scalekit: error: unknown command {name!r}{hint}; commands: {', '.join(COMMANDS)} "
              "(see scalekit --help)", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)
