"""A decoder-only transformer in Flax NNX with logical-axis annotations on every parameter and key activation.

Pre-norm RMSNorm blocks; rotary position embeddings; causal multi-head (optionally grouped-query) attention through
jax.nn.dot_product_attention; a SwiGLU or GELU MLP; optional QK-norm; tied or untied embeddings; standard or muP
parametrization (model/mup.py: the attention scale and output multiplier here, the learning rates in train/optim.py). Parameters are
float32; `dtype` sets the compute dtype (weights are cast at use, norms and softmax statistics stay float32).
Shape suffixes: B batch, L length, D d_model, N query heads, K kv heads, H head_dim, F d_ff, V vocab.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from scalekit.model.mup import scales as mup_scales
from scalekit.parallel.rules import constrain

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str, ...], std: float) -> nnx.Param:
    """A truncated-normal parameter tagged with its logical axes."""
    value = std * jax.random.truncated_normal(rngs.params(), -2.0, 2.0, shape, jnp.float32)
    return nnx.Param(value, out_sharding=axes)


def _dense(x: jax.Array, w: jax.Array, dtype: Any, n_in: int = 1) -> jax.Array:
    """x [B, L, *in] @ w [*in, *out] -> [B, L, *out] as ONE 2-D matmul over B*L rows.

    Same result as the einsum, but the weight gradient then contracts a single (B*L) dimension: XLA:CPU lowers
    dots that contract (B, L) together much more slowly (the 19M benchmark's backward: 3.10 s -> 2.16 s).
    """
    b, l = x.shape[:2]
    d_in = math.prod(w.shape[:n_in])
    out_shape = w.shape[n_in:]
    y = x.reshape(b * l, d_in) @ w.reshape(d_in, math.prod(out_shape)).astype(dtype)
    return y.reshape(b, l, *out_shape)


class RMSNorm(nnx.Module):
    """Root-mean-square norm with a learned scale, computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32), out_sharding=("norm",))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (x32 * self.scale[...]).astype(x.dtype)


def rotary(x_BLNH: jax.Array, positions_BL: jax.Array, theta: float) -> jax.Array:
    """Rotary position embedding (rotate-half form) applied in float32."""
    half = x_BLNH.shape[-1] // 2
    freqs_H = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles_BLH = positions_BL[..., None].astype(jnp.float32) * freqs_H
    sin, cos = jnp.sin(angles_BLH)[:, :, None, :], jnp.cos(angles_BLH)[:, :, None, :]
    x1, x2 = jnp.split(x_BLNH.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BLNH.dtype)


