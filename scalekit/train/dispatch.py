"""How many steps one jitted call runs (K), and where a block of steps must end.

Small models are dispatch-bound: a step's arithmetic takes a fraction of a millisecond and launching it a few. The
loop therefore runs up to K steps per call (`step.make_train_block`, a lax.scan over K batches already on the
device). A block never crosses a stop, a step count where the host must see the state: an eval, a checkpoint save,
the last step, the profiler window and, with several processes, the preemption sync. A block that must end early
is padded with inactive steps (skipped by a lax.cond), so one compiled program of K serves every block.

K = `cfg.steps_per_dispatch` when set (>= 1). With 0 (auto) it is the power of two whose call lasts at least
TARGET_CALL_S, given the per-step time measured in this process for the same programs, or before any measurement
the step's FLOPs over the measured matmul peak (optimistic, so K errs large); and at most MAX_CALL_S of work,
MAX_K steps and MAX_BLOCK_BYTES of batches. A K this process has already compiled for the same programs is reused
when it is within the caps and at least a quarter of the K wanted: compiling a block costs seconds.
"""

from __future__ import annotations

import math
from collections.abc import Collection

import ml_collections

TARGET_CALL_S = 0.05
MAX_CALL_S = 1.0
MAX_K = 256
MAX_BLOCK_BYTES = 256 * 2**20


def choose_k(cfg: ml_collections.ConfigDict, step_time_s: float, batch_bytes: int,
             compiled: Collection[int] = ()) -> int:
    """K for this run: the config's, or (auto) see the module docstring."""
    if cfg.steps_per_dispatch:
        return int(cfg.steps_per_dispatch)
    limit = min(MAX_K, int(cfg.steps), max(1, MAX_BLOCK_BYTES // max(batch_bytes, 1)))
    if step_time_s > 0:
        limit = min(limit, max(1, int(MAX_CALL_S / step_time_s)))
    wanted = math.ceil(TARGET_CALL_S / step_time_s) if step_time_s > 0 else limit
    k = min(1 << max(0, math.ceil(math.log2(max(wanted, 1)))), 1 << int(math.log2(limit)))
    reusable = [c for c in compiled if c > 1 and 4 * c >= k and c <= limit]
    return max(reusable) if reusable else k


def stops(cfg: ml_collections.ConfigDict, profile_window: tuple[int, int] | None, sync_every: int = 0) -> list[int]:
    """Every step count at which a block must end, up to cfg.steps (sorted)."""
    points = {int(cfg.steps)}
    for every in (cfg.eval_every, cfg.checkpoint.every, sync_every):
        if every:
            points.update(range(int(every), int(cfg.steps), int(every)))
    if profile_window:
        points.update(p for p in profile_window if 0 < p < cfg.steps)
    return sorted(points)


def next_block(step: int, k: int, stops: list[int]) -> int:
    """Steps in the block that starts after `step` steps: up to k, ending at the next stop in `stops` at the latest."""
    nxt = next((s for s in stops if s > step), step + k)
    return max(1, min(k, nxt - step))
