"""The one place that turns a ConfigDict into checked settings.

`default_config()` is the full schema with every group and its defaults; presets in `configs/` start from it.
`validate(cfg)` checks every field and raises `ConfigError` naming the field and the fix. `resolve(cfg, ...)`
fills the derived fields (vocab size from the data, head_dim, d_ff, n_kv_heads) so downstream code never guesses.
"""

from __future__ import annotations

import math
import re
from typing import Any

import ml_collections


class ConfigError(ValueError):
    """A config field is invalid; the message names the field and how to fix it."""


def default_config() -> ml_collections.ConfigDict:
    """Return the full config schema with defaults (a tiny model on the synthetic language)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.steps = 200
    c.eval_every = 50  # steps between held-out evaluations (0 = only at the end)
    c.eval_batches = 4  # batches per evaluation
    c.log_every = 1
    c.steps_per_dispatch = 0  # steps per jitted call (a lax.scan block); 0 = chosen from the step time (dispatch.py)
    c.init_from = ""  # a checkpoint dir/run workdir whose parameters start this run (fine-tuning)
    c.profile_steps = ""  # "A:B" writes a jax.profiler trace for steps A..B-1
    c.peak_flops = 0.0  # FLOP/s per device used for MFU; 0 = measure a matmul at start
    c.progress = True  # a progress bar on a terminal
    c.compilation_cache_dir = ""  # persistent XLA cache ("" = off)

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # -1 absorbs the devices left over
    c.mesh.fsdp = 1
    c.mesh.tensor = 1

    m = c.model = ml_collections.ConfigDict()
    m.vocab_size = 0  # 0 = take it from the data source
    m.d_model = 64
    m.n_layers = 2
    m.n_heads = 4
    m.n_kv_heads = 0  # 0 = n_heads (plain multi-head); fewer = grouped-query attention
    m.head_dim = 0  # 0 = d_model // n_heads
    m.d_ff = 0  # 0 = 4 d_model (gelu) or the SwiGLU size 8/3 d_model rounded up to a multiple of 64
    m.mlp = "swiglu"  # "swiglu" | "gelu"
    m.tie_embeddings = False
    m.qk_norm = False
    m.rope_theta = 10000.0
    m.z_loss = 0.0  # coefficient of the z-loss (log Z)^2; 0 = off
    m.dtype = "float32"  # compute dtype: "float32" | "bfloat16" (parameters stay float32)
    m.remat = False  # rematerialise each block in the backward pass
    m.parametrization = "standard"  # "standard" | "mup" (model/mup.py: learning rates and scales that transfer)
    m.base_width = 0  # muP: the d_model whose hyperparameters transfer (0 = this model's d_model: no rescaling)
    m.base_head_dim = 0  # muP: the head dimension at base width (0 = base_width // n_heads)

    d = c.data = ml_collections.ConfigDict()
    d.source = "synthetic"  # "synthetic" | "bytes" | "tokens" | "task"
    d.seq_len = 64
    d.batch_size = 16  # global batch, in sequences
    d.path = ""  # bytes: a directory, file or glob ("" = the Python standard library); tokens: a .bin/.npy file
    d.eval_path = ""  # tokens: a held-out file ("" = hold out the tail of `path`)
    d.heldout_fraction = 0.05  # bytes/tokens: share of the corpus kept for evaluation
    d.token_dtype = "uint16"  # tokens: dtype of the raw file
    d.vocab_size = 64  # synthetic: alphabet size; tokens: vocabulary (0 = max token + 1)
    d.markov_order = 2  # synthetic: context length k of the order-k Markov chain
    d.concentration = 0.3  # synthetic: Dirichlet concentration of the transition rows (lower = lower entropy)
    d.language_seed = 1234  # synthetic: which language (fixed across runs so results compare)
    d.task = "addition"  # task source: which verifiable task family
    d.difficulty = 2  # task source: difficulty level
    d.worker_count = 0  # grain worker processes (0 = in-process)
    d.prefetch = 2  # batches prefetched by a host thread

    o = c.optimizer = ml_collections.ConfigDict()
    o.lr = 3e-3
    o.schedule = "cosine"  # "cosine" (warmup + cosine) | "wsd" (warmup-stable-decay) | "constant" (warmup + flat)
    o.warmup_steps = 20
    o.decay_fraction = 0.2  # wsd: final share of steps spent decaying
    o.min_lr_ratio = 0.1  # final lr as a share of lr (cosine, wsd)
    o.b1 = 0.9
    o.b2 = 0.95
    o.eps = 1e-8
    o.weight_decay = 0.1
    o.grad_clip = 1.0  # global-norm clip; 0 = off
    o.microbatches = 1  # gradient accumulation: the batch is split into this many scanned microbatches

    k = c.checkpoint = ml_collections.ConfigDict()
    k.every = 0  # steps between saves; 0 = only at the end
    k.keep = 3  # how many recent checkpoints to keep
    k.keep_period = 0  # also keep every M-th step forever (0 = off)
    k.dir = ""  # "" = <workdir>/checkpoints; any path orbax/etils.epath accepts (gs://, s3://)
    k.async_save = True

    ob = c.observe = ml_collections.ConfigDict()
    ob.prometheus_port = 0  # 0 = off; otherwise base port (+ local process index)
    ob.prometheus_host = "127.0.0.1"
    ob.tensorboard = False
    ob.run_name = ""  # label on every metric ("" = the workdir's name)

    dist = c.distributed = ml_collections.ConfigDict()
    dist.enabled = "auto"  # "auto" (detect Slurm/Kubernetes/env) | "on" | "off"
    dist.coordinator_address = ""
    dist.num_processes = 0
    dist.process_id = -1
    dist.local_device_ids = ""  # comma-separated; "" = all visible / from the cluster
    dist.mode = "per_gpu"  # "per_gpu": one process per GPU | "per_node": one process per node
    dist.timeout_s = 300
    return c


# --- validation ------------------------------------------------------------------------------------------------------

_CHOICES: dict[str, tuple[str, ...]] = {
    "model.mlp": ("swiglu", "gelu"),
    "model.dtype": ("float32", "bfloat16"),
    "model.parametrization": ("standard", "mup"),
    "data.source": ("synthetic", "bytes", "tokens", "task"),
    "data.token_dtype": ("uint16", "uint32", "int32"),
    "optimizer.schedule": ("cosine", "wsd", "constant"),
    "distributed.enabled": ("auto", "on", "off"),
    "distributed.mode": ("per_gpu", "per_node"),
}
_POSITIVE = ("steps", "model.d_model", "model.n_layers", "model.n_heads", "data.seq_len", "data.batch_size",
             "optimizer.lr", "optimizer.microbatches", "checkpoint.keep", "eval_batches", "log_every")
_NON_NEGATIVE = ("eval_every", "steps_per_dispatch", "model.n_kv_heads", "model.head_dim", "model.d_ff",
                 "model.base_width", "model.base_head_dim",
                 "model.vocab_size", "model.z_loss",
                 "optimizer.warmup_steps", "optimizer.weight_decay", "optimizer.grad_clip", "checkpoint.every",
                 "checkpoint.keep_period", "peak_flops", "observe.prometheus_port", "data.worker_count",
                 "data.prefetch")


def _get(cfg: ml_collections.ConfigDict, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def _leaves(cfg: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted name, value) for every non-group field."""
    out: list[tuple[str, Any]] = []
    for key, value in cfg.items():
        if isinstance(value, ml_collections.ConfigDict):
            out += _leaves(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Check every field; raise ConfigError listing each problem with its fix."""
    problems: list[str] = []
    for name, value in _leaves(cfg):
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{name}={value!r} is not a finite number; set --config.{name} to a finite value")
    if problems:  # the range checks below would only repeat these
        raise ConfigError("invalid config: " + "; ".join(problems))
    for name, choices in _CHOICES.items():
        value = _get(cfg, name)
        if value not in choices:
            problems.append(f"{name}={value!r} is not one of {choices}; set --config.{name}=<one of them>")
    for name in _POSITIVE:
        if not _get(cfg, name) > 0:
            problems.append(f"{name}={_get(cfg, name)!r} must be > 0")
    for name in _NON_NEGATIVE:
        if not _get(cfg, name) >= 0:
            problems.append(f"{name}={_get(cfg, name)!r} must be >= 0")
    port = cfg.observe.prometheus_port
    if port > 65535:
        problems.append(f"observe.prometheus_port={port} is not a TCP port; use 1..65535 (0 = off)")
    m = cfg.model
    if m.n_heads > 0 and m.head_dim == 0 and m.d_model % m.n_heads:
        problems.append(f"model.d_model={m.d_model} is not divisible by model.n_heads={m.n_heads}; "
                        "change one or set model.head_dim explicitly")
    kv = m.n_kv_heads or m.n_heads
    if m.n_heads > 0 and kv > 0 and m.n_heads % kv:
        problems.append(f"model.n_heads={m.n_heads} is not a multiple of model.n_kv_heads={kv} (grouped-query "
                        "attention shares each kv head among n_heads/n_kv_heads query heads)")
    if m.parametrization != "mup" and (m.base_width or m.base_head_dim):
        problems.append(f"model.base_width={m.base_width}, model.base_head_dim={m.base_head_dim} only apply under "
                        "muP: set --config.model.parametrization=mup, or leave them 0")
    head_dim = m.head_dim or (m.d_model // max(m.n_heads, 1))
    if head_dim % 2:
        problems.append(f"head dimension {head_dim} must be even for rotary embeddings; adjust model.d_model, "
                        "model.n_heads or model.head_dim")
    for axis in ("data", "fsdp", "tensor"):
        size = cfg.mesh[axis]
        if size == 0 or size < -1:
            problems.append(f"mesh.{axis}={size} must be a positive size or -1 (absorb the remaining devices)")
    if [cfg.mesh[a] for a in ("data", "fsdp", "tensor")].count(-1) > 1:
        problems.append("only one of mesh.data, mesh.fsdp, mesh.tensor may be -1")
    if cfg.data.batch_size % max(cfg.optimizer.microbatches, 1):
        problems.append(f"data.batch_size={cfg.data.batch_size} is not divisible by optimizer.microbatches="
                        f"{cfg.optimizer.microbatches}")
    if cfg.optimizer.warmup_steps > cfg.steps:
        problems.append(f"optimizer.warmup_steps={cfg.optimizer.warmup_steps} exceeds steps={cfg.steps}")
    if not 0.0 <= cfg.optimizer.min_lr_ratio <= 1.0:
        problems.append(f"optimizer.min_lr_ratio={cfg.optimizer.min_lr_ratio} must be in [0, 1]")
    if not 0.0 < cfg.optimizer.decay_fraction <= 1.0:
        problems.append(f"optimizer.decay_fraction={cfg.optimizer.decay_fraction} must be in (0, 1]")
    if not 0.0 < cfg.data.heldout_fraction < 1.0:
        problems.append(f"data.heldout_fraction={cfg.data.heldout_fraction} must be in (0, 1)")
    if cfg.data.source == "synthetic":
        if cfg.data.vocab_size < 2:
            problems.append(f"data.vocab_size={cfg.data.vocab_size} must be >= 2 for the synthetic language")
        if cfg.data.markov_order < 1:
            problems.append(f"data.markov_order={cfg.data.markov_order} must be >= 1")
        if cfg.data.concentration <= 0:
            problems.append(f"data.concentration={cfg.data.concentration} must be > 0")
    if cfg.data.source == "tokens" and not cfg.data.path:
        problems.append("data.source='tokens' needs data.path: a .bin (raw uint16/uint32) or .npy token file")
    if cfg.profile_steps and not re.fullmatch(r"\d+:\d+", cfg.profile_steps):
        problems.append(f"profile_steps={cfg.profile_steps!r} must look like A:B (first step, step after the last)")
    elif cfg.profile_steps:
        a, b = map(int, cfg.profile_steps.split(":"))
        if b <= a:
            problems.append(f"profile_steps={cfg.profile_steps!r}: B must be greater than A")
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))


def resolve(cfg: ml_collections.ConfigDict, vocab_size: int | None = None) -> ml_collections.ConfigDict:
    """Return a copy with derived model fields filled (vocab from data, n_kv_heads, head_dim, d_ff)."""
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    m = cfg.model
    if m.vocab_size == 0:
        if vocab_size is None:
            raise ConfigError("model.vocab_size=0 means 'from the data', but no data vocabulary was given")
        m.vocab_size = int(vocab_size)
    elif vocab_size is not None and m.vocab_size < vocab_size:
        raise ConfigError(f"model.vocab_size={m.vocab_size} is smaller than the data's vocabulary {vocab_size}; "
                          "set --config.model.vocab_size=0 to take it from the data")
    m.n_kv_heads = m.n_kv_heads or m.n_heads
    m.head_dim = m.head_dim or m.d_model // m.n_heads
    if m.d_ff == 0:
        m.d_ff = 4 * m.d_model if m.mlp == "gelu" else 64 * math.ceil(8 * m.d_model / 3 / 64)
    return cfg
