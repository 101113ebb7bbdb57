"""The GRPO driver: start from a trained run, sample groups, reward with the verifier, update, evaluate, save.

`run_grpo(cfg, workdir)` takes a full training config (model, data.task/difficulty, optimizer, mesh, seed) with an
`rl` group (`scalekit.posttrain.grpo.default_rl_config`) and `init_from` naming the run to start from. Each step draws
`prompts_per_step` train-split problems (deterministic in the step), samples `group_size` completions each with the
KV-cache decoder, scores them, and applies `updates_per_batch` jitted GRPO updates. It writes metrics.jsonl (train
lines: reward, loss, kl, clip_frac, flops; eval lines: test accuracy), config.json, a checkpoint whose parameters
`init_from` and `scalekit.infer.evaluate.load_model` read, and summary.json.

Compute is counted in training units (`scalekit.infer.accounting`): sampling (forward with the cache, per sample),
the reference and behaviour log-prob passes (forward over the padded rows) and the updates (forward + backward).
"""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from scalekit import config as config_lib
from scalekit.checkpoint import Checkpointer, load_params, restore_target
from scalekit.data import tasks
from scalekit.infer import accounting
from scalekit.infer.decode import Decoder
from scalekit.infer.evaluate import completion_lengths, evaluate
from scalekit.infer.sampling import SamplingConfig
from scalekit.model import counting
from scalekit.model.functional import define
from scalekit.observe.metrics import MetricsRecorder
from scalekit.parallel.mesh import make_mesh
from scalekit.posttrain.grpo import (default_rl_config, group_advantages, jit_grpo, make_grpo_step,
                                     rollout_rows)
from scalekit.train.optim import make_optimizer
from scalekit.train.state import init_state, state_shardings


def _log(msg: str) -> None:
    if jax.process_index() == 0:
        print(f"[scalekit rl] {msg}", file=sys.stderr, flush=True)


