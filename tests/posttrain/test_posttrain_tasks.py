"""Verifiable tasks: deterministic sharded rows, answer-only weights, disjoint splits, and a strict verifier."""

import numpy as np
import pytest

from scalekit.config import default_config
from scalekit.data import tasks
from scalekit.data.errors import DataError
from scalekit.data.pipeline import data_info, make_batches


def task_cfg(task="addition", difficulty=2, seq_len=16, batch_size=8):
    cfg = default_config()
    d = cfg.data
    d.source, d.task, d.difficulty, d.seq_len, d.batch_size, d.prefetch = "task", task, difficulty, seq_len, \
        batch_size, 0
    return d


def take(it, n):
    return [next(it) for _ in range(n)]


def test_pipeline_dispatches_to_tasks():
    info = data_info(task_cfg())
    assert info.vocab_size == tasks.VOCAB_SIZE == len(tasks.CHARS)
    assert "addition" in info.description


@pytest.mark.parametrize("task", ["addition:lm", "sort"])
def test_deterministic_and_sharded_per_process(task):
    d = task_cfg(task, seq_len=32 if task.endswith(":lm") else 16)
    full = take(make_batches(d, "train", 3), 3)
    again = take(make_batches(d, "train", 3), 3)
    for a, b in zip(full, again):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    other_seed = next(make_batches(d, "train", 4))
    assert not np.array_equal(other_seed["inputs"], full[0]["inputs"])
    parts = [take(make_batches(d, "train", 3, p, 4), 3) for p in range(4)]
    for step in range(3):
        for k in ("inputs", "targets", "weights"):
            joined = np.concatenate([parts[p][step][k] for p in range(4)])
            np.testing.assert_array_equal(joined, full[step][k])
            assert parts[0][step][k].shape == (2, d.seq_len)


def test_iterator_state_resumes_exactly():
    d = task_cfg()
    it = make_batches(d, "train", 0)
    take(it, 2)
    state = it.get_state()
    want = take(it, 2)
    fresh = make_batches(d, "train", 0)
    fresh.set_state(state)
    for a, b in zip(want, take(fresh, 2)):
        np.testing.assert_array_equal(a["inputs"], b["inputs"])


def test_sft_rows_weight_only_answer_tokens():
    d = task_cfg("addition", 2, seq_len=12, batch_size=16)
    batch = next(make_batches(d, "train", 0))
    for inp, tgt, w in zip(batch["inputs"], batch["targets"], batch["weights"]):
        text = tasks.decode(np.concatenate([inp[:1], tgt]))
        assert text.startswith("^")
        body = text[1:text.index("$") + 1]
        prompt, answer = body.split("=")
        a, b = map(int, prompt.split("+"))
        assert answer == f"{a + b}$"
        weighted = tasks.decode(tgt[w > 0])
        assert weighted == answer  # the answer's digits and the end token, nothing else
        assert np.all(np.isin(w, (0.0, 1.0)))
        assert np.all(tgt[len(body):] == tasks.PAD) and np.all(w[len(body):] == 0)


def test_lm_rows_pack_problems_with_every_token_weighted():
    d = task_cfg("sort:lm", 2, seq_len=40, batch_size=4)
    batch = next(make_batches(d, "train", 0))
    assert np.all(batch["weights"] == 1.0)
    text = tasks.decode(np.concatenate([batch["inputs"][0][:1], batch["targets"][0]]))
    units = [u for u in text.split("^") if u.endswith("$")]
    assert len(units) >= 3
    for u in units:
        digits, answer = u[1:-1].split("=")
        assert answer == "".join(sorted(digits))


