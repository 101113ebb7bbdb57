"""A process-level cache of a run's jitted programs, so a process that trains many runs compiles each shape once.

A warm sweep worker trains run after run in one process. Runs whose model, optimizer and mesh match get the same
`Programs`: the same jitted train step, K-step blocks, eval steps and initialiser, so JAX's own cache (keyed by the
function object and the argument shapes) skips tracing and compilation for every run after the first. The key
leaves out `steps` (the schedule's length lives in the optimizer state, see optim.py), the seed of the data and the
run's name, which do not change the program. The cache holds the `MAX_ENTRIES` most recently used entries.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from collections.abc import Callable

import jax
import ml_collections
import optax
from jax.sharding import Mesh

from scalekit.model.functional import ModelDef, define
from scalekit.train import mfu as mfu_lib
from scalekit.train.optim import make_optimizer, set_total_steps
from scalekit.train.state import TrainState, make_init, state_shardings
from scalekit.train.step import (jit_block, jit_eval_block, jit_steps, make_eval_block, make_eval_step,
                                 make_train_block, make_train_step)

MAX_ENTRIES = 16


@dataclasses.dataclass
class Programs:
    """One model/optimizer/mesh's jitted functions, and what this process has learnt about them."""

    model_def: ModelDef
    tx: optax.GradientTransformation
    shardings: TrainState
    mesh: Mesh
    train_step: Callable  # (state, batch) -> (state, metrics)
    eval_step: Callable  # (params, batch) -> {"nll_sum", "weight_sum"}
    eval_block: Callable  # (params, batches [n, B, L]) -> {"nll_sum": [n], "weight_sum": [n]}
    _train_step_fn: Callable
    _blocks: dict[int, Callable] = dataclasses.field(default_factory=dict)
    _inits: dict[int, Callable] = dataclasses.field(default_factory=dict)
    run_sizes: set[int] = dataclasses.field(default_factory=set)  # block sizes already run once (compiled)
    step_time_s: float | None = None  # seconds per step, measured in the first full K-step block run

    def block(self, k: int) -> Callable:
        """The jitted K-step block (state, batches [K, B, L], active [K]) -> (state, metrics [K]); K = 1 is the plain
        step (state, batch [B, L]) -> (state, metrics)."""
        if k == 1:
            return self.train_step
        if k not in self._blocks:
            self._blocks[k] = jit_block(make_train_block(self._train_step_fn), self.shardings, self.mesh)
        return self._blocks[k]

    def init(self, seed: int, total_steps: int) -> TrainState:
        """A fresh train state for `seed`, its schedule running to `total_steps`."""
        if seed not in self._inits:
            self._inits[seed] = make_init(self.model_def, self.tx, seed, self.shardings)
        state = self._inits[seed]()
        return state.replace(opt_state=set_total_steps(state.opt_state, total_steps))

    def note_step_time(self, seconds_per_step: float) -> None:
        """Remember the first measured per-step time; later runs choose K from it (and it is not updated, so K
        stays put and nothing compiles again for a noisy measurement)."""
        if self.step_time_s is None:
            self.step_time_s = seconds_per_step


_CACHE: collections.OrderedDict[str, Programs] = collections.OrderedDict()
_PEAKS: dict[tuple[str, str], float] = {}


def cache_key(cfg: ml_collections.ConfigDict, mesh: Mesh) -> str:
    """What decides a run's programs: the model and optimizer fields, and the mesh (its shape and devices)."""
    return json.dumps({"model": cfg.model.to_dict(), "optimizer": cfg.optimizer.to_dict(),
                       "mesh": dict(mesh.shape), "devices": [d.id for d in mesh.devices.flat]},
                      sort_keys=True, default=str)


def programs(cfg: ml_collections.ConfigDict, mesh: Mesh) -> Programs:
    """The cached programs for a resolved config on `mesh`, building (not yet compiling) them on a miss."""
    key = cache_key(cfg, mesh)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    model_def = define(cfg.model)
    tx = make_optimizer(cfg.optimizer, 1, cfg.model)  # the run's length is set in the state (set_total_steps)
    shardings = state_shardings(model_def, tx, mesh)
    step_fn = make_train_step(model_def, tx, cfg.model.z_loss, cfg.optimizer.microbatches)
    train_fn, eval_fn = jit_steps(step_fn, make_eval_step(model_def), shardings, mesh)
    eval_block = jit_eval_block(make_eval_block(make_eval_step(model_def)), shardings, mesh)
    entry = Programs(model_def, tx, shardings, mesh, train_fn, eval_fn, eval_block, step_fn)
    _CACHE[key] = entry
    while len(_CACHE) > MAX_ENTRIES:
        _CACHE.popitem(last=False)
    return entry


def peak_flops(dtype: str) -> float:
    """The machine's measured matmul peak (mfu.machine_peak_flops), measured once per process and dtype."""
    key = (dtype, jax.devices()[0].platform)
    if key not in _PEAKS:
        _PEAKS[key] = mfu_lib.machine_peak_flops(dtype)
    return _PEAKS[key]


def clear() -> None:
    """Forget every cached program and peak (tests; a worker recycling itself)."""
    _CACHE.clear()
    _PEAKS.clear()
