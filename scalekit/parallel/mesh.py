"""Device mesh from config, and shardings for parameters, optimizer state and batches.

The mesh has axes ('data', 'fsdp', 'tensor'); one config value may be -1 to absorb the remaining devices. Every
check here runs before compilation and names the numbers involved.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from scalekit.config import ConfigError
from scalekit.parallel.rules import logical_to_mesh

AXES = ("data", "fsdp", "tensor")


def mesh_shape(mesh_cfg: Any, n_devices: int) -> tuple[int, int, int]:
    """Resolve -1 and check that the product of the axis sizes equals the device count."""
    sizes = [int(mesh_cfg[a]) for a in AXES]
    if sizes.count(-1) > 1:
        raise ConfigError("only one of mesh.data, mesh.fsdp, mesh.tensor may be -1")
    if -1 in sizes:
        known = math.prod(s for s in sizes if s != -1)
        if n_devices % known:
            raise ConfigError(f"mesh: {n_devices} devices cannot be split with "
                              f"{dict(zip(AXES, sizes))}: {n_devices} is not divisible by {known}")
        sizes[sizes.index(-1)] = n_devices // known
    if math.prod(sizes) != n_devices:
        raise ConfigError(f"mesh: data x fsdp x tensor = {' x '.join(map(str, sizes))} = {math.prod(sizes)} "
                          f"but there are {n_devices} devices; make the product {n_devices} or set one axis to -1")
    return tuple(sizes)  # type: ignore[return-value]


def make_mesh(mesh_cfg: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh with Auto axis types over `devices` (default: all devices)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh_cfg, len(devices))
    auto = (jax.sharding.AxisType.Auto,) * len(AXES)
    if devices == list(jax.devices()):
        return jax.make_mesh(shape, AXES, axis_types=auto)
    return Mesh(np.asarray(devices).reshape(shape), AXES, axis_types=auto)


def _axis_size(mesh: Mesh, axes: Any) -> int:
    if axes is None:
        return 1
    names = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[n] for n in names)


def check_divisible(name: str, shape: Sequence[int], spec: PartitionSpec, mesh: Mesh) -> None:
    """Raise ConfigError when a dimension is not divisible by the mesh axes it is sharded over."""
    for dim, (size, axes) in enumerate(zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)))):
        parts = _axis_size(mesh, axes)
        if size % parts:
            raise ConfigError(f"{name}: dimension {dim} has size {size}, not divisible by mesh axes {axes} of size "
                              f"{parts}; change the model shape or the mesh (mesh.{'/'.join(np.atleast_1d(axes))})")


def _path_name(path: tuple[Any, ...]) -> str:
    return ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def param_shardings(abstract_params: Any, logical_axes: Any, mesh: Mesh) -> Any:
    """NamedShardings for a parameter tree from the matching tree of logical axis tuples."""
    def one(path: tuple[Any, ...], shape_struct: Any, logical: tuple[str | None, ...]) -> NamedSharding:
        spec = logical_to_mesh(logical)
        check_divisible(f"parameter {_path_name(path)}", shape_struct.shape, spec, mesh)
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(one, abstract_params, logical_axes,
                                            is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a [batch, length] array: batch over the rule for 'batch' (data x fsdp)."""
    return NamedSharding(mesh, logical_to_mesh(("batch", "length")))


def check_batch(batch_size: int, mesh: Mesh, microbatches: int = 1) -> None:
    """The (micro)batch must split evenly over the devices that shard the batch dimension."""
    parts = _axis_size(mesh, tuple(logical_to_mesh(("batch",)))[0])
    micro = batch_size // microbatches
    if micro % parts:
        raise ConfigError(f"data.batch_size={batch_size} with optimizer.microbatches={microbatches} gives "
                          f"microbatches of {micro} sequences, not divisible by data x fsdp = {parts}; "
                          f"use a batch size that is a multiple of {parts * microbatches}")


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
