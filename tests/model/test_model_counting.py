"""Parameter and FLOP counting against hand-computed values, the built model, and Chinchilla Table A9."""

import csv

import jax
import ml_collections
import pytest

from scalekit.config import default_config, resolve
from scalekit.model import counting
from scalekit.model.functional import count_actual_params, define


def model_cfg(**kw) -> ml_collections.ConfigDict:
    cfg = default_config()
    cfg.model.update(kw)
    return resolve(cfg, 100).model


def test_hand_computed_small_model():
    # d=8, 1 layer, 2 heads of 4, gelu d_ff=32, vocab 100, untied, no qk-norm.
    m = model_cfg(d_model=8, n_layers=1, n_heads=2, mlp="gelu", d_ff=32)
    attention = 4 * 8 * 8  # q, k, v, o: each 8 x (2 x 4)
    mlp = 2 * 8 * 32
    embeddings = 2 * 100 * 8  # embedding + unembedding
    norms = 2 * 8 + 8  # two per layer + final
    assert counting.count_params(m, "total") == attention + mlp + embeddings + norms
    assert counting.count_params(m, "non_embedding") == attention + mlp + norms
    assert counting.count_params(m, "chinchilla") == attention + mlp + embeddings
    # 6N convention: 6 x total; palm: matmuls incl. output layer (not the lookup) + 12 L H Q T.
    assert counting.flops_per_token(m, 16, "6N") == 6 * (attention + mlp + embeddings + norms)
    assert counting.flops_per_token(m, 16, "palm") == 6 * (attention + mlp + 100 * 8) + 12 * 1 * 2 * 4 * 16


def test_gqa_swiglu_tied_qknorm_matches_built_model():
    m = model_cfg(d_model=64, n_layers=3, n_heads=8, n_kv_heads=2, mlp="swiglu", tie_embeddings=True,
                  qk_norm=True)
    assert m.d_ff == 192  # 8/3 * 64 rounded up to a multiple of 64
    built = define(m)
    actual = sum(int(x.size) for x in jax.tree.leaves(built.abstract_params))
    assert counting.count_params(m, "total") == actual
    # GQA: k and v are 64 x (2 x 8) each.
    assert counting.attention_params_per_layer(m) == 64 * 64 + 2 * 64 * 16 + 64 * 64


@pytest.mark.parametrize("mlp,tied", [("gelu", False), ("swiglu", False), ("gelu", True)])
def test_count_matches_materialised_params(mlp, tied):
    from scalekit.model.functional import init_params
    m = model_cfg(d_model=32, n_layers=2, n_heads=4, mlp=mlp, tie_embeddings=tied)
    assert counting.count_params(m, "total") == count_actual_params(init_params(m, 0))


def _chinchilla_rows(shared_data):
    with open(shared_data / "chinchilla_model_configs" / "chinchilla_model_parameters.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("row_index", [0, 7, 20, 35, 49])
def test_chinchilla_table_a9_conventions(shared_data, row_index):
    """The 'Untied (Un)Embed, Gating' and 'Tied, No Gating' columns (millions, rounded) of Chinchilla Table A9."""
    row = _chinchilla_rows(shared_data)[row_index]
    d, ff, kv, heads, layers, vocab = (int(row[k]) for k in
                                       ("d_model", "ffw_size", "kv_size", "n_heads", "n_layers", "Vocab Size"))
    base = dict(vocab_size=vocab, d_model=d, n_layers=layers, n_heads=heads, head_dim=kv, d_ff=ff)
    untied_gated = counting.count_params(ml_collections.ConfigDict(
        dict(base, mlp="swiglu", tie_embeddings=False, n_kv_heads=heads, qk_norm=False)), "chinchilla")
    tied_plain = counting.count_params(ml_collections.ConfigDict(
        dict(base, mlp="gelu", tie_embeddings=True, n_kv_heads=heads, qk_norm=False)), "chinchilla")
    assert round(untied_gated / 1e6) == pytest.approx(float(row["Untied (Un)Embed, Gating"]), abs=1)
    assert round(tied_plain / 1e6) == pytest.approx(float(row["Tied (Un)Embed, No Gating"]), abs=1)
    # The embedding column is exact.
    assert vocab * d == int(row["Embedding Parameters"])
    assert layers * (4 * d * heads * kv) == int(row["Total Attn Params"])


def test_chinchilla_flops_exceed_6n_by_attention_share():
    """Appendix F counts attention logits; at long context that is a visible share over 6N (non-embedding)."""
    m = model_cfg(d_model=512, n_layers=8, n_heads=8, mlp="gelu", d_ff=2048, tie_embeddings=True)
    short, long = counting.flops_per_token(m, 128, "chinchilla"), counting.flops_per_token(m, 8192, "chinchilla")
    assert long > short
    # attention logits + reduce grow 3 x 2 x 2 T H Q per layer per token (forward + backward)
    assert long - short == pytest.approx(3 * 8 * (4 * (8192 - 128) * 512 + 3 * 8 * (8192 - 128)))


def test_unknown_convention_errors():
    m = model_cfg()
    with pytest.raises(ValueError, match="unknown parameter convention"):
        counting.count_params(m, "kaplan")
    with pytest.raises(ValueError, match="unknown FLOP convention"):
        counting.flops_per_token(m, 16, "8N")
