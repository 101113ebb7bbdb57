"""Absolute parameter counts and FLOPs per token for hand-worked models, every convention counting.py offers.

Every expected number below is a plain integer worked out by hand in the comments (not by calling counting.py),
so a wrong factor, a dropped term or a swapped convention in scalekit/model/counting.py shows up as an exact
mismatch. The total count is also checked against the number of scalars the built model really has, per
component (embedding, unembedding, attention, MLP, norms), so the counting and the model cannot drift apart.

The hand-worked model: vocab V = 100, d_model d = 64, n_layers L = 2, n_heads H = 4 (head_dim 16, so H*hd = 64),
d_ff F = 256, training sequence length T = 32, no biases anywhere (the model has none), RMSNorm scales only.

Per layer:
  attention  q, k, v, o: each d x (H*hd) = 64 x 64 = 4096             -> 4 * 4096 = 16384
             (GQA with 2 kv heads: k, v are 64 x (2*16) = 2048 each   -> 4096 + 2*2048 + 4096 = 12288)
  MLP        GELU:   up + down       = 2 * 64 * 256 = 32768
             SwiGLU: up + gate + down = 3 * 64 * 256 = 49152
  norms      attn_norm + mlp_norm = 2 * 64 = 128 (QK-norm adds q_norm + k_norm = 2 * 16 = 32)
Whole model:
  embedding  V * d = 100 * 64 = 6400; the untied unembedding is another 6400
  final norm 64
  norms, MHA: 2 * 128 + 64 = 320; with QK-norm: 2 * (128 + 32) + 64 = 384

Conventions (counting.py's docstring): total = everything built; non_embedding (Kaplan) = total - embedding -
unembedding; chinchilla = embedding (+ unembedding) + attention + MLP, no norms. FLOPs/token: 6N = 6 total,
6N_nonembed = 6 non_embedding, palm = 6 (block matmuls + output layer V*d, tied or not) + 12 L H hd T,
chinchilla = 3 x forward (Hoffmann et al. appendix F, per token).
"""

from __future__ import annotations

import jax
import ml_collections
import pytest

from scalekit.config import default_config, resolve
from scalekit.model import counting
from scalekit.model.functional import count_actual_params, define, init_params

V, D, L, H, HD, F, T = 100, 64, 2, 4, 16, 256, 32


def model_cfg(mlp: str, tied: bool, n_kv_heads: int = 0, qk_norm: bool = False) -> ml_collections.ConfigDict:
    cfg = default_config()
    cfg.model.update(dict(d_model=D, n_layers=L, n_heads=H, d_ff=F, mlp=mlp, tie_embeddings=tied,
                          n_kv_heads=n_kv_heads, qk_norm=qk_norm, head_dim=0))
    m = resolve(cfg, V).model
    assert (m.vocab_size, m.head_dim, m.n_kv_heads, m.d_ff) == (V, HD, n_kv_heads or H, F)
    return m


# ---- untied GELU, MHA (worked in full) ----
# blocks      = L * (attention + MLP) = 2 * (16384 + 32768) = 2 * 49152 = 98304
# total       = embed 6400 + unembed 6400 + blocks 98304 + norms 320        = 111424
# non_embed   = 98304 + 320                                                   = 98624
# chinchilla  = 12800 + 98304                                                 = 111104
# 6N          = 6 * 111424 = 668544;  6N_nonembed = 6 * 98624 = 591744
# palm        = 6 * (98304 + 6400) + 12 * L * H * hd * T
#             = 6 * 104704 + 12 * 2 * 4 * 16 * 32 = 628224 + 49152           = 677376
# chinchilla FLOPs, forward per token:
#   embeddings  2 V d               = 2 * 100 * 64          = 12800
#   per layer:  QKV 2 d (3 H hd)    = 2 * 64 * 192          = 24576
#               logits 2 T H hd     = 2 * 32 * 64           = 4096
#               softmax 3 H T       = 3 * 4 * 32            = 384
#               reduction 2 T H hd  = 2 * 32 * 64           = 4096
#               output 2 H hd d     = 2 * 64 * 64           = 8192
#               dense 2 * 2 d F     = 4 * 64 * 256          = 65536   (GELU: 2 matrices)
#               sum                                         = 106880, x L = 213760
#   final logits 2 d V              = 12800
#   forward = 12800 + 213760 + 12800 = 239360; x 3 (forward + backward)      = 718080
UNTIED_GELU = dict(attention=16384, mlp=32768, embedding=12800, norms=320, total=111424, non_embedding=98624,
                   chinchilla=111104, f_6N=668544, f_6N_nonembed=591744, f_palm=677376, f_chinchilla=718080)

