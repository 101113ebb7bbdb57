"""A batched L-BFGS in JAX: thousands of independent small minimisations in one jitted program.

Why our own and not `optax.lbfgs` under `vmap`: a vmapped while-loop runs every lane until the slowest lane stops,
and a nested line-search loop makes every lane wait for the slowest line search at every iteration. Here:

- the loop body is ONE objective evaluation per lane: a lane whose trial step passes the Armijo test takes it and
  computes its next direction, a lane whose step fails shrinks it; no lane idles while another backtracks;
- lanes form a fixed-size pool fed from a queue of starts: when a lane stops, its result is written out and the
  next start takes its place. Work is proportional to the evaluations each start needs, not to
  (number of starts) x (slowest start), and small pool arrays stay in cache. One compile per objective, options,
  number of starts and data shapes (fit.py rounds those shapes up so that similar fits share a compile).

- once the queue is empty, the remaining lanes are compacted and only the first pool/4 or pool/32 lanes are
  evaluated, so the tail of slow starts does not pay for a full pool.

Status codes per start (`STATUS`): converged when the inf-norm of the gradient is <= `gtol`, or when two
consecutive accepted steps each lowered f by at most `ftol * |f|`. Not converged: the iteration or evaluation
limit, a failed line search (after one restart from steepest descent), a non-finite start, or "stalled" (f fell by
less than `stall_tol * |f|` over `stall_window` steps: a start crawling along a plateau, which would otherwise run
to the iteration limit; it is never counted as converged). Precision follows the inputs: fits call it under
`jax.enable_x64(True)` with float64 arrays.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

STATUS = {0: "running", 1: "converged (gtol)", 2: "converged (ftol)", -1: "iteration limit",
          -2: "line search failed", -3: "non-finite start", -4: "stalled"}
CONVERGED_CODES = (1, 2)
LEVEL_DIVISORS = (4, 32)      # tail levels: pool // 4 and pool // 32 lanes (see _compiled)


@dataclass(frozen=True)
class LBFGSOptions:
    """Stopping rules, memory and pool size; frozen (hashable) because it keys the jit cache."""

    max_iter: int = 500           # accepted steps per start
    max_evals: int = 2000         # objective evaluations per start
    memory: int = 10
    gtol: float = 1e-10           # converged when max |grad| <= gtol
    ftol: float = 1e-12           # ... or twice in a row (f_old - f_new) <= ftol * |f_new|
    c1: float = 1e-4              # Armijo constant
    max_ls: int = 30              # trial steps per line search before a restart / failure
    stall_window: int = 50        # every this many steps, stop a lane (NOT converged: "stalled") whose f fell
    stall_tol: float = 1e-7       # by less than stall_tol * |f| over the window; 0 disables. Frees plateau lanes.
    pool: int = 256               # lanes evaluated together


class _Lane(NamedTuple):
    idx: Any      # start index, S when the lane is empty
    mode: Any     # 0: evaluate the start point, 1: line search along d
    x: Any
    f: Any
    g: Any
    d: Any
    t: Any
    S: Any
    Y: Any
    rho: Any
    k: Any
    nfev: Any
    n_ls: Any
    n_small: Any
    f_ref: Any    # f at the start of the current stall window
    status: Any


class BatchResult(NamedTuple):
    x: jax.Array          # (S, P) final points
    f: jax.Array          # (S,) final objective
    grad_norm: jax.Array  # (S,) inf-norm of the final gradient
    status: jax.Array     # (S,) codes of STATUS
    n_iter: jax.Array     # (S,) accepted steps
    n_eval: jax.Array     # (S,) objective evaluations
    n_trips: jax.Array    # () loop trips (pool-wide evaluations)


def _two_loop(g, S, Y, rho):
    """-H g from the stored pairs (newest last; empty slots have rho = 0), by the two-loop recursion.

    Rolled loops (fori_loop): about 6x faster to compile than the unrolled recursion, and faster to run.
    """
    m = S.shape[0]

    def backward(j, c):
        q, alphas = c
        i = m - 1 - j
        a = rho[i] * jnp.dot(S[i], q)
        return q - a * Y[i], alphas.at[i].set(a)

    q, alphas = jax.lax.fori_loop(0, m, backward, (g, jnp.zeros((m,), g.dtype)))
    have = rho[-1] > 0
    yy = jnp.dot(Y[-1], Y[-1])
    gamma = jnp.where(have, jnp.dot(S[-1], Y[-1]) / jnp.where(have, yy, 1.0), 1.0)

    def forward(i, r):
        return r + S[i] * (alphas[i] - rho[i] * jnp.dot(Y[i], r))

    return -jax.lax.fori_loop(0, m, forward, gamma * q)


def _steepest(g):
    return -g / jnp.maximum(jnp.max(jnp.abs(g)), 1.0)


def _fresh(idx, x, opts: LBFGSOptions) -> _Lane:
    """A lane about to evaluate its start point (mode 0)."""
    B = x.shape[0]
    zi = jnp.zeros((B,), jnp.int32)
    zf = jnp.zeros((B,), x.dtype)
    zm = jnp.zeros((B, opts.memory, x.shape[1]), x.dtype)
    return _Lane(idx=idx, mode=zi, x=x, f=zf, g=jnp.zeros_like(x), d=jnp.zeros_like(x), t=jnp.ones((B,), x.dtype),
                 S=zm, Y=zm, rho=jnp.zeros((B, opts.memory), x.dtype), k=zi, nfev=zi, n_ls=zi, n_small=zi,
                 f_ref=zf, status=zi)


def _advance(lane, fp, gp, opts: LBFGSOptions):
    """Per-lane update after evaluating the pending point (unbatched; vmapped by the caller)."""
    active = lane.status == 0
    finite = jnp.isfinite(fp) & jnp.all(jnp.isfinite(gp))
    nfev = lane.nfev + active.astype(jnp.int32)

    # mode 0: the start point was evaluated
    st0 = jnp.where(finite, jnp.where(jnp.max(jnp.abs(gp)) <= opts.gtol, 1, 0), -3)
    lane0 = lane._replace(mode=jnp.ones_like(lane.mode), f=fp, g=gp, d=_steepest(gp), t=jnp.ones_like(lane.t),
                          nfev=nfev, f_ref=fp, status=st0.astype(jnp.int32))

    # mode 1: a trial step x + t d was evaluated
    gd = jnp.dot(lane.g, lane.d)
    ok = finite & (fp <= lane.f + opts.c1 * lane.t * gd)
    xt = lane.x + lane.t * lane.d
    s, y = xt - lane.x, gp - lane.g
    sy = jnp.dot(s, y)
    good = sy > 1e-10 * jnp.maximum(jnp.dot(y, y), 1e-300)
    S = jnp.where(good, jnp.concatenate([lane.S[1:], s[None]], 0), lane.S)
    Y = jnp.where(good, jnp.concatenate([lane.Y[1:], y[None]], 0), lane.Y)
    rho = jnp.where(good, jnp.concatenate([lane.rho[1:], (1.0 / jnp.where(good, sy, 1.0))[None]]), lane.rho)
    d_new = _two_loop(gp, S, Y, rho)
    descent = jnp.dot(gp, d_new) < 0
    d_new = jnp.where(descent, d_new, _steepest(gp))
    S, Y, rho = (jnp.where(descent, v, jnp.zeros_like(v)) for v in (S, Y, rho))
    small = (lane.f - fp) <= opts.ftol * jnp.abs(fp)
    n_small = jnp.where(small, lane.n_small + 1, 0)
    k = lane.k + 1
    window_end = (k % max(opts.stall_window, 1) == 0) & (opts.stall_window > 0)
    stalled = window_end & ((lane.f_ref - fp) <= opts.stall_tol * jnp.abs(fp))
    f_ref = jnp.where(window_end, fp, lane.f_ref)
    st_acc = jnp.where(jnp.max(jnp.abs(gp)) <= opts.gtol, 1,
                       jnp.where(n_small >= 2, 2,
                                 jnp.where((k >= opts.max_iter) | (nfev >= opts.max_evals), -1,
                                           jnp.where(stalled, -4, 0))))
    acc = lane._replace(x=xt, f=fp, g=gp, d=d_new, t=jnp.ones_like(lane.t), S=S, Y=Y, rho=rho, k=k, nfev=nfev,
                        n_ls=jnp.zeros_like(lane.n_ls), n_small=n_small, f_ref=f_ref,
                        status=st_acc.astype(jnp.int32))

    # rejected: shrink t by safeguarded quadratic interpolation; after max_ls trials restart from steepest
    # descent once (memory cleared), and stop the lane if that fails too.
    denom = 2.0 * (fp - lane.f - lane.t * gd)
    t_quad = -gd * lane.t ** 2 / jnp.where(denom > 0, denom, 1.0)
    t_new = jnp.where(finite & (denom > 0), jnp.clip(t_quad, 0.1 * lane.t, 0.5 * lane.t), 0.25 * lane.t)
    n_ls = lane.n_ls + 1
    fail = n_ls >= opts.max_ls
    restarted = jnp.all(lane.rho == 0)
    reset = fail & ~restarted
    st_rej = jnp.where(fail & restarted, -2, jnp.where(nfev >= opts.max_evals, -1, 0))
    rej = lane._replace(d=jnp.where(reset, _steepest(lane.g), lane.d), t=jnp.where(reset, 1.0, t_new),
                        S=jnp.where(reset, 0.0, lane.S), Y=jnp.where(reset, 0.0, lane.Y),
                        rho=jnp.where(reset, 0.0, lane.rho), nfev=nfev, n_ls=jnp.where(reset, 0, n_ls),
                        status=st_rej.astype(jnp.int32))

    lane1 = jax.tree.map(lambda a, b: jnp.where(ok, a, b), acc, rej)
    new = jax.tree.map(lambda a, b: jnp.where(lane.mode == 0, a, b), lane0, lane1)
    return jax.tree.map(lambda a, b: jnp.where(active, a, b), new, lane)


def _select(mask, a, b):
    """Row-wise where over a lane pytree: mask (B,) picks rows of a, else of b."""
    return jax.tree.map(lambda u, v: jnp.where(mask.reshape((-1,) + (1,) * (u.ndim - 1)), u, v), a, b)


def _take(tree, rows):
    return jax.tree.map(lambda u: u[rows], tree)


@functools.lru_cache(maxsize=64)
def _compiled(value_and_grad: Callable, opts: LBFGSOptions, data_axes: tuple, n_starts: int):
    """The jitted driver for one (objective, options, data layout, number of starts)."""
    lane_axes = tuple(0 if a == 0 else None for a in data_axes)
    per_lane = tuple(i for i, a in enumerate(data_axes) if a == 0)
    eval_lanes = jax.vmap(value_and_grad, in_axes=(0, *lane_axes))
    advance = jax.vmap(functools.partial(_advance, opts=opts))
    S_ = n_starts
    B = min(opts.pool, S_)
    # Pool levels: once the queue is empty and few lanes are left, they are compacted to the front and only the
    # first `size` lanes are evaluated, so the tail of slow starts does not pay for a full pool.
    sizes = [B] + [B // q for q in LEVEL_DIVISORS if B // q >= 4]

    def lane_data(data, idx):
        sel = jnp.minimum(idx, S_ - 1)
        return tuple(data[i][sel] if i in per_lane else None for i in range(len(data)))

    def merge(data, ldata):
        return tuple(ldata[i] if i in per_lane else data[i] for i in range(len(data)))

    def eval_first(k, p, ldata, data):
        """Evaluate only the first k lanes (the others are finished and ignore the result)."""
        sdat = tuple(None if d is None else d[:k] for d in ldata)
        fp, gp = eval_lanes(p[:k], *merge(data, sdat))
        if k == B:
            return fp, gp
        return (jnp.zeros((B,), fp.dtype).at[:k].set(fp), jnp.zeros((B, gp.shape[1]), gp.dtype).at[:k].set(gp))

    def maintain(c, x0, data):
        """Write finished lanes out, refill them from the queue, compact active lanes to the front."""
        lane, ldata, out, written, ptr, level, trips = c
        fin = (lane.status != 0) & ~written
        widx = jnp.where(fin, lane.idx, S_)            # out of range: dropped
        out = BatchResult(
            x=out.x.at[widx].set(lane.x, mode="drop"), f=out.f.at[widx].set(lane.f, mode="drop"),
            grad_norm=out.grad_norm.at[widx].set(jnp.max(jnp.abs(lane.g), -1), mode="drop"),
            status=out.status.at[widx].set(lane.status, mode="drop"),
            n_iter=out.n_iter.at[widx].set(lane.k, mode="drop"),
            n_eval=out.n_eval.at[widx].set(lane.nfev, mode="drop"), n_trips=out.n_trips)
        written = written | fin
        free = lane.status != 0
        rank = jnp.cumsum(free, dtype=jnp.int32) - 1
        nidx = ptr + rank
        refill = free & (nidx < S_)
        lane = _select(refill, _fresh(nidx, x0[jnp.minimum(nidx, S_ - 1)], opts), lane)
        written = written & ~refill
        if per_lane:
            ldata = tuple(None if d is None else jnp.where(refill.reshape((-1,) + (1,) * (d.ndim - 1)), n, d)
                          for d, n in zip(ldata, lane_data(data, nidx)))
        ptr = jnp.minimum(ptr + jnp.sum(free, dtype=jnp.int32), S_).astype(jnp.int32)
        # compact: active lanes first (stable), then pick the smallest level that holds them
        order = jnp.argsort((lane.status != 0).astype(jnp.int32), stable=True)
        lane, written = _take(lane, order), written[order]
        ldata = tuple(None if d is None else d[order] for d in ldata)
        n_active = jnp.sum(lane.status == 0)
        level = jnp.int32(0)
        for j, k in enumerate(sizes[1:], start=1):
            level = jnp.where(n_active <= k, jnp.int32(j), level)
        return lane, ldata, out, written, ptr, level, trips

    def run(x0, *data):
        out = BatchResult(x=x0, f=jnp.full((S_,), jnp.inf, x0.dtype), grad_norm=jnp.full((S_,), jnp.inf, x0.dtype),
                          status=jnp.full((S_,), -1, jnp.int32), n_iter=jnp.zeros((S_,), jnp.int32),
                          n_eval=jnp.zeros((S_,), jnp.int32), n_trips=jnp.zeros((), jnp.int32))
        idx0 = jnp.arange(B, dtype=jnp.int32)
        carry = (_fresh(idx0, x0[:B], opts), lane_data(data, idx0), out, jnp.zeros((B,), bool),
                 jnp.asarray(B, jnp.int32), jnp.int32(0), jnp.int32(0))

        def cond(c):
            lane, _, _, written, ptr, _, _ = c
            return (ptr < S_) | jnp.any(lane.status == 0)

        def body(c):
            lane, ldata, out, written, ptr, level, trips = c
            p = jnp.where((lane.mode == 0)[:, None], lane.x, lane.x + lane.t[:, None] * lane.d)
            fp, gp = jax.lax.switch(level, [functools.partial(eval_first, k) for k in sizes], p, ldata, data)
            lane = advance(lane, fp, gp)
            c = (lane, ldata, out, written, ptr, level, trips + 1)
            n_fin = jnp.sum((lane.status != 0) & ~written)
            n_active = jnp.sum(lane.status == 0)
            size_arr = jnp.asarray(sizes + [0], jnp.int32)
            # refill when enough lanes wait (or all do); once the queue is empty, compact only when the
            # active lanes fit the next smaller level
            due = (ptr < S_) & ((n_fin >= max(B // 16, 1)) | (n_active == 0))
            due = due | ((ptr >= S_) & (n_active <= size_arr[level + 1]) & (level < len(sizes) - 1))
            return jax.lax.cond(due, lambda c: maintain(c, x0, data), lambda c: c, c)

        c = jax.lax.while_loop(cond, body, carry)
        c = maintain(c, x0, data)
        out = c[2]
        return out._replace(n_trips=c[6])

    return jax.jit(run)


def minimize_batch(value_and_grad: Callable, x0: jax.Array, data: tuple = (), data_axes: tuple | None = None,
                   options: LBFGSOptions = LBFGSOptions()) -> BatchResult:
    """Minimise f(x, *data) from every row of `x0` (S, P); `value_and_grad(x, *data) -> (f, grad)`.

    `data_axes` gives, per element of `data`, 0 when it has a leading per-start axis of size S (e.g. bootstrap
    weights) or None when all starts share it. `value_and_grad` must be hashable and stable (a module-level
    function, or one returned by an lru_cached factory): it keys the jit cache with the options, the axes and the
    number of starts. jax keys each trace by dtype and by the x64 flag, so a float64 call under
    `jax.enable_x64(True)` never reuses a float32 compilation.
    """
    if data_axes is None:
        data_axes = (None,) * len(data)
    if x0.ndim != 2 or x0.shape[0] == 0:
        raise ValueError(f"x0 must be (starts, params) with at least one start, got shape {x0.shape}")
    return _compiled(value_and_grad, options, tuple(data_axes), int(x0.shape[0]))(x0, *data)
