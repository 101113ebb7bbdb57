"""Optimizer and learning-rate schedules: AdamW (optax) with warmup + cosine, warmup-stable-decay, or constant, and
muP's per-parameter learning rates.

The schedule's total step count lives in the optimizer state as an array rather than being baked into the compiled
step, so runs that differ only in length (every run of an IsoFLOP sweep) share one compiled step and the persistent
compilation cache hits. `set_total_steps` changes it after a restore (extending a run).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from scalekit.model import mup


def _lr(opt_cfg: Any, count: Any, total: Any, xp: Any) -> Any:
    """Learning rate at update `count` (0-based) of `total`; `xp` is numpy (host) or jax.numpy (in the step).

    cosine: linear warmup to lr, cosine decay to lr * min_lr_ratio at `total`.
    wsd: linear warmup, flat at lr, then linear decay to lr * min_lr_ratio over the last decay_fraction of steps.
    constant: linear warmup, then flat.
    """
    lr, final = float(opt_cfg.lr), float(opt_cfg.lr) * float(opt_cfg.min_lr_ratio)
    warmup = float(opt_cfg.warmup_steps)
    count = xp.asarray(count, dtype=xp.float32)
    total = xp.asarray(total, dtype=xp.float32)
    warm = lr * xp.minimum(count / max(warmup, 1.0), 1.0) if warmup else xp.asarray(lr, xp.float32)
    if opt_cfg.schedule == "constant":
        return warm
    if opt_cfg.schedule == "cosine":
        frac = xp.clip((count - warmup) / xp.maximum(total - warmup, 1.0), 0.0, 1.0)
        after = final + (lr - final) * 0.5 * (1.0 + xp.cos(np.pi * frac))
    elif opt_cfg.schedule == "wsd":
        decay = xp.maximum(xp.round(total * float(opt_cfg.decay_fraction)), 1.0)
        frac = xp.clip((count - (total - decay)) / decay, 0.0, 1.0)
        after = lr + (final - lr) * frac
    else:
        raise ValueError(f"unknown optimizer.schedule {opt_cfg.schedule!r}")
    return xp.where(count < warmup, warm, after)


def schedule(opt_cfg: Any, total_steps: int) -> Any:
    """Host-side learning rate as a function of the (0-based) update count, for logging."""
    return lambda count: float(_lr(opt_cfg, count, total_steps, np))


class ScheduleState(NamedTuple):
    count: jax.Array  # int32: updates applied so far
    total_steps: jax.Array  # int32: the schedule's length


def scale_by_schedule(opt_cfg: Any, total_steps: int) -> optax.GradientTransformation:
    """Multiply updates by -lr(count, total_steps), with total_steps carried in the state."""
    def init(params: Any) -> ScheduleState:
        del params
        return ScheduleState(jnp.zeros((), jnp.int32), jnp.asarray(total_steps, jnp.int32))

    def update(updates: Any, state: ScheduleState, params: Any = None) -> tuple[Any, ScheduleState]:
        del params
        lr = _lr(opt_cfg, state.count, state.total_steps, jnp)
        updates = jax.tree.map(lambda u: -lr.astype(u.dtype) * u, updates)
        return updates, ScheduleState(state.count + 1, state.total_steps)

    return optax.GradientTransformation(init, update)


def set_total_steps(opt_state: Any, total_steps: int) -> Any:
    """A copy of `opt_state` whose schedule runs to `total_steps` (keeps the sharding of the old value)."""
    def fix(x: Any) -> Any:
        if isinstance(x, ScheduleState):
            return x._replace(total_steps=jnp.full_like(x.total_steps, total_steps))
        return x
    return jax.tree.map(fix, opt_state, is_leaf=lambda x: isinstance(x, ScheduleState))


def _decay_mask(params: Any) -> Any:
    """Weight decay on matrices only (not norm scales)."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def mup_learning_rates(model_cfg: Any) -> optax.GradientTransformation:
    """muP's per-parameter Adam learning rates (model/mup.py): hidden matrices' updates times 1/width_mult, the
    embedding, readout and norm scales unchanged; an optax.multi_transform over the parameters' labels."""
    hidden = mup.scales(model_cfg).hidden_lr
    return optax.multi_transform({"hidden": optax.scale(hidden), "vector": optax.identity()},
                                 lambda params: jax.tree_util.tree_map_with_path(lambda p, _: mup.param_label(p),
                                                                                 params))


def make_optimizer(opt_cfg: Any, total_steps: int, model_cfg: Any = None) -> optax.GradientTransformation:
    """Global-norm clipping (when grad_clip > 0), then AdamW: Adam moments, decoupled weight decay, muP's
    per-parameter learning rates (when model_cfg's parametrization is 'mup'), the schedule."""
    parts = []
    if opt_cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(float(opt_cfg.grad_clip)))
    parts += [optax.scale_by_adam(b1=float(opt_cfg.b1), b2=float(opt_cfg.b2), eps=float(opt_cfg.eps)),
              optax.add_decayed_weights(float(opt_cfg.weight_decay), mask=_decay_mask)]
    if model_cfg is not None and model_cfg.get("parametrization", "standard") == "mup":
        parts.append(mup_learning_rates(model_cfg))  # after the decay: it scales with the rate, as in MuAdamW
    parts.append(scale_by_schedule(opt_cfg, total_steps))
    return optax.chain(*parts)
