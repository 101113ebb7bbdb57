"""Optimizer and learning-rate schedules (optax): AdamW with warmup + cosine, warmup-stable-decay, or constant."""

from __future__ import annotations

from typing import Any

import jax
import optax


def schedule(opt_cfg: Any, total_steps: int) -> optax.Schedule:
    """Learning rate as a function of the step.

    cosine: linear warmup to lr, cosine decay to lr * min_lr_ratio at total_steps.
    wsd: linear warmup, flat at lr, then linear decay to lr * min_lr_ratio over the last decay_fraction of steps.
    constant: linear warmup, then flat.
    """
    lr, warmup = float(opt_cfg.lr), int(opt_cfg.warmup_steps)
    final = lr * float(opt_cfg.min_lr_ratio)
    warm = optax.linear_schedule(0.0 if warmup else lr, lr, max(warmup, 1))
    rest = max(total_steps - warmup, 1)
    if opt_cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(lr, rest, alpha=final / lr if lr else 0.0)
    elif opt_cfg.schedule == "wsd":
        decay = max(int(round(total_steps * float(opt_cfg.decay_fraction))), 1)
        stable = max(rest - decay, 0)
        after = optax.join_schedules([optax.constant_schedule(lr), optax.linear_schedule(lr, final, decay)],
                                     [stable])
    elif opt_cfg.schedule == "constant":
        after = optax.constant_schedule(lr)
    else:
        raise ValueError(f"unknown optimizer.schedule {opt_cfg.schedule!r}")
    if not warmup:
        return after
    return optax.join_schedules([warm, after], [warmup])


def _decay_mask(params: Any) -> Any:
    """Weight decay on matrices only (not norm scales)."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(opt_cfg: Any, total_steps: int) -> optax.GradientTransformation:
    """Global-norm clipping (when grad_clip > 0) followed by AdamW on the schedule."""
    parts = []
    if opt_cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(float(opt_cfg.grad_clip)))
    parts.append(optax.adamw(schedule(opt_cfg, total_steps), b1=float(opt_cfg.b1), b2=float(opt_cfg.b2),
                             eps=float(opt_cfg.eps), weight_decay=float(opt_cfg.weight_decay), mask=_decay_mask))
    return optax.chain(*parts)
