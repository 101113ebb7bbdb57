"""Sweep plans: declare a scaling study once, expand it into fully resolved, content-keyed runs.

A plan file (`experiments/*.py` or `configs/*.py`) exposes `get_plan() -> Plan` (optionally `get_plan(arg)`, chosen
with `PATH:ARG`) or a module-level `PLAN`. Two kinds of plan:

- `grid_plan`: model shapes x token budgets (or step counts) x learning rates x seeds.
- `isoflop_plan`: for each compute budget C and each model of a ladder, the tokens D that spend C under the chosen
  FLOP convention (C = flops_per_token(model) x D; "6N" is Chinchilla's 6ND, "palm" adds attention), rounded to
  whole steps of batch_size x seq_len tokens; combinations below `min_steps` are skipped.

Learning rates (`lrs`) are one list for every model, a mapping from model name to that model's own list (a grid
per size), or a callable `(model_name, model_fields, amount) -> list` (amount: the budget C of an IsoFLOP plan, the
tokens or steps of a grid), so a grid may follow the size or the budget; `lr_grid(center, factor, n)` makes a
geometric grid around a centre. The fits keep, per (size, budget) cell, the learning rate with the lowest loss
(`scalekit.analysis.lrsweep`).

Each run is the base preset's config with the plan's overrides, its model shape, steps, lr and seed applied, checked
with `scalekit.config.validate`. Its key is the sha256 of the canonical JSON of that config, leaving out fields that
do not change the result (progress display, logging, observability, checkpoint cadence, mesh, compilation cache):
the same experiment always gets the same key, so a result is never run or stored twice (`scalekit.runkey`).

Runs never share a checkpoint directory: a plan that sets `checkpoint.dir` gives each run its own subdirectory
`<checkpoint.dir>/<key[:12]>` (the same name as its run directory), so two runs never resume from each other.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import itertools
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import ml_collections

from scalekit.config import ConfigError, default_config, resolve, validate
from scalekit.model.counting import FLOP_CONVENTIONS, count_params, flops_per_token
from scalekit.runkey import IDENTITY_EXCLUDE, run_key  # noqa: F401 - re-exported: the key lives in scalekit.runkey

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_FIELDS = tuple(default_config().model.keys())


class PlanError(ValueError):
    """A plan cannot be loaded or expanded; the message says which run or field and how to fix it."""


# One list for every model; a list per model name; or (model_name, model_fields, amount) -> list.
LRs = Union[Sequence[float | None], Mapping[str, Sequence[float]], Callable[[str, dict, float], Sequence[float]]]


def lr_grid(center: float, factor: float = 2.0, n: int = 5) -> list[float]:
    """`n` learning rates spaced by `factor`, geometric and centred on `center`: center * factor^(j - (n-1)/2).

    lr_grid(1e-3) = [2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3]; an even n puts `center` between the middle two.
    """
    if not (isinstance(center, (int, float)) and math.isfinite(center) and center > 0):
        raise PlanError(f"lr_grid: center={center!r} must be a positive finite learning rate")
    if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 1):
        raise PlanError(f"lr_grid: factor={factor!r} must be a finite number > 1 (the ratio of neighbouring lrs)")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise PlanError(f"lr_grid: n={n!r} must be a whole number >= 1")
    return [float(center) * float(factor) ** (j - (n - 1) / 2.0) for j in range(n)]


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One planned training run: its full config, its identity and what it costs."""

    key: str
    name: str
    config: dict[str, Any]
    model: str
    lr: float
    seed: int
    steps: int
    tokens: int
    budget: float | None  # the IsoFLOP compute budget C it belongs to (None in a grid)
    flop_convention: str
    n_params: int  # total parameters
    n_params_nonembed: int
    flops: float  # palm convention (attention included), the same as the trainer's summary
    flops_6n: float  # 6 N_total D
    flops_plan: float  # under the plan's convention: the C the run spends
    est_time_s: float

    def fields(self) -> dict[str, Any]:
        """The plan-level fields stored next to the results (columns of the sweep DataFrame)."""
        return {"model": self.model, "lr": self.lr, "seed": self.seed, "steps": self.steps, "budget": self.budget,
                "flop_convention": self.flop_convention, "flops_plan": self.flops_plan}

    def to_row(self) -> dict[str, Any]:
        """The store row for this run before it has run."""
        return {"key": self.key, "name": self.name, "config": self.config, "fields": self.fields(),
                "n_params": self.n_params, "n_params_nonembed": self.n_params_nonembed, "tokens": self.tokens,
                "flops": self.flops, "flops_6n": self.flops_6n}