def prepare_rl_config(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A resolved copy with the `rl` group completed from its defaults and `steps` = updates in all."""
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    rl = default_rl_config()
    if "rl" in cfg:
        for k, v in cfg.rl.items():
            if k not in rl:
                raise config_lib.ConfigError(f"rl.{k} is not an RL setting; known: {sorted(rl.keys())}")
            rl[k] = type(rl[k])(v) if isinstance(rl[k], float) and isinstance(v, int) else v
    cfg.rl = rl
    if not cfg.init_from:
        raise config_lib.ConfigError("RL starts from a trained model: set --config.init_from=<run dir>")
    if cfg.data.source != "task":
        raise config_lib.ConfigError("RL needs a verifiable task: set --config.data.source=task and data.task")
    for name in ("steps", "group_size", "prompts_per_step", "updates_per_batch", "eval_problems"):
        if int(rl[name]) < 1:
            raise config_lib.ConfigError(f"rl.{name}={rl[name]} must be >= 1")
    cfg.steps = int(rl.steps) * int(rl.updates_per_batch)
    cfg.optimizer.warmup_steps = min(int(cfg.optimizer.warmup_steps), cfg.steps)
    config_lib.validate(cfg)
    tasks.task_spec(cfg.data)
    return config_lib.resolve(cfg, tasks.VOCAB_SIZE)


def run_grpo(cfg: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Run GRPO to cfg.rl.steps; returns the summary written to workdir/summary.json."""
    t_start = time.time()
    cfg = prepare_rl_config(cfg)
    rl, workdir = cfg.rl, Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(cfg.to_json_best_effort(indent=2, sort_keys=True))
    task, _ = tasks.task_spec(cfg.data)
    difficulty = int(cfg.data.difficulty)
    mesh = make_mesh(cfg.mesh)
    model_def = define(cfg.model)
    tx = make_optimizer(cfg.optimizer, cfg.steps, cfg.model)
    shardings = state_shardings(model_def, tx, mesh)
    state = init_state(model_def, tx, cfg.seed, shardings)
    params = load_params(cfg.init_from, restore_target(model_def.abstract_params, shardings.params))
    state = state.replace(params=params)
    ref_params = jax.jit(lambda p: jax.tree.map(lambda x: x.copy(), p), out_shardings=shardings.params)(params)
    step_fn, logprobs_fn = jit_grpo(make_grpo_step(model_def, tx, rl.clip_eps, rl.kl_coef, rl.temperature),
                                    model_def, shardings, mesh, rl.temperature)
    decoder = Decoder(model_def, mesh)
    max_new = int(rl.max_new_tokens) or tasks.max_answer_len(task, difficulty) + 2
    sampling = SamplingConfig(max_new_tokens=max_new, temperature=rl.temperature, top_k=rl.top_k, top_p=rl.top_p,
                              eos_id=tasks.EOS, pad_id=tasks.PAD)
    width = tasks.max_prompt_len(task, difficulty) + max_new
    test = tasks.test_problems(task, difficulty, int(rl.eval_problems))
    m = cfg.model
    recorder = MetricsRecorder(workdir, run_name=cfg.observe.run_name or workdir.resolve().name,
                               process_index=jax.process_index())
    _log(f"GRPO from {cfg.init_from}: {task} difficulty {difficulty}, {rl.prompts_per_step} prompts x "
         f"{rl.group_size} samples, {rl.steps} steps")
    flops = {"sampling": 0.0, "scoring": 0.0, "update": 0.0}
    reward_curve: list[list[float]] = []
    eval_curve: list[list[float]] = []
    last: dict[str, float] = {}

    def run_eval(step: int) -> dict[str, Any]:
        res = evaluate(decoder, state.params, test, n=int(rl.eval_samples), temperature=rl.temperature,
                       ks=(1,), seed=10_000 + step)
        eval_curve.append([step, res["greedy_accuracy"], res.get("sample_accuracy", float("nan"))])
        recorder.log_eval(step, {"eval_loss": 1.0 - res["greedy_accuracy"], "test_accuracy": res["greedy_accuracy"],
                                 "test_sample_accuracy": res.get("sample_accuracy")})
        return res

    first_eval = run_eval(0)
    for step in range(1, int(rl.steps) + 1):
        t0 = time.perf_counter()
        problems = tasks.train_problems(task, difficulty, int(rl.prompts_per_step), cfg.seed,
                                        start=(step - 1) * int(rl.prompts_per_step))
        prompts = [p.prompt_tokens for p in problems for _ in range(int(rl.group_size))]
        prompt_RW, lens_R = tasks.encode_prompts([p for p in problems for _ in range(int(rl.group_size))])
        gen = decoder.generate(state.params, prompt_RW, lens_R,
                               jax.random.fold_in(jax.random.key(cfg.seed), step), sampling)
        rewards_R = np.array([tasks.reward(problems[i // int(rl.group_size)], gen.tokens[i])
                              for i in range(len(prompts))], np.float32)
        adv_R = group_advantages(rewards_R.reshape(len(problems), -1)).reshape(-1)
        batch = rollout_rows(prompts, gen.tokens, tasks.EOS, tasks.PAD, width, decoder.row_multiple)
        adv = np.zeros(batch["row_weight"].shape, np.float32)
        adv[:len(adv_R)] = adv_R
        batch["advantages"] = adv
        batch["old_logp"] = logprobs_fn(state.params, batch["inputs"], batch["targets"])
        batch["ref_logp"] = logprobs_fn(ref_params, batch["inputs"], batch["targets"])
        for _ in range(int(rl.updates_per_batch)):
            state, metrics = step_fn(state, batch)
        metrics = jax.device_get(metrics)
        rows, L = batch["inputs"].shape
        lengths = completion_lengths(gen.tokens, tasks.EOS)
        flops["sampling"] += accounting.samples_flops(m, lens_R, lengths)
        flops["scoring"] += 2 * accounting.forward_flops(m, L, rows * L)
        flops["update"] += int(rl.updates_per_batch) * accounting.train_flops(m, L, rows * L)
        last = {"reward": float(rewards_R.mean()), "loss": float(metrics["loss"]), "kl": float(metrics["kl"]),
                "clip_frac": float(metrics["clip_frac"]), "grad_norm": float(metrics["grad_norm"]),
                "flops": sum(flops.values()), "step_time_s": time.perf_counter() - t0,
                "solved_groups": float(np.mean(rewards_R.reshape(len(problems), -1).max(axis=1))),
                "tokens": float(batch["mask"].sum())}
        reward_curve.append([step, last["reward"]])
        recorder.log_train(step, last)
        if (rl.eval_every and step % int(rl.eval_every) == 0) and step != int(rl.steps):
            run_eval(step)
    final_eval = run_eval(int(rl.steps))
    ckpt = Checkpointer(cfg, workdir)
    ckpt.save(int(rl.steps), state, {"rl_step": int(rl.steps)}, force=True)
    ckpt.close()
    recorder.close()
    n_total = counting.count_params(m, "total")
    summary = {
        "final_loss": last.get("loss", float("nan")), "eval_loss": 1.0 - final_eval["greedy_accuracy"],
        "eval_curve": eval_curve, "reward_curve": reward_curve, "rl_steps": int(rl.steps),
        "initial_test_accuracy": first_eval["greedy_accuracy"], "test_accuracy": final_eval["greedy_accuracy"],
        "initial_test_sample_accuracy": first_eval.get("sample_accuracy"),
        "test_sample_accuracy": final_eval.get("sample_accuracy"),
        "initial_reward": reward_curve[0][1] if reward_curve else None,
        "final_reward": float(np.mean([r for _, r in reward_curve[-5:]])) if reward_curve else None,
        "flops": sum(flops.values()), "flops_breakdown": flops, "tokens": 0, "n_params": n_total,
        "n_params_nonembed": counting.count_params(m, "non_embedding"), "steps": cfg.steps,
        "wall_time_s": time.time() - t_start, "host": socket.gethostname(), "init_from": cfg.init_from,
        "task": task, "difficulty": difficulty,
    }
    if jax.process_index() == 0:
        tmp = workdir / "summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2))
        tmp.replace(workdir / "summary.json")
    _log(f"done: test accuracy {summary['initial_test_accuracy']:.3f} -> {summary['test_accuracy']:.3f}, "
         f"reward {summary['initial_reward']} -> {summary['final_reward']}")
    return summary
