"""Inference compute in the units of training compute, so pre-training, post-training and sampling add up.

Generating G tokens after a P-token prompt runs the model on P + G - 1 tokens (the prompt and every generated token
but the last); the token at position j attends over j + 1 keys. Its forward FLOPs are
`scalekit.model.counting.inference_flops_per_token(m, j + 1)` = 2 x (matmul parameters, output layer included)
+ 4 L H d_head (j + 1): the same convention as the trainer's `flops_per_token(m, seq_len, "palm")`, which is 3 x the
forward cost at full context. Prefill is counted per sample (our decoder does not share a prompt's cache between
samples of it; sharing would save P tokens per extra sample, a few percent for these short prompts).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scalekit.model.counting import flops_per_token, inference_flops_per_token


def generation_flops(model_cfg: Any, prompt_len: int, new_tokens: int) -> float:
    """Forward FLOPs to generate `new_tokens` after a `prompt_len`-token prompt with a KV cache."""
    fed = int(prompt_len) + int(new_tokens) - 1
    if fed <= 0:
        return 0.0
    base = inference_flops_per_token(model_cfg, 0)  # 2 x matmul parameters
    per_key = inference_flops_per_token(model_cfg, 1) - base  # 4 L H d_head
    return fed * base + per_key * fed * (fed + 1) / 2.0


def samples_flops(model_cfg: Any, prompt_lens: Any, new_tokens: Any) -> float:
    """Total generation FLOPs over samples with the given prompt lengths and generated lengths (arrays broadcast)."""
    p, g = np.broadcast_arrays(np.asarray(prompt_lens, np.int64), np.asarray(new_tokens, np.int64))
    return float(sum(generation_flops(model_cfg, int(a), int(b)) for a, b in zip(p.ravel(), g.ravel())))


def forward_flops(model_cfg: Any, seq_len: int, tokens: float) -> float:
    """Forward-only FLOPs over `tokens` tokens of sequences of `seq_len` (scoring: reference log-probs)."""
    return flops_per_token(model_cfg, seq_len, "palm") / 3.0 * float(tokens)


def train_flops(model_cfg: Any, seq_len: int, tokens: float) -> float:
    """Forward + backward FLOPs over `tokens` tokens (palm convention, as the trainer's summary counts)."""
    return flops_per_token(model_cfg, seq_len, "palm") * float(tokens)
