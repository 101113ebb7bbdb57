"""Choosing the next token from logits: greedy, temperature, top-k and top-p (nucleus) sampling."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp


@dataclass(frozen=True)
class SamplingConfig:
    """How to decode: a static (hashable) part of every jitted decoder.

    temperature 0 is greedy (argmax). top_k 0 and top_p 1 switch those filters off. Decoding stops for a row at
    `eos_id` (None: never; every row then generates exactly max_new_tokens) and pads the rest of it with `pad_id`.
    """

    max_new_tokens: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    eos_id: int | None = None
    pad_id: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0 = greedy)")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0 (0 = off)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1] (1 = off)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def filter_logits(logits_BV: jax.Array, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Set logits outside the top-k and outside the smallest set with probability >= top_p to -inf."""
    neg = jnp.finfo(logits_BV.dtype).min
    if top_k and top_k < logits_BV.shape[-1]:
        kth_B1 = jax.lax.top_k(logits_BV, top_k)[0][:, -1:]
        logits_BV = jnp.where(logits_BV < kth_B1, neg, logits_BV)
    if top_p < 1.0:
        sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]
        probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
        before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV  # mass of the tokens ranked above
        kept_BV = before_BV < top_p  # the first token is always kept
        threshold_B1 = jnp.min(jnp.where(kept_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
        logits_BV = jnp.where(logits_BV < threshold_B1, neg, logits_BV)
    return logits_BV


def sample_logits(key: jax.Array, logits_BV: jax.Array, cfg: SamplingConfig) -> tuple[jax.Array, jax.Array]:
    """(next token [B] int32, its log-probability [B]) under `cfg`.

    The log-probability is that of the tempered, unfiltered distribution log_softmax(logits / T) (T = 1 when
    greedy): what a policy-gradient method needs for the behaviour policy.
    """
    logits_BV = logits_BV.astype(jnp.float32)
    scaled_BV = logits_BV if cfg.greedy else logits_BV / cfg.temperature
    if cfg.greedy:
        token_B = jnp.argmax(logits_BV, axis=-1)
    else:
        token_B = jax.random.categorical(key, filter_logits(scaled_BV, cfg.top_k, cfg.top_p), axis=-1)
    logp_B = jnp.take_along_axis(jax.nn.log_softmax(scaled_BV, axis=-1), token_B[:, None], axis=-1)[:, 0]
    return token_B.astype(jnp.int32), logp_B
