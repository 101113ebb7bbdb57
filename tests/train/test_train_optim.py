"""Learning-rate schedules at their landmarks, and the schedule length carried in the optimizer state."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from scalekit.config import default_config
from scalekit.train.optim import make_optimizer, schedule, set_total_steps


def opt(kind, **kw):
    cfg = default_config().optimizer
    cfg.schedule, cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio = kind, 1.0, 10, 0.1
    cfg.update(kw)
    return cfg


def test_cosine_landmarks():
    lr = schedule(opt("cosine"), 110)
    assert lr(0) == 0.0 and lr(5) == pytest.approx(0.5) and lr(10) == pytest.approx(1.0)
    assert lr(60) == pytest.approx(0.55)  # halfway through the decay: final + (lr - final) / 2
    assert lr(110) == pytest.approx(0.1) and lr(500) == pytest.approx(0.1)


def test_wsd_is_flat_then_decays_linearly_over_the_last_fraction():
    lr = schedule(opt("wsd", decay_fraction=0.2), 100)
    assert lr(10) == lr(50) == lr(80) == pytest.approx(1.0)
    assert lr(90) == pytest.approx(0.55) and lr(100) == pytest.approx(0.1)


def test_constant_after_warmup():
    lr = schedule(opt("constant"), 100)
    assert lr(3) == pytest.approx(0.3) and lr(10) == lr(99) == pytest.approx(1.0)


def test_in_step_schedule_matches_host_schedule_and_can_be_extended():
    """The first update moves a parameter by exactly -lr(0) * sign(g) (Adam, no decay, no clip)."""
    cfg = opt("cosine", warmup_steps=0, weight_decay=0.0, grad_clip=0.0, lr=0.5)
    tx = make_optimizer(cfg, 50)
    params = {"w": jnp.ones((2, 2))}
    state = tx.init(params)
    updates, state = jax.jit(tx.update)({"w": jnp.full((2, 2), 3.0)}, state, params)
    np.testing.assert_allclose(np.asarray(updates["w"]), -schedule(cfg, 50)(0), rtol=1e-5)
    longer = set_total_steps(state, 500)
    assert int(optax.tree_utils.tree_get(longer, "total_steps")) == 500
    assert int(optax.tree_utils.tree_get(state, "total_steps")) == 50