# ---- tied GELU, MHA: one V x d matrix (6400) instead of two ----
# total = 6400 + 98304 + 320 = 105024; non_embed = 98624 (unchanged); chinchilla = 6400 + 98304 = 104704
# 6N = 6 * 105024 = 630144; 6N_nonembed = 591744
# palm counts the output layer's V*d matmul whether or not it is tied: 677376 (unchanged)
# chinchilla FLOPs count the embedding and logits computations, not parameters: 718080 (unchanged)
TIED_GELU = dict(attention=16384, mlp=32768, embedding=6400, norms=320, total=105024, non_embedding=98624,
                 chinchilla=104704, f_6N=630144, f_6N_nonembed=591744, f_palm=677376, f_chinchilla=718080)

# ---- untied SwiGLU, MHA ----
# blocks = 2 * (16384 + 49152) = 2 * 65536 = 131072
# total = 12800 + 131072 + 320 = 144192; non_embed = 131392; chinchilla = 12800 + 131072 = 143872
# 6N = 865152; 6N_nonembed = 788352; palm = 6 * (131072 + 6400) + 49152 = 824832 + 49152 = 873984
# chinchilla: dense per layer 2 * 3 d F = 98304 (32768 more than GELU), so per layer 139648, x 2 = 279296;
#   forward = 12800 + 279296 + 12800 = 304896; x 3 = 914688
UNTIED_SWIGLU = dict(attention=16384, mlp=49152, embedding=12800, norms=320, total=144192, non_embedding=131392,
                     chinchilla=143872, f_6N=865152, f_6N_nonembed=788352, f_palm=873984, f_chinchilla=914688)

# ---- tied SwiGLU, MHA ----
# total = 6400 + 131072 + 320 = 137792; non_embed = 131392; chinchilla = 6400 + 131072 = 137472
# 6N = 826752; 6N_nonembed = 788352; palm = 873984; chinchilla FLOPs = 914688
TIED_SWIGLU = dict(attention=16384, mlp=49152, embedding=6400, norms=320, total=137792, non_embedding=131392,
                   chinchilla=137472, f_6N=826752, f_6N_nonembed=788352, f_palm=873984, f_chinchilla=914688)

# ---- untied SwiGLU, GQA with 2 kv heads, QK-norm ----
# attention = 4096 (q) + 2048 (k) + 2048 (v) + 4096 (o) = 12288; norms = 2 * (128 + 32) + 64 = 384
# blocks = 2 * (12288 + 49152) = 122880
# total = 12800 + 122880 + 384 = 136064; non_embed = 122880 + 384 = 123264; chinchilla = 12800 + 122880 = 135680
# 6N = 816384; 6N_nonembed = 739584
# palm = 6 * (122880 + 6400) + 12 L H hd T (query heads: 49152) = 775680 + 49152 = 824832
# chinchilla: QKV 2 d (H hd + 2 K hd) = 2 * 64 * (64 + 64) = 16384 per layer (8192 less than MHA);
#   per layer 16384 + 4096 + 384 + 4096 + 8192 + 98304 = 131456, x 2 = 262912;
#   forward = 12800 + 262912 + 12800 = 288512; x 3 = 865536
GQA_QKNORM_SWIGLU = dict(attention=12288, mlp=49152, embedding=12800, norms=384, total=136064,
                         non_embedding=123264, chinchilla=135680, f_6N=816384, f_6N_nonembed=739584,
                         f_palm=824832, f_chinchilla=865536)

CASES = {
    "untied-gelu": (dict(mlp="gelu", tied=False), UNTIED_GELU),
    "tied-gelu": (dict(mlp="gelu", tied=True), TIED_GELU),
    "untied-swiglu": (dict(mlp="swiglu", tied=False), UNTIED_SWIGLU),
    "tied-swiglu": (dict(mlp="swiglu", tied=True), TIED_SWIGLU),
    "untied-swiglu-gqa2-qknorm": (dict(mlp="swiglu", tied=False, n_kv_heads=2, qk_norm=True), GQA_QKNORM_SWIGLU),
}


