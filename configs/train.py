"""Training presets: `scalekit train --config configs/train.py:<preset>`.

The model ladder keeps head_dim at 32 (small) or 64/128 (large) and d_model / n_layers between 32 and 128, so that
the shapes are a consistent family for scaling sweeps. Sizes are non-embedding parameters, 12 L d^2 roughly.
"""

from scalekit.config import default_config

# name: (d_model, n_layers, n_heads)
LADDER = {
    "tiny": (64, 2, 2),  # ~0.1M: trains in seconds on a laptop CPU
    "xs": (96, 3, 3),  # ~0.33M
    "s": (128, 4, 4),  # ~0.8M
    "m": (192, 4, 6),  # ~1.8M
    "l": (256, 6, 8),  # ~4.7M
    "xl": (384, 6, 6),  # ~10.6M
    "bench19m": (512, 6, 8),  # ~19M: the CPU benchmark model
    "125m": (768, 12, 12),
    "350m": (1024, 24, 16),
    "760m": (1536, 24, 16),
    "1b": (2048, 18, 16),  # ~0.9B non-embedding; ~1B with a 32k vocabulary
}


def get_config(preset: str = "tiny"):
    """The default config with the preset's model shape."""
    if preset not in LADDER:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(LADDER)}")
    cfg = default_config()
    cfg.model.d_model, cfg.model.n_layers, cfg.model.n_heads = LADDER[preset]
    if preset == "tiny":
        cfg.steps = 150
        cfg.eval_every = 50
    elif preset not in ("xs", "s", "m"):
        cfg.data.seq_len = 256
        cfg.data.batch_size = 8
        cfg.optimizer.lr = 1e-3
    return cfg
