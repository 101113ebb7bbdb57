"""How many steps one jitted call runs (K), and where a block of K steps must end.

Small models are dispatch-bound: a step's arithmetic takes a fraction of a millisecond and launching it a few. The
loop therefore runs K steps per call (`step.make_train_block`, a lax.scan over K batches already on the device).
Blocks never cross a boundary where the host must see the state: an eval, a checkpoint save, the last step, the
profiler window and, with several processes, the preemption sync. K divides the period of those boundaries, so
every block is a full K except where a resume or a fixed K leaves a remainder, which runs as single steps (two
compiled programs per shape at most).

K = `cfg.steps_per_dispatch` when set (>= 1). With 0 (auto) it is the smallest divisor of the period whose call
lasts at least TARGET_CALL_S, given the per-step time measured in this process for the same programs, or before
any measurement the step's FLOPs over the measured matmul peak (optimistic, so K errs large); and at most
MAX_CALL_S of work, MAX_K steps and MAX_BLOCK_BYTES of batches. A block size this process has already compiled for
the same programs is reused whenever it fits the period and the caps.
"""

from __future__ import annotations

import math
from collections.abc import Collection

import ml_collections

TARGET_CALL_S = 0.05
MAX_CALL_S = 1.0
MAX_K = 256
MAX_BLOCK_BYTES = 256 * 2**20


def boundary_period(cfg: ml_collections.ConfigDict, sync_every: int = 0) -> int:
    """The gcd of every periodic boundary: steps, eval_every, checkpoint.every and (several processes) sync_every."""
    period = int(cfg.steps)
    for every in (cfg.eval_every, cfg.checkpoint.every, sync_every):
        if every:
            period = math.gcd(period, int(every))
    return period


def choose_k(cfg: ml_collections.ConfigDict, period: int, step_time_s: float, batch_bytes: int,
             compiled: Collection[int] = ()) -> int:
    """K for this run: the config's, or (auto) the smallest divisor of `period` with a call >= TARGET_CALL_S.

    A block size in `compiled` (already compiled in this process for these programs) that divides `period` within
    the caps is reused, the largest such: compiling a new block costs seconds, more than a better K saves.
    """
    if cfg.steps_per_dispatch:
        return int(cfg.steps_per_dispatch)
    limit = min(MAX_K, max(1, MAX_BLOCK_BYTES // max(batch_bytes, 1)))
    if step_time_s > 0:
        limit = min(limit, max(1, int(MAX_CALL_S / step_time_s)))
    divisors = [d for d in range(1, min(period, limit) + 1) if period % d == 0]
    reusable = [d for d in divisors if d > 1 and d in compiled]
    if reusable:
        return reusable[-1]
    wanted = math.ceil(TARGET_CALL_S / step_time_s) if step_time_s > 0 else limit
    return next((d for d in divisors if d >= wanted), divisors[-1])


def next_block(step: int, k: int, stops: list[int]) -> int:
    """Steps in the block that starts after `step` steps: k when a whole K-aligned block fits before the next stop
    in `stops` (sorted step counts at which the host must look), else 1."""
    nxt = next((s for s in stops if s > step), None)
    if k > 1 and step % k == 0 and (nxt is None or step + k <= nxt):
        return k
    return 1


def stops(cfg: ml_collections.ConfigDict, profile_window: tuple[int, int] | None, sync_every: int = 0) -> list[int]:
    """Every step count at which a block must end, up to cfg.steps (sorted)."""
    points = {int(cfg.steps)}
    for every in (cfg.eval_every, cfg.checkpoint.every, sync_every):
        if every:
            points.update(range(int(every), int(cfg.steps), int(every)))
    if profile_window:
        points.update(p for p in profile_window if 0 < p < cfg.steps)
    return sorted(points)
