"""The KV-cache decoder: the same tokens as re-running the model, on any mesh; sampling filters; stopping."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from scalekit.config import default_config, resolve
from scalekit.infer.decode import Decoder
from scalekit.infer.sampling import SamplingConfig, filter_logits, sample_logits
from scalekit.model.functional import apply, define, init_params
from scalekit.parallel.mesh import make_mesh

VOCAB = 24  # the task vocabulary (19) rounded up so the vocab dimension splits over tensor parallelism


def model(**fields):
    cfg = default_config()
    cfg.model.update(dict(d_model=32, n_layers=2, n_heads=4, **fields))
    m = resolve(cfg, VOCAB).model
    return define(m), init_params(m, 0)


def one_device_decoder(model_def):
    return Decoder(model_def, make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1}),
                                        jax.devices()[:1]))


def ragged_prompts(rng, lengths, width):
    rows = [rng.integers(3, 19, n).astype(np.int32) for n in lengths]
    padded = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        padded[i, width - len(r):] = r
    return rows, padded, np.array(lengths, np.int32)


def greedy_by_hand(model_def, params, prompt, steps):
    """The plainest reference: run the full model, append the argmax at the last real position, repeat (a causal
    model ignores the padding after it, so one jitted buffer serves every step)."""
    forward = jax.jit(lambda p, x: apply(model_def, p, x))
    params = jax.device_get(params)
    seq = np.zeros((1, len(prompt) + steps), np.int32)
    seq[0, :len(prompt)] = prompt
    for i in range(len(prompt), len(prompt) + steps):
        seq[0, i] = int(np.argmax(np.asarray(forward(params, seq))[0, i - 1]))
    return seq[0, len(prompt):]


@pytest.mark.parametrize("fields", [{}, {"n_kv_heads": 2, "qk_norm": True}, {"n_kv_heads": 1, "mlp": "gelu",
                                                                               "tie_embeddings": True}])
def test_cached_greedy_equals_uncached(fields):
    model_def, params = model(**fields)
    dec = Decoder(model_def)  # all 8 devices, data parallel
    params = dec.place(params)
    greedy = SamplingConfig(max_new_tokens=12, temperature=0.0)
    rng = np.random.default_rng(0)
    prompts = rng.integers(3, 19, (16, 6)).astype(np.int32)
    lens = np.full(16, 6)
    cached = dec.generate(params, prompts, lens, jax.random.key(0), greedy)
    uncached = dec.generate(params, prompts, lens, jax.random.key(0), greedy, cached=False)
    np.testing.assert_array_equal(cached.tokens, uncached.tokens)
    np.testing.assert_allclose(cached.logprobs, uncached.logprobs, atol=1e-4)
    assert cached.steps == 12
    if not fields:
        np.testing.assert_array_equal(cached.tokens[0], greedy_by_hand(model_def, params, prompts[0], 12))


def test_left_padded_prompts_decode_as_if_alone():
    model_def, params = model(n_kv_heads=2)
    dec = Decoder(model_def)
    params = dec.place(params)
    greedy = SamplingConfig(max_new_tokens=8, temperature=0.0)
    rows, padded, lens = ragged_prompts(np.random.default_rng(1), [7, 3, 1, 5, 7, 2], 7)
    batch = dec.generate(params, padded, lens, jax.random.key(0), greedy)
    for i, r in enumerate(rows):
        alone = dec.generate(params, r[None], np.array([len(r)]), jax.random.key(0), greedy, cached=False)
        np.testing.assert_array_equal(batch.tokens[i], alone.tokens[0])


def test_sharded_mesh_gives_the_same_tokens_as_one_device():
    model_def, params = model(n_kv_heads=2)
    mesh = make_mesh(ml_collections.ConfigDict({"data": 2, "fsdp": 2, "tensor": 2}))
    dec8, dec1 = Decoder(model_def, mesh), one_device_decoder(model_def)
    p8, p1 = dec8.place(params), dec1.place(params)
    q = p8["blocks"][0]["attn"]["q_DNH"]
    assert len(q.sharding.device_set) == 8 and q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
    rows, padded, lens = ragged_prompts(np.random.default_rng(2), [5, 4, 3, 5, 2, 5], 5)  # 6 rows: padded to 8
    for cfg in (SamplingConfig(max_new_tokens=6, temperature=0.0),
                SamplingConfig(max_new_tokens=6, temperature=1.0, top_k=5)):
        a = dec8.generate(p8, padded, lens, jax.random.key(3), cfg)
        b = dec1.generate(p1, padded, lens, jax.random.key(3), cfg)
        np.testing.assert_array_equal(a.tokens, b.tokens)
        assert a.tokens.shape == (6, 6)


def test_stops_at_end_token_and_pads_after_it():
    model_def, params = model()
    dec = one_device_decoder(model_def)
    rng = np.random.default_rng(4)
    prompts = rng.integers(3, 19, (32, 4)).astype(np.int32)
    free = dec.generate(params, prompts, np.full(32, 4), jax.random.key(0),
                        SamplingConfig(max_new_tokens=10, temperature=2.0))
    eos = int(np.bincount(free.tokens[:, 1:].ravel(), minlength=VOCAB).argmax())  # a token that occurs often
    out = dec.generate(params, prompts, np.full(32, 4), jax.random.key(0),
                       SamplingConfig(max_new_tokens=10, temperature=2.0, eos_id=eos, pad_id=0))
    stopped = 0
    for row, ref, lp in zip(out.tokens, free.tokens, out.logprobs):
        hits = np.flatnonzero(row == eos)
        if len(hits):
            stopped += 1
            end = hits[0]
            np.testing.assert_array_equal(row[:end + 1], ref[:end + 1])  # same key, same samples up to the end
            assert np.all(row[end + 1:] == 0) and np.all(lp[end + 1:] == 0.0)
    assert stopped > 0


def test_sampling_filters():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    neg = jnp.finfo(jnp.float32).min
    kept = filter_logits(logits, top_k=2) > neg / 2
    np.testing.assert_array_equal(kept, [[True, True, False, False]])
    kept = filter_logits(logits, top_p=0.7) > neg / 2  # 0.5 < 0.7, 0.5 + 0.3 >= 0.7: two tokens
    np.testing.assert_array_equal(kept, [[True, True, False, False]])
    kept = filter_logits(logits, top_p=0.5) > neg / 2
    np.testing.assert_array_equal(kept, [[True, False, False, False]])
    many = jnp.repeat(logits, 4000, axis=0)
    cfg = SamplingConfig(max_new_tokens=1, temperature=1.0, top_k=3)
    tok, logp = sample_logits(jax.random.key(0), many, cfg)
    freq = np.bincount(np.asarray(tok), minlength=4) / 4000
    np.testing.assert_allclose(freq[:3], np.array([0.5, 0.3, 0.15]) / 0.95, atol=0.03)
    assert freq[3] == 0
    np.testing.assert_allclose(np.asarray(logp), np.log(np.array([0.5, 0.3, 0.15, 0.05]))[np.asarray(tok)],
                               rtol=1e-5)
    cold = SamplingConfig(max_new_tokens=1, temperature=0.05)
    tok, _ = sample_logits(jax.random.key(1), many[:100], cold)
    assert np.all(np.asarray(tok) == 0)