@dataclasses.dataclass
class Plan:
    """A scaling sweep: a base preset plus overrides, and the axes to expand (see `grid_plan`, `isoflop_plan`)."""

    name: str
    kind: str  # "grid" | "isoflop"
    models: Sequence[str | Mapping[str, Any]]
    base: str = "configs/train.py:tiny"
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    lrs: LRs = (None,)  # None: the base config's lr; see the module docstring for a per-size mapping or callable
    seeds: Sequence[int] = (0,)
    tokens: Sequence[int] | None = None  # grid: token budgets D
    steps: Sequence[int] | None = None  # grid: step counts (instead of tokens)
    budgets: Sequence[float] | None = None  # isoflop: compute budgets C in FLOPs
    flops: str = "6N"  # FLOP convention that turns C into D (one of scalekit.model.counting.FLOP_CONVENTIONS)
    min_steps: int = 1
    warmup_fraction: float | None = None  # set optimizer.warmup_steps = round(fraction x steps) per run
    throughput: float = 2e10  # achieved FLOP/s (palm convention) for time estimates
    overhead_s: float = 12.0  # per-run start-up and compile time for estimates (CPU, tiny models)
    skipped: list[str] = dataclasses.field(default_factory=list, compare=False)

    def expand(self) -> list[RunSpec]:
        """All runs of the plan, deduplicated by key, in plan order; raise PlanError on any bad entry."""
        return expand(self)


def grid_plan(name: str, models: Sequence[str | Mapping[str, Any]], *, tokens: Sequence[int] | None = None,
              steps: Sequence[int] | None = None, lrs: LRs = (None,), seeds: Sequence[int] = (0,),
              **kwargs: Any) -> Plan:
    """A grid over models x (token budgets or step counts) x learning rates x seeds.

    `lrs`: one list for every model, {model name: its list}, or a callable (model_name, model_fields, amount) ->
    list with amount the cell's tokens (or steps)."""
    if (tokens is None) == (steps is None):
        raise PlanError(f"grid plan {name!r}: give exactly one of tokens=[...] or steps=[...]")
    return Plan(name=name, kind="grid", models=list(models), tokens=tokens, steps=steps, lrs=_lrs_arg(lrs),
                seeds=list(seeds), **kwargs)


def isoflop_plan(name: str, models: Sequence[str | Mapping[str, Any]], budgets: Sequence[float], *,
                 flops: str = "6N", min_steps: int = 10, lrs: LRs = (None,),
                 seeds: Sequence[int] = (0,), **kwargs: Any) -> Plan:
    """For each compute budget C and model, train on the tokens that spend C under FLOP convention `flops`.

    `lrs`: one list for every model, {model name: its list}, or a callable (model_name, model_fields, C) -> list."""
    return Plan(name=name, kind="isoflop", models=list(models), budgets=list(budgets), flops=flops,
                min_steps=min_steps, lrs=_lrs_arg(lrs), seeds=list(seeds), **kwargs)


def _lrs_arg(lrs: LRs) -> LRs:
    """A plan's lrs as stored: a list (as before), a dict copy of a mapping, or the callable itself."""
    if callable(lrs):
        return lrs
    if isinstance(lrs, Mapping):
        return {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in lrs.items()}
    return list(lrs) if not isinstance(lrs, (str, bytes)) else lrs


# --- loading ---------------------------------------------------------------------------------------------------------

