"""Post-training end to end on one pre-trained model: SFT lifts test accuracy, GRPO lifts the verifier's reward.

The module pre-trains a tiny model once (packed `sort` problems, a short budget, so it is right only some of the
time) through the study stage runner, then fine-tunes it with `scalekit train` (init_from, answer-masked loss) and
with `scalekit rl` (GRPO).
"""

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "configs"))

from train import get_config  # noqa: E402

from scalekit.posttrain.stage import run_stage  # noqa: E402

TASK, DIFFICULTY = "sort", 3


def base_config(task: str, steps: int, seq_len: int, lr: float):
    cfg = get_config("tiny")
    cfg.steps, cfg.peak_flops, cfg.progress, cfg.eval_every, cfg.eval_batches = steps, 1e11, False, 0, 1
    cfg.data.source, cfg.data.task, cfg.data.difficulty = "task", task, DIFFICULTY
    cfg.data.seq_len, cfg.data.batch_size = seq_len, 32
    cfg.optimizer.lr, cfg.optimizer.warmup_steps = lr, min(10, steps)
    cfg.checkpoint.async_save = False
    return cfg


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny model pre-trained on packed problems (loss on every token), evaluated on 128 test problems."""
    workdir = tmp_path_factory.mktemp("pretrain")
    doc = base_config(f"{TASK}:lm", 70, 48, 3e-3).to_dict()
    doc["stage"] = {"kind": "train", "label": "pretrain", "eval_problems": 128, "eval_samples": 8}
    summary = run_stage(doc, workdir)
    return workdir, summary


def test_pretrained_model_is_sometimes_right(pretrained):
    _, summary = pretrained
    ev = summary["eval"]
    assert 0.02 < ev["sample_accuracy"] < 0.8
    assert summary["chain_flops"] == {"pretrain": summary["flops"]} and summary["flops"] > 0
    assert len(ev["correct_counts"]) == 128 and max(ev["correct_counts"]) <= 8
    assert ev["pass_at_k"]["8"] >= ev["pass_at_k"]["1"]


def test_sft_lifts_test_accuracy_well_above_the_pretrained_model(pretrained, tmp_path):
    base_dir, base = pretrained
    cfg = base_config(TASK, 120, 14, 3e-3)
    cfg.init_from = str(base_dir)
    doc = cfg.to_dict()
    doc["stage"] = {"kind": "train", "label": "sft", "eval_problems": 128, "eval_samples": 0}
    sft = run_stage(doc, tmp_path / "sft")
    before, after = base["eval"]["greedy_accuracy"], sft["eval"]["greedy_accuracy"]
    assert after > 0.6 and after > before + 0.3, (before, after)
    # the fine-tuning loss is on answer tokens only: it starts where the pre-trained model is and falls
    curve = [json.loads(line) for line in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in curve if r["kind"] == "train"]
    assert losses[-1] < 0.5 * losses[0]
    assert set(sft["chain_flops"]) == {"pretrain", "sft"}
    assert sft["train_flops_total"] == pytest.approx(base["flops"] + sft["flops"])


def test_grpo_improves_the_verifier_reward(pretrained, tmp_path):
    from scalekit.cli.rl import main as rl_main

    base_dir, _ = pretrained
    workdir = tmp_path / "grpo"
    argv = ["--config", str(REPO / "configs" / "train.py") + ":tiny", "--workdir", str(workdir),
            f"--config.init_from={base_dir}", "--config.data.source=task", f"--config.data.task={TASK}",
            f"--config.data.difficulty={DIFFICULTY}", "--config.optimizer.lr=3e-4",
            "--config.optimizer.schedule=constant", "--config.optimizer.warmup_steps=0", "--config.peak_flops=1e11",
            "--config.rl.steps=30", "--config.rl.prompts_per_step=16", "--config.rl.group_size=8",
            "--config.rl.eval_every=0", "--config.rl.eval_samples=8", "--config.checkpoint.async_save=false"]
    assert rl_main(argv) == 0
    summary = json.loads((workdir / "summary.json").read_text())
    before, after = summary["initial_test_sample_accuracy"], summary["test_sample_accuracy"]
    assert after > before + 0.05, (before, after)
    rewards = [r for _, r in summary["reward_curve"]]
    assert sum(rewards[-10:]) > sum(rewards[:10])
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_lines = [r for r in lines if r["kind"] == "train"]
    assert len(train_lines) == 30 and all(r["kl"] >= 0 for r in train_lines)
    assert summary["flops"] > 0 and summary["flops_breakdown"]["sampling"] > 0
    # its checkpoint starts the next stage like any other run's
    from scalekit.infer.evaluate import load_model
    cfg, _, _, params = load_model(workdir)
    assert cfg.rl.steps == 30 and params["embed_VD"].shape[0] == cfg.model.vocab_size
