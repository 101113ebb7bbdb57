"""Parameter and FLOP counts, each function naming its convention.

Scaling-law papers disagree mostly on these numbers, so every count here says what it includes:

- `count_params(m, "total")`: every parameter the model builds (embedding, unembedding when untied, attention,
  MLP, RMSNorm scales, QK-norm scales).
- `count_params(m, "non_embedding")`: Kaplan et al. (2020): total minus the token embedding and the unembedding
  matrices (norm scales kept; they are tiny).
- `count_params(m, "chinchilla")`: Hoffmann et al. (2022) Table A9 as re-derived by Schaeffer et al.: embedding
  (plus unembedding when untied) + attention + MLP matrices, no norms.

FLOPs per token, forward + backward (backward = 2x forward):

- `"6N"`: 6 x total parameters (Chinchilla's C = 6ND).
- `"6N_nonembed"`: 6 x non-embedding parameters (Kaplan's C = 6ND).
- `"palm"`: 6 x (parameters in matmuls, output layer included, input lookup excluded) + 12 L H d_head T
  (PaLM appendix B, the MFU definition; attention over the full context, not halved for causality).
- `"chinchilla"`: Hoffmann et al. (2022) appendix F: embeddings, QKV, logits, softmax, attention reduction,
  output projection, MLP and final logits, times 3.

`model` is any object with the resolved model fields of `scalekit.config` (vocab_size, d_model, n_layers, n_heads,
n_kv_heads, head_dim, d_ff, mlp, tie_embeddings, qk_norm); a ConfigDict or a dataclass both work.
"""

from __future__ import annotations

from typing import Any

PARAM_CONVENTIONS = ("total", "non_embedding", "chinchilla")
FLOP_CONVENTIONS = ("6N", "6N_nonembed", "palm", "chinchilla")


def _dims(m: Any) -> tuple[int, int, int, int, int, int, int, bool, bool, bool]:
    n_kv = m.n_kv_heads or m.n_heads
    head_dim = m.head_dim or m.d_model // m.n_heads
    return (m.vocab_size, m.d_model, m.n_layers, m.n_heads, n_kv, head_dim, m.d_ff,
            m.mlp == "swiglu", bool(m.tie_embeddings), bool(m.qk_norm))


def attention_params_per_layer(m: Any) -> int:
    """Q, K, V and output projection matrices of one layer (grouped-query K/V counted at their size)."""
    _, d, _, h, kv, hd, _, _, _, _ = _dims(m)
    return d * h * hd + 2 * d * kv * hd + h * hd * d


def mlp_params_per_layer(m: Any) -> int:
    """MLP matrices of one layer: 3 d d_ff when gated (SwiGLU), 2 d d_ff otherwise."""
    _, d, _, _, _, _, ff, gated, _, _ = _dims(m)
    return (3 if gated else 2) * d * ff


def embedding_params(m: Any) -> int:
    """Token embedding plus, when untied, the unembedding (output) matrix."""
    v, d, _, _, _, _, _, _, tied, _ = _dims(m)
    return v * d * (1 if tied else 2)


def norm_params(m: Any) -> int:
    """RMSNorm scales: two per layer and a final one; QK-norm adds two head_dim scales per layer."""
    _, d, n_layers, _, _, hd, _, _, _, qk_norm = _dims(m)
    return n_layers * (2 * d + (2 * hd if qk_norm else 0)) + d


def count_params(m: Any, convention: str = "total") -> int:
    """Number of parameters under `convention` (one of PARAM_CONVENTIONS; see the module docstring)."""
    n_layers = m.n_layers
    blocks = n_layers * (attention_params_per_layer(m) + mlp_params_per_layer(m))
    if convention == "total":
        return embedding_params(m) + blocks + norm_params(m)
    if convention == "non_embedding":
        return blocks + norm_params(m)
    if convention == "chinchilla":
        return embedding_params(m) + blocks
    raise ValueError(f"unknown parameter convention {convention!r}; choose one of {PARAM_CONVENTIONS}")


def flops_per_token(m: Any, seq_len: int, convention: str = "palm") -> float:
    """Training FLOPs (forward + backward) per token under `convention` (see the module docstring)."""
    v, d, n_layers, h, kv, hd, ff, gated, _, _ = _dims(m)
    if convention == "6N":
        return 6.0 * count_params(m, "total")
    if convention == "6N_nonembed":
        return 6.0 * count_params(m, "non_embedding")
    if convention == "palm":
        matmul_params = n_layers * (attention_params_per_layer(m) + mlp_params_per_layer(m)) + v * d
        return 6.0 * matmul_params + 12.0 * n_layers * h * hd * seq_len
    if convention == "chinchilla":
        qkv = 2 * d * (h * hd + 2 * kv * hd)
        logits = 2 * seq_len * h * hd
        softmax = 3 * h * seq_len
        reduce = 2 * seq_len * h * hd
        out = 2 * h * hd * d
        dense = 2 * (3 if gated else 2) * d * ff
        forward = 2 * v * d + n_layers * (qkv + logits + softmax + reduce + out + dense) + 2 * d * v
        return 3.0 * forward
    raise ValueError(f"unknown FLOP convention {convention!r}; choose one of {FLOP_CONVENTIONS}")


def inference_flops_per_token(m: Any, context_len: int) -> float:
    """Forward FLOPs to generate one token with a KV cache holding `context_len` tokens.

    2 x (matmul parameters, output layer included) + attention over the cache: 4 L H d_head context_len
    (scores and weighted sum, 2 FLOPs per multiply-add). The same units as `flops_per_token(..., "palm") / 3`.
    """
    v, d, n_layers, h, _, hd, _, _, _, _ = _dims(m)
    matmul_params = n_layers * (attention_params_per_layer(m) + mlp_params_per_layer(m)) + v * d
    return 2.0 * matmul_params + 4.0 * n_layers * h * hd * context_len
