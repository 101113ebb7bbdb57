"""scalekit.model.counting on plain objects: defaults, integer results, fallbacks for unset fields, and messages.

Written to kill the mutants `make mutate` found alive. Every number is worked out by hand in the comments.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from scalekit.model import counting


def model(**kw) -> SimpleNamespace:
    base = dict(vocab_size=10, d_model=12, n_layers=3, n_heads=4, n_kv_heads=0, head_dim=0, d_ff=20, mlp="gelu",
                tie_embeddings=False, qk_norm=False)
    base.update(kw)
    return SimpleNamespace(**base)


def test_unset_kv_heads_and_head_dim_fall_back():
    # n_kv_heads 0 -> n_heads = 4; head_dim 0 -> d_model // n_heads = 3
    m = model()
    # attention: q 12*4*3 + k, v 2*12*4*3 + o 4*3*12 = 144 + 288 + 144 = 576
    assert counting.attention_params_per_layer(m) == 576
    # head_dim 0 with d_model not a multiple of n_heads: 14 // 4 = 3 (integer division)
    m14 = model(d_model=14)
    assert counting.attention_params_per_layer(m14) == 14 * 4 * 3 + 2 * 14 * 4 * 3 + 4 * 3 * 14
    assert isinstance(counting.attention_params_per_layer(m14), int)
    # explicit GQA and head_dim win: q 12*4*5 = 240, k, v 2*12*2*5 = 240, o 4*5*12 = 240
    assert counting.attention_params_per_layer(model(n_kv_heads=2, head_dim=5)) == 720


def test_total_is_the_default_convention_and_counts_are_ints():
    m = model()
    # embedding 2*10*12 = 240 (untied); MLP 2*12*20 = 480; norms 3*(2*12) + 12 = 84
    # total = 240 + 3*(576 + 480) + 84 = 240 + 3168 + 84 = 3492
    assert counting.count_params(m) == 3492
    assert counting.count_params(m, "total") == 3492
    assert counting.count_params(m, "non_embedding") == 3168 + 84
    assert counting.count_params(m, "chinchilla") == 240 + 3168
    for conv in counting.PARAM_CONVENTIONS:
        assert isinstance(counting.count_params(m, conv), int)
    tied = model(tie_embeddings=1, qk_norm=1, mlp="swiglu")      # truthy non-bools count as set
    # embedding 120; MLP 3*12*20 = 720; norms 3*(24 + 2*3) + 12 = 102
    assert counting.embedding_params(tied) == 120
    assert counting.mlp_params_per_layer(tied) == 720
    assert counting.norm_params(tied) == 102
    assert counting.count_params(tied) == 120 + 3 * (576 + 720) + 102


def test_palm_is_the_default_flop_convention():
    m = model()
    # palm = 6 * (3*(576 + 480) + 10*12) + 12 * 3 * 4 * 3 * 8 = 6 * 3288 + 3456 = 19728 + 3456 = 23184
    assert counting.flops_per_token(m, 8) == 23184.0
    assert counting.flops_per_token(m, 8, "palm") == 23184.0
    assert counting.flops_per_token(m, 8, "6N") == 6.0 * 3492
    assert counting.flops_per_token(m, 8, "6N_nonembed") == 6.0 * 3252
    # inference: 2 * 3288 + 4 * 3 * 4 * 3 * 8 = 6576 + 1152 = 7728
    assert counting.inference_flops_per_token(m, 8) == 7728.0


def test_chinchilla_flops_by_hand_with_gqa():
    m = model(n_kv_heads=2, mlp="swiglu")
    V, d, L, H, kv, hd, F, T = 10, 12, 3, 4, 2, 3, 20, 8
    qkv = 2 * d * (H * hd + 2 * kv * hd)          # 2*12*(12 + 12) = 576
    logits = 2 * T * H * hd                       # 192
    softmax = 3 * H * T                           # 96
    reduce = 2 * T * H * hd                       # 192
    out = 2 * H * hd * d                          # 288
    dense = 2 * 3 * d * F                         # 1440
    forward = 2 * V * d + L * (qkv + logits + softmax + reduce + out + dense) + 2 * d * V
    assert forward == 240 + 3 * 2784 + 240
    assert counting.flops_per_token(m, T, "chinchilla") == 3.0 * forward


def test_unknown_conventions_name_the_choices():
    with pytest.raises(ValueError) as e:
        counting.count_params(model(), "kaplan")
    assert str(e.value) == ("unknown parameter convention 'kaplan'; choose one of ('total', 'non_embedding', "
                            "'chinchilla')")
    with pytest.raises(ValueError) as e:
        counting.flops_per_token(model(), 8, "8N")
    assert str(e.value) == "unknown FLOP convention '8N'; choose one of ('6N', '6N_nonembed', 'palm', 'chinchilla')"
