"""Parameters are sharded as the rule table says, and a step on a 2x2x2 mesh equals the same step on one device."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from scalekit.config import ConfigError, default_config, resolve
from scalekit.model.functional import define
from scalekit.parallel.mesh import check_batch, make_mesh, mesh_shape
from scalekit.parallel.rules import DEFAULT_RULES, logical_to_mesh
from scalekit.train.optim import make_optimizer
from scalekit.train.state import init_state, state_shardings
from scalekit.train.step import jit_steps, make_eval_step, make_train_step


def tiny_cfg(data=2, fsdp=2, tensor=2, **model):
    cfg = default_config()
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = data, fsdp, tensor
    cfg.model.update(dict(d_model=32, n_layers=2, n_heads=4, **model))
    cfg.steps = 10
    cfg.optimizer.warmup_steps = 2
    return resolve(cfg, 64)


def build(cfg, devices=None):
    mesh = make_mesh(cfg.mesh, devices)
    model_def = define(cfg.model)
    tx = make_optimizer(cfg.optimizer, cfg.steps)
    shardings = state_shardings(model_def, tx, mesh)
    state = init_state(model_def, tx, cfg.seed, shardings)
    train, evaluate = jit_steps(make_train_step(model_def, tx, cfg.model.z_loss, cfg.optimizer.microbatches),
                                make_eval_step(model_def), shardings, mesh)
    return mesh, state, train, evaluate


def random_batch(batch=8, length=16, vocab=64, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (batch, length + 1)).astype(np.int32)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": np.ones((batch, length), np.float32)}


def test_params_are_sharded_by_the_rule_table():
    assert jax.device_count() == 8
    cfg = tiny_cfg()
    _, state, _, _ = build(cfg)
    rules = dict(DEFAULT_RULES)
    q = state.params["blocks"][0]["attn"]["q_DNH"]  # (embed, heads, head_dim)
    assert q.sharding.spec == P(rules["embed"], rules["heads"], rules["head_dim"]) == P("fsdp", "tensor", None)
    up = state.params["blocks"][1]["mlp"]["up_DF"]  # (embed, mlp)
    assert up.sharding.spec == P("fsdp", "tensor")
    # Each device holds a quarter of the (d_model x d_ff) matrix: fsdp=2 x tensor=2.
    assert up.shape == (32, cfg.model.d_ff)
    assert {s.data.shape for s in up.addressable_shards} == {(16, cfg.model.d_ff // 2)}
    embed = state.params["embed_VD"]
    assert embed.sharding.spec == P("tensor", "fsdp")
    norm = state.params["final_norm"]["scale"]
    assert norm.sharding.spec == P(None) and norm.sharding.is_fully_replicated
    # Adam moments follow their parameters.
    mu = state.opt_state[1].mu["blocks"][1]["mlp"]["up_DF"]
    assert mu.sharding.spec == up.sharding.spec


@pytest.mark.parametrize("microbatches", [1, 2])
def test_step_on_2x2x2_mesh_equals_one_device(microbatches):
    """float32: same loss and same updated parameters (tight tolerance) on a (2 data, 2 fsdp, 2 tensor) mesh."""
    cfg8 = tiny_cfg()
    cfg8.optimizer.microbatches = microbatches
    cfg1 = tiny_cfg(1, 1, 1)
    _, s8, train8, _ = build(cfg8)
    _, s1, train1, _ = build(cfg1, jax.devices()[:1])
    assert len(s8.params["embed_VD"].sharding.device_set) == 8
    for i in range(3):
        batch = random_batch(seed=i)
        s8, m8 = train8(s8, batch)
        s1, m1 = train1(s1, batch)
        np.testing.assert_allclose(float(m8["loss"]), float(m1["loss"]), rtol=1e-6)
        np.testing.assert_allclose(float(m8["grad_norm"]), float(m1["grad_norm"]), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(s8.params), jax.tree.leaves(s1.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_microbatching_matches_full_batch():
    _, full, train_full, _ = build(tiny_cfg(8, 1, 1))
    cfg = tiny_cfg(8, 1, 1)
    cfg.optimizer.microbatches = 2
    cfg.data.batch_size = 16
    _, micro, train_micro, _ = build(cfg)
    batch = random_batch(batch=16)
    full, mf = train_full(full, batch)
    micro, mm = train_micro(micro, batch)
    np.testing.assert_allclose(float(mf["loss"]), float(mm["loss"]), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(micro.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_keeps_float32_params_and_close_loss():
    _, s32, t32, _ = build(tiny_cfg())
    _, s16, t16, _ = build(tiny_cfg(dtype="bfloat16"))
    batch = random_batch()
    s32, m32 = t32(s32, batch)
    s16, m16 = t16(s16, batch)
    assert s16.params["embed_VD"].dtype == np.float32
    assert abs(float(m32["loss"]) - float(m16["loss"])) < 0.05


def test_mesh_errors_name_the_numbers():
    cfg = default_config()
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 2, 2, 1
    with pytest.raises(ConfigError, match=r"2 x 2 x 1 = 4 but there are 8 devices"):
        mesh_shape(cfg.mesh, 8)
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = -1, 3, 1
    with pytest.raises(ConfigError, match="8 is not divisible by 3"):
        mesh_shape(cfg.mesh, 8)
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = -1, 2, 2
    assert mesh_shape(cfg.mesh, 8) == (2, 2, 2)


def test_indivisible_dimension_fails_before_compiling():
    cfg = tiny_cfg(1, 1, 8, n_kv_heads=2)  # 2 kv heads cannot split over tensor=8
    mesh = make_mesh(cfg.mesh)
    model_def = define(cfg.model)
    tx = make_optimizer(cfg.optimizer, cfg.steps)
    with pytest.raises(ConfigError, match=r"k_DKH: dimension 1 has size 2, not divisible by mesh axes tensor of size 8"):
        state_shardings(model_def, tx, mesh)


def test_batch_not_divisible_by_data_fsdp():
    cfg = tiny_cfg(4, 2, 1)
    mesh = make_mesh(cfg.mesh)
    with pytest.raises(ConfigError, match="not divisible by data x fsdp = 8"):
        check_batch(12, mesh)
    check_batch(16, mesh, microbatches=2)


def test_unknown_logical_axis():
    with pytest.raises(KeyError, match="no rule"):
        logical_to_mesh(("nonsense",))
