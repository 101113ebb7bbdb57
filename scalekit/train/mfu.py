"""Measured matmul peak, and model FLOP utilisation against it.

Datasheet peaks are not what a shared machine delivers (these 2-core CPUs vary 2x between runs), so MFU divides
by a matmul measured in the same run. On CPU all local devices share one host's cores, so the machine peak is one
device's matmul rate per process; on accelerators it is the per-device rate times the device count.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp


def measure_matmul_flops(dtype: str = "float32", size: int = 2048, reps: int = 5,
                         device: jax.Device | None = None) -> float:
    """Best-of-`reps` FLOP/s of a size^3 matmul on one device (2 size^3 FLOPs per product)."""
    device = device or jax.local_devices()[0]
    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.device_put(jax.random.normal(key_a, (size, size), jnp.float32).astype(dtype), device)
    b = jax.device_put(jax.random.normal(key_b, (size, size), jnp.float32).astype(dtype), device)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size ** 3 / best


def machine_peak_flops(dtype: str = "float32", size: int = 2048) -> float:
    """Peak FLOP/s of all devices this job uses, measured now (see the module docstring for CPU)."""
    per_device = measure_matmul_flops(dtype, size)
    if jax.devices()[0].platform == "cpu":
        return per_device * jax.process_count()
    return per_device * jax.device_count()