@pytest.fixture(params=list(CASES), ids=list(CASES))
def case(request):
    kw, expected = CASES[request.param]
    return model_cfg(**kw), expected


def test_components_by_hand(case):
    m, e = case
    assert counting.attention_params_per_layer(m) == e["attention"]
    assert counting.mlp_params_per_layer(m) == e["mlp"]
    assert counting.embedding_params(m) == e["embedding"]
    assert counting.norm_params(m) == e["norms"]


def test_param_conventions_by_hand(case):
    m, e = case
    assert counting.count_params(m, "total") == e["total"]
    assert counting.count_params(m, "non_embedding") == e["non_embedding"]
    assert counting.count_params(m, "chinchilla") == e["chinchilla"]
    # every convention counting.py offers is covered here
    assert set(counting.PARAM_CONVENTIONS) == {"total", "non_embedding", "chinchilla"}


def test_flop_conventions_by_hand(case):
    m, e = case
    assert counting.flops_per_token(m, T, "6N") == e["f_6N"]
    assert counting.flops_per_token(m, T, "6N_nonembed") == e["f_6N_nonembed"]
    assert counting.flops_per_token(m, T, "palm") == e["f_palm"]
    assert counting.flops_per_token(m, T, "chinchilla") == e["f_chinchilla"]
    assert set(counting.FLOP_CONVENTIONS) == {"6N", "6N_nonembed", "palm", "chinchilla"}


def test_flops_depend_on_seq_len_only_through_attention():
    """6N counts do not change with T; palm grows by 12 L H hd per token of context, chinchilla by
    3 L (4 H hd + 3 H) (logits + reduction + softmax, x3)."""
    m = model_cfg("gelu", False)
    for conv in ("6N", "6N_nonembed"):
        assert counting.flops_per_token(m, 64, conv) == counting.flops_per_token(m, T, conv)
    # palm: 12 * 2 * 4 * 16 = 1536 per extra token of context; 32 more -> 49152
    assert counting.flops_per_token(m, 64, "palm") - counting.flops_per_token(m, T, "palm") == 49152
    # chinchilla: 3 * 2 * (4 * 64 + 3 * 4) = 3 * 2 * 268 = 1608 per extra token; 32 more -> 51456
    assert counting.flops_per_token(m, 64, "chinchilla") - counting.flops_per_token(m, T, "chinchilla") == 51456


def test_inference_flops_by_hand():
    # untied GELU: 2 * (block matmuls 98304 + output layer 6400) + 4 L H hd ctx
    #            = 2 * 104704 + 4 * 2 * 4 * 16 * 32 = 209408 + 16384 = 225792 (= palm / 3 at ctx = T)
    m = model_cfg("gelu", False)
    assert counting.inference_flops_per_token(m, T) == 225792
    # tied SwiGLU: 2 * (131072 + 6400) + 16384 = 274944 + 16384 = 291328
    assert counting.inference_flops_per_token(model_cfg("swiglu", True), T) == 291328


def _leaf_sizes(params) -> dict[str, int]:
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): int(x.size) for path, x in flat}


def test_counts_match_built_model_per_component(case):
    """The built model's scalars, grouped by what they are, equal the hand-worked components."""
    m, e = case
    sizes = _leaf_sizes(define(m).abstract_params)
    total = sum(sizes.values())
    assert total == e["total"]
    norms = sum(s for k, s in sizes.items() if "norm" in k)
    embed = sum(s for k, s in sizes.items() if k.split("/")[-1] in ("embed_VD", "unembed_DV"))
    attn = sum(s for k, s in sizes.items() if "/attn/" in k and "norm" not in k)
    mlp = sum(s for k, s in sizes.items() if "/mlp/" in k)
    assert norms == e["norms"]
    assert embed == e["embedding"]
    assert attn == L * e["attention"]
    assert mlp == L * e["mlp"]
    assert norms + embed + attn + mlp == total   # nothing else (no biases) in the model


@pytest.mark.parametrize("name", ["untied-gelu", "tied-swiglu"])
def test_counts_match_materialised_params(name):
    kw, e = CASES[name]
    assert count_actual_params(init_params(model_cfg(**kw), 0)) == e["total"]