def _import_file(path: Path, what: str) -> Any:
    if not path.is_file():
        raise PlanError(f"{what} file {str(path)!r} does not exist")
    name = "_scalekit_plan_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PlanError(f"{what} file {str(path)!r} is not a python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look classes up by module name
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(name, None)
        raise PlanError(f"{what} file {str(path)!r} could not be loaded: {type(e).__name__}: {e}") from e
    return module


def _split_spec(spec: str) -> tuple[str, str | None]:
    if ".py:" in spec:
        path, _, arg = spec.rpartition(":")
        return path, arg
    return spec, None


def _find(path: str, near: Path | None = None) -> Path:
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    for root in ([near] if near else []) + [REPO_ROOT]:
        if (root / p).exists():
            return root / p
    return p


def load_plan(spec: str) -> Plan:
    """Load `PATH` or `PATH:ARG`: a python file exposing get_plan([ARG]) -> Plan or PLAN; check it expands."""
    path_str, arg = _split_spec(spec)
    path = _find(path_str)
    module = _import_file(path, "plan")
    if hasattr(module, "get_plan"):
        try:
            plan = module.get_plan(arg) if arg is not None else module.get_plan()
        except PlanError:
            raise
        except Exception as e:
            raise PlanError(f"get_plan() in {str(path)!r} failed: {type(e).__name__}: {e}") from e
    elif hasattr(module, "PLAN"):
        plan = module.PLAN
    else:
        raise PlanError(f"plan file {str(path)!r} defines neither get_plan() nor PLAN")
    if not isinstance(plan, Plan):
        raise PlanError(f"plan file {str(path)!r} gave a {type(plan).__name__}, not a scalekit.sweep.plan.Plan")
    plan._origin = str(path.resolve())  # type: ignore[attr-defined]
    return plan


def load_base(base: str, near: Path | None = None) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
    """The base preset `configs/train.py:<preset>` as a ConfigDict, and that file's LADDER (or {})."""
    path_str, arg = _split_spec(base)
    module = _import_file(_find(path_str, near), "base config")
    if not hasattr(module, "get_config"):
        raise PlanError(f"base config {base!r} has no get_config()")
    try:
        cfg = module.get_config(arg) if arg is not None else module.get_config()
    except Exception as e:
        raise PlanError(f"base config {base!r}: {type(e).__name__}: {e}") from e
    return cfg, dict(getattr(module, "LADDER", {}))


# --- expansion -------------------------------------------------------------------------------------------------------

