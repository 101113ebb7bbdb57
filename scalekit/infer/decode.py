"""Autoregressive decoding with a KV cache, built from the transformer's public pieces, jitted and sharded.

Prompts come left-padded to a common width P (`prompt_BP`, with each row's length): row b's tokens sit in columns
[P - len_b, P), so every row's last prompt token is in column P - 1 and all rows decode in lockstep. Positions are
per row (column - pad_b), and a key mask hides the pad columns, so each row computes exactly what the model computes
on that prompt alone. One parallel prefill writes the prompt's keys and values into the cache; each decode step then
runs the model on one new token per row, attending over the cache (grouped-query heads included).

The forward pass mirrors `Block.__call__` (pre-norm attention, then pre-norm MLP) with `Attention.project_qkv` /
`project_out`, `Transformer.embed` and `Transformer.logits`; `test_posttrain_decode.py` checks that greedy decoding
with the cache gives exactly the tokens of decoding by re-running the whole model (`generate_uncached`).

Shapes: B batch, P prompt width, G new tokens, T cache length (P + G), S tokens fed in one call, N/K query/kv heads.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from scalekit.infer.sampling import SamplingConfig, sample_logits
from scalekit.model.functional import ModelDef
from scalekit.model.transformer import DTYPES, Transformer
from scalekit.parallel.mesh import batch_sharding, param_shardings
from scalekit.parallel.rules import constrain, logical_to_mesh

Cache = list[tuple[jax.Array, jax.Array]]  # per layer (keys [B, T, K, H], values [B, T, K, H])
_CACHE_AXES = ("batch", "length", "act_kv_heads", None)


def init_cache(model_cfg: Any, batch: int, length: int) -> Cache:
    """Zeroed keys and values for every layer, in the compute dtype."""
    shape = (batch, length, model_cfg.n_kv_heads, model_cfg.head_dim)
    dt = DTYPES[model_cfg.dtype]
    return [(constrain(jnp.zeros(shape, dt), _CACHE_AXES), constrain(jnp.zeros(shape, dt), _CACHE_AXES))
            for _ in range(model_cfg.n_layers)]


def attend(q_BSNH: jax.Array, k_BTKH: jax.Array, v_BTKH: jax.Array, mask_BST: jax.Array,
           scale: float | None = None) -> jax.Array:
    """Softmax attention of S queries over T cached keys where mask_BST is True (grouped-query heads shared).

    Query head n uses kv head n // (N / K), as jax.nn.dot_product_attention does. Scores and softmax in float32;
    `scale` multiplies the scores (None: 1/sqrt(H); a muP model passes its own, as its training attention does).
    """
    B, S, N, H = q_BSNH.shape
    K = k_BTKH.shape[2]
    q_BSKGH = q_BSNH.reshape(B, S, K, N // K, H)
    s_BKGST = jnp.einsum("bskgh,btkh->bkgst", q_BSKGH, k_BTKH, preferred_element_type=jnp.float32) * (
        H ** -0.5 if scale is None else scale)
    s_BKGST = jnp.where(mask_BST[:, None, None], s_BKGST, jnp.finfo(jnp.float32).min)
    p_BKGST = jax.nn.softmax(s_BKGST, axis=-1).astype(v_BTKH.dtype)
    o_BSKGH = jnp.einsum("bkgst,btkh->bskgh", p_BKGST, v_BTKH)
    return o_BSKGH.reshape(B, S, N, H)


def forward_cached(model: Transformer, tokens_BS: jax.Array, positions_BS: jax.Array, cache: Cache, col: jax.Array,
                   mask_BST: jax.Array) -> tuple[jax.Array, Cache]:
    """Run S tokens per row that sit in cache columns [col, col + S); returns (logits [B, S, V], updated cache)."""
    x_BSD = model.embed(tokens_BS)
    new_cache: Cache = []
    for block, (k_BTKH, v_BTKH) in zip(model.blocks, cache):
        q_BSNH, k_BSKH, v_BSKH = block.attn.project_qkv(block.attn_norm(x_BSD), positions_BS)
        k_BTKH = constrain(jax.lax.dynamic_update_slice_in_dim(k_BTKH, k_BSKH.astype(k_BTKH.dtype), col, 1),
                           _CACHE_AXES)
        v_BTKH = constrain(jax.lax.dynamic_update_slice_in_dim(v_BTKH, v_BSKH.astype(v_BTKH.dtype), col, 1),
                           _CACHE_AXES)
        x_BSD = x_BSD + block.attn.project_out(attend(q_BSNH, k_BTKH, v_BTKH, mask_BST, block.attn.scale))
        x_BSD = constrain(x_BSD, ("batch", "length", "act_embed"))
        x_BSD = x_BSD + block.mlp(block.mlp_norm(x_BSD))
        x_BSD = constrain(x_BSD, ("batch", "length", "act_embed"))
        new_cache.append((k_BTKH, v_BTKH))
    return model.logits(x_BSD), new_cache


def _generate(model_def: ModelDef, cfg: SamplingConfig, params: Any, prompt_BP: jax.Array, lens_B: jax.Array,
              key: jax.Array) -> dict[str, jax.Array]:
    """The jitted body of `generate`: prefill, then decode steps in a while loop that stops when all rows end."""
    model = nnx.merge(model_def.graphdef, params)
    B, P = prompt_BP.shape
    G = cfg.max_new_tokens
    T = P + G
    pad_B = P - lens_B
    cols_T = jnp.arange(T)
    key_ok_BT = cols_T[None, :] >= pad_B[:, None]  # pad columns are never attended to
    positions_BP = jnp.maximum(jnp.arange(P)[None, :] - pad_B[:, None], 0)
    mask_BPT = key_ok_BT[:, None, :] & (cols_T[None, None, :] <= jnp.arange(P)[None, :, None])
    cache = init_cache(model_def.model_cfg, B, T)
    logits_BPV, cache = forward_cached(model, prompt_BP, positions_BP, cache, jnp.int32(0), mask_BPT)
    tok_B, logp_B = sample_logits(jax.random.fold_in(key, 0), logits_BPV[:, -1], cfg)
    tokens_BG = jnp.full((B, G), cfg.pad_id, jnp.int32).at[:, 0].set(tok_B)
    logps_BG = jnp.zeros((B, G), jnp.float32).at[:, 0].set(logp_B)
    done_B = (tok_B == cfg.eos_id) if cfg.eos_id is not None else jnp.zeros((B,), bool)

    def cond(carry: tuple) -> jax.Array:
        i, _, _, _, done_B = carry
        return (i < G) & ~jnp.all(done_B)

    def body(carry: tuple) -> tuple:
        i, cache, tokens_BG, logps_BG, done_B = carry
        col = P + i - 1  # the column of the token fed now (the one sampled last)
        fed_B1 = jax.lax.dynamic_slice_in_dim(tokens_BG, i - 1, 1, axis=1)
        mask_B1T = (key_ok_BT & (cols_T[None, :] <= col))[:, None, :]
        logits_B1V, cache = forward_cached(model, fed_B1, (col - pad_B)[:, None], cache, col, mask_B1T)
        tok_B, logp_B = sample_logits(jax.random.fold_in(key, i), logits_B1V[:, 0], cfg)
        tok_B = jnp.where(done_B, cfg.pad_id, tok_B)
        logp_B = jnp.where(done_B, 0.0, logp_B)
        if cfg.eos_id is not None:
            done_B = done_B | (tok_B == cfg.eos_id)
        tokens_BG = jax.lax.dynamic_update_slice_in_dim(tokens_BG, tok_B[:, None], i, 1)
        logps_BG = jax.lax.dynamic_update_slice_in_dim(logps_BG, logp_B[:, None], i, 1)
        return i + 1, cache, tokens_BG, logps_BG, done_B

    steps, _, tokens_BG, logps_BG, done_B = jax.lax.while_loop(
        cond, body, (jnp.int32(1), cache, tokens_BG, logps_BG, done_B))
    return {"tokens": tokens_BG, "logprobs": logps_BG, "steps": steps}


def _generate_uncached(model_def: ModelDef, cfg: SamplingConfig, params: Any, prompt_BP: jax.Array,
                       key: jax.Array) -> dict[str, jax.Array]:
    """Decoding without a cache: every step re-runs the full model over a [B, P + G] buffer (the reference)."""
    model = nnx.merge(model_def.graphdef, params)
    B, P = prompt_BP.shape
    G = cfg.max_new_tokens
    buf_BT = jnp.concatenate([prompt_BP, jnp.full((B, G), cfg.pad_id, jnp.int32)], axis=1)

    def body(i: jax.Array, carry: tuple) -> tuple:
        buf_BT, logps_BG, done_B = carry
        logits_BTV = model(buf_BT)
        last_BV = jax.lax.dynamic_index_in_dim(logits_BTV, P + i - 1, axis=1, keepdims=False)
        tok_B, logp_B = sample_logits(jax.random.fold_in(key, i), last_BV, cfg)
        tok_B = jnp.where(done_B, cfg.pad_id, tok_B)
        logp_B = jnp.where(done_B, 0.0, logp_B)
        if cfg.eos_id is not None:
            done_B = done_B | (tok_B == cfg.eos_id)
        buf_BT = jax.lax.dynamic_update_slice_in_dim(buf_BT, tok_B[:, None], P + i, 1)
        logps_BG = jax.lax.dynamic_update_slice_in_dim(logps_BG, logp_B[:, None], i, 1)
        return buf_BT, logps_BG, done_B

    init = (buf_BT, jnp.zeros((B, G), jnp.float32), jnp.zeros((B,), bool))
    buf_BT, logps_BG, _ = jax.lax.fori_loop(0, G, body, init)
    return {"tokens": buf_BT[:, P:], "logprobs": logps_BG, "steps": jnp.int32(G)}


@dataclass
class Generation:
    """Decoded tokens [B, G] (pad after the end token), their log-probabilities, and the decode steps run."""

    tokens: np.ndarray
    logprobs: np.ndarray
    steps: int


class Decoder:
    """Batched, sharded generation for one model: jits once per (sampling config, prompt width, batch size).

    Parameters are placed with the model's logical-axis shardings on `mesh` (default: all devices, data-parallel
    over 'data'); rows are sharded over the batch axes, and the batch is padded on the host to a multiple of them.
    """

    def __init__(self, model_def: ModelDef, mesh: Mesh | None = None):
        from scalekit.parallel.mesh import make_mesh  # noqa: PLC0415
        import ml_collections  # noqa: PLC0415

        self.model_def = model_def
        self.mesh = mesh or make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1}))
        self.param_shardings = param_shardings(model_def.abstract_params, model_def.logical_axes, self.mesh)
        self.rows = NamedSharding(self.mesh, logical_to_mesh(("batch",)))
        self.rows2d = batch_sharding(self.mesh)
        self.rep = NamedSharding(self.mesh, PartitionSpec())
        batch_axes = tuple(logical_to_mesh(("batch",)))[0]
        names = (batch_axes,) if isinstance(batch_axes, str) else (batch_axes or ())
        self.row_multiple = int(np.prod([self.mesh.shape[n] for n in names])) if names else 1

    def place(self, params: Any) -> Any:
        """Put parameters on the mesh with their shardings (a no-op for arrays already placed so)."""
        return jax.device_put(params, self.param_shardings)

    @functools.lru_cache(maxsize=64)  # noqa: B019 - one Decoder per model; the cache holds jitted functions
    def _jitted(self, cfg: SamplingConfig, cached: bool) -> Any:
        out = {"tokens": self.rows2d, "logprobs": self.rows2d, "steps": self.rep}
        if cached:
            return jax.jit(functools.partial(_generate, self.model_def, cfg),
                           in_shardings=(self.param_shardings, self.rows2d, self.rows, self.rep), out_shardings=out)
        return jax.jit(functools.partial(_generate_uncached, self.model_def, cfg),
                       in_shardings=(self.param_shardings, self.rows2d, self.rep), out_shardings=out)

    def generate(self, params: Any, prompt_BP: np.ndarray, lens_B: np.ndarray, key: jax.Array,
                 cfg: SamplingConfig, cached: bool = True) -> Generation:
        """Decode `cfg.max_new_tokens` tokens after each left-padded prompt (see the module docstring).

        cached=False re-runs the whole model each step (the reference and the benchmark baseline); it needs prompts
        of equal length (it has no pad mask).
        """
        prompt_BP = np.asarray(prompt_BP, np.int32)
        lens_B = np.asarray(lens_B, np.int32)
        B = prompt_BP.shape[0]
        if not cached and np.any(lens_B != prompt_BP.shape[1]):
            raise ValueError("generate(cached=False) needs prompts of equal length (no left padding)")
        extra = (-B) % self.row_multiple
        if extra:  # pad rows so the batch splits evenly over the devices; they are dropped below
            prompt_BP = np.concatenate([prompt_BP, np.repeat(prompt_BP[-1:], extra, 0)])
            lens_B = np.concatenate([lens_B, np.repeat(lens_B[-1:], extra)])
        with jax.set_mesh(self.mesh):
            if cached:
                out = self._jitted(cfg, True)(params, prompt_BP, lens_B, key)
            else:
                out = self._jitted(cfg, False)(params, prompt_BP, key)
            out = jax.device_get(out)
        return Generation(np.asarray(out["tokens"])[:B], np.asarray(out["logprobs"])[:B], int(out["steps"]))