class Attention(nnx.Module):
    """Causal multi-head attention with optional grouped-query heads and QK-norm."""

    def __init__(self, cfg: Any, rngs: nnx.Rngs):
        d, n, k, h = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_DNH = _param(rngs, (d, n, h), ("embed", "heads", "head_dim"), d ** -0.5)
        self.k_DKH = _param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), d ** -0.5)
        self.v_DKH = _param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), d ** -0.5)
        self.o_NHD = _param(rngs, (n, h, d), ("heads", "head_dim", "embed"), (n * h * 2 * cfg.n_layers) ** -0.5)
        self.q_norm = RMSNorm(h) if cfg.qk_norm else None
        self.k_norm = RMSNorm(h) if cfg.qk_norm else None
        self.rope_theta = cfg.rope_theta
        self.dtype = DTYPES[cfg.dtype]
        self.scale = mup_scales(cfg).attn_scale  # None: 1/sqrt(head_dim); muP: sqrt(base_head_dim)/head_dim

    def project_qkv(self, x_BLD: jax.Array, positions_BL: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Queries, keys and values with rotary embeddings (and QK-norm) applied."""
        q_BLNH = _dense(x_BLD, self.q_DNH[...], self.dtype)
        k_BLKH = _dense(x_BLD, self.k_DKH[...], self.dtype)
        v_BLKH = _dense(x_BLD, self.v_DKH[...], self.dtype)
        if self.q_norm is not None:
            q_BLNH, k_BLKH = self.q_norm(q_BLNH), self.k_norm(k_BLKH)
        q_BLNH = constrain(rotary(q_BLNH, positions_BL, self.rope_theta), ("batch", "length", "act_heads", None))
        k_BLKH = constrain(rotary(k_BLKH, positions_BL, self.rope_theta), ("batch", "length", "act_kv_heads", None))
        v_BLKH = constrain(v_BLKH, ("batch", "length", "act_kv_heads", None))
        return q_BLNH, k_BLKH, v_BLKH

    def project_out(self, attn_BLNH: jax.Array) -> jax.Array:
        """The output projection back to d_model."""
        return _dense(attn_BLNH, self.o_NHD[...], self.dtype, n_in=2)

    def __call__(self, x_BLD: jax.Array, positions_BL: jax.Array) -> jax.Array:
        q_BLNH, k_BLKH, v_BLKH = self.project_qkv(x_BLD, positions_BL)
        attn_BLNH = jax.nn.dot_product_attention(q_BLNH, k_BLKH, v_BLKH, is_causal=True, scale=self.scale)
        return self.project_out(attn_BLNH)


class MLP(nnx.Module):
    """SwiGLU (gated) or GELU feed-forward block."""

    def __init__(self, cfg: Any, rngs: nnx.Rngs):
        d, f = cfg.d_model, cfg.d_ff
        self.gated = cfg.mlp == "swiglu"
        self.up_DF = _param(rngs, (d, f), ("embed", "mlp"), d ** -0.5)
        self.gate_DF = _param(rngs, (d, f), ("embed", "mlp"), d ** -0.5) if self.gated else None
        self.down_FD = _param(rngs, (f, d), ("mlp", "embed"), (f * 2 * cfg.n_layers) ** -0.5)
        self.dtype = DTYPES[cfg.dtype]

    def __call__(self, x_BLD: jax.Array) -> jax.Array:
        up_BLF = _dense(x_BLD, self.up_DF[...], self.dtype)
        if self.gated:
            h_BLF = jax.nn.silu(_dense(x_BLD, self.gate_DF[...], self.dtype)) * up_BLF
        else:
            h_BLF = jax.nn.gelu(up_BLF)
        h_BLF = constrain(h_BLF, ("batch", "length", "act_mlp"))
        return _dense(h_BLF, self.down_FD[...], self.dtype)


class Block(nnx.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: Any, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(cfg.d_model)
        self.attn = Attention(cfg, rngs)
        self.mlp_norm = RMSNorm(cfg.d_model)
        self.mlp = MLP(cfg, rngs)

    def __call__(self, x_BLD: jax.Array, positions_BL: jax.Array) -> jax.Array:
        x_BLD = x_BLD + self.attn(self.attn_norm(x_BLD), positions_BL)
        x_BLD = constrain(x_BLD, ("batch", "length", "act_embed"))
        x_BLD = x_BLD + self.mlp(self.mlp_norm(x_BLD))
        return constrain(x_BLD, ("batch", "length", "act_embed"))


class Transformer(nnx.Module):
    """Decoder-only language model: tokens [B, L] -> logits [B, L, V] (float32)."""

    def __init__(self, cfg: Any, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed_VD = _param(rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), 1.0)
        self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.n_layers)])
        self.final_norm = RMSNorm(cfg.d_model)
        readout_std = cfg.d_model ** -0.5 * mup_scales(cfg).width_mult ** 0.5  # muP: x sqrt(m), see model/mup.py
        self.unembed_DV = (None if cfg.tie_embeddings else
                           _param(rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), readout_std))
        self.dtype = DTYPES[cfg.dtype]
        self.remat = bool(cfg.remat)
        self.output_mult = mup_scales(cfg).output_mult  # 1 unless muP at another width than the base

    def embed(self, tokens_BL: jax.Array) -> jax.Array:
        x_BLD = jnp.take(self.embed_VD[...], tokens_BL, axis=0).astype(self.dtype)
        return constrain(x_BLD, ("batch", "length", "act_embed"))

    def logits(self, x_BLD: jax.Array) -> jax.Array:
        """Final norm and output layer; logits in float32."""
        x_BLD = self.final_norm(x_BLD)
        if self.unembed_DV is None:  # tied: scale so logits start O(1) with a unit-variance embedding
            w_DV = self.embed_VD[...].T * self.cfg.d_model ** -0.5
        else:
            w_DV = self.unembed_DV[...]
        logits_BLV = jnp.einsum("bld,dv->blv", x_BLD, w_DV.astype(self.dtype))
        if self.output_mult != 1.0:
            logits_BLV = logits_BLV * self.output_mult
        return constrain(logits_BLV, ("batch", "length", "act_vocab")).astype(jnp.float32)

    def __call__(self, tokens_BL: jax.Array, positions_BL: jax.Array | None = None) -> jax.Array:
        if positions_BL is None:
            positions_BL = jnp.broadcast_to(jnp.arange(tokens_BL.shape[1]), tokens_BL.shape)
        x_BLD = self.embed(tokens_BL)
        for block in self.blocks:
            if self.remat:
                x_BLD = nnx.remat(lambda blk, x, p: blk(x, p))(block, x_BLD, positions_BL)
            else:
                x_BLD = block(x_BLD, positions_BL)
        return self.logits(x_BLD)


def cross_entropy(logits_BLV: jax.Array, targets_BL: jax.Array, weights_BL: jax.Array,
                  z_loss: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted mean next-token cross-entropy in nats, plus z_loss * mean(log Z ^ 2).

    Returns (objective, aux) where aux holds the summed loss and weight so microbatches combine exactly.
    """
    log_z_BL = jax.nn.logsumexp(logits_BLV, axis=-1)
    target_logit_BL = jnp.take_along_axis(logits_BLV, targets_BL[..., None], axis=-1)[..., 0]
    nll_BL = log_z_BL - target_logit_BL
    weight_sum = jnp.sum(weights_BL)
    nll_sum = jnp.sum(nll_BL * weights_BL)
    z_sum = jnp.sum(jnp.square(log_z_BL) * weights_BL)
    denom = jnp.maximum(weight_sum, 1.0)
    objective = (nll_sum + z_loss * z_sum) / denom
    return objective, {"nll_sum": nll_sum, "weight_sum": weight_sum, "z_sum": z_sum}