def set_field(cfg: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
    """Set `a.b.c` in cfg, raising PlanError for an unknown field or a value of the wrong type."""
    node = cfg
    parts = dotted.split(".")
    for part in parts[:-1]:
        if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
            raise PlanError(f"unknown config group {dotted!r} in plan overrides")
        node = node[part]
    if parts[-1] not in node:
        raise PlanError(f"unknown config field {dotted!r} in plan overrides")
    old = node[parts[-1]]
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    try:
        node[parts[-1]] = value
    except TypeError as e:
        raise PlanError(f"config field {dotted!r}: cannot set {value!r} ({type(value).__name__}) where "
                        f"{type(old).__name__} is expected") from e


def per_run_checkpoint_dir(directory: str, key: str) -> str:
    """`<directory>/<key[:12]>`: one run's own checkpoint directory under a plan-wide `checkpoint.dir`.

    Idempotent (a directory already ending in the run's key is kept); works for local paths and URLs (gs://...).
    """
    base = str(directory).rstrip("/")
    if base.rsplit("/", 1)[-1] == key[:12]:
        return base
    return f"{base}/{key[:12]}"


def data_vocab_size(data_cfg: ml_collections.ConfigDict) -> int:
    """The data's vocabulary: from scalekit.data when it exists, else the synthetic alphabet or 256 for bytes."""
    try:
        from scalekit.data.pipeline import data_info
    except ImportError:
        data_info = None
    if data_info is not None:
        try:
            return int(data_info(data_cfg).vocab_size)
        except Exception as e:
            raise PlanError(f"data config: {type(e).__name__}: {e}") from e
    if data_cfg.source == "bytes":
        return 256
    if data_cfg.vocab_size > 0:
        return int(data_cfg.vocab_size)
    raise PlanError(f"cannot tell the vocabulary of data.source={data_cfg.source!r}; set data.vocab_size")


def _model_entry(entry: str | Mapping[str, Any], ladder: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    if isinstance(entry, str):
        if entry not in ladder:
            raise PlanError(f"unknown model {entry!r}: the base config's LADDER has {sorted(ladder)}; or give a dict "
                            "of model fields, e.g. {'name': 'w48', 'd_model': 48, 'n_layers': 2, 'n_heads': 2}")
        d, n_layers, n_heads = ladder[entry]
        return entry, {"d_model": d, "n_layers": n_layers, "n_heads": n_heads}
    if not isinstance(entry, Mapping):
        raise PlanError(f"a model must be a LADDER name or a dict of model fields, not {entry!r}")
    fields = {k: v for k, v in entry.items() if k != "name"}
    unknown = sorted(set(fields) - set(MODEL_FIELDS))
    if unknown:
        raise PlanError(f"model {dict(entry)!r}: unknown model field(s) {unknown}; known: {list(MODEL_FIELDS)}")
    name = entry.get("name") or "d{d_model}-L{n_layers}-h{n_heads}".format(
        d_model=fields.get("d_model", "?"), n_layers=fields.get("n_layers", "?"), n_heads=fields.get("n_heads", "?"))
    return str(name), fields


def _fmt(x: float) -> str:
    return f"{x:.3g}".replace("e+0", "e").replace("e+", "e").replace("e-0", "e-")


def _lr_problem(lr: Any) -> str | None:
    """Why `lr` is not a usable learning rate (None: it is; None itself means the base config's lr)."""
    if lr is None:
        return None
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) and not hasattr(lr, "__float__"):
        return f"{lr!r} is not a number"
    try:
        x = float(lr)
    except (TypeError, ValueError):
        return f"{lr!r} is not a number"
    if not math.isfinite(x) or x <= 0:
        return f"{lr!r} is not a positive finite number"
    return None


def _as_lr_list(value: Any, where: str) -> list[float | None]:
    """A list of learning rates from one grid entry, checked: non-empty, each positive and finite (or None)."""
    fix = "give a non-empty list of positive learning rates, e.g. lrs=lr_grid(1e-3)"
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) and not hasattr(value, "__iter__"):
        raise PlanError(f"{where}: {value!r} is not a list of learning rates; {fix}")
    out = list(value)
    if not out:
        raise PlanError(f"{where}: the learning-rate grid is empty; {fix}")
    for lr in out:
        problem = _lr_problem(lr)
        if problem:
            raise PlanError(f"{where}: learning rate {problem}; {fix}")
    return [None if lr is None else float(lr) for lr in out]


def _check_lr_mapping(plan: Plan, names: Sequence[str]) -> None:
    """A per-size mapping must name exactly the plan's models."""
    if not isinstance(plan.lrs, Mapping):
        return
    extra = [k for k in plan.lrs if k not in names]
    if extra:
        raise PlanError(f"plan {plan.name!r}: lrs names model(s) {extra} that the plan lacks (its models: "
                        f"{list(dict.fromkeys(names))}); rename the key(s) or add the model(s) to models=[...]")
    missing = [n for n in dict.fromkeys(names) if n not in plan.lrs]
    if missing:
        raise PlanError(f"plan {plan.name!r}: lrs has no learning-rate grid for model(s) {missing}; add "
                        f"{missing[0]!r}: [...] to lrs (e.g. lr_grid(1e-3))")


