"""Logical axis names and the one table that maps them to mesh axes.

Parameters and activations carry logical names; this table turns them into mesh axes ('data', 'fsdp', 'tensor').
Changing the parallelism means changing this table or the mesh shape, never the model (MaxText's
logical_axis_rules). Activation names are distinct from parameter names because an activation's embedding
dimension is replicated while a weight's embedding dimension is FSDP-sharded.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence

import jax
from jax.sharding import PartitionSpec

MeshAxes = str | tuple[str, ...] | None

DEFAULT_RULES: tuple[tuple[str, MeshAxes], ...] = (
    # activations
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    # parameters
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("norm", None),
)

_ACTIVE_RULES: contextvars.ContextVar[tuple[tuple[str, MeshAxes], ...]] = contextvars.ContextVar(
    "scalekit_rules", default=DEFAULT_RULES)


@contextlib.contextmanager
def use_rules(rules: Sequence[tuple[str, MeshAxes]]) -> Iterator[None]:
    """Use another rule table inside the block (for example, pure data parallelism)."""
    token = _ACTIVE_RULES.set(tuple(rules))
    try:
        yield
    finally:
        _ACTIVE_RULES.reset(token)


def logical_to_mesh(logical: Sequence[str | None], rules: Sequence[tuple[str, MeshAxes]] | None = None,
                    ) -> PartitionSpec:
    """Map a tuple of logical axis names to a PartitionSpec over mesh axes (unknown names raise)."""
    table = dict(_ACTIVE_RULES.get() if rules is None else rules)
    out: list[MeshAxes] = []
    for name in logical:
        if name is None:
            out.append(None)
        elif name not in table:
            raise KeyError(f"logical axis {name!r} has no rule; known: {sorted(table)}")
        else:
            out.append(table[name])
    return PartitionSpec(*out)


def constrain(x: jax.Array, logical: Sequence[str | None]) -> jax.Array:
    """Constrain an activation's sharding by logical names; a no-op outside a mesh context."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_mesh(logical))
