"""muP (model/mup.py, train/optim.py): at the base width it trains exactly as standard; away from it, the multipliers
per parameter group are Yang et al. 2022's for Adam (hidden matrices' learning rate and the logits times 1/m,
attention scaled by 1/d_head), the KV-cache decoder uses the same attention scale, and run keys of standard configs
are what they were before the muP fields existed."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from train_helpers import read_metrics, tiny  # noqa: E402

from scalekit.config import ConfigError, default_config, resolve, validate  # noqa: E402
from scalekit.infer.decode import Decoder  # noqa: E402
from scalekit.infer.sampling import SamplingConfig  # noqa: E402
from scalekit.model import mup  # noqa: E402
from scalekit.model.functional import apply, define, init_params  # noqa: E402
from scalekit.runkey import identity, run_key  # noqa: E402
from scalekit.train.loop import train  # noqa: E402
from scalekit.train.optim import make_optimizer  # noqa: E402

VOCAB = 32


def model_cfg(**fields):
    cfg = default_config()
    cfg.model.update({"d_model": 64, "n_layers": 2, "n_heads": 4, **fields})
    return resolve(cfg, VOCAB).model


def test_mup_at_the_base_width_trains_exactly_as_standard(tmp_path):
    std = train(tiny(steps=8), tmp_path / "std")
    mu = train(tiny(steps=8, model__parametrization="mup"), tmp_path / "mup")  # base_width 0: this width
    curve = lambda d, f: {s: r[f] for s, r in read_metrics(d).items()}  # noqa: E731
    for field in ("loss", "grad_norm", "lr"):
        assert curve(tmp_path / "mup", field) == curve(tmp_path / "std", field), field  # exact float equality
    assert mu["final_loss"] == std["final_loss"]
    width = tiny().model.d_model
    explicit = train(tiny(steps=8, model__parametrization="mup", model__base_width=width), tmp_path / "explicit")
    assert explicit["final_loss"] == std["final_loss"]


def test_scales_by_hand():
    # d_model 256 = 4 x base 64; 4 heads: head_dim 64, base head_dim 64/4 = 16
    s = mup.scales(model_cfg(d_model=256, parametrization="mup", base_width=64))
    assert (s.width_mult, s.hidden_lr, s.output_mult) == (4.0, 0.25, 0.25)
    assert s.attn_scale == math.sqrt(16) / 64 == 1 / 16        # 1/d_head, equal to 1/sqrt(16) at the base
    s = mup.scales(model_cfg(d_model=256, parametrization="mup", base_width=64, base_head_dim=64))
    assert s.attn_scale is None                                  # heads grew, not head_dim: the standard scale
    assert mup.scales(model_cfg(d_model=256)) == mup.MupScales(1.0, 1.0, 1.0, None)


def test_adam_learning_rate_multipliers_per_parameter_group():
    """One AdamW update from the same parameters and gradients: hidden matrices move 1/m as far under muP, the
    embedding, readout and norm scales as far as under standard (Yang et al. 2022, Table 3, Adam)."""
    base, wide = 32, 128                                        # m = 4
    std_cfg, mup_cfg = model_cfg(d_model=wide), model_cfg(d_model=wide, parametrization="mup", base_width=base)
    params = init_params(std_cfg, 0)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.01) * jnp.sign(p + 1e-3), params)
    opt = default_config().optimizer
    opt.warmup_steps = 0
    updates = {}
    for name, mcfg in (("std", std_cfg), ("mup", mup_cfg)):
        tx = make_optimizer(opt, 10, mcfg)
        updates[name], _ = tx.update(grads, tx.init(params), params)
    seen = set()

    def check(path, u_std, u_mup):
        leaf = str(path[-1].key)
        ratio = 0.25 if leaf in ("q_DNH", "k_DKH", "v_DKH", "o_NHD", "up_DF", "gate_DF", "down_FD") else 1.0
        np.testing.assert_array_equal(np.asarray(u_mup), np.asarray(u_std) * np.float32(ratio), err_msg=leaf)
        seen.add((leaf, ratio))
    jax.tree_util.tree_map_with_path(check, updates["std"], updates["mup"])
    assert {("embed_VD", 1.0), ("unembed_DV", 1.0), ("scale", 1.0), ("q_DNH", 0.25), ("down_FD", 0.25)} <= seen


def test_the_readout_starts_sqrt_m_larger_and_everything_else_as_standard():
    std = init_params(model_cfg(d_model=128), 0)
    mu = init_params(model_cfg(d_model=128, parametrization="mup", base_width=32), 0)   # m = 4: sqrt(m) = 2

    def check(path, a, b):
        ratio = 2.0 if str(path[-1].key) == "unembed_DV" else 1.0   # Table 3: readout variance 1/fan_in^2
        np.testing.assert_allclose(np.asarray(b), np.asarray(a) * ratio, rtol=1e-6, err_msg=str(path))
    jax.tree_util.tree_map_with_path(check, std, mu)
    assert float(np.std(np.asarray(mu["unembed_DV"]))) == pytest.approx(32 ** -0.5 * 0.88, rel=0.05)  # truncated


def test_logits_carry_the_output_multiplier():
    base_hd = 16                                                # = head_dim: attention scale unchanged
    std_cfg = model_cfg(d_model=64)
    mup_cfg = model_cfg(d_model=64, parametrization="mup", base_width=16, base_head_dim=base_hd)
    params = init_params(std_cfg, 0)
    tokens = jnp.arange(16, dtype=jnp.int32).reshape(2, 8) % VOCAB
    std = np.asarray(apply(define(std_cfg), params, tokens))
    mu = np.asarray(apply(define(mup_cfg), params, tokens))
    np.testing.assert_array_equal(mu, std * np.float32(0.25))   # m = 4: logits / 4, all else equal


def test_attention_scale_is_one_over_head_dim_away_from_the_base():
    cfg = model_cfg(d_model=64, parametrization="mup", base_width=64, base_head_dim=4)  # head_dim 16 = 4 x base
    params = init_params(cfg, 0)
    tokens = jnp.arange(16, dtype=jnp.int32).reshape(2, 8) % VOCAB
    mu = np.asarray(apply(define(cfg), params, tokens))
    std = np.asarray(apply(define(model_cfg(d_model=64)), params, tokens))
    assert not np.allclose(mu, std)                              # sqrt(4)/16 = 1/8 instead of 1/4
    q_scaled = jax.tree.map(lambda x: x, params)                 # 1/8 on scores == queries halved under 1/4
    for blk in q_scaled["blocks"].values():
        blk["attn"]["q_DNH"] = blk["attn"]["q_DNH"] * 0.5
    np.testing.assert_allclose(mu, np.asarray(apply(define(model_cfg(d_model=64)), q_scaled, tokens)), rtol=2e-5,
                               atol=2e-6)


def test_the_cached_decoder_uses_the_mup_attention_scale():
    cfg = model_cfg(d_model=64, parametrization="mup", base_width=16)  # head_dim 16, base head_dim 4
    model_def = define(cfg)
    dec = Decoder(model_def)
    params = dec.place(init_params(cfg, 0))
    prompts = np.random.default_rng(0).integers(1, VOCAB, (8, 5)).astype(np.int32)
    greedy = SamplingConfig(max_new_tokens=6, temperature=0.0)
    cached = dec.generate(params, prompts, np.full(8, 5), jax.random.key(0), greedy)
    uncached = dec.generate(params, prompts, np.full(8, 5), jax.random.key(0), greedy, cached=False)
    np.testing.assert_array_equal(cached.tokens, uncached.tokens)
    np.testing.assert_allclose(cached.logprobs, uncached.logprobs, atol=1e-4)


def test_config_checks_and_run_keys():
    cfg = default_config()
    cfg.model.base_width = 32
    with pytest.raises(ConfigError, match="only apply under muP"):
        validate(cfg)
    cfg.model.parametrization = "mu-p"
    with pytest.raises(ConfigError, match="model.parametrization='mu-p' is not one of"):
        validate(cfg)
    std = default_config()
    doc = identity(std.to_dict())
    assert "parametrization" not in doc["model"] and "base_width" not in doc["model"]  # standard: keys as before
    before = std.to_dict()
    for f in ("parametrization", "base_width", "base_head_dim"):
        del before["model"][f]
    assert run_key(std.to_dict()) == run_key(before)
    mu = default_config()
    mu.model.parametrization = "mup"
    assert run_key(mu.to_dict()) != run_key(std.to_dict())