def lrs_for(plan: Plan, model: str, fields: Mapping[str, Any], amount: float) -> list[float | None]:
    """The learning rates of one (model, amount) cell of `plan`, checked (PlanError naming the field and the fix).

    amount: the compute budget C of an IsoFLOP plan, the tokens (or steps) of a grid."""
    lrs = plan.lrs
    where = f"plan {plan.name!r}: lrs"
    if isinstance(lrs, Mapping):
        if model not in lrs:
            raise PlanError(f"{where} has no learning-rate grid for model {model!r}; add {model!r}: [...] to lrs")
        return _as_lr_list(lrs[model], f"{where}[{model!r}]")
    if callable(lrs):
        try:
            value = lrs(model, dict(fields), float(amount))
        except PlanError:
            raise
        except Exception as e:
            raise PlanError(f"{where}({model!r}, ..., {_fmt(amount)}) failed: {type(e).__name__}: {e}") from e
        return _as_lr_list(value, f"{where}({model!r}, ..., {_fmt(amount)})")
    return _as_lr_list(lrs, where)


def _lr_labels(values: Sequence[float]) -> list[str]:
    """Name labels of a cell's learning rates: 3 significant digits, more where two would read the same."""
    for spec in (".3g", ".6g", ".12g"):
        labels = [_fmt(v) if spec == ".3g" else format(v, spec) for v in values]
        if len(set(labels)) == len(set(values)):
            return labels
    return [repr(v) for v in values]


def expand(plan: Plan) -> list[RunSpec]:
    """Expand `plan` into RunSpecs (see Plan.expand); plan.skipped lists what was left out and why."""
    if plan.kind not in ("grid", "isoflop"):
        raise PlanError(f"plan {plan.name!r}: kind must be 'grid' or 'isoflop', not {plan.kind!r}")
    if plan.flops not in FLOP_CONVENTIONS:
        raise PlanError(f"plan {plan.name!r}: flops={plan.flops!r} is not one of {FLOP_CONVENTIONS}")
    if not plan.models:
        raise PlanError(f"plan {plan.name!r} has no models")
    near = Path(getattr(plan, "_origin", ".")).parent
    base, ladder = load_base(plan.base, near)
    for dotted, value in plan.overrides.items():
        set_field(base, dotted, value)
    if plan.kind == "isoflop" and not plan.budgets:
        raise PlanError(f"isoflop plan {plan.name!r} has no compute budgets")
    if plan.kind == "grid" and not (plan.tokens or plan.steps):
        raise PlanError(f"grid plan {plan.name!r} needs tokens=[...] or steps=[...]")
    models = [_model_entry(m, ladder) for m in plan.models]
    tokens_per_step = base.data.batch_size * base.data.seq_len
    vocab = data_vocab_size(base.data)
    plan.skipped = []
    runs: dict[str, RunSpec] = {}
    amounts = plan.budgets if plan.kind == "isoflop" else (plan.tokens or plan.steps)
    _check_lr_mapping(plan, [m for m, _ in models])
    base_lr = float(base.optimizer.lr)
    cells = []  # (amount, model, its fields, lr, its name label or None, seed), in plan order
    for amount, (mname, mfields) in itertools.product(amounts, models):
        cell_lrs = lrs_for(plan, mname, mfields, amount)
        labels = _lr_labels([base_lr if lr is None else float(lr) for lr in cell_lrs]) if len(cell_lrs) > 1 else None
        for j, lr in enumerate(cell_lrs):
            for seed in plan.seeds:
                cells.append((amount, mname, mfields, lr, labels[j] if labels else None, seed))
    for amount, mname, mfields, lr, lr_label, seed in cells:
        cfg = ml_collections.ConfigDict(base.to_dict())
        for k, v in mfields.items():
            set_field(cfg, f"model.{k}", v)
        if lr is not None:
            set_field(cfg, "optimizer.lr", float(lr))
        cfg.seed = int(seed)
        try:
            rcfg = resolve(cfg, vocab)
        except ConfigError as e:
            raise PlanError(f"model {mname!r}: {e}") from e
        fpt_plan = flops_per_token(rcfg.model, cfg.data.seq_len, plan.flops)
        if plan.kind == "isoflop":
            steps = round(amount / fpt_plan / tokens_per_step)
            label = f"C{_fmt(amount)}"
        elif plan.tokens:
            steps = round(amount / tokens_per_step)
            label = f"D{_fmt(amount)}"
        else:
            steps = int(amount)
            label = f"S{steps}"
        if steps < max(plan.min_steps, 1):
            why = f"{mname} {label}: {steps} steps < min_steps={plan.min_steps} ({tokens_per_step} tokens/step)"
            if why not in plan.skipped:  # once per (model, budget), not once per lr and seed
                plan.skipped.append(why)
            continue
        cfg.steps = steps
        if plan.warmup_fraction is not None:
            cfg.optimizer.warmup_steps = round(plan.warmup_fraction * steps)
        name = "_".join([mname, label] + ([f"lr{lr_label}"] if lr_label is not None else [])
                        + ([f"s{seed}"] if len(plan.seeds) > 1 else []))
        cfg.observe.run_name = name
        try:
            validate(cfg)
        except ConfigError as e:
            hint = ("; set warmup_fraction in the plan" if "warmup_steps" in str(e) else "")
            raise PlanError(f"run {name!r}: {e}{hint}") from e
        tokens = steps * tokens_per_step
        n_total = count_params(rcfg.model, "total")
        flops_palm = flops_per_token(rcfg.model, cfg.data.seq_len, "palm") * tokens
        key = run_key(cfg.to_dict())
        if cfg.checkpoint.dir:
            cfg.checkpoint.dir = per_run_checkpoint_dir(cfg.checkpoint.dir, key)
        spec = RunSpec(key=key, name=name, config=cfg.to_dict(), model=mname,
                       lr=float(cfg.optimizer.lr), seed=int(seed), steps=steps, tokens=tokens,
                       budget=float(amount) if plan.kind == "isoflop" else None, flop_convention=plan.flops,
                       n_params=n_total, n_params_nonembed=count_params(rcfg.model, "non_embedding"),
                       flops=flops_palm, flops_6n=6.0 * n_total * tokens, flops_plan=fpt_plan * tokens,
                       est_time_s=plan.overhead_s + flops_palm / plan.throughput)
        if spec.key in runs:
            plan.skipped.append(f"{name}: same config as {runs[spec.key].name}")
            continue
        runs[spec.key] = spec
    if not runs:
        smallest = min(amounts)
        raise PlanError(f"plan {plan.name!r} has no runs: every combination is below min_steps={plan.min_steps} "
                        f"(smallest {'budget' if plan.kind == 'isoflop' else 'amount'} {_fmt(smallest)}, "
                        f"{tokens_per_step} tokens/step); raise the budgets or lower min_steps:\n  "
                        + "\n  ".join(plan.skipped))
    return list(runs.values())


