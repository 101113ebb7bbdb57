"""Variable projection for sums of power terms: search the exponents, solve the coefficients exactly.

For fixed exponents s, a law y = E + sum_j A_j exp(-s_j x_j) (x: centred log features) is linear in the
non-negative coefficients (E, A_j). So instead of searching all parameters from thousands of starts, the exponents
alone are searched on a grid (geometric, 0.01 to 3, or inside the exponents' bounds), and for every grid cell the
coefficients are solved:

- lsq:      exact non-negative least squares (every support of the <= 4 coefficients solved by its normal
            equations; the best feasible one is the NNLS solution);
- huber:    iteratively reweighted NNLS (weights min(1, delta / |r|));
- lsq_log, huber_log: Gauss-Newton on the coefficients, each step an NNLS in the linearised log residuals
            (reweighted for Huber), from the relative-error least-squares solution.

All grid cells run in one vmapped jax program. The best cells (distinct local minima first) then start the
batched L-BFGS of `scalekit.laws.fit` on all parameters, which converges in a few iterations from there. Fixed
coefficients move into an offset, fixed exponents are not searched, tied exponents share one grid axis; a law whose
coefficients are tied or bounded is not separable here (`NotSeparable`; `fit_law` falls back to L-BFGS).
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from scalekit.laws.objective import Problem, delta_value

GRID_LO, GRID_HI = 0.01, 3.0
CELLS_PER_AXIS = {1: 256, 2: 32, 3: 12}
N_REFINE = 16
GAUSS_NEWTON_STEPS = 6
CELL_BUDGET = 1 << 21        # cells x points evaluated per call of the grid program (memory bound)
LOG_FLOOR = -40.0            # log of a coefficient NNLS set to zero (exp(-40) ~ 4e-18 of the centred scale)


class NotSeparable(ValueError):
    """Variable projection does not apply to this law or these constraints."""


def _structure(problem: Problem):
    """Linear coefficient slots, exponent slots per term, and the free exponent sources (grid axes)."""
    law = problem.law
    if law.power is None:
        raise NotSeparable(f"the {law.name} law is not a sum of power terms")
    terms, const = law.power.terms, law.power.const
    tied = dict(problem.ties)
    free = set(problem.free)
    bounded = {problem.free[j] for j in range(problem.n_free) if problem.kind[j]}
    linear = [c for c, _, _ in terms] + ([const] if const is not None else [])
    for i in linear:
        if i in tied or i in set(tied.values()) or i in bounded:
            raise NotSeparable(f"coefficient {law.params[i]!r} is tied or bounded")
    sources = sorted({tied.get(s, s) for _, s, _ in terms if tied.get(s, s) in free})
    if len(sources) > 3:
        raise NotSeparable("more than three free exponents")
    return terms, const, linear, sources


def _axis(problem: Problem, i: int, n: int) -> np.ndarray:
    """Grid values of exponent source i: geometric over [0.01, 3], or inside its bounds."""
    j = problem.free.index(i)
    lo, hi, kind = problem.lo[j], problem.hi[j], int(problem.kind[j])
    a = lo if kind in (1, 2) else GRID_LO
    b = hi if kind in (1, 3) else GRID_HI
    if kind:
        pad = 1e-3 * (b - a)
        a, b = a + pad, b - pad
    if a > 0:
        return np.geomspace(a, b, n)
    return np.linspace(a, b, n)


@functools.lru_cache(maxsize=None)
def _supports(m: int) -> np.ndarray:
    """Every subset of m coefficients as 0/1 rows (the empty one included)."""
    return np.array(list(itertools.product((0.0, 1.0), repeat=m)), np.float64)


def _solve_small(G, b):
    """G^-1 b for m <= 3 by the adjugate (a few elementwise ops: compiles far faster than a batched LU)."""
    m = G.shape[0]
    if m == 1:
        return b / G[0, 0]
    if m == 2:
        det = G[0, 0] * G[1, 1] - G[0, 1] * G[1, 0]
        return jnp.stack([G[1, 1] * b[0] - G[0, 1] * b[1], G[0, 0] * b[1] - G[1, 0] * b[0]]) / det
    if m == 3:
        cof = jnp.stack([jnp.cross(G[1], G[2]), jnp.cross(G[2], G[0]), jnp.cross(G[0], G[1])])   # rows of adj^T
        det = jnp.dot(G[0], cof[0])
        return (cof.T @ b) / det
    return jnp.linalg.solve(G, b)


def _nnls(X, t, w, supports):
    """argmin_{c >= 0} sum w (t - X c)^2 for m <= 4 columns: the best feasible least-squares support."""
    m = X.shape[1]
    Xw = X * w[:, None]
    G = Xw.T @ X
    b = Xw.T @ t
    ridge = 1e-13 * (jnp.trace(G) + 1e-300)

    tt = jnp.sum(w * t * t)

    def on(mask):
        Gm = G * mask[:, None] * mask[None, :] + jnp.diag(1.0 - mask) + ridge * jnp.eye(m)
        c = _solve_small(Gm, b * mask) * mask
        cost = tt - 2.0 * c @ b + c @ G @ c                         # sum w (t - X c)^2 without a pass over K
        return c, jnp.where(jnp.all(c >= 0.0) & jnp.isfinite(cost), cost, jnp.inf)

    cs, costs = jax.vmap(on)(supports)
    return jnp.maximum(cs[jnp.argmin(costs)], 0.0)


def _solve_cell(s_src, feats, logy, w, delta, src_of_term, fixed_exp, fixed_e, off_logc, off_feats, off_src,
                off_exp, *, has_const: bool, space: str, robust: bool, supports):
    """Coefficients (m,) and the objective at exponents s_src for one grid cell.

    Free-coefficient term j has feature row feats[j] and exponent s_src[src_of_term[j]] (fixed_exp[j] when
    src_of_term[j] < 0); fixed-coefficient terms and a fixed E form the offset."""
    padded = jnp.concatenate([s_src, jnp.zeros((1,), logy.dtype)])
    s_term = jnp.where(src_of_term >= 0, padded[src_of_term], fixed_exp)
    s_off = jnp.where(off_src >= 0, padded[off_src], off_exp)
    cols = [jnp.exp(-s_term[j] * feats[j]) for j in range(feats.shape[0])]
    if has_const:
        cols.append(jnp.ones_like(logy))
    X = jnp.stack(cols, 1)                                          # (K, m)
    y = jnp.exp(logy)
    off = fixed_e + jnp.sum(jnp.exp(off_logc[:, None] - s_off[:, None] * off_feats), axis=0)
    def reweight(r):                    # Huber's IRLS weights (all 1 when delta is infinite)
        return w * jnp.minimum(1.0, delta / jnp.maximum(jnp.abs(r), 1e-300)) if robust else w

    # rolled loops (fori_loop): the program compiles several times faster than with the steps unrolled
    if space == "linear":
        def step(_, c):
            return _nnls(X, y - off, reweight(X @ c + off - y), supports)

        c = jax.lax.fori_loop(0, GAUSS_NEWTON_STEPS, step, _nnls(X, y - off, w, supports))
        r = X @ c + off - y
    else:
        def step(_, c):
            f = jnp.maximum(X @ c + off, 1e-300)
            r = jnp.log(f) - logy
            J = X / f[:, None]
            return _nnls(J, J @ c - r, reweight(r), supports)

        c = jax.lax.fori_loop(0, GAUSS_NEWTON_STEPS, step, _nnls(X, y - off, w / (y * y), supports))
        r = jnp.log(jnp.maximum(X @ c + off, 1e-300)) - logy
    a = jnp.abs(r)
    value = jnp.sum(w * jnp.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta)))
    return c, value


@functools.lru_cache(maxsize=32)
def _grid_program(m: int, has_const: bool, space: str):
    """The jitted, vmapped cell solver for one structure (shapes key jax's own cache). Huber's reweighting is
    always on: with delta = inf (least squares) its weights are all 1, so one program serves both objectives."""
    solve = functools.partial(_solve_cell, has_const=has_const, space=space, robust=True, supports=_supports(m))
    return jax.jit(jax.vmap(solve, in_axes=(0,) + (None,) * 11))


def vpnls_starts(problem: Problem, delta: float | None, n_refine: int = N_REFINE) -> tuple[np.ndarray, str]:
    """Starting rows (user LSE parameters) for the L-BFGS refinement, from the exponent grid; and a note."""
    terms, const, _, sources = _structure(problem)
    law = problem.law
    tied = dict(problem.ties)
    fixed_full = problem.base_centred()                             # fixed values, centred coordinates
    free = set(problem.free)
    free_terms = [j for j, (c, _, _) in enumerate(terms) if c in free]
    fixed_terms = [j for j, (c, _, _) in enumerate(terms) if c not in free]
    const_free = const is not None and const in free
    src_index = {i: k for k, i in enumerate(sources)}

    def source(j):                      # (grid axis or -1, fixed exponent value) of term j
        s = tied.get(terms[j][1], terms[j][1])
        return src_index.get(s, -1), float(fixed_full[s]) if s not in src_index else 0.0

    K = len(problem.logy)
    K_pad = -(-K // 32) * 32
    pad = lambda a: np.concatenate([a, np.zeros(a.shape[:-1] + (K_pad - K,))], -1)   # noqa: E731
    feats_free = pad(problem.feats[[terms[j][2] for j in free_terms]].reshape(len(free_terms), K))
    src_of_term = np.array([source(j)[0] for j in free_terms], np.int32)
    fixed_exp = np.array([source(j)[1] for j in free_terms], np.float64)
    off_feats = pad(problem.feats[[terms[j][2] for j in fixed_terms]].reshape(len(fixed_terms), K))
    off_logc = np.array([fixed_full[terms[j][0]] for j in fixed_terms], np.float64)
    off_src = np.array([source(j)[0] for j in fixed_terms], np.int32)
    off_exp = np.array([source(j)[1] for j in fixed_terms], np.float64)
    fixed_e = float(np.exp(fixed_full[const])) if const is not None and not const_free else 0.0
    n = CELLS_PER_AXIS.get(len(sources), 1)
    axes = [_axis(problem, i, n) for i in sources]
    combos = list(itertools.product(*axes))                          # one empty cell when nothing is searched
    cells = np.array(combos, np.float64).reshape(len(combos), len(sources))   # (G, n_sources)
    m = len(free_terms) + int(const_free)
    program = _grid_program(m, const_free, problem.space)
    w = pad(np.ones(K))
    coef, value = _evaluate_cells(program, cells, K_pad, [
        feats_free, pad(problem.logy), w, delta_value(delta), src_of_term, fixed_exp, fixed_e, off_logc, off_feats,
        off_src, off_exp])
    picks = _pick_cells(value, [len(a) for a in axes] or [1], n_refine)
    rows = np.tile(fixed_full, (len(picks), 1))
    for r, g in enumerate(picks):
        for k, i in enumerate(sources):
            rows[r, i] = cells[g, k]
        for t, src in problem.ties:
            rows[r, t] = rows[r, src]
        for k, j in enumerate(free_terms):
            rows[r, terms[j][0]] = np.log(coef[g, k]) if coef[g, k] > 0 else LOG_FLOOR
        if const_free:
            rows[r, const] = np.log(coef[g, -1]) if coef[g, -1] > 0 else LOG_FLOOR
    note = (f"vpnls: {len(cells)} exponent cells ({' x '.join(str(len(a)) for a in axes) or 'none'} over "
            f"{', '.join(law.params[i] for i in sources) or 'no free exponent'}), best {len(picks)} refined by L-BFGS")
    return rows @ problem._shift_matrix(+1.0).T, note


def _evaluate_cells(program, cells: np.ndarray, n_points: int, args: list) -> tuple[np.ndarray, np.ndarray]:
    """Every cell through the grid program, in chunks of a fixed size so that memory stays ~CELL_BUDGET numbers
    per array however many points there are (the last chunk is padded with the first cell and trimmed)."""
    chunk = max(8, min(len(cells), CELL_BUDGET // max(n_points, 1)))
    chunk = 1 << (chunk.bit_length() - 1)                          # a power of two: few distinct compiles
    n = -(-len(cells) // chunk) * chunk
    padded = np.concatenate([cells, np.repeat(cells[:1], n - len(cells), axis=0)])
    coefs, values = [], []
    with jax.enable_x64(True):
        data = [jnp.asarray(a) for a in args]
        for start in range(0, n, chunk):
            c, v = program(jnp.asarray(padded[start:start + chunk]), *data)
            coefs.append(np.asarray(c))
            values.append(np.asarray(v))
    return np.concatenate(coefs)[: len(cells)], np.concatenate(values)[: len(cells)]


def _pick_cells(value: np.ndarray, shape: list[int], n: int) -> list[int]:
    """Indices of grid cells to refine: the grid's local minima, best first, then the best remaining cells."""
    v = np.where(np.isfinite(value), value, np.inf).reshape(shape)
    local = np.ones(v.shape, bool)
    for ax in range(v.ndim):
        for step in (-1, 1):
            nb = np.roll(v, step, axis=ax)
            edge = [slice(None)] * v.ndim
            edge[ax] = 0 if step == 1 else -1
            nb[tuple(edge)] = np.inf
            local &= v <= nb
    flat = v.reshape(-1)
    order = np.argsort(flat, kind="stable")
    mins = [int(i) for i in order if local.reshape(-1)[i] and np.isfinite(flat[i])][: n // 2]
    rest = [int(i) for i in order if int(i) not in set(mins) and np.isfinite(flat[i])]
    return (mins + rest)[:n] or [int(order[0])]