def test_splits_never_overlap_and_route_by_hash():
    for task, difficulty in [("addition", 1), ("addition", 2), ("multiplication", 2), ("reverse", 1), ("sort", 2)]:
        test = {p.prompt for p in tasks.problems(task, difficulty, "eval", 0, np.arange(300))}
        train = {p.prompt for seed in (0, 1) for p in tasks.problems(task, difficulty, "train", seed, np.arange(600))}
        assert test and train and not (test & train), task
        assert all(tasks.problem_split(task, q) == "eval" for q in test)
        assert all(tasks.problem_split(task, q) == "train" for q in train)
    # the routing is a property of the problem, whatever difficulty drew it: 1-digit test sums stay out of 2-digit train
    easy_test = {p.prompt for p in tasks.problems("addition", 1, "eval", 0, np.arange(200))}
    hard_train = {p.prompt for p in tasks.problems("addition", 2, "train", 0, np.arange(20000))}
    assert easy_test and not (easy_test & hard_train)
    # about TEST_FRACTION of all 1-digit additions are test problems
    share = np.mean([tasks.problem_split("addition", f"{a}+{b}=") == "eval" for a in range(10) for b in range(10)])
    assert 0.03 < share < 0.2


def test_eval_split_is_the_same_for_every_seed():
    a = tasks.problems("sort", 2, "eval", 0, np.arange(20))
    b = tasks.problems("sort", 2, "eval", 7, np.arange(20))
    assert a == b


def test_verifier_accepts_the_answer_and_rejects_malformed():
    p = tasks.Problem("addition", 2, "57+68=", "125")
    ok = tasks.encode("125") + [tasks.EOS]
    assert tasks.verify(p, ok) and tasks.reward(p, ok) == 1.0
    assert tasks.verify(p, ok + [tasks.PAD, 5, 7])  # anything after the end token is ignored
    malformed = [
        tasks.encode("125"),  # no end token: cut off
        [tasks.EOS],  # empty
        tasks.encode("0125") + [tasks.EOS],  # leading zero
        tasks.encode("12+5") + [tasks.EOS],  # operator inside
        [tasks.BOS] + tasks.encode("125") + [tasks.EOS],  # a begin token
        tasks.encode("1") + [tasks.PAD] + tasks.encode("25") + [tasks.EOS],  # padding inside
        tasks.encode("12345") + [tasks.EOS],  # longer than any 2-digit sum
    ]
    for comp in malformed:
        assert tasks.parse_answer(comp, p) is None, tasks.decode(comp)
        assert not tasks.verify(p, comp) and tasks.reward(p, comp) == 0.0
    wrong = tasks.encode("124") + [tasks.EOS]
    assert tasks.parse_answer(wrong, p) == "124" and not tasks.verify(p, wrong)
    s = tasks.Problem("sort", 2, "s3141=", "1134")
    assert tasks.verify(s, tasks.encode("1134") + [tasks.EOS])
    assert tasks.parse_answer(tasks.encode("113") + [tasks.EOS], s) is None  # wrong length for a digit string
    z = tasks.Problem("addition", 1, "0+0=", "0")
    assert tasks.verify(z, tasks.encode("0") + [tasks.EOS])


def test_answers_are_correct_for_every_family():
    for p in tasks.problems("multiplication", 3, "train", 0, np.arange(50)):
        a, b = map(int, p.prompt[:-1].split("*"))
        assert p.answer == str(a * b) and a < 1000 and b < 10
    for p in tasks.problems("reverse", 2, "train", 0, np.arange(50)):
        assert p.answer == p.prompt[1:-1][::-1] and len(p.answer) == 4
    for p in tasks.problems("addition_reversed", 2, "train", 0, np.arange(50)):
        a, b = map(int, p.prompt[:-1].split("+"))
        assert p.answer[::-1] == f"{a + b:03d}"


def test_bad_settings_name_the_field():
    with pytest.raises(DataError, match="data.task"):
        data_info(task_cfg("division"))
    with pytest.raises(DataError, match="seq_len"):
        data_info(task_cfg("addition", 3, seq_len=8))
    with pytest.raises(DataError, match="format"):
        data_info(task_cfg("addition:chat"))


def test_encode_prompts_left_pads():
    ps = [tasks.Problem("addition", 2, "1+2=", "3"), tasks.Problem("addition", 2, "10+20=", "30")]
    toks, lens = tasks.encode_prompts(ps)
    assert toks.shape == (2, 7) and list(lens) == [5, 7]
    assert tasks.decode(toks[0]) == "__^1+2=" and tasks.decode(toks[1]) == "^10+20="
