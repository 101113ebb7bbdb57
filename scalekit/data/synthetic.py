"""A synthetic language with an exactly known entropy rate: a random order-k Markov chain.

The language: `vocab_size` symbols; each of the vocab_size**k contexts (the k previous tokens) has a next-token
distribution drawn by a generator seeded with `language_seed`, so the same settings give the same language on every
machine and run. The rows are drawn hierarchically (`hierarchical_rows`): a unigram distribution, then for each
longer context a Dirichlet centred on the row of its one-shorter suffix. Each extra token of context therefore
carries some, but not all, of the information, so a model gains in stages (unigram, bigram, ..., order k) and larger
models and more data keep lowering the loss toward the floor, as in natural text; a flat Dirichlet per context
would leave nothing to learn below a vocab**k lookup table. Its entropy rate (nats/token) is the floor a perfect model reaches:
H = sum_ctx pi(ctx) H(next | ctx), pi the stationary distribution over contexts (solved directly for small chains,
else by power iteration). The drawn probabilities are quantised to multiples of 2**-43 and sampled with 43-bit integer
uniforms, so the sampled process has exactly the probabilities the floor is computed from.

Sequences: record i of a split is a function of (language_seed, split, seed, i) only, through a counter-based hash
(splitmix64), so any process can generate any record, in any order, vectorised over a batch of records. Each sequence
starts from a context drawn from pi, so the process is stationary and every position past the k-th costs exactly H.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from scalekit.data.errors import DataError

MAX_CONTEXTS = 2**20  # vocab_size ** markov_order
MAX_TABLE = 2**24  # vocab_size ** (markov_order + 1): entries of the transition tables (probs, cdf, next context)
PROB_BITS = 43  # probabilities are multiples of 2**-43; (ctx << 44) + cdf fits uint64 for ctx < 2**20
_POWER_TOL = 1e-14  # L1 change of pi per iteration at convergence
_POWER_MAX_ITERS = 100_000  # and at most 2**32 table entries visited (>= 1000 iterations)
POWER_LAZY_AFTER = 2_000
DENSE_MAX_CONTEXTS = 2048  # below this, solve for pi directly

_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
SPLIT_IDS = {"train": 1, "eval": 2}


# --- counter-based random numbers ------------------------------------------------------------------------------------

def _mix_int(x: int) -> int:
    """splitmix64's finaliser on a Python int (mod 2**64)."""
    x &= _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, vectorised over a uint64 array (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def stream_key(*parts: int) -> int:
    """Fold integers (seeds, split ids, counters) into one 64-bit key; order matters."""
    key = 0x5CA1E4177
    for p in parts:
        key = _mix_int(key ^ _mix_int(int(p) + _GOLDEN))
    return key


def random_bits(key: int, record_ids: np.ndarray, count: int) -> np.ndarray:
    """Random uint64 [count, len(record_ids)]: column j depends only on (key, record_ids[j]) (splitmix64 streams)."""
    ids = np.asarray(record_ids, dtype=np.uint64)
    with np.errstate(over="ignore"):
        state = _mix(ids * np.uint64(_GOLDEN) + np.uint64(key))  # the per-record stream's seed
        steps = np.arange(1, count + 1, dtype=np.uint64)[:, None] * np.uint64(_GOLDEN)
        return _mix(state[None, :] + steps)  # splitmix64: the t-th output of the stream seeded at `state`


# --- the language ----------------------------------------------------------------------------------------------------

def _entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    """Shannon entropy in nats along `axis`, with 0 log 0 = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    return terms.sum(axis=axis)


@dataclass(frozen=True, eq=False)
class MarkovLanguage:
    """An order-k Markov chain over `vocab_size` symbols, with its stationary distribution and entropy rate.

    Transition probabilities are multiples of 2**-PROB_BITS (the Dirichlet draws, quantised), so sampling with
    PROB_BITS-bit integer uniforms reproduces them exactly and the entropy rate is exactly that of the sampled process.
    """

    vocab_size: int
    order: int
    concentration: float
    language_seed: int
    probs: np.ndarray  # [V**k, V] next-token distribution of each context (context index = base-V digits, oldest first)
    stationary: np.ndarray  # [V**k] stationary distribution over contexts
    stationary_cdf: np.ndarray  # [V**k], last entry exactly 1.0
    entropy_rate: float  # nats/token: sum_ctx pi(ctx) H(next | ctx)
    block_entropies: tuple[float, ...]  # H(x_1..x_m) under pi for m = 0..k (nats)
    flat_cdf: np.ndarray  # uint64 [V**(k+1)]: (ctx << PROB_BITS+1) + integer cdf, increasing across all rows
    next_ctx: np.ndarray  # int32 [V**(k+1)]: the context after emitting token (i % V) in context (i // V)

    @property
    def num_contexts(self) -> int:
        """vocab_size ** order."""
        return self.probs.shape[0]

    def sequence_loss(self, seq_len: int) -> float:
        """Exact expected per-token loss of the Bayes-optimal causal model over `seq_len` targets of one window.

        Window x_0..x_L (L = seq_len) starts from pi; target x_j (j >= 1) is predicted from x_0..x_{j-1}. Positions
        j < k lack a full context and cost H_{j+1} - H_j (block entropies); positions j >= k cost the entropy rate.
        """
        k, L = self.order, seq_len
        partial = self.block_entropies[min(L, k - 1) + 1] - self.block_entropies[1]
        return (partial + max(0, L - k + 1) * self.entropy_rate) / L

    def generate(self, key: int, record_ids: np.ndarray, length: int) -> np.ndarray:
        """Sequences of `length` tokens, int32 [len(record_ids), length]; row j depends only on (key, record_ids[j]).

        One vectorised step per position: a searchsorted of (ctx, u) in the flat integer cdf finds the token.
        """
        V, k = self.vocab_size, self.order
        n = len(record_ids)
        steps = max(length - k, 0)
        z = random_bits(key, record_ids, 1 + steps)  # [1 + steps, n]; row 0 picks the starting context
        u0 = (z[0] >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
        ctx = np.minimum(np.searchsorted(self.stationary_cdf, u0, side="right"), self.num_contexts - 1)
        head = np.empty((n, k), dtype=np.int64)
        for j in range(k):  # the starting context's digits, oldest first
            head[:, j] = (ctx // V ** (k - 1 - j)) % V
        flat_idx = np.empty((steps, n), dtype=np.int64)
        if steps:
            u = z[1:] >> np.uint64(64 - PROB_BITS)
            hi = np.uint64(PROB_BITS + 1)
            flat, nxt = self.flat_cdf, self.next_ctx
            ctx = ctx.astype(np.uint64)
            for t in range(steps):
                j = np.searchsorted(flat, (ctx << hi) + u[t], side="right")
                flat_idx[t] = j
                ctx = nxt[j].astype(np.uint64)
        out = np.concatenate([head, (flat_idx.T % V)], axis=1).astype(np.int32)
        return out[:, :length]


def check_size(vocab_size: int, order: int) -> None:
    """Raise DataError when the chain's tables would be too large to build (and to compute the floor exactly)."""
    if vocab_size < 2 or order < 1:
        raise DataError(f"synthetic language needs data.vocab_size >= 2 and data.markov_order >= 1 "
                         f"(got {vocab_size}, {order})")
    if vocab_size**order > MAX_CONTEXTS:
        raise DataError(f"synthetic language: data.vocab_size**data.markov_order = {vocab_size}**{order} = "
                         f"{vocab_size**order} contexts exceeds {MAX_CONTEXTS} (2**20); lower data.vocab_size "
                         "or data.markov_order")
    if vocab_size ** (order + 1) > MAX_TABLE:
        raise DataError(f"synthetic language: the transition table has vocab_size**(markov_order+1) = "
                         f"{vocab_size ** (order + 1)} entries, more than {MAX_TABLE} (2**24); lower "
                         "data.vocab_size or data.markov_order")


def _residual(pi: np.ndarray, P: np.ndarray, V: int, rest: int) -> np.ndarray:
    """pi T - pi, where one step maps pi[(c_1..c_k)] to pi'[(c_2..c_k, b)] = sum_{c_1} pi[(c_1..c_k)] P[.., b]."""
    return np.einsum("ar,arb->rb", pi.reshape(V, rest), P).reshape(-1) - pi


def stationary_distribution(probs: np.ndarray, vocab_size: int, order: int, method: str = "auto") -> np.ndarray:
    """Stationary distribution over the vocab_size**order contexts of the chain.

    "dense" (auto for <= DENSE_MAX_CONTEXTS contexts): solve pi (T - I) = 0, sum(pi) = 1 on the dense context chain.
    "power": power iteration from uniform, O(V**(k+1)) a step; after POWER_LAZY_AFTER steps without convergence it
    switches to the lazy chain (pi + pi T) / 2, which has the same fixed points and converges for periodic chains too.
    """
    V, k = vocab_size, order
    n_ctx, rest = V**k, V ** (k - 1)
    P = probs.reshape(V, rest, V)
    if method == "dense" or (method == "auto" and n_ctx <= DENSE_MAX_CONTEXTS):
        nxt = ((np.arange(n_ctx) % rest) * V)[:, None] + np.arange(V)
        A = np.zeros((n_ctx, n_ctx))
        A[nxt.reshape(-1), np.repeat(np.arange(n_ctx), V)] = probs.reshape(-1)  # A = T^T
        A -= np.eye(n_ctx)
        A[-1] = 1.0
        rhs = np.zeros(n_ctx)
        rhs[-1] = 1.0
        try:
            pi = np.clip(np.linalg.solve(A, rhs), 0.0, None)
            pi /= pi.sum()
            if np.abs(_residual(pi, P, V, rest)).sum() < _POWER_TOL:
                return pi
        except np.linalg.LinAlgError:  # several closed classes: fall back to power iteration
            pass
    pi = np.full(n_ctx, 1.0 / n_ctx)
    delta, max_iters = np.inf, max(1000, min(_POWER_MAX_ITERS, 2**32 // probs.size))
    for it in range(max_iters):
        step = _residual(pi, P, V, rest)
        if it >= POWER_LAZY_AFTER:
            step *= 0.5
        new = pi + step
        new /= new.sum()
        delta = np.abs(new - pi).sum()
        pi = new
        if delta < _POWER_TOL:
            return pi
    raise DataError(f"synthetic language: the stationary distribution did not converge in {max_iters} "
                     f"power iterations (last change {delta:.2e}); the chain mixes too slowly: raise "
                     "data.concentration or data.vocab_size")


def hierarchical_rows(rng: np.random.Generator, vocab_size: int, order: int, concentration: float) -> np.ndarray:
    """Next-token rows [V**k, V]: unigram ~ Dirichlet(1); a context's row ~ Dirichlet(V * concentration * row of its
    suffix context). Lower concentration: rows further from their parent. Every row is mixed with 0.1% of the
    uniform distribution so the chain is irreducible and aperiodic (a unique stationary distribution, an exact
    floor) however small the concentration."""
    V = vocab_size
    rows = rng.dirichlet(np.full(V, 1.0))[None, :]
    for m in range(1, order + 1):
        parent = rows[np.arange(V**m) % V ** (m - 1)]  # suffix = the most recent m-1 tokens (base-V, oldest first)
        draws = rng.gamma(V * concentration * parent + 1e-3)
        rows = draws / draws.sum(axis=1, keepdims=True)
    return 0.999 * rows + 0.001 / V


@functools.lru_cache(maxsize=8)
def markov_language(vocab_size: int, order: int, concentration: float, language_seed: int) -> MarkovLanguage:
    """Build (once per process) the language of these settings: transition table, stationary dist, entropy rate."""
    check_size(vocab_size, order)
    if not concentration > 0:
        raise DataError(f"synthetic language: data.concentration={concentration} must be > 0")
    V, k = vocab_size, order
    rng = np.random.default_rng(language_seed)
    raw = hierarchical_rows(rng, V, k, float(concentration))
    scale = float(1 << PROB_BITS)
    cdf_int = np.round(np.cumsum(raw / raw.sum(axis=1, keepdims=True), axis=1) * scale).astype(np.uint64)
    cdf_int[:, -1] = 1 << PROB_BITS
    probs = np.diff(cdf_int, axis=1, prepend=np.uint64(0)).astype(np.float64) / scale  # exact: integers < 2**53
    del raw
    ctx_ids = np.arange(V**k, dtype=np.uint64)
    flat_cdf = ((ctx_ids << np.uint64(PROB_BITS + 1))[:, None] + cdf_int).reshape(-1)
    del cdf_int
    shift = (np.arange(V**k, dtype=np.int64) % V ** (k - 1)) * V
    next_ctx = (shift[:, None] + np.arange(V)).astype(np.int32).reshape(-1)
    pi = stationary_distribution(probs, V, k)
    pi_cdf = np.cumsum(pi)
    pi_cdf[-1] = 1.0
    rate = float(pi @ _entropy(probs))
    blocks = [0.0] + [float(_entropy(pi.reshape(V**m, V ** (k - m)).sum(axis=1), axis=0)) for m in range(1, k + 1)]
    for a in (probs, pi, pi_cdf, flat_cdf, next_ctx):
        a.setflags(write=False)
    return MarkovLanguage(V, k, float(concentration), int(language_seed), probs, pi, pi_cdf, rate, tuple(blocks),
                          flat_cdf, next_ctx)


def describe(lang: MarkovLanguage, seq_len: int) -> str:
    """One line naming the language and both floors (which is which)."""
    return (f"synthetic order-{lang.order} Markov chain over {lang.vocab_size} symbols "
            f"(hierarchical Dirichlet rows, concentration {lang.concentration:g}, language_seed={lang.language_seed}); entropy_floor = "
            f"entropy rate of the stationary chain = {lang.entropy_rate:.6f} nats/token "
            f"({lang.entropy_rate / math.log(2):.4f} bits); expected per-token loss of a perfect model over a "
            f"{seq_len}-token window from the stationary start (first {lang.order} positions lack full context) = "
            f"{lang.sequence_loss(seq_len):.6f} nats/token")
