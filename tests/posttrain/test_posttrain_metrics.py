"""pass@k against brute-force enumeration, majority voting, best-of-n, and inference FLOP accounting."""

import itertools

import numpy as np
import pytest

from scalekit.config import default_config, resolve
from scalekit.infer import accounting, metrics
from scalekit.infer.evaluate import completion_lengths
from scalekit.model.counting import inference_flops_per_token


def brute_pass_at_k(n, c, k):
    """Share of all k-subsets of n samples (c correct) that contain a correct one."""
    samples = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_matches_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            want = brute_pass_at_k(n, c, k)
            assert metrics.pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12)


def test_pass_at_k_agrees_with_the_laws_library():
    laws = pytest.importorskip("scalekit.laws.coverage")
    n, c = np.array([10, 10, 64, 64, 100]), np.array([0, 3, 1, 40, 100])
    for k in (1, 2, 7, 10):
        np.testing.assert_allclose(metrics.pass_at_k(n, c, k), laws.pass_at_k(n, c, k), atol=1e-12)


def test_coverage_curve_is_mean_pass_at_k():
    correct = np.array([[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], bool)
    curve = metrics.coverage_curve(correct, [1, 2, 4, 8])
    assert set(curve) == {1, 2, 4}  # k > n is left out
    assert curve[1] == pytest.approx((0.25 + 0 + 1) / 3)
    assert curve[4] == pytest.approx(2 / 3)
    assert curve[1] <= curve[2] <= curve[4]


def test_majority_vote_and_best_of_n():
    assert metrics.majority_answer(["3", None, "4", "4", "3", None, None]) == "3"  # tie: first seen
    assert metrics.majority_answer([None, None]) is None
    answers = [["7", "7", "1", "7"], ["2", "5", "5", "5"]]
    assert metrics.majority_vote_accuracy(answers, ["7", "2"], k=4) == 0.5
    assert metrics.majority_vote_accuracy(answers, ["7", "5"], k=4) == 1.0
    acc1 = metrics.majority_vote_accuracy(answers, ["7", "5"], k=1)
    assert acc1 == pytest.approx((3 / 4 + 3 / 4) / 2)
    idx, best = metrics.best_of_n(["12", "13", "14"], lambda a: a == "13")
    assert (idx, best) == (1, "13")


def test_generation_flops_sum_the_per_token_costs():
    cfg = default_config()
    cfg.model.update(d_model=64, n_layers=2, n_heads=2)
    m = resolve(cfg, 19).model
    P, G = 7, 5
    want = sum(inference_flops_per_token(m, j + 1) for j in range(P + G - 1))
    assert accounting.generation_flops(m, P, G) == pytest.approx(want)
    assert accounting.samples_flops(m, [P, P], [G, 1]) == pytest.approx(want + accounting.generation_flops(m, P, 1))
    # a forward token costs a third of a training token at the same context (palm convention)
    assert accounting.forward_flops(m, 32, 10) * 3 == pytest.approx(accounting.train_flops(m, 32, 10))


def test_completion_lengths_count_through_the_end_token():
    toks = np.array([[5, 6, 2, 0], [5, 5, 5, 5], [2, 0, 0, 0]])
    np.testing.assert_array_equal(completion_lengths(toks, 2), [3, 4, 1])
