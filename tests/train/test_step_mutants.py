"""scalekit.train.step beyond the loss and update (tests/train/test_step_reference.py covers those): the microbatch
split, the eval step, the K-step block, the jitted programs' shardings and donation, and the loss denominator when
a batch has at most one weighted token.

Written to kill the mutants `make mutate` found alive. Expectations are computed here: rows by numpy slicing, sums
with jax.nn.log_softmax from the logits, K steps as K single steps, shardings as PartitionSpecs written out.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from scalekit.config import default_config, resolve
from scalekit.model.functional import apply, define, init_params
from scalekit.parallel.mesh import make_mesh
from scalekit.train import step as step_lib
from scalekit.train.state import TrainState, init_state, state_shardings

VOCAB, SEQ, BATCH = 16, 6, 8
LR = 0.05


@pytest.fixture(scope="module")
def model():
    cfg = default_config()
    cfg.model.update(dict(d_model=16, n_layers=1, n_heads=2, mlp="gelu", d_ff=32, tie_embeddings=False))
    m = resolve(cfg, VOCAB).model
    return define(m), init_params(m, 0)


def make_batch(seed: int, weights: np.ndarray | None = None) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, VOCAB, (BATCH, SEQ + 1))
    w = rng.integers(0, 2, (BATCH, SEQ)).astype(np.float32) if weights is None else weights
    return {"inputs": jnp.asarray(tokens[:, :-1], jnp.int32), "targets": jnp.asarray(tokens[:, 1:], jnp.int32),
            "weights": jnp.asarray(w, jnp.float32)}


def ref_sums(model_def, params, batch):
    """(nll_sum, weight_sum, z_sum) from the logits with log_softmax."""
    logits = apply(model_def, params, batch["inputs"])
    logp = jax.nn.log_softmax(logits, axis=-1)
    tgt = jnp.take_along_axis(logp, batch["targets"][..., None], axis=-1)[..., 0]
    w = batch["weights"]
    log_z = jax.nn.logsumexp(logits, axis=-1)
    return float(-jnp.sum(tgt * w)), float(jnp.sum(w)), float(jnp.sum(log_z ** 2 * w))


def fresh_state(params, tx):
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=jax.random.key_data(jax.random.key(0)))


def mesh8():
    cfg = default_config()
    return make_mesh(cfg.mesh)            # data = -1: all 8 fake CPU devices on the data axis


# --- the microbatch split -------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [2, 4])
def test_split_microbatches_takes_every_nth_row(n):
    x = np.arange(BATCH * 3).reshape(BATCH, 3)
    batch = {"inputs": jnp.asarray(x), "targets": jnp.asarray(x + 1000), "weights": jnp.asarray(x * 0.5)}
    out = step_lib._split_microbatches(batch, n)
    assert set(out) == {"inputs", "targets", "weights"}
    for key, offset, scale in (("inputs", 0, 1), ("targets", 1000, 1), ("weights", 0, 0.5)):
        assert out[key].shape == (n, BATCH // n, 3)
        for m in range(n):
            np.testing.assert_array_equal(np.asarray(out[key][m]), (x[m::n] + offset) * scale)


def test_split_microbatches_constrains_each_microbatch_over_the_batch_axes():
    mesh = mesh8()
    x = jnp.arange(16 * 3, dtype=jnp.float32).reshape(16, 3)
    with jax.set_mesh(mesh):
        out = jax.jit(lambda b: step_lib._split_microbatches(b, 2))({"inputs": x})["inputs"]
    want = NamedSharding(mesh, P(None, ("data", "fsdp"), None))
    assert out.sharding.is_equivalent_to(want, 3)
    np.testing.assert_array_equal(np.asarray(out[1]), np.asarray(x)[1::2])


# --- the eval step and the denominator ------------------------------------------------------------------------------

def test_eval_step_returns_the_sums(model):
    model_def, params = model
    batch = make_batch(1)
    nll_sum, weight_sum, _ = ref_sums(model_def, params, batch)
    out = step_lib.make_eval_step(model_def)(params, batch)
    assert set(out) == {"nll_sum", "weight_sum"}
    assert float(out["nll_sum"]) == pytest.approx(nll_sum, rel=1e-5)
    assert float(out["weight_sum"]) == weight_sum


@pytest.mark.parametrize("microbatches", [1, 2])
def test_one_weighted_token_is_its_own_mean_and_none_is_a_zero_update(model, microbatches):
    """The denominator is max(weight sum, 1): one token of weight 1 gives that token's loss; weights of 0 give
    a loss and gradient of 0 (not NaN), so SGD leaves the parameters as they are."""
    model_def, params = model
    tx = optax.sgd(LR)
    w = np.zeros((BATCH, SEQ), np.float32)
    w[3, 2] = 1.0
    batch = make_batch(2, w)
    nll_sum, weight_sum, z_sum = ref_sums(model_def, params, batch)
    assert weight_sum == 1.0
    step = jax.jit(step_lib.make_train_step(model_def, tx, z_loss=0.0, microbatches=microbatches))
    _, metrics = step(fresh_state(params, tx), batch)
    assert float(metrics["loss"]) == pytest.approx(nll_sum, rel=1e-5)
    assert float(metrics["z_loss"]) == pytest.approx(z_sum, rel=1e-5)
    assert float(metrics["tokens"]) == 1.0

    half = make_batch(2, w * 0.5)                        # weight sum 0.5: still divided by 1
    _, metrics = step(fresh_state(params, tx), half)
    assert float(metrics["loss"]) == pytest.approx(nll_sum * 0.5, rel=1e-5)

    none = make_batch(2, np.zeros((BATCH, SEQ), np.float32))
    new_state, metrics = step(fresh_state(params, tx), none)
    assert float(metrics["loss"]) == 0.0 and float(metrics["grad_norm"]) == 0.0 and float(metrics["tokens"]) == 0.0
    for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(new_state.step) == 1


# --- K steps in one block -------------------------------------------------------------------------------------------

def test_train_block_is_its_active_steps_with_per_step_metrics(model):
    """All active: K single steps. Step j inactive: the state passes through it and its metrics are zeros."""
    model_def, params = model
    tx = optax.adam(1e-2)
    train_step = step_lib.make_train_step(model_def, tx, z_loss=1e-3, microbatches=1)
    batches = [make_batch(10 + k) for k in range(3)]
    stacked = {k: jnp.stack([b[k] for b in batches]) for k in batches[0]}
    block = jax.jit(step_lib.make_train_block(train_step))
    single = jax.jit(train_step)
    for active in ([True, True, True], [True, False, True], [False, False, False]):
        state = fresh_state(params, tx)
        expected = []
        for b, on in zip(batches, active):
            if on:
                state, m = single(state, b)
                expected.append(jax.device_get(m))
            else:
                expected.append({"loss": 0.0, "z_loss": 0.0, "grad_norm": 0.0, "tokens": 0.0})
        block_state, block_metrics = block(fresh_state(params, tx), stacked, jnp.asarray(active))
        assert int(block_state.step) == sum(active)
        for key in ("loss", "z_loss", "grad_norm", "tokens"):
            assert block_metrics[key].shape == (3,)
            np.testing.assert_allclose(np.asarray(block_metrics[key]), [e[key] for e in expected], rtol=2e-5)
        for a, b in zip(jax.tree.leaves(block_state), jax.tree.leaves(state)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


# --- the jitted programs: shardings and donation --------------------------------------------------------------------

def test_stacked_batch_sharding_replicates_the_step_axis():
    mesh = mesh8()
    s = step_lib.stacked_batch_sharding(mesh)
    assert s.mesh == mesh and s.spec == P(None, ("data", "fsdp"), None)


def test_jit_steps_and_block_keep_the_state_shardings_replicate_metrics_and_donate(model):
    model_def, params = model
    mesh = mesh8()
    tx = optax.sgd(LR)
    shardings = state_shardings(model_def, tx, mesh)
    train_step = step_lib.make_train_step(model_def, tx)
    train, evaluate = step_lib.jit_steps(train_step, step_lib.make_eval_step(model_def), shardings, mesh)
    rep = NamedSharding(mesh, P())
    batch_s = NamedSharding(mesh, P(("data", "fsdp"), None))
    batch = jax.device_put(make_batch(3), batch_s)

    state = init_state(model_def, tx, 0, shardings)
    expected_eval = step_lib.make_eval_step(model_def)(jax.device_get(state.params), jax.device_get(batch))
    ev = evaluate(state.params, batch)
    for key in ("nll_sum", "weight_sum"):
        assert ev[key].sharding.is_equivalent_to(rep, ev[key].ndim)
        assert float(ev[key]) == pytest.approx(float(expected_eval[key]), rel=1e-5)

    old_leaf = jax.tree.leaves(state.params)[0]
    new_state, metrics = train(state, batch)
    assert old_leaf.is_deleted()                          # the state was donated
    for leaf, want in zip(jax.tree.leaves(new_state), jax.tree.leaves(shardings)):
        assert leaf.sharding.is_equivalent_to(want, leaf.ndim)
    for m in metrics.values():
        assert m.sharding.is_equivalent_to(rep, m.ndim)
    assert int(new_state.step) == 1

    block = step_lib.jit_block(step_lib.make_train_block(train_step), shardings, mesh)
    stacked = jax.device_put({k: jnp.stack([v, v]) for k, v in make_batch(4).items()},
                             step_lib.stacked_batch_sharding(mesh))
    old_leaf = jax.tree.leaves(new_state.params)[0]
    block_state, block_metrics = block(new_state, stacked, jax.device_put(jnp.asarray([True, True]), rep))
    assert old_leaf.is_deleted()
    assert int(block_state.step) == 3
    for leaf, want in zip(jax.tree.leaves(block_state), jax.tree.leaves(shardings)):
        assert leaf.sharding.is_equivalent_to(want, leaf.ndim)
    for m in block_metrics.values():
        assert m.shape == (2,) and m.sharding.is_equivalent_to(rep, 1)


def test_eval_block_is_one_pair_of_sums_per_batch_and_jits_replicated(model):
    model_def, params = model
    batches = [make_batch(20 + k) for k in range(3)]
    stacked = {k: jnp.stack([b[k] for b in batches]) for k in batches[0]}
    expected = [ref_sums(model_def, params, b) for b in batches]
    out = step_lib.make_eval_block(step_lib.make_eval_step(model_def))(params, stacked)
    assert set(out) == {"nll_sum", "weight_sum"} and out["nll_sum"].shape == (3,)
    np.testing.assert_allclose(np.asarray(out["nll_sum"]), [e[0] for e in expected], rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(out["weight_sum"]), [e[1] for e in expected])

    mesh = mesh8()
    tx = optax.sgd(LR)
    shardings = state_shardings(model_def, tx, mesh)
    state = init_state(model_def, tx, 0, shardings)
    evaluate = step_lib.jit_eval_block(step_lib.make_eval_block(step_lib.make_eval_step(model_def)), shardings, mesh)
    big = [make_batch(30 + k) for k in range(2)]
    big_stacked = jax.device_put({k: jnp.stack([b[k] for b in big]) for k in big[0]},
                                 step_lib.stacked_batch_sharding(mesh))
    got = evaluate(state.params, big_stacked)
    host_params = jax.device_get(state.params)
    rep = NamedSharding(mesh, P())
    for key in ("nll_sum", "weight_sum"):
        assert got[key].shape == (2,) and got[key].sharding.is_equivalent_to(rep, 1)
    want = [ref_sums(model_def, host_params, b) for b in big]
    np.testing.assert_allclose(np.asarray(got["nll_sum"]), [w[0] for w in want], rtol=1e-5)
