"""`scalekit rl --config FILE[:PRESET] --workdir DIR --config.init_from=RUN [--config.rl.FIELD=VALUE ...]`."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from scalekit.config import ConfigError

USAGE = """usage: scalekit rl --config FILE[:PRESET] --workdir DIR --config.init_from=RUN_DIR [--config.FIELD=VALUE ...]

GRPO with the task's verifier as the reward, starting from a trained run's parameters. The model fields must match
that run's. The task is data.task / data.difficulty (data.source=task); RL settings are the rl.* fields
(scalekit.posttrain.grpo.default_rl_config): steps, group_size, prompts_per_step, updates_per_batch, clip_eps,
kl_coef, temperature, top_k, top_p, max_new_tokens, eval_every, eval_problems, eval_samples. The learning rate is
optimizer.lr (RL wants a smaller one than pre-training, e.g. 1e-4). Example:
  scalekit rl --config configs/train.py:tiny --workdir runs/rl --config.init_from=runs/sft \\
      --config.data.source=task --config.data.task=sort --config.data.difficulty=3 \\
      --config.optimizer.lr=1e-4 --config.optimizer.schedule=constant --config.rl.steps=60
Writes DIR/metrics.jsonl (reward, kl, clip_frac per step; test accuracy per eval), DIR/checkpoints (usable as
init_from) and DIR/summary.json."""


def _strip_json(path: str) -> tuple[str, dict]:
    """A JSON config without its `rl` and `stage` groups (written to a temp file), and the `rl` group."""
    try:
        doc = json.loads(open(path).read())
    except FileNotFoundError:
        raise ConfigError(f"--config {path!r}: file does not exist") from None
    except OSError as e:
        raise ConfigError(f"--config {path!r}: cannot read it ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"--config {path!r}: not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"--config {path!r}: a JSON config must be an object of fields, got {type(doc).__name__}")
    rl_doc = doc.pop("rl", None) or {}
    if not isinstance(rl_doc, dict):
        raise ConfigError(f"--config {path!r}: 'rl' must be an object of RL settings, got {rl_doc!r}")
    doc.pop("stage", None)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(doc, f)
    return f.name, rl_doc


def parse_rl_args(argv: list[str]) -> tuple[Any, list[str]]:
    """(config with an `rl` group, the other args): `--config.rl.*` overrides apply once the group is added."""
    from scalekit.cli.configs import _coerce, apply_override, parse_config_args  # noqa: PLC0415
    from scalekit.posttrain.grpo import default_rl_config  # noqa: PLC0415

    base: list[str] = []
    rl_overrides: list[tuple[str, str]] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config.rl."):
            key, eq, value = arg[len("--config."):].partition("=")
            if not eq:
                if i + 1 >= len(argv):
                    raise ConfigError(f"{arg} needs a value")
                value, i = argv[i + 1], i + 1
            rl_overrides.append((key, value))
        else:
            base.append(arg)
        i += 1
    rl_doc: dict = {}
    temp = ""
    for j, arg in enumerate(base):
        if arg == "--config" and j + 1 < len(base) and base[j + 1].endswith(".json"):
            temp, rl_doc = _strip_json(base[j + 1])
            base[j + 1] = temp
        elif arg.startswith("--config=") and arg.endswith(".json"):
            temp, rl_doc = _strip_json(arg.split("=", 1)[1])
            base[j] = "--config=" + temp
    try:
        cfg, rest = parse_config_args(base)
    finally:
        if temp:
            os.unlink(temp)
    cfg.rl = default_rl_config()
    for k, v in rl_doc.items():
        if k not in cfg.rl:
            raise ConfigError(f"rl.{k} is not an RL setting; known: {sorted(cfg.rl.keys())}")
        cfg.rl[k] = _coerce(f"rl.{k}", cfg.rl[k], v)
    for key, value in rl_overrides:
        apply_override(cfg, key, value)
    return cfg, rest


def check_init_from(init_from: str) -> None:
    """Refuse a local init_from that is missing or holds no checkpoint steps, before any model is built."""
    from scalekit.checkpoint import CheckpointError, resolve_checkpoint_dir  # noqa: PLC0415
    if "://" in init_from:
        return
    directory, step = resolve_checkpoint_dir(init_from)
    if step is not None:
        return
    if not os.path.isdir(directory):
        raise CheckpointError(f"init_from={init_from!r} is not a directory; point it at a trained run's workdir "
                              "(the one with checkpoints/)")
    if not any(name.isdigit() for name in os.listdir(directory)):
        raise CheckpointError(f"init_from={init_from!r}: no checkpoint steps in {directory}; point it at a trained "
                              "run's workdir (the one with checkpoints/)")


def main(argv: list[str]) -> int:
    """Run GRPO from the command line; exit code 2 for a bad config, data or init_from checkpoint."""
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    from scalekit.checkpoint import CheckpointError  # noqa: PLC0415
    from scalekit.cli.train import OneLineParser, UsageError, check_workdir, fail  # noqa: PLC0415
    from scalekit.data.errors import DataError  # noqa: PLC0415
    from scalekit.posttrain.rl import prepare_rl_config, run_grpo  # noqa: PLC0415
    parser = OneLineParser(prog="scalekit rl", usage=USAGE)
    parser.add_argument("--workdir", required=True)
    try:
        cfg, rest = parse_rl_args(argv)
        args = parser.parse_args(rest)
        prepare_rl_config(cfg)  # again in run_grpo(); here so a bad config is refused before anything is built
        check_workdir(args.workdir)
        check_init_from(cfg.init_from)
    except (ConfigError, UsageError, CheckpointError, DataError) as e:
        return fail("scalekit rl", e)
    try:
        summary = run_grpo(cfg, args.workdir)
    except (ConfigError, CheckpointError, DataError) as e:  # e.g. init_from with no usable checkpoint: one line
        return fail("scalekit rl", e)
    print(f"test accuracy {summary['initial_test_accuracy']:.3f} -> {summary['test_accuracy']:.3f}; metrics: "
          f"{os.path.join(args.workdir, 'metrics.jsonl')}")
    return 0