def describe(runs: Sequence[RunSpec]) -> str:
    """A table of the runs with N, D, C and estimated time (what `scalekit sweep plan` prints)."""
    head = f"{'name':<34} {'N':>9} {'N_nonemb':>9} {'D':>9} {'steps':>6} {'C':>9} {'C_6ND':>9} {'lr':>8} " \
           f"{'seed':>4} {'est':>7}"
    lines = [head, "-" * len(head)]
    for r in runs:
        lines.append(f"{r.name[:34]:<34} {_fmt(r.n_params):>9} {_fmt(r.n_params_nonembed):>9} {_fmt(r.tokens):>9} "
                     f"{r.steps:>6} {_fmt(r.flops_plan):>9} {_fmt(r.flops_6n):>9} {_fmt(r.lr):>8} {r.seed:>4} "
                     f"{_hms(r.est_time_s):>7}")
    total = sum(r.est_time_s for r in runs)
    conv = runs[0].flop_convention if runs else "6N"
    lines.append(f"{len(runs)} runs, C under the {conv!r} convention, {_fmt(sum(r.flops_plan for r in runs))} "
                 f"FLOPs in all; estimated {_hms(total)} sequentially")
    grid = describe_lr_grid(runs)
    if grid:
        lines += ["", grid]
    return "\n".join(lines)


def _cell(r: RunSpec) -> tuple[str, float]:
    """The (model, budget) cell of a run: its IsoFLOP budget, or its tokens in a grid."""
    return r.model, (r.budget if r.budget is not None else float(r.tokens))


