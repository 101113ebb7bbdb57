"""Scoring repeated samples: pass@k (unbiased), coverage curves, majority voting and best-of-n selection.

pass@k is the probability that at least one of k samples drawn without replacement from n (c of them correct) is
correct: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021), computed as a product so it never overflows. The laws library
has the same estimator (`scalekit.laws.pass_at_k`, used by the studies to fit coverage laws); this copy keeps the
inference layer free of the science layer, and the tests check both against brute-force enumeration.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def pass_at_k(n: Any, c: Any, k: int) -> np.ndarray:
    """Unbiased pass@k from n samples with c correct: 1 - prod_{i = n-c+1}^{n} (1 - k / i) (n, c broadcast)."""
    n_arr, c_arr = np.broadcast_arrays(np.asarray(n, np.int64), np.asarray(c, np.int64))
    if np.any(c_arr < 0) or np.any(c_arr > n_arr) or np.any(k > n_arr) or k < 1:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (got k={k})")
    out = np.empty(n_arr.shape, np.float64)
    for idx in np.ndindex(n_arr.shape):
        nn, cc = int(n_arr[idx]), int(c_arr[idx])
        if nn - cc < k:
            out[idx] = 1.0
        else:
            i = np.arange(nn - cc + 1, nn + 1, dtype=np.float64)
            out[idx] = 1.0 - float(np.prod(1.0 - k / i))
    return out


def coverage_curve(correct_PN: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    """Mean pass@k over problems for each k: the coverage curve of repeated sampling."""
    correct_PN = np.asarray(correct_PN, bool)
    n = correct_PN.shape[1]
    c_P = correct_PN.sum(axis=1)
    return {int(k): float(np.mean(pass_at_k(n, c_P, int(k)))) for k in ks if k <= n}


def majority_answer(answers: Sequence[str | None]) -> str | None:
    """The most frequent well-formed answer (ties: the one seen first); None when no answer is well formed."""
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return None
    top = max(votes.values())
    return next(a for a in answers if a is not None and votes[a] == top)


def majority_vote_accuracy(answers_PN: Sequence[Sequence[str | None]], truths: Sequence[str], k: int,
                           permutations: int = 8, seed: int = 0) -> float:
    """Accuracy of majority voting over k samples, averaged over disjoint k-blocks of several shuffles of the n."""
    rng = np.random.default_rng(seed)
    hits, total = 0, 0
    for answers, truth in zip(answers_PN, truths):
        n = len(answers)
        if k > n:
            raise ValueError(f"k={k} > n={n} samples")
        for _ in range(permutations if k < n else 1):
            order = rng.permutation(n)
            for b in range(n // k):
                block = [answers[j] for j in order[b * k:(b + 1) * k]]
                hits += majority_answer(block) == truth
                total += 1
    return hits / max(total, 1)


def best_of_n(candidates: Sequence[Any], score: Callable[[Any], float]) -> tuple[int, Any]:
    """(index, candidate) with the highest score (first on ties): best-of-n with a verifier or a reward model."""
    scores = [float(score(c)) for c in candidates]
    i = int(np.argmax(scores))
    return i, candidates[i]
