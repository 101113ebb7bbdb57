"""The train state: a plain pytree of step, parameters, optimizer state and RNG key."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from scalekit.model.functional import ModelDef, init_params
from scalekit.parallel.mesh import param_shardings


# XLA options for compiling the initialiser on CPU: code that runs once need not be optimised (see make_init)
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


@struct.dataclass
class TrainState:
    """Everything a step reads and writes. `step` counts optimizer updates already applied."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


def state_shardings(model_def: ModelDef, tx: optax.GradientTransformation, mesh: Mesh) -> TrainState:
    """Shardings for every leaf of the train state, derived from the parameters' logical axes.

    Optimizer moments follow their parameter (optax.tree_map_params); other optimizer leaves are replicated.
    """
    p_shard = param_shardings(model_def.abstract_params, model_def.logical_axes, mesh)
    rep = NamedSharding(mesh, PartitionSpec())
    abstract_opt = jax.eval_shape(tx.init, model_def.abstract_params)
    opt_shard = optax.tree_map_params(tx, lambda _, s: s, abstract_opt, p_shard,
                                      transform_non_params=lambda _: rep,
                                      is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))
    return TrainState(step=rep, params=p_shard, opt_state=opt_shard, rng=rep)


def abstract_state(model_def: ModelDef, tx: optax.GradientTransformation) -> TrainState:
    """Shapes and dtypes of the train state, without allocating it."""
    params = model_def.abstract_params
    return TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                      opt_state=jax.eval_shape(tx.init, params),
                      rng=jax.ShapeDtypeStruct((2,), jnp.uint32))


def make_init(model_def: ModelDef, tx: optax.GradientTransformation, seed: int, shardings: TrainState,
              ) -> Callable[[], TrainState]:
    """A jitted `() -> TrainState` creating a fresh state directly in its shardings (never on one device).

    It runs once per run, so on CPU it is compiled without LLVM's optimisations (INIT_COMPILER_OPTIONS): a small
    model's initialiser then compiles in a fifth of the time (about 1 s instead of 4-5 s on a 2-core machine).
    """
    def make() -> TrainState:
        params = init_params(model_def.model_cfg, seed)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                          rng=jax.random.key_data(jax.random.key(seed + 1)))

    options = INIT_COMPILER_OPTIONS if jax.devices()[0].platform == "cpu" else None
    return jax.jit(make, out_shardings=shardings, compiler_options=options)


def init_state(model_def: ModelDef, tx: optax.GradientTransformation, seed: int, shardings: TrainState,
               ) -> TrainState:
    """A fresh state, created directly in its shardings (never materialised on one device)."""
    return make_init(model_def, tx, seed, shardings)()
