"""Pure train and eval steps, jitted once with explicit shardings and donation of the state."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from scalekit.model.functional import ModelDef, apply
from scalekit.model.transformer import cross_entropy
from scalekit.parallel.mesh import batch_sharding
from scalekit.parallel.rules import constrain
from scalekit.train.state import TrainState

Batch = dict[str, jax.Array]


def _loss_sums(model_def: ModelDef, params: Any, batch: Batch, z_loss: float) -> tuple[jax.Array, dict]:
    logits_BLV = apply(model_def, params, batch["inputs"])
    return cross_entropy(logits_BLV, batch["targets"], batch["weights"], z_loss)


def _split_microbatches(batch: Batch, n: int) -> Batch:
    """[B, L] -> [n, B/n, L], taking rows j*n + m into microbatch m so each device keeps its own rows."""
    def split(x: jax.Array) -> jax.Array:
        b = x.shape[0]
        x = x.reshape(b // n, n, *x.shape[1:]).swapaxes(0, 1)
        return constrain(x, (None, "batch", "length"))
    return {k: split(v) for k, v in batch.items()}


def make_train_step(model_def: ModelDef, tx: optax.GradientTransformation, z_loss: float = 0.0,
                    microbatches: int = 1) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
    """A pure `train_step(state, batch) -> (state, metrics)`.

    The objective is the token-weighted mean cross-entropy (plus z-loss) over the whole batch; with microbatches
    the gradients of the summed objective are accumulated with lax.scan and divided once, so the update equals the
    full-batch update up to float rounding.
    """
    def summed(params: Any, batch: Batch) -> tuple[jax.Array, dict]:
        _, aux = _loss_sums(model_def, params, batch, z_loss)
        return aux["nll_sum"] + z_loss * aux["z_sum"], aux

    grad_fn = jax.value_and_grad(summed, has_aux=True)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
        if microbatches == 1:
            (_, aux), grads = grad_fn(state.params, batch)
        else:
            micro = _split_microbatches(batch, microbatches)
            zeros = jax.tree.map(jnp.zeros_like, state.params)
            init_aux = {"nll_sum": 0.0, "weight_sum": 0.0, "z_sum": 0.0}

            def body(carry: tuple[Any, dict], mb: Batch) -> tuple[tuple[Any, dict], None]:
                acc, acc_aux = carry
                (_, aux), g = grad_fn(state.params, mb)
                return (jax.tree.map(jnp.add, acc, g), jax.tree.map(jnp.add, acc_aux, aux)), None

            (grads, aux), _ = jax.lax.scan(body, (zeros, init_aux), micro)
        denom = jnp.maximum(aux["weight_sum"], 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": aux["nll_sum"] / denom, "z_loss": aux["z_sum"] / denom, "grad_norm": grad_norm,
                   "tokens": aux["weight_sum"]}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def make_eval_step(model_def: ModelDef) -> Callable[[Any, Batch], dict]:
    """A pure `eval_step(params, batch) -> {'nll_sum', 'weight_sum'}` (sums, so batches combine exactly)."""
    def eval_step(params: Any, batch: Batch) -> dict:
        _, aux = _loss_sums(model_def, params, batch, 0.0)
        return {"nll_sum": aux["nll_sum"], "weight_sum": aux["weight_sum"]}
    return eval_step


def jit_steps(train_step: Callable, eval_step: Callable, state_shardings: TrainState, mesh: Mesh,
              ) -> tuple[Callable, Callable]:
    """jit both steps with explicit in/out shardings; the train state is donated."""
    rep = NamedSharding(mesh, PartitionSpec())
    b_shard = batch_sharding(mesh)
    batch_shardings = {"inputs": b_shard, "targets": b_shard, "weights": b_shard}
    train = jax.jit(train_step, in_shardings=(state_shardings, batch_shardings),
                    out_shardings=(state_shardings, rep), donate_argnums=0)
    evaluate = jax.jit(eval_step, in_shardings=(state_shardings.params, batch_shardings), out_shardings=rep)
    return train, evaluate


def make_train_block(train_step: Callable[[TrainState, Batch], tuple[TrainState, dict]],
                     ) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict]]:
    """`train_block(state, batches, active) -> (state, metrics)`: `train_step` over K stacked batches [K, B, L].

    A lax.scan over the K steps; step j runs only where `active[j]` (a lax.cond, so an inactive step costs no
    arithmetic and leaves the state as it is), so one compiled block of K serves every shorter block too: the
    loop pads a block that must end early (at an eval, a save, the last step) with inactive steps. Every metric
    comes back with a leading K axis, one value per step (zeros for inactive steps).
    """
    def train_block(state: TrainState, batches: Batch, active: jax.Array) -> tuple[TrainState, dict]:
        def body(state: TrainState, xs: tuple[Batch, jax.Array]) -> tuple[TrainState, dict]:
            batch, on = xs
            shapes = jax.eval_shape(train_step, state, batch)[1]
            skip = lambda s, _: (s, jax.tree.map(lambda m: jnp.zeros(m.shape, m.dtype), shapes))  # noqa: E731
            return jax.lax.cond(on, train_step, skip, state, batch)
        return jax.lax.scan(body, state, (batches, active))
    return train_block


def make_eval_block(eval_step: Callable[[Any, Batch], dict]) -> Callable[[Any, Batch], dict]:
    """`eval_block(params, batches) -> {'nll_sum': [n], 'weight_sum': [n]}`: `eval_step` over n stacked batches in
    one call (lax.map), one pair of sums per batch, so the host adds them up exactly as it did batch by batch."""
    def eval_block(params: Any, batches: Batch) -> dict:
        return jax.lax.map(lambda batch: eval_step(params, batch), batches)
    return eval_block


def stacked_batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of K stacked batches [K, B, L]: the step axis replicated, each batch as `batch_sharding`."""
    return NamedSharding(mesh, PartitionSpec(None, *batch_sharding(mesh).spec))


def jit_eval_block(eval_block: Callable, state_shardings: TrainState, mesh: Mesh) -> Callable:
    """jit an n-batch eval block with explicit shardings."""
    s = stacked_batch_sharding(mesh)
    return jax.jit(eval_block, in_shardings=(state_shardings.params, {"inputs": s, "targets": s, "weights": s}),
                   out_shardings=NamedSharding(mesh, PartitionSpec()))


def jit_block(train_block: Callable, state_shardings: TrainState, mesh: Mesh) -> Callable:
    """jit a K-step block with explicit shardings; the train state is donated."""
    rep = NamedSharding(mesh, PartitionSpec())
    s = stacked_batch_sharding(mesh)
    return jax.jit(train_block, in_shardings=(state_shardings, {"inputs": s, "targets": s, "weights": s}, rep),
                   out_shardings=(state_shardings, rep), donate_argnums=0)
