"""Sampling a model on verifiable problems and scoring it: accuracy, pass@k, majority vote, and what it cost.

`sample_problems` draws n completions per problem (greedy when temperature is 0) in batches of rows, verifies each
with the task's verifier, and counts the inference FLOPs spent (`scalekit.infer.accounting`, per sample: prompt plus
the tokens it generated up to and including its end token). `evaluate` turns that into the numbers the studies
record. `load_model` opens a run directory (its config.json and latest checkpoint) for sampling.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from scalekit.checkpoint import load_params, restore_target
from scalekit.data import tasks
from scalekit.infer import accounting, metrics
from scalekit.infer.decode import Decoder
from scalekit.infer.sampling import SamplingConfig
from scalekit.model.functional import ModelDef, define


@dataclass
class SampleResult:
    """n completions per problem: tokens [P, n, G], parsed answers, verifier verdicts [P, n], lengths and FLOPs."""

    problems: list[tasks.Problem]
    tokens: np.ndarray
    logprobs: np.ndarray
    answers: list[list[str | None]]
    correct: np.ndarray
    lengths: np.ndarray  # generated tokens per sample, end token included
    flops: float

    @property
    def n(self) -> int:
        return int(self.correct.shape[1])


def completion_lengths(tokens_NG: np.ndarray, eos_id: int = tasks.EOS) -> np.ndarray:
    """Tokens generated per row up to and including the first end token (all G when there is none)."""
    tokens_NG = np.asarray(tokens_NG)
    has = (tokens_NG == eos_id).any(axis=-1)
    first = np.argmax(tokens_NG == eos_id, axis=-1)
    return np.where(has, first + 1, tokens_NG.shape[-1])


def task_sampling(problem: tasks.Problem, temperature: float, top_k: int = 0, top_p: float = 1.0,
                  slack: int = 2) -> SamplingConfig:
    """Sampling settings for a task: stop at the end token, room for the longest answer plus `slack` tokens."""
    return SamplingConfig(max_new_tokens=tasks.max_answer_len(problem.task, problem.difficulty) + slack,
                          temperature=temperature, top_k=top_k, top_p=top_p, eos_id=tasks.EOS, pad_id=tasks.PAD)


def sample_problems(decoder: Decoder, params: Any, problems: list[tasks.Problem], n: int, sampling: SamplingConfig,
                    seed: int = 0, max_rows: int = 4096) -> SampleResult:
    """n samples for each problem (rows = problems x n, decoded `max_rows` at a time), verified and costed."""
    width = max(len(p.prompt_tokens) for p in problems)
    prompt_PW, lens_P = tasks.encode_prompts(problems, width)
    prompt_RW, lens_R = np.repeat(prompt_PW, n, axis=0), np.repeat(lens_P, n)
    rows = len(prompt_RW)
    chunk = max(1, max_rows // max(decoder.row_multiple, 1)) * max(decoder.row_multiple, 1)
    toks, logps = [], []
    for i, start in enumerate(range(0, rows, chunk)):
        gen = decoder.generate(params, prompt_RW[start:start + chunk], lens_R[start:start + chunk],
                               jax.random.fold_in(jax.random.key(seed), i), sampling)
        toks.append(gen.tokens)
        logps.append(gen.logprobs)
    tokens_RG, logps_RG = np.concatenate(toks), np.concatenate(logps)
    G = tokens_RG.shape[1]
    lengths_R = completion_lengths(tokens_RG)
    answers = [[tasks.parse_answer(tokens_RG[p * n + j], problems[p]) for j in range(n)] for p in range(len(problems))]
    correct = np.array([[a == problems[p].answer for a in row] for p, row in enumerate(answers)], bool)
    flops = accounting.samples_flops(decoder.model_def.model_cfg, lens_R, lengths_R)
    return SampleResult(problems, tokens_RG.reshape(len(problems), n, G), logps_RG.reshape(len(problems), n, G),
                        answers, correct, lengths_R.reshape(len(problems), n), flops)


def evaluate(decoder: Decoder, params: Any, problems: list[tasks.Problem], n: int = 1, temperature: float = 1.0,
             ks: tuple[int, ...] | None = None, seed: int = 0, greedy: bool = True) -> dict[str, Any]:
    """Greedy accuracy, and with n samples at `temperature`: pass@k, majority@k, mean sampled accuracy, FLOPs.

    Keys: greedy_accuracy, greedy_flops_per_problem, sample_accuracy (mean correct samples = pass@1), pass_at_k
    {k: coverage}, majority_at_k {k: accuracy}, flops_per_sample (mean over samples), malformed (share of samples
    with no well-formed answer), correct_counts (correct samples per problem, for pass@k at any k <= n), n,
    n_problems, temperature.
    """
    out: dict[str, Any] = {"n": int(n), "n_problems": len(problems), "temperature": float(temperature)}
    if greedy:
        g = sample_problems(decoder, params, problems, 1, task_sampling(problems[0], 0.0), seed)
        out["greedy_accuracy"] = float(g.correct.mean())
        out["greedy_flops_per_problem"] = g.flops / len(problems)
    if n > 0:
        s = sample_problems(decoder, params, problems, n, task_sampling(problems[0], temperature), seed + 1)
        ks = ks or tuple(k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k <= n)
        truths = [p.answer for p in problems]
        out["sample_accuracy"] = float(s.correct.mean())
        out["pass_at_k"] = {str(k): v for k, v in metrics.coverage_curve(s.correct, ks).items()}
        out["majority_at_k"] = {str(k): metrics.majority_vote_accuracy(s.answers, truths, k) for k in ks}
        out["flops_per_sample"] = s.flops / (len(problems) * n)
        out["malformed"] = float(np.mean([[a is None for a in row] for row in s.answers]))
        out["correct_counts"] = s.correct.sum(axis=1).astype(int).tolist()
    return out


def load_model(run_dir: str | Path, decoder_mesh: Any = None) -> tuple[ml_collections.ConfigDict, ModelDef,
                                                                        Decoder, Any]:
    """(resolved config, model definition, decoder, parameters on the decoder's mesh) of a finished run."""
    run_dir = Path(run_dir)
    cfg = ml_collections.ConfigDict(json.loads((run_dir / "config.json").read_text()))
    model_def = define(cfg.model)
    decoder = Decoder(model_def, decoder_mesh)
    params = load_params(str(run_dir), restore_target(model_def.abstract_params, decoder.param_shardings))
    return cfg, model_def, decoder, params
