"""A functional view of the NNX transformer: parameters as a plain dict pytree, apply as a pure function.

Train states, checkpoints and optimizers see only nested dicts of arrays; the NNX module is rebuilt inside jitted
functions with `nnx.merge`. Logical axes come from each Param's `out_sharding` metadata.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from flax import nnx

from scalekit.model.transformer import Transformer


@dataclasses.dataclass(frozen=True)
class ModelDef:
    """Static description of a model: its graph, abstract parameters and their logical axes."""

    graphdef: Any
    abstract_params: dict  # nested dict of jax.ShapeDtypeStruct
    logical_axes: dict  # nested dict of tuples of logical axis names (same structure)
    model_cfg: Any


def _create(model_cfg: Any, seed: int) -> Transformer:
    with nnx.use_eager_sharding(False):
        return Transformer(model_cfg, nnx.Rngs(params=seed))


def define(model_cfg: Any) -> ModelDef:
    """Build the model abstractly (no FLOPs, no memory) and record its structure."""
    with nnx.use_eager_sharding(False):
        abstract = nnx.eval_shape(lambda: _create(model_cfg, 0))
    graphdef, state = nnx.split(abstract, nnx.Param)
    is_var = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
    logical = jax.tree.map(lambda v: tuple(v.get_metadata().get("out_sharding") or (None,) * len(v.shape)),
                           state, is_leaf=is_var)
    shapes = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), state, is_leaf=is_var)
    return ModelDef(graphdef, nnx.to_pure_dict(shapes), nnx.to_pure_dict(logical), model_cfg)


def init_params(model_cfg: Any, seed: int) -> dict:
    """Freshly initialised parameters as a nested dict (call under jit with out_shardings to shard)."""
    return nnx.to_pure_dict(nnx.state(_create(model_cfg, seed), nnx.Param))


def apply(model_def: ModelDef, params: dict, tokens_BL: jax.Array, positions_BL: jax.Array | None = None,
          ) -> jax.Array:
    """Logits [B, L, V] (float32) for tokens [B, L]."""
    return nnx.merge(model_def.graphdef, params)(tokens_BL, positions_BL)


def count_actual_params(params: dict) -> int:
    """Number of scalars in a parameter tree (to cross-check counting.py)."""
    return sum(int(x.size) for x in jax.tree.leaves(params))
