"""One stage of a post-training study, run by the sweep driver: `python -m scalekit.posttrain.stage --config RUN.json
--workdir DIR`.

RUN.json is a full scalekit config plus a `stage` group (`default_stage_config`) and, for RL, an `rl` group. A stage
trains (`kind="train"`: pre-training on `task:lm` rows, or supervised fine-tuning on `task` rows with `init_from`,
through `scalekit.train.loop.train`; or `kind="grpo"` through `scalekit.posttrain.rl.run_grpo`), then samples the
trained model on the task's test problems: greedy accuracy, and `eval_samples` samples per problem at
`eval_temperature` with each problem's correct count (for pass@k and coverage fits) and majority@k.

summary.json is the trainer's summary plus `stage`, `eval` and the compute chain: `chain_flops` maps each stage label
(pretrain, sft, grpo) to the FLOPs spent on it by this run and the runs it started from (read from the `init_from`
run's summary), and `train_flops_total` is their sum, so inference compute can be added in the same units.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import ml_collections

STAGE_KINDS = ("train", "grpo")
STAGE_LABELS = ("pretrain", "sft", "grpo")


def default_stage_config() -> ml_collections.ConfigDict:
    """The `stage` group: what the run is and how it is evaluated."""
    s = ml_collections.ConfigDict()
    s.kind = "train"  # "train" (scalekit train) | "grpo"
    s.label = "pretrain"  # what its compute counts as: "pretrain" | "sft" | "grpo"
    s.eval_problems = 128  # test problems sampled after training
    s.eval_samples = 64  # samples per test problem (n of pass@k); 0 = greedy only
    s.eval_temperature = 1.0
    return s


def split_config(doc: dict[str, Any]) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict,
                                               dict[str, Any] | None]:
    """(scalekit config, stage group, rl group or None) from a run's JSON document."""
    doc = json.loads(json.dumps(doc))
    stage = default_stage_config()
    stage.update(doc.pop("stage", {}))
    rl = doc.pop("rl", None)
    from scalekit.cli.configs import load_config_file  # noqa: PLC0415 - the one JSON-config loader
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(doc, f)
    try:
        cfg = load_config_file(f.name)
    finally:
        os.unlink(f.name)
    if stage.kind not in STAGE_KINDS or stage.label not in STAGE_LABELS:
        raise ValueError(f"stage.kind={stage.kind!r} must be one of {STAGE_KINDS} and stage.label={stage.label!r} "
                         f"one of {STAGE_LABELS}")
    return cfg, stage, rl


def upstream_chain(init_from: str) -> dict[str, float]:
    """The compute chain of the run a stage starts from ({} when it starts from scratch or has no summary)."""
    if not init_from:
        return {}
    path = Path(init_from) / "summary.json"
    if not path.exists():
        return {}
    return dict(json.loads(path.read_text()).get("chain_flops") or {})


def run_stage(doc: dict[str, Any], workdir: str | Path) -> dict[str, Any]:
    """Train (or run GRPO), evaluate on test problems, write and return the extended summary."""
    import jax  # noqa: PLC0415 - after argument parsing, so --help is fast

    cfg, stage, rl = split_config(doc)
    workdir = Path(workdir)
    if cfg.compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(cfg.compilation_cache_dir))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    from scalekit.data import tasks  # noqa: PLC0415
    from scalekit.infer.evaluate import evaluate, load_model  # noqa: PLC0415

    done_train = workdir / "train_summary.json"
    if done_train.exists():  # trained before; only the evaluation was lost
        summary = json.loads(done_train.read_text())
    elif stage.kind == "grpo":
        from scalekit.posttrain.rl import run_grpo  # noqa: PLC0415
        cfg.rl = ml_collections.ConfigDict(rl or {})
        summary = run_grpo(cfg, workdir)
    else:
        from scalekit.train.loop import train  # noqa: PLC0415
        summary = train(cfg, workdir)
        if summary.get("preempted") or summary.get("status") == "diverged":
            return summary            # a diverged stage is not evaluated: its summary.json says diverged
    if (workdir / "summary.json").exists():
        (workdir / "summary.json").replace(done_train)  # not a finished stage until it is evaluated
    else:
        done_train.write_text(json.dumps(summary))
    task, _ = tasks.task_spec(cfg.data)
    problems = tasks.test_problems(task, int(cfg.data.difficulty), int(stage.eval_problems))
    _, _, decoder, params = load_model(workdir)
    n = int(stage.eval_samples)
    result = evaluate(decoder, params, problems, n=n, temperature=float(stage.eval_temperature), seed=cfg.seed)
    chain = upstream_chain(cfg.init_from)
    chain[stage.label] = chain.get(stage.label, 0.0) + float(summary.get("flops") or 0.0)
    summary.update({"stage": stage.to_dict(), "eval": result, "chain_flops": chain,
                    "train_flops_total": float(sum(chain.values())), "task": task,
                    "difficulty": int(cfg.data.difficulty), "init_from": cfg.init_from})
    if jax.process_index() == 0:
        tmp = workdir / "summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2))
        tmp.replace(workdir / "summary.json")
    return summary


def main(argv: list[str] | None = None) -> int:
    """Entry point for the sweep driver's command template."""
    ap = argparse.ArgumentParser(prog="python -m scalekit.posttrain.stage", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="JSON: a scalekit config with `stage` (and `rl`) groups")
    ap.add_argument("--workdir", required=True)
    args = ap.parse_args(argv)
    run_stage(json.loads(Path(args.config).read_text()), args.workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
