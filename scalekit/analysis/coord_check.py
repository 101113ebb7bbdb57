"""The muP coordinate check (Yang et al. 2022, "Tensor Programs V", Figures 1 and 5; the mup package's coord_check).

Train the same model at several widths for a few Adam steps and watch the size of every layer's output: under a
correct muP the root-mean-square coordinate of each activation stays the same as the width grows (log-log slope
near 0 against width), while under standard parametrization with a fixed Adam learning rate the hidden and output
activations blow up with width after the first updates (slope near 1: an update of size lr to every entry of a
fan-in-n matrix moves its output by about n * lr).

Widths: width w sets d_model = w; n_heads stays the config's (head_dim = w / n_heads grows with the width, so
under muP the attention scale is 1/head_dim, with base_head_dim = base_width / n_heads); d_ff follows the config's
convention at the base width (model.d_ff = 0: scalekit.config.resolve's 4 w for GELU, 8/3 w rounded up to a multiple
of 64 for SwiGLU; an explicit d_ff in proportion to d_model) and grows exactly in proportion to the width from there,
as muP's one width multiplier assumes (model/mup.py). base_width = the smallest width, so muP and standard are the same
model there. Every width trains on the same batches of the config's data pipeline (make_batches, train split) with
AdamW (the config's betas, eps and weight decay; constant learning rate `lr`, no warmup, no gradient clipping, so
that the updates are exactly what the parametrization prescribes), and after each step the activations are measured
on one fixed probe batch (the first batch of the eval split), so a change is the parameters' doing alone.

Recorded per layer (the mup package's choice: every residual branch before it is added, and the stream):
  embed                     the embedding output (the residual stream's start)
  block{i}.attn             the attention output of block i (its residual branch, before the add)
  block{i}.mlp              the MLP output of block i (its residual branch, before the add)
  block{i}.resid            the residual stream after block i
  logits                    the output logits (after the muP output multiplier)
RMS = sqrt(mean of squares over batch, positions and features). Step 0 is the initialisation, step t the model
after t updates. Also recorded: `delta`, the RMS of each activation's change since initialisation (x_t - x_0 on the
probe batch), which leaves out parts that start width-dependent on purpose: muP's logits start at 1/sqrt(m) of
standard's (Table 3's readout initialisation: the 1/m output multiplier on a readout initialised sqrt(m) larger, as
the mup package's MuReadout), so at small widths and few steps muP's logit sizes still slope down until the
readout's width-independent updates outgrow the initial part (a larger lr or more steps gets there sooner); muP's
1/head_dim attention also starts closer to uniform at larger head_dim. The slope of a layer at a step is the
least-squares slope of log RMS on log width; a group's slope (embedding, attention out, MLP out, residual, logits)
is the mean of its layers' slopes, which is also the slope of the group's geometric-mean RMS (the widths are the
same for every layer).

    from scalekit.analysis.coord_check import coord_check, plot_coord_check
    results = {p: coord_check(cfg, [64, 128, 256, 512], parametrization=p) for p in ("standard", "mup")}
    plot_coord_check(results, "coord_check.png")
"""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

GROUPS = ("embedding", "attention out", "MLP out", "residual", "logits")
PARAM_TITLE = {"standard": "standard parametrization", "mup": "µP (maximal update)"}
DEFAULT_LR = 1e-2  # Adam; large enough that standard's growth with width shows within 3-5 steps


def layer_group(layer: str) -> str:
    """The group of a layer name (see the module doc)."""
    if layer == "embed":
        return "embedding"
    if layer == "logits":
        return "logits"
    return {"attn": "attention out", "mlp": "MLP out", "resid": "residual"}[layer.rsplit(".", 1)[1]]


def layer_names(n_layers: int) -> list[str]:
    """The recorded layers, in forward order."""
    names = ["embed"]
    for i in range(n_layers):
        names += [f"block{i}.attn", f"block{i}.mlp", f"block{i}.resid"]
    return names + ["logits"]


