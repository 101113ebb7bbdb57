"""Group-relative policy optimisation (GRPO, Shao et al. 2024): the pure parts, jitted and sharded like training.

For each prompt, G completions are sampled from the current policy and scored by the verifier (reward 1 or 0). A
completion's advantage is its reward normalised within its group, (r - mean(r)) / (std(r) + eps): no value network,
and groups where every sample agrees contribute nothing. The objective per completion token t is PPO's clipped
surrogate minus a KL penalty to the reference (initial) policy, k3 estimator (Schulman):

    min(rho_t A, clip(rho_t, 1 - eps, 1 + eps) A) - beta (exp(ref_t - logp_t) - (ref_t - logp_t) - 1),
    rho_t = exp(logp_t - old_t),

averaged over each completion's tokens, then over completions (the GRPO paper's normalisation), and maximised. With
one update per rollout batch rho = 1 and the clip never binds; `updates_per_batch` > 1 reuses a batch and clipping
keeps the policy near the one that sampled it. Log-probabilities use logits / temperature, the distribution sampled.

Rows are laid out for the model's ordinary causal forward pass: `^prompt completion` from column 0, padded at the
end; `mask` marks the targets that are completion tokens (up to and including the end token).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from scalekit.model.functional import ModelDef, apply
from scalekit.parallel.mesh import batch_sharding
from scalekit.parallel.rules import logical_to_mesh
from scalekit.train.state import TrainState

Batch = dict[str, jax.Array]


def default_rl_config() -> ml_collections.ConfigDict:
    """The `rl` config group (added to a training config by `scalekit rl` and the studies)."""
    r = ml_collections.ConfigDict()
    r.steps = 40  # rollout-and-update iterations
    r.group_size = 8  # completions sampled per prompt (G)
    r.prompts_per_step = 16  # prompts per rollout batch
    r.updates_per_batch = 1  # optimizer updates on each rollout batch (the ratio clip binds when > 1)
    r.clip_eps = 0.2
    r.kl_coef = 0.02  # beta: weight of the KL penalty to the reference (initial) policy; 0 = none
    r.temperature = 1.0
    r.top_k = 0
    r.top_p = 1.0
    r.max_new_tokens = 0  # 0 = the task's longest answer + 2
    r.eval_every = 10  # steps between test evaluations (0 = only at the end)
    r.eval_problems = 128
    r.eval_samples = 8  # samples per test problem at `temperature` (sampled accuracy = mean reward on test)
    return r


def group_advantages(rewards_PG: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """(r - group mean) / (group std + eps), per row of [prompts, group]; zero where the whole group agrees."""
    r = np.asarray(rewards_PG, np.float64)
    centred = r - r.mean(axis=1, keepdims=True)
    return (centred / (r.std(axis=1, keepdims=True) + eps)).astype(np.float32)


def rollout_rows(prompts: Sequence[Sequence[int]], completions_RG: np.ndarray, eos_id: int, pad_id: int,
                 width: int, row_multiple: int = 1) -> dict[str, np.ndarray]:
    """Training rows from (prompt, completion) pairs: inputs/targets [R', width - 1], mask of completion targets,
    and row_weight (0 for rows added to reach a multiple of `row_multiple`)."""
    R, G = completions_RG.shape
    Rp = R + (-R) % row_multiple
    rows = np.full((Rp, width), pad_id, np.int32)
    mask = np.zeros((Rp, width - 1), np.float32)
    for i, (prompt, comp) in enumerate(zip(prompts, completions_RG)):
        comp = [int(t) for t in comp]
        if eos_id in comp:
            comp = comp[:comp.index(eos_id) + 1]
        seq = list(prompt) + comp
        if len(seq) > width:
            raise ValueError(f"row of {len(seq)} tokens does not fit width {width}")
        rows[i, :len(seq)] = seq
        mask[i, len(prompt) - 1:len(seq) - 1] = 1.0  # target j is token j + 1
    weight = np.zeros((Rp,), np.float32)
    weight[:R] = 1.0
    return {"inputs": rows[:, :-1], "targets": rows[:, 1:], "mask": mask, "row_weight": weight}


def token_logprobs(model_def: ModelDef, params: Any, inputs_BL: jax.Array, targets_BL: jax.Array,
                   temperature: float = 1.0) -> jax.Array:
    """log pi(target | prefix) for every position [B, L], from logits / temperature."""
    logits_BLV = apply(model_def, params, inputs_BL) / temperature
    logz_BL = jax.nn.logsumexp(logits_BLV, axis=-1)
    return jnp.take_along_axis(logits_BLV, targets_BL[..., None], axis=-1)[..., 0] - logz_BL


def grpo_objective(logp_BL: jax.Array, batch: Batch, clip_eps: float, kl_coef: float,
                   ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The loss to minimise (minus the clipped surrogate plus the KL penalty) and its diagnostics."""
    mask_BL, adv_B1 = batch["mask"], batch["advantages"][:, None]
    ratio_BL = jnp.exp(logp_BL - batch["old_logp"])
    surrogate_BL = jnp.minimum(ratio_BL * adv_B1, jnp.clip(ratio_BL, 1.0 - clip_eps, 1.0 + clip_eps) * adv_B1)
    log_r_BL = batch["ref_logp"] - logp_BL
    kl_BL = jnp.exp(log_r_BL) - log_r_BL - 1.0
    per_token_BL = -(surrogate_BL - kl_coef * kl_BL)
    n_tok_B = jnp.maximum(mask_BL.sum(axis=1), 1.0)
    row_w_B = batch["row_weight"]
    rows = jnp.maximum(row_w_B.sum(), 1.0)
    per_row = lambda x_BL: (x_BL * mask_BL).sum(axis=1) / n_tok_B  # noqa: E731
    loss = (per_row(per_token_BL) * row_w_B).sum() / rows
    clipped_BL = (jnp.abs(ratio_BL - 1.0) > clip_eps).astype(jnp.float32)
    aux = {"kl": (per_row(kl_BL) * row_w_B).sum() / rows, "clip_frac": (per_row(clipped_BL) * row_w_B).sum() / rows,
           "ratio": (per_row(ratio_BL) * row_w_B).sum() / rows}
    return loss, aux


def make_grpo_step(model_def: ModelDef, tx: optax.GradientTransformation, clip_eps: float, kl_coef: float,
                   temperature: float = 1.0) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
    """A pure `grpo_step(state, batch) -> (state, metrics)`; batch has inputs, targets, mask, row_weight,
    advantages, old_logp and ref_logp."""
    def loss_fn(params: Any, batch: Batch) -> tuple[jax.Array, dict]:
        logp_BL = token_logprobs(model_def, params, batch["inputs"], batch["targets"], temperature)
        return grpo_objective(logp_BL, batch, clip_eps, kl_coef)

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return step


def batch_shardings(mesh: Mesh) -> dict[str, NamedSharding]:
    """Rows over the batch axes for every field of a GRPO batch."""
    rows2d, rows = batch_sharding(mesh), NamedSharding(mesh, logical_to_mesh(("batch",)))
    return {"inputs": rows2d, "targets": rows2d, "mask": rows2d, "old_logp": rows2d, "ref_logp": rows2d,
            "row_weight": rows, "advantages": rows}


def jit_grpo(step: Callable, model_def: ModelDef, state_shardings: TrainState, mesh: Mesh, temperature: float,
             ) -> tuple[Callable, Callable]:
    """(jitted step with the state donated, jitted `logprobs(params, inputs, targets)`), explicitly sharded."""
    rep = NamedSharding(mesh, PartitionSpec())
    shard = batch_shardings(mesh)
    train = jax.jit(step, in_shardings=(state_shardings, shard), out_shardings=(state_shardings, rep),
                    donate_argnums=0)
    logprobs = jax.jit(lambda p, x, y: token_logprobs(model_def, p, x, y, temperature),
                       in_shardings=(state_shardings.params, shard["inputs"], shard["targets"]),
                       out_shardings=shard["old_logp"])
    return train, logprobs