def lr_grid_summary(runs: Sequence[RunSpec]) -> dict[str, Any] | None:
    """What the plan's learning-rate grids cost, or None when every (model, budget) cell has one lr.

    Per model (in plan order): its lrs, cells, runs, FLOPs and estimated time, and the same for a plan with one lr
    per cell (each cell's runs divided by its number of lrs: lr changes no run's cost); and the totals."""
    cells: dict[tuple[str, float], dict[str, Any]] = {}
    for r in runs:
        c = cells.setdefault(_cell(r), {"lrs": [], "runs": 0, "flops": 0.0, "est": 0.0})
        if r.lr not in c["lrs"]:
            c["lrs"].append(r.lr)
        c["runs"] += 1
        c["flops"] += r.flops_plan
        c["est"] += r.est_time_s
    if not cells or max(len(c["lrs"]) for c in cells.values()) < 2:
        return None
    models: dict[str, dict[str, Any]] = {}
    for (model, _), c in cells.items():
        m = models.setdefault(model, {"model": model, "lrs": [], "lrs_per_cell": [], "cells": 0, "runs": 0,
                                      "flops": 0.0, "est_time_s": 0.0, "flops_one_lr": 0.0,
                                      "est_time_s_one_lr": 0.0})
        m["lrs"] += [lr for lr in c["lrs"] if lr not in m["lrs"]]
        m["lrs_per_cell"].append(len(c["lrs"]))
        m["cells"] += 1
        m["runs"] += c["runs"]
        m["flops"] += c["flops"]
        m["est_time_s"] += c["est"]
        m["flops_one_lr"] += c["flops"] / len(c["lrs"])
        m["est_time_s_one_lr"] += c["est"] / len(c["lrs"])
    for m in models.values():
        m["lrs"] = sorted(m["lrs"])
        m["n_params"] = next(r.n_params for r in runs if r.model == m["model"])
    per_cell = [len(c["lrs"]) for c in cells.values()]
    total = {k: sum(m[k] for m in models.values()) for k in ("runs", "flops", "est_time_s", "flops_one_lr",
                                                              "est_time_s_one_lr")}
    total["flops_ratio"] = total["flops"] / total["flops_one_lr"] if total["flops_one_lr"] else float("nan")
    total["time_ratio"] = (total["est_time_s"] / total["est_time_s_one_lr"] if total["est_time_s_one_lr"]
                           else float("nan"))
    return {"lrs_per_cell": (min(per_cell), max(per_cell)), "models": list(models.values()), "total": total}


def describe_lr_grid(runs: Sequence[RunSpec]) -> str:
    """The learning-rate grid per model size and what it costs against one lr per cell ('' without a grid)."""
    s = lr_grid_summary(runs)
    if s is None:
        return ""
    lo, hi = s["lrs_per_cell"]
    t = s["total"]
    per = f"{lo} per size" if lo == hi else f"{lo}-{hi} per size and budget"
    lines = [f"lr grid: {per}, {t['flops_ratio']:.1f}x the FLOPs of one lr ({_fmt(t['flops'])} against "
             f"{_fmt(t['flops_one_lr'])}), estimated {_hms(t['est_time_s'])} against {_hms(t['est_time_s_one_lr'])} "
             f"({t['time_ratio']:.1f}x)"]
    head = f"  {'model':<16} {'N':>9} {'lrs':<40} {'runs':>5} {'C':>9} {'est':>7} {'x one lr':>8}"
    lines += [head, "  " + "-" * (len(head) - 2)]
    for m in s["models"]:
        lrs = ", ".join(_fmt(x) for x in m["lrs"])
        lrs = lrs if len(lrs) <= 40 else lrs[:37] + "..."
        ratio = m["flops"] / m["flops_one_lr"] if m["flops_one_lr"] else float("nan")
        lines.append(f"  {m['model'][:16]:<16} {_fmt(m['n_params']):>9} {lrs:<40} {m['runs']:>5} "
                     f"{_fmt(m['flops']):>9} {_hms(m['est_time_s']):>7} {ratio:>7.1f}x")
    return "\n".join(lines)


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = round(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")
