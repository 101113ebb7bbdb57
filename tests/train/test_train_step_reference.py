"""The train step's loss, z-loss and update against a plain-JAX reference written here, on a tiny model.

The reference takes only the model's logits from the library (scalekit.model.functional.apply, the pure forward);
the loss is written out below with jax.nn.log_softmax, and its gradient comes from jax.grad of that function.

Conventions (from scalekit.model.transformer.cross_entropy and scalekit.train.step.make_train_step):
  log Z_t  = logsumexp over the vocabulary of position t's logits
  nll      = sum_t w_t (log Z_t - logit_t[target_t]) / sum_t w_t            (token-weighted mean, nats)
  zmean    = sum_t w_t (log Z_t)^2 / sum_t w_t                              (same weights, same denominator)
  objective (what is differentiated) = nll + z_loss * zmean, over the WHOLE batch (all microbatches together:
             sums over every microbatch divided once by the total weight, not a mean of microbatch means)
  metrics: "loss" = nll (without the z-loss term), "z_loss" = zmean (without the coefficient),
           "tokens" = sum_t w_t, "grad_norm" = global L2 norm of the gradient of the objective.
The optimizer is plain optax.sgd(LR) (no momentum, clipping or weight decay), so the update is exactly
-LR * gradient and params_after = params - LR * grad_ref.

Tolerances: float32 forward and backward; losses to rtol 1e-5, gradients to rtol 1e-4 with atol 1e-6.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from scalekit.config import default_config, resolve
from scalekit.model.functional import apply, define, init_params
from scalekit.train.state import TrainState
from scalekit.train.step import make_train_step

VOCAB, SEQ, BATCH = 24, 12, 8
LR = 0.1
Z_LOSS = 1e-2


@pytest.fixture(scope="module")
def model():
    cfg = default_config()
    cfg.model.update(dict(d_model=16, n_layers=2, n_heads=2, mlp="swiglu", d_ff=32, tie_embeddings=False))
    m = resolve(cfg, VOCAB).model
    model_def = define(m)
    params = init_params(m, 0)
    # larger logits than at init so that log Z is far from log V and the z-loss has a real gradient
    params = jax.tree.map(lambda x: x, params)   # a fresh dict, so the edit below touches only this copy
    params["unembed_DV"] = params["unembed_DV"] * 4.0
    return model_def, params


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, VOCAB, (BATCH, SEQ + 1))
    # an uneven mask: rows keep very different numbers of tokens (a mean of per-microbatch means, or a
    # per-row mean, differs from the token-weighted mean), one row is fully masked, and the masked targets
    # are set to token 0 so a step that ignores the mask sees a different loss
    keep = np.zeros((BATCH, SEQ), np.float32)
    lengths = [SEQ, 3, 7, 0, SEQ, 1, 10, 5]
    for r, n in enumerate(lengths):
        keep[r, SEQ - n:] = 1.0
    keep[4, ::3] = 0.0                      # holes inside a row too
    targets = np.where(keep > 0, tokens[:, 1:], 0)
    return {"inputs": jnp.asarray(tokens[:, :-1], jnp.int32), "targets": jnp.asarray(targets, jnp.int32),
            "weights": jnp.asarray(keep)}


def reference_terms(model_def, params, batch):
    """(nll, zmean) written from the logits with log_softmax, as documented at the top of this file."""
    logits = apply(model_def, params, batch["inputs"])
    logp = jax.nn.log_softmax(logits, axis=-1)
    tgt_logp = jnp.take_along_axis(logp, batch["targets"][..., None], axis=-1)[..., 0]
    log_z = jax.nn.logsumexp(logits, axis=-1)
    w = batch["weights"]
    total = jnp.sum(w)
    nll = -jnp.sum(tgt_logp * w) / total
    zmean = jnp.sum(jnp.square(log_z) * w) / total
    return nll, zmean


def reference_objective(model_def, params, batch, z_loss):
    nll, zmean = reference_terms(model_def, params, batch)
    return nll + z_loss * zmean


def run_step(model_def, params, batch, z_loss, microbatches):
    tx = optax.sgd(LR)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                       rng=jax.random.key_data(jax.random.key(0)))
    step = jax.jit(make_train_step(model_def, tx, z_loss=z_loss, microbatches=microbatches))
    new_state, metrics = step(state, batch)
    implied_grad = jax.tree.map(lambda before, after: (before - after) / LR, params, new_state.params)
    return new_state, jax.device_get(metrics), implied_grad


def assert_trees_close(a, b, rtol=1e-4, atol=1e-6):
    la, lb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (path, x), (_, y) in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol,
                                   err_msg=jax.tree_util.keystr(path))


def test_batch_is_a_real_test(model, batch):
    """The mask matters and the z-loss term is not negligible (otherwise the checks below prove little)."""
    model_def, params = model
    nll, zmean = reference_terms(model_def, params, batch)
    unmasked = dict(batch, weights=jnp.ones_like(batch["weights"]))
    assert abs(float(reference_terms(model_def, params, unmasked)[0]) - float(nll)) > 1e-2
    g_nll = jax.grad(lambda p: reference_terms(model_def, p, batch)[0])(params)
    g_z = jax.grad(lambda p: Z_LOSS * reference_terms(model_def, p, batch)[1])(params)
    assert float(optax.tree.norm(g_z)) > 1e-2 * float(optax.tree.norm(g_nll))
    assert float(zmean) > 1.0   # log Z well away from 0 (about log V = 3.2 here)


@pytest.mark.parametrize("microbatches", [1, 2, 4])
def test_step_loss_and_update_match_reference(model, batch, microbatches):
    model_def, params = model
    nll, zmean = reference_terms(model_def, params, batch)
    grad_ref = jax.grad(reference_objective, argnums=1)(model_def, params, batch, Z_LOSS)
    new_state, metrics, implied_grad = run_step(model_def, params, batch, Z_LOSS, microbatches)
    assert metrics["loss"] == pytest.approx(float(nll), rel=1e-5)
    assert metrics["z_loss"] == pytest.approx(float(zmean), rel=1e-5)
    assert metrics["tokens"] == pytest.approx(float(jnp.sum(batch["weights"])), abs=0)
    assert metrics["grad_norm"] == pytest.approx(float(optax.tree.norm(grad_ref)), rel=1e-4)
    # SGD: params_after = params - LR * grad_ref
    assert_trees_close(implied_grad, grad_ref)
    expected = jax.tree.map(lambda p, g: p - LR * g, params, grad_ref)
    assert_trees_close(new_state.params, expected, rtol=1e-5, atol=1e-6)
    assert int(new_state.step) == 1


def test_z_loss_off_is_plain_cross_entropy(model, batch):
    model_def, params = model
    grad_ref = jax.grad(lambda p: reference_terms(model_def, p, batch)[0])(params)
    _, metrics, implied_grad = run_step(model_def, params, batch, 0.0, 2)
    assert metrics["loss"] == pytest.approx(float(reference_terms(model_def, params, batch)[0]), rel=1e-5)
    assert_trees_close(implied_grad, grad_ref)


@pytest.mark.parametrize("microbatches", [2, 4])
def test_microbatching_is_the_mean_not_the_sum(model, batch, microbatches):
    """Gradient accumulation gives the full-batch gradient (same scale), not microbatches x it, nor the mean of
    per-microbatch means (the mask is uneven across microbatches)."""
    model_def, params = model
    _, m1, g1 = run_step(model_def, params, batch, Z_LOSS, 1)
    _, mk, gk = run_step(model_def, params, batch, Z_LOSS, microbatches)
    assert_trees_close(gk, g1)
    assert mk["loss"] == pytest.approx(m1["loss"], rel=1e-5)
    assert mk["z_loss"] == pytest.approx(m1["z_loss"], rel=1e-5)
    assert mk["grad_norm"] == pytest.approx(m1["grad_norm"], rel=1e-4)
    assert mk["tokens"] == m1["tokens"]
