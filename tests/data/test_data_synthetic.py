"""The synthetic Markov language: its floor against independent computations, and its samples against its table."""

import itertools

import numpy as np
import pytest

from scalekit.config import default_config
from scalekit.data import DataError, data_info
from scalekit.data.synthetic import markov_language, stationary_distribution, stream_key


def _dense_transition(probs: np.ndarray, V: int, k: int) -> np.ndarray:
    """The chain over contexts as a dense matrix, built by enumerating context tuples (independent of the code)."""
    ctxs = list(itertools.product(range(V), repeat=k))
    index = {c: i for i, c in enumerate(ctxs)}
    T = np.zeros((len(ctxs), len(ctxs)))
    for c in ctxs:
        for b in range(V):
            T[index[c], index[c[1:] + (b,)]] += probs[index[c], b]
    return T


def _eig_stationary(T: np.ndarray) -> np.ndarray:
    w, vecs = np.linalg.eig(T.T)
    v = np.real(vecs[:, np.argmin(np.abs(w - 1))])
    return v / v.sum()


@pytest.mark.parametrize("V,k,conc", [(3, 1, 0.5), (3, 2, 0.3), (2, 3, 1.0)])
def test_floor_matches_eigendecomposition(V, k, conc):
    lang = markov_language(V, k, conc, 7)
    pi = _eig_stationary(_dense_transition(lang.probs, V, k))
    h_rows = np.array([-sum(p * np.log(p) for p in row if p > 0) for row in lang.probs])
    np.testing.assert_allclose(lang.stationary, pi, atol=1e-10)
    assert lang.entropy_rate == pytest.approx(float(pi @ h_rows), abs=1e-10)


def test_power_iteration_matches_direct_solve():
    lang = markov_language(4, 5, 0.1, 3)  # 1024 contexts: the direct solve's side of DENSE_MAX_CONTEXTS
    dense = stationary_distribution(lang.probs, 4, 5, "dense")
    power = stationary_distribution(lang.probs, 4, 5, "power")
    np.testing.assert_allclose(power, dense, atol=1e-12)
    np.testing.assert_array_equal(dense, lang.stationary)


def test_sequence_floor_by_enumeration():
    """Expected per-token loss of the Bayes-optimal model over a window, by enumerating every window."""
    V, k, L = 2, 2, 4
    lang = markov_language(V, k, 0.7, 3)
    pi = lang.stationary.reshape(V, V)
    joint = {}
    for seq in itertools.product(range(V), repeat=L + 1):
        p = pi[seq[0], seq[1]]
        for t in range(k, L + 1):
            p *= lang.probs[seq[t - 2] * V + seq[t - 1], seq[t]]
        joint[seq] = p

    def block(m):  # entropy of the first m tokens
        marg = {}
        for s, p in joint.items():
            marg[s[:m]] = marg.get(s[:m], 0.0) + p
        return -sum(p * np.log(p) for p in marg.values() if p > 0)

    expected = sum(block(j + 1) - block(j) for j in range(1, L + 1)) / L
    assert lang.sequence_loss(L) == pytest.approx(expected, abs=1e-12)
    assert lang.sequence_loss(L) > lang.entropy_rate


def test_samples_follow_the_table_and_reach_the_floor():
    """Empirical transitions and conditional entropy of a long sample match the chain (loosely)."""
    V, k = 3, 1
    lang = markov_language(V, k, 0.5, 11)
    seqs = lang.generate(stream_key(11, 1, 0), np.arange(2000), 200)
    counts = np.zeros((V, V))
    np.add.at(counts, (seqs[:, :-1].ravel(), seqs[:, 1:].ravel()), 1)
    freq = counts / counts.sum(1, keepdims=True)
    np.testing.assert_allclose(freq, lang.probs, atol=0.01)
    ctx_share = counts.sum(1) / counts.sum()
    h_emp = -np.sum(ctx_share[:, None] * np.where(freq > 0, freq * np.log(np.where(freq > 0, freq, 1)), 0))
    assert h_emp == pytest.approx(lang.entropy_rate, abs=0.01)
    np.testing.assert_allclose(np.bincount(seqs[:, 0], minlength=V) / len(seqs), lang.stationary, atol=0.04)


def test_records_depend_only_on_key_and_index():
    lang = markov_language(16, 2, 0.3, 5)
    key = stream_key(5, 1, 0)
    a = lang.generate(key, np.arange(10), 33)
    b = lang.generate(key, np.array([7, 3]), 33)
    np.testing.assert_array_equal(a[[7, 3]], b)
    assert a.dtype == np.int32 and a.min() >= 0 and a.max() < 16
    assert not np.array_equal(a, lang.generate(stream_key(5, 1, 1), np.arange(10), 33))
    short = lang.generate(key, np.arange(10), 1)  # shorter than the order: the start of the context
    np.testing.assert_array_equal(short[:, 0], a[:, 0])


def test_language_is_fixed_by_language_seed():
    assert np.array_equal(markov_language(8, 2, 0.3, 1).probs, markov_language.__wrapped__(8, 2, 0.3, 1).probs)
    assert not np.array_equal(markov_language(8, 2, 0.3, 1).probs, markov_language(8, 2, 0.3, 2).probs)


def test_data_info_synthetic():
    d = default_config().data
    info = data_info(d)
    assert info.vocab_size == d.vocab_size
    assert 0 < info.entropy_floor < np.log(d.vocab_size)
    assert info.sequence_floor > info.entropy_floor
    assert "entropy rate" in info.description


def test_too_many_contexts_is_an_error():
    d = default_config().data
    d.vocab_size, d.markov_order = 64, 4  # 64**4 = 2**24 contexts
    with pytest.raises(DataError, match="2\\*\\*20"):
        data_info(d)
