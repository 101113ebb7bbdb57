"""Maximal-update parametrization (muP; Yang et al. 2022, "Tensor Programs V"), for Adam.

Under muP the best learning rate, initialisation and output scale found on a small "base" model stay best as the
width grows. The width multiplier is m = d_model / base_width; relative to standard parametrization:

- Hidden matrices (attention q, k, v, o; MLP up, gate, down: fan-in and fan-out both grow with width): the same
  initialisation (variance 1/fan_in), and an Adam learning rate times 1/m (weight decay is decoupled and scaled
  with it, as mup's MuAdamW does).
- Input embedding, norm scales: unchanged (initialisation and learning rate).
- Output layer (unembedding): logits times 1/m (the output multiplier), its initial standard deviation times
  sqrt(m) (so base_width^-0.5 at every width), and an unchanged learning rate: mup's MuReadout (with its
  `_rescale_parameters`) + MuAdam, equivalent to Table 3's 1/fan_in^2 initial variance and 1/fan_in rate: the
  logits start at O(1/sqrt(m)). With tied embeddings the one matrix is both the input embedding (whose
  initialisation must not change with width) and the readout: it keeps the embedding's initialisation and learning
  rate, and the logits still get 1/m (the mup package's tied case); untied embeddings are the cleaner muP.
- Attention logits scaled by 1/d_head rather than 1/sqrt(d_head): sqrt(base_head_dim) / d_head, so that at
  d_head == base_head_dim it is exactly the standard 1/sqrt(d_head).

It assumes d_ff and n_heads * head_dim grow in proportion to d_model (as the model ladder's sizes do), so one m
serves every hidden matrix. At d_model == base_width every multiplier is exactly 1 and muP trains exactly as standard.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

HIDDEN = ("q_DNH", "k_DKH", "v_DKH", "o_NHD", "up_DF", "gate_DF", "down_FD")  # parameter names of hidden matrices
PARAMETRIZATIONS = ("standard", "mup")


@dataclasses.dataclass(frozen=True)
class MupScales:
    """The muP multipliers of one model: 1 everywhere under standard parametrization."""

    width_mult: float  # m = d_model / base_width
    hidden_lr: float  # Adam learning-rate multiplier of hidden matrices (1/m)
    output_mult: float  # logits multiplier (1/m)
    attn_scale: float | None  # attention-logit scale; None = jax's default 1/sqrt(head_dim)


def base_head_dim(model_cfg: Any) -> int:
    """The head dimension at base width: model.base_head_dim, else base_width / n_heads (heads fixed, head_dim grows
    with width), else the model's own head dimension."""
    if model_cfg.base_head_dim:
        return int(model_cfg.base_head_dim)
    head_dim = model_cfg.head_dim or model_cfg.d_model // model_cfg.n_heads
    if model_cfg.base_width:
        return max(1, int(model_cfg.base_width) // int(model_cfg.n_heads))
    return int(head_dim)


def scales(model_cfg: Any) -> MupScales:
    """The multipliers model_cfg's parametrization implies (see the module doc)."""
    if getattr(model_cfg, "parametrization", "standard") != "mup":
        return MupScales(1.0, 1.0, 1.0, None)
    base = int(model_cfg.base_width or model_cfg.d_model)
    m = model_cfg.d_model / base
    head_dim = int(model_cfg.head_dim or model_cfg.d_model // model_cfg.n_heads)
    base_hd = base_head_dim(model_cfg)
    attn = None if head_dim == base_hd else math.sqrt(base_hd) / head_dim
    return MupScales(width_mult=m, hidden_lr=1.0 / m, output_mult=1.0 / m, attn_scale=attn)


def param_label(path: tuple[Any, ...]) -> str:
    """'hidden' for a hidden matrix's parameter path, else 'vector' (embeddings, readout, norm scales)."""
    last = path[-1]
    name = str(getattr(last, "key", getattr(last, "name", last)))
    return "hidden" if name in HIDDEN else "vector"
