"""GRPO's pieces: group-normalised advantages, rollout rows, the objective's direction, and a sharded step."""

import jax
import numpy as np
import pytest

from scalekit.config import default_config, resolve
from scalekit.model.functional import define, init_params
from scalekit.parallel.mesh import make_mesh
from scalekit.posttrain.grpo import (group_advantages, grpo_objective, jit_grpo, make_grpo_step, rollout_rows,
                                     token_logprobs)
from scalekit.train.optim import make_optimizer
from scalekit.train.state import init_state, state_shardings

VOCAB = 24


def test_group_advantages_are_normalised_within_each_group():
    r = np.array([[1, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 1]], np.float32)
    a = group_advantages(r)
    np.testing.assert_allclose(a.mean(axis=1), 0.0, atol=1e-6)
    np.testing.assert_allclose(a[0], [1, -1, -1, 1], atol=1e-5)
    assert np.all(a[1] == 0)  # everyone agrees: nothing to learn from this group
    assert a[2, 3] > 0 > a[2, 0] and a[2, 3] == pytest.approx(np.sqrt(3), rel=1e-5)


def test_rollout_rows_mask_exactly_the_completion():
    prompts = [[1, 5, 6, 7], [1, 8]]
    comps = np.array([[9, 10, 2, 0, 0], [11, 11, 11, 11, 11]])  # the second never ends: all of it counts
    b = rollout_rows(prompts, comps, eos_id=2, pad_id=0, width=10, row_multiple=4)
    assert b["inputs"].shape == (4, 9) and list(b["row_weight"]) == [1, 1, 0, 0]
    np.testing.assert_array_equal(b["targets"][0][b["mask"][0] > 0], [9, 10, 2])
    np.testing.assert_array_equal(b["targets"][1][b["mask"][1] > 0], [11] * 5)
    np.testing.assert_array_equal(b["inputs"][0][:5], [1, 5, 6, 7, 9])
    assert b["mask"][2:].sum() == 0


def tiny_model(mesh_axes=(8, 1, 1)):
    cfg = default_config()
    cfg.model.update(dict(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2))
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = mesh_axes
    cfg.steps, cfg.optimizer.warmup_steps, cfg.optimizer.lr = 4, 0, 1e-3
    return resolve(cfg, VOCAB)


def rollout_batch(seed=0, rows=8, length=12):
    rng = np.random.default_rng(seed)
    prompts = [[1] + list(rng.integers(3, 19, 4)) for _ in range(rows)]
    comps = rng.integers(3, 19, (rows, 6))
    comps[:, 4] = 2
    b = rollout_rows(prompts, comps, 2, 0, length, 8)
    b["advantages"] = group_advantages(rng.integers(0, 2, (rows // 4, 4)).astype(np.float32)).reshape(-1)
    return b


def test_objective_gradient_raises_good_completions_and_lowers_bad_ones():
    cfg = tiny_model()
    model_def = define(cfg.model)
    params = init_params(cfg.model, 0)
    b = rollout_batch()
    lp = np.asarray(token_logprobs(model_def, params, b["inputs"], b["targets"]))
    b["old_logp"], b["ref_logp"] = lp, lp
    grads = jax.grad(lambda p: grpo_objective(token_logprobs(model_def, p, b["inputs"], b["targets"]), b, 0.2,
                                              0.0)[0])(params)
    stepped = jax.tree.map(lambda p, g: p - 1e-2 * g, params, grads)
    new = np.asarray(token_logprobs(model_def, stepped, b["inputs"], b["targets"]))
    delta = ((new - lp) * b["mask"]).sum(axis=1)
    assert delta[b["advantages"] > 0].mean() > 0 > delta[b["advantages"] < 0].mean()
    # at the reference policy the KL term and its gradient vanish, and the ratio is one
    loss, aux = grpo_objective(jax.numpy.asarray(lp), b, 0.2, 1.0)
    assert float(aux["kl"]) == pytest.approx(0.0, abs=1e-7) and float(aux["ratio"]) == pytest.approx(1.0)


def test_sharded_grpo_step_equals_one_device():
    def run(mesh_axes, devices):
        cfg = tiny_model(mesh_axes)
        mesh = make_mesh(cfg.mesh, devices)
        model_def = define(cfg.model)
        tx = make_optimizer(cfg.optimizer, cfg.steps)
        shard = state_shardings(model_def, tx, mesh)
        state = init_state(model_def, tx, 0, shard)
        step, logprobs = jit_grpo(make_grpo_step(model_def, tx, 0.2, 0.05), model_def, shard, mesh, 1.0)
        out = []
        for i in range(2):
            b = rollout_batch(seed=i)
            b["ref_logp"] = logprobs(state.params, b["inputs"], b["targets"])
            b["old_logp"] = b["ref_logp"]
            state, m = step(state, b)
            out.append({k: float(v) for k, v in m.items()})
        return state, out

    s8, m8 = run((2, 2, 2), None)
    s1, m1 = run((1, 1, 1), jax.devices()[:1])
    q = s8.params["blocks"][0]["attn"]["q_DNH"]
    assert len(q.sharding.device_set) == 8
    for a, b in zip(m8, m1):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-7)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    for a, b in zip(jax.tree.leaves(s8.params), jax.tree.leaves(s1.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