def loglog_slope(widths: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of log(values) on log(widths)."""
    x, y = np.log(np.asarray(widths, np.float64)), np.log(np.asarray(values, np.float64))
    x = x - x.mean()
    return float(np.dot(x, y - y.mean()) / np.dot(x, x))


@dataclasses.dataclass
class CoordCheck:
    """The coordinate check of one parametrization: RMS per (layer, width, step) and its log-log slopes.

    `rms` is the size of each activation; `delta` the size of its change since initialisation on the same probe
    batch, x_t - x_0 (what Yang et al. 2022's Figure 5 plots): muP makes both width-independent except where the
    initial value itself shrinks with width (muP's logits start at 1/sqrt(m) of standard's, and its 1/head_dim attention
    starts more uniform at larger head_dim), which `delta` leaves out.
    """

    parametrization: str
    widths: list[int]
    steps: int
    lr: float
    seeds: int
    n_heads: int
    layers: list[str]
    rms: np.ndarray  # [layer, width, step 0..steps]: mean over seeds of the RMS
    delta: np.ndarray  # [layer, width, step 0..steps]: mean over seeds of the RMS of (activation - its initial value)
    losses: np.ndarray  # [width, step 1..steps]: training loss of each step's batch (mean over seeds)

    @property
    def groups(self) -> dict[str, list[str]]:
        """Group name -> its layers (groups with no layer are left out)."""
        out: dict[str, list[str]] = {}
        for layer in self.layers:
            out.setdefault(layer_group(layer), []).append(layer)
        return {g: out[g] for g in GROUPS if g in out}

    def _layer_slopes(self, values: np.ndarray, first: int = 0) -> dict[str, list[float]]:
        return {layer: [loglog_slope(self.widths, values[i, :, t]) for t in range(first, self.steps + 1)]
                for i, layer in enumerate(self.layers)}

    def _group_mean(self, slopes: dict[str, list[float]]) -> dict[str, list[float]]:
        return {g: [float(x) for x in np.mean([slopes[layer] for layer in ls], axis=0)]
                for g, ls in self.groups.items()}

    @property
    def slopes(self) -> dict[str, list[float]]:
        """Layer -> the log-log slope of RMS against width at each step 0..steps."""
        return self._layer_slopes(self.rms)

    @property
    def group_slopes(self) -> dict[str, list[float]]:
        """Group -> the mean of its layers' slopes at each step 0..steps."""
        return self._group_mean(self.slopes)

    @property
    def delta_slopes(self) -> dict[str, list[float]]:
        """Layer -> the log-log slope of the change's RMS against width at each step 1..steps (index 0 = step 1)."""
        return self._layer_slopes(self.delta, first=1)

    @property
    def group_delta_slopes(self) -> dict[str, list[float]]:
        """Group -> the mean of its layers' change slopes at each step 1..steps (index 0 = step 1)."""
        return self._group_mean(self.delta_slopes)

    def group_rms(self, group: str, step: int | None = None, *, change: bool = False) -> np.ndarray:
        """Geometric mean over the group's layers of the RMS (change=True: of the change since initialisation) at
        `step` (default the last), one per width."""
        step = self.steps if step is None else step
        idx = [self.layers.index(layer) for layer in self.groups[group]]
        values = self.delta if change else self.rms
        return np.exp(np.mean(np.log(values[idx, :, step]), axis=0))

    def table(self) -> list[dict[str, Any]]:
        """One row per (layer, width, step): layer, group, width, step, rms, delta (RMS of the change)."""
        return [{"layer": layer, "group": layer_group(layer), "width": int(w), "step": t,
                 "rms": float(self.rms[i, j, t]), "delta": float(self.delta[i, j, t])}
                for i, layer in enumerate(self.layers) for j, w in enumerate(self.widths)
                for t in range(self.steps + 1)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: settings, the table, per-layer and per-group slopes at every step, and the losses."""
        return {"parametrization": self.parametrization, "widths": list(map(int, self.widths)), "steps": self.steps,
                "lr": self.lr, "seeds": self.seeds, "n_heads": self.n_heads, "layers": list(self.layers),
                "table": self.table(), "slopes": self.slopes, "group_slopes": self.group_slopes,
                "delta_slopes": self.delta_slopes, "group_delta_slopes": self.group_delta_slopes,
                "final_group_slopes": {g: v[-1] for g, v in self.group_slopes.items()},
                "final_group_delta_slopes": {g: v[-1] for g, v in self.group_delta_slopes.items()},
                "losses": {str(int(w)): [float(x) for x in self.losses[j]] for j, w in enumerate(self.widths)}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CoordCheck:
        """Inverse of to_dict (from the table)."""
        widths, layers, steps = list(d["widths"]), list(d["layers"]), int(d["steps"])
        rms = np.zeros((len(layers), len(widths), steps + 1))
        delta = np.zeros_like(rms)
        for row in d["table"]:
            at = layers.index(row["layer"]), widths.index(row["width"]), row["step"]
            rms[at], delta[at] = row["rms"], row["delta"]
        losses = np.array([d["losses"][str(w)] for w in widths], np.float64).reshape(len(widths), steps)
        return cls(d["parametrization"], widths, steps, float(d["lr"]), int(d["seeds"]), int(d["n_heads"]), layers,
                   rms, delta, losses)


# --- the check --------------------------------------------------------------------------------------------------------

def check_widths(model_cfg: Any, widths: Sequence[int], flag: str = "widths") -> list[int]:
    """The widths, sorted, if each is a positive integer giving an even head_dim with the config's n_heads; else a
    ValueError naming `flag` and the fix."""
    n_heads = int(model_cfg.n_heads)
    ws = []
    for w in widths:
        if isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < 1:
            raise ValueError(f"{flag}: {w!r} is not a positive integer; give widths like 64,128,256")
        ws.append(int(w))
    if len(set(ws)) < 2:
        raise ValueError(f"{flag}: got {len(set(ws))} distinct width(s); a slope needs at least 2, e.g. 64,128,256")
    for w in ws:
        if w % n_heads:
            raise ValueError(f"{flag}: width {w} is not divisible by model.n_heads={n_heads} (heads stay fixed, "
                             f"head_dim = width / n_heads); give multiples of {2 * n_heads}")
        if (w // n_heads) % 2:
            raise ValueError(f"{flag}: width {w} gives head_dim {w // n_heads}, odd (rotary embeddings need it "
                             f"even); give multiples of {2 * n_heads}")
    return sorted(set(ws))


def base_d_ff(model_cfg: Any, base_width: int) -> int:
    """d_ff at the base width: the config's explicit d_ff scaled from its d_model, else resolve's convention (4 w for
    GELU, 8/3 w rounded up to a multiple of 64 for SwiGLU) at w = base_width."""
    if model_cfg.d_ff:
        return max(1, round(model_cfg.d_ff * base_width / model_cfg.d_model))
    return 4 * base_width if model_cfg.mlp == "gelu" else 64 * math.ceil(8 * base_width / 3 / 64)


def width_config(cfg: Any, width: int, parametrization: str, base_width: int, vocab: int) -> Any:
    """The resolved config at `width`: d_model = width, n_heads fixed (head_dim = width / n_heads), d_ff exactly
    proportional to the width (base_d_ff * width / base_width, as muP's single width multiplier assumes: the
    SwiGLU convention's rounding to 64 would change d_ff / d_model between small widths), muP's base = base_width."""
    from scalekit.config import resolve

    c = copy.deepcopy(cfg)
    m = c.model
    m.d_ff = max(1, round(base_d_ff(cfg.model, base_width) * width / base_width))
    m.head_dim = 0
    m.d_model = width
    m.parametrization = parametrization
    m.base_width = base_width if parametrization == "mup" else 0
    m.base_head_dim = 0  # base_width // n_heads
    return resolve(c, vocab)


def _rms(x: Any) -> Any:
    import jax.numpy as jnp

    x = x.astype(jnp.float32)
    return jnp.sqrt(jnp.mean(x * x))


def forward_with_activations(model: Any, tokens_BL: Any, positions_BL: Any = None) -> tuple[Any, dict[str, Any]]:
    """(logits, {layer: activation}) of an NNX Transformer, walking its modules exactly as Transformer.__call__ and
    Block.__call__ do (remat changes no value, so it is not reproduced)."""
    import jax.numpy as jnp

    from scalekit.parallel.rules import constrain

    if positions_BL is None:
        positions_BL = jnp.broadcast_to(jnp.arange(tokens_BL.shape[1]), tokens_BL.shape)
    acts = {}
    x_BLD = model.embed(tokens_BL)
    acts["embed"] = x_BLD
    for i, block in enumerate(model.blocks):
        a_BLD = block.attn(block.attn_norm(x_BLD), positions_BL)
        x_BLD = constrain(x_BLD + a_BLD, ("batch", "length", "act_embed"))
        m_BLD = block.mlp(block.mlp_norm(x_BLD))
        x_BLD = constrain(x_BLD + m_BLD, ("batch", "length", "act_embed"))
        acts[f"block{i}.attn"], acts[f"block{i}.mlp"], acts[f"block{i}.resid"] = a_BLD, m_BLD, x_BLD
    logits_BLV = model.logits(x_BLD)
    acts["logits"] = logits_BLV
    return logits_BLV, acts


def _run_width(model_cfg: Any, opt_cfg: Any, batches: dict, probe_BL: Any, steps: int, seed: int,
               layers: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RMS [layer, step 0..steps], RMS of the change since initialisation [layer, step 0..steps] and losses [steps]
    of one width and seed: initialisation, the steps (a lax.scan) and the measurements in one compiled call."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from scalekit.model.functional import define, init_params
    from scalekit.model.transformer import cross_entropy
    from scalekit.train.optim import make_optimizer

    model_def = define(model_cfg)
    tx = make_optimizer(opt_cfg, steps, model_cfg)
    z_loss = float(model_cfg.z_loss)

    def activations(params):
        _, acts = forward_with_activations(nnx.merge(model_def.graphdef, params), probe_BL)
        return [acts[name].astype(jnp.float32) for name in layers]

    def loss_fn(params, batch):
        logits = nnx.merge(model_def.graphdef, params)(batch["inputs"])
        return cross_entropy(logits, batch["targets"], batch["weights"], z_loss)[0]

    @jax.jit
    def run(batches):
        params = init_params(model_cfg, seed)
        acts0 = activations(params)

        def measure(params):
            acts = activations(params)
            return (jnp.stack([_rms(a) for a in acts]), jnp.stack([_rms(a - a0) for a, a0 in zip(acts, acts0)]))

        def step(carry, batch):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params, batch)
            updates, opt_state = tx.update(grads, opt_state, params)
            params = jax.tree.map(lambda p, u: p + u, params, updates)
            return (params, opt_state), (*measure(params), loss)

        _, (rms, delta, losses) = jax.lax.scan(step, (params, tx.init(params)), batches)
        rms0, delta0 = measure(params)
        return jnp.concatenate([rms0[None], rms]), jnp.concatenate([delta0[None], delta]), losses

    rms, delta, losses = jax.device_get(run(batches))
    return np.asarray(rms).T, np.asarray(delta).T, np.asarray(losses)


def coord_check(base_cfg: Any, widths: Sequence[int], *, parametrization: str, steps: int = 5,
                lr: float = DEFAULT_LR, seeds: int = 1, seed: int = 0) -> CoordCheck:
    """The coordinate check of `parametrization` ("standard" | "mup") over `widths` (d_model values; base_width =
    the smallest): `steps` AdamW steps at constant `lr` on the config's data, RMS of every layer after each, averaged
    over `seeds` initialisations (seeds seed, seed+1, ...; the batches are the same for all). See the module doc."""
    from scalekit.config import validate
    from scalekit.data.pipeline import data_info, make_batches
    from scalekit.model.mup import PARAMETRIZATIONS

    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(f"parametrization={parametrization!r} is not one of {PARAMETRIZATIONS}")
    if int(steps) < 1:
        raise ValueError(f"steps={steps} must be at least 1")
    if int(seeds) < 1:
        raise ValueError(f"seeds={seeds} must be at least 1")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr={lr!r} must be a positive finite number")
    ws = check_widths(base_cfg.model, widths)
    cfg = copy.deepcopy(base_cfg)
    cfg.model.parametrization, cfg.model.base_width, cfg.model.base_head_dim = "standard", 0, 0
    validate(cfg)
    opt = cfg.optimizer
    opt.lr, opt.schedule, opt.warmup_steps, opt.grad_clip, opt.microbatches = float(lr), "constant", 0, 0.0, 1
    vocab = data_info(cfg.data).vocab_size
    train_it = make_batches(cfg.data, "train", int(seed))
    first = [next(train_it) for _ in range(int(steps))]
    batches = {k: np.stack([b[k] for b in first]) for k in ("inputs", "targets", "weights")}
    probe_BL = np.asarray(next(make_batches(cfg.data, "eval", int(seed)))["inputs"])
    layers = layer_names(int(cfg.model.n_layers))
    rms = np.zeros((len(layers), len(ws), int(steps) + 1))
    delta = np.zeros_like(rms)
    losses = np.zeros((len(ws), int(steps)))
    for j, w in enumerate(ws):
        mcfg = width_config(cfg, w, parametrization, ws[0], vocab).model
        for s in range(int(seeds)):
            r, d, loss = _run_width(mcfg, opt, batches, probe_BL, int(steps), int(seed) + s, layers)
            rms[:, j] += r / seeds
            delta[:, j] += d / seeds
            losses[j] += loss / seeds
    return CoordCheck(parametrization, ws, int(steps), float(lr), int(seeds), int(cfg.model.n_heads), layers, rms,
                      delta, losses)


# --- the plot ---------------------------------------------------------------------------------------------------------

GROUP_STYLE = {"embedding": ("#000000", "o"), "attention out": ("#E69F00", "s"), "MLP out": ("#0072B2", "^"),
               "residual": ("#009E73", "D"), "logits": ("#D55E00", "v")}


def plot_coord_check(results: Mapping[str, CoordCheck], path: str | Path | None = None, step: int | None = None):
    """One panel per parametrization: RMS against width (log-log) at `step` (default the last), a line per layer
    group (geometric mean over its layers; the single layers faint behind it), the group's slope in the legend.
    Writes a PNG to `path` when given; returns the figure."""
    from matplotlib.figure import Figure  # no pyplot: renders with Agg whatever the session's backend
    from matplotlib.ticker import FixedLocator, NullLocator

    from scalekit.analysis.style import loglog

    items = list(results.items())
    fig = Figure(figsize=(5.4 * len(items), 4.6), layout="constrained")
    axes = fig.subplots(1, len(items), sharey=True, squeeze=False)
    for ax, (name, cc) in zip(axes[0], items):
        t = cc.steps if step is None else step
        gs = cc.group_slopes
        for g, ls in cc.groups.items():
            color, marker = GROUP_STYLE[g]
            for layer in ls:
                if len(ls) > 1:
                    ax.plot(cc.widths, cc.rms[cc.layers.index(layer), :, t], "-", color=color, lw=0.8, alpha=0.3)
            ax.plot(cc.widths, cc.group_rms(g, t), "-", color=color, marker=marker, lw=1.8, ms=6, mec="white",
                    mew=0.7, label=f"{g} (slope {gs[g][t]:+.2f})")
        loglog(ax)
        ax.xaxis.set_major_locator(FixedLocator(cc.widths))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([str(w) for w in cc.widths])
        ax.set_xlabel("width (d_model)")
        ax.set_title(f"{PARAM_TITLE.get(name, name)}\nafter {t} Adam step{'s' if t != 1 else ''}, lr {cc.lr:g}",
                     fontsize=11)
        ax.legend(fontsize=8.5, loc="best", title="layer group (log-log slope)", title_fontsize=8.5)
    axes[0][0].set_ylabel("RMS of activation coordinates")
    fig.suptitle("Coordinate check: activation size against width", fontsize=12)
    if path is not None:
        fig.savefig(path, dpi=150)
    return fig
