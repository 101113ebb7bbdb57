"""Verifiable tasks generated on the fly: arithmetic and digit-sequence problems with exact verifiers.

A problem is a prompt and one correct answer over a small character vocabulary (`CHARS`: pad `_`, begin `^`, end `$`,
digits, operators). Families (`TASKS`), each with difficulty levels:

- `addition`: a + b, a and b uniform in [0, 10^d).            `^12+34=` -> `46$`
- `multiplication`: a * b, a in [0, 10^d), b a single digit.  `^123*7=` -> `861$`
- `reverse`: reverse a string of d + 2 digits.                `^r3141=` -> `1413$`
- `sort`: sort a string of d + 2 digits ascending.            `^s3141=` -> `1134$`

Splits never overlap: a problem belongs to the test split iff a fixed hash of its text (not of the seed, the record or
the difficulty) falls below `TEST_FRACTION`; records draw candidates from a counter-based stream and keep the first that
belongs to their split, so each split is uniform over its own problems and the same problem is never in both.

Two row formats (`data.task = "addition"` or `"addition:lm"`, or `data.task_format` when the config has it):

- `sft` (default): one problem per row, `^prompt answer$` then padding; weights = 1 on targets that are answer tokens
  (the answer's characters and the end token) and 0 on the prompt and the padding: the loss of supervised fine-tuning.
- `lm`: problems packed back to back (`^12+34=46$^7+5=12$...`), weight 1 on every target: pre-training text.

Record r of a split is a pure function of (task, difficulty, format, seed, split, r); the eval split ignores the seed
so every run is evaluated on the same problems. `make_batches` follows the sharding contract of
`scalekit.data.pipeline` (global batch b = records [bB, (b+1)B), process p its contiguous slice; grain iterator with
get_state/set_state).
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grain
import numpy as np

from scalekit.data.errors import DataError
from scalekit.data.pipeline import DataInfo, shard, to_iterator
from scalekit.data.synthetic import random_bits, stream_key

CHARS = "_^$0123456789+*=;rs"
PAD, BOS, EOS = 0, 1, 2
VOCAB_SIZE = len(CHARS)
_INDEX = {c: i for i, c in enumerate(CHARS)}
TEST_FRACTION = 0.1  # share of each task's problems (by hash) that only the test split ever sees
FORMATS = ("sft", "lm")
_CANDIDATES = 48  # candidate problems drawn per record before a second round (eval keeps 10%: 0.9^48 = 0.6%)
_SPLIT_IDS = {"train": 11, "eval": 12}
_TASK_IDS = {"addition": 1, "multiplication": 2, "reverse": 3, "sort": 4, "addition_reversed": 5}
MAX_DIFFICULTY = 8


@dataclass(frozen=True)
class Problem:
    """One problem: its family, difficulty, prompt text (after `^`) and the one correct answer (before `$`)."""

    task: str
    difficulty: int
    prompt: str
    answer: str

    @property
    def prompt_tokens(self) -> list[int]:
        """`^prompt` as token ids (what the model is given)."""
        return [BOS] + encode(self.prompt)

    @property
    def answer_tokens(self) -> list[int]:
        """`answer$` as token ids (what a correct completion is)."""
        return encode(self.answer) + [EOS]


@dataclass(frozen=True)
class TaskFamily:
    """How to draw a problem from two random words, and how long its prompt and answer can be."""

    name: str
    make: Callable[[int, int, int], tuple[str, str]]  # (difficulty, word0, word1) -> (prompt, answer)
    max_prompt: Callable[[int], int]  # characters of the longest prompt (without `^`)
    max_answer: Callable[[int], int]  # characters of the longest answer (without `$`)
    fixed_length: bool  # answers always have max_answer characters (digit strings) rather than being numbers


def _digits(word: int, n: int) -> str:
    return str(word % 10 ** n).zfill(n)


def _addition(d: int, w0: int, w1: int) -> tuple[str, str]:
    a, b = w0 % 10 ** d, w1 % 10 ** d
    return f"{a}+{b}=", str(a + b)


def _addition_reversed(d: int, w0: int, w1: int) -> tuple[str, str]:
    a, b = w0 % 10 ** d, w1 % 10 ** d
    return f"{a:0{d}d}+{b:0{d}d}=", f"{a + b:0{d + 1}d}"[::-1]


def _multiplication(d: int, w0: int, w1: int) -> tuple[str, str]:
    a, b = w0 % 10 ** d, w1 % 10
    return f"{a}*{b}=", str(a * b)


def _reverse(d: int, w0: int, w1: int) -> tuple[str, str]:
    s = _digits(w0, d + 2)
    return f"r{s}=", s[::-1]


def _sort(d: int, w0: int, w1: int) -> tuple[str, str]:
    s = _digits(w0, d + 2)
    return f"s{s}=", "".join(sorted(s))


TASKS: dict[str, TaskFamily] = {
    "addition": TaskFamily("addition", _addition, lambda d: 2 * d + 2, lambda d: d + 1, False),
    "addition_reversed": TaskFamily("addition_reversed", _addition_reversed, lambda d: 2 * d + 2, lambda d: d + 1,
                                    True),
    "multiplication": TaskFamily("multiplication", _multiplication, lambda d: d + 3, lambda d: d + 1, False),
    "reverse": TaskFamily("reverse", _reverse, lambda d: d + 4, lambda d: d + 2, True),
    "sort": TaskFamily("sort", _sort, lambda d: d + 4, lambda d: d + 2, True),
}


# --- text <-> tokens -------------------------------------------------------------------------------------------------

def encode(text: str) -> list[int]:
    """Characters of CHARS -> token ids (a KeyError names a character outside the vocabulary)."""
    return [_INDEX[c] for c in text]


def decode(tokens: Sequence[int]) -> str:
    """Token ids -> characters (pad `_`, begin `^`, end `$`)."""
    return "".join(CHARS[int(t)] if 0 <= int(t) < VOCAB_SIZE else "?" for t in tokens)


# --- the verifier ----------------------------------------------------------------------------------------------------

def parse_answer(completion: Sequence[int], problem: Problem) -> str | None:
    """The answer a completion states, or None when it is malformed.

    Well formed: one or more digits followed by the end token (anything after it is ignored); for numbers no leading
    zero (except "0") and at most the longest possible answer's length; for digit strings exactly their length.
    A completion without an end token (cut off), or with any non-digit before it, is malformed.
    """
    tokens = [int(t) for t in completion]
    if EOS not in tokens:
        return None
    body = tokens[:tokens.index(EOS)]
    if not body or any(not 3 <= t <= 12 for t in body):
        return None
    text = decode(body)
    family = TASKS[problem.task]
    if family.fixed_length:
        return text if len(text) == family.max_answer(problem.difficulty) else None
    if (len(text) > 1 and text[0] == "0") or len(text) > family.max_answer(problem.difficulty):
        return None
    return text


def verify(problem: Problem, completion: Sequence[int]) -> bool:
    """True iff the completion is well formed and states the problem's answer exactly."""
    return parse_answer(completion, problem) == problem.answer


def reward(problem: Problem, completion: Sequence[int]) -> float:
    """The verifier as an RL reward: 1.0 for a correct answer, 0.0 otherwise (malformed included)."""
    return 1.0 if verify(problem, completion) else 0.0


# --- problems and splits ---------------------------------------------------------------------------------------------

def _check(task: str, difficulty: int) -> TaskFamily:
    if task not in TASKS:
        raise DataError(f"data.task={task!r} is not one of {sorted(TASKS)}")
    if not 1 <= int(difficulty) <= MAX_DIFFICULTY:
        raise DataError(f"data.difficulty={difficulty} must be in [1, {MAX_DIFFICULTY}]")
    return TASKS[task]


def problem_split(task: str, prompt: str) -> str:
    """'eval' (the test split) or 'train': a fixed hash of the problem text, independent of seed and difficulty."""
    h = int.from_bytes(hashlib.blake2b(f"{task}|{prompt}".encode(), digest_size=8).digest(), "little")
    return "eval" if h < TEST_FRACTION * 2**64 else "train"


def problems(task: str, difficulty: int, split: str, seed: int, records: Sequence[int] | np.ndarray,
             ) -> list[Problem]:
    """The problems of `split` at the given record indices (a pure function of its arguments)."""
    family = _check(task, difficulty)
    if split not in _SPLIT_IDS:
        raise ValueError(f"split={split!r} must be 'train' or 'eval'")
    key = stream_key(_TASK_IDS[task], int(difficulty), _SPLIT_IDS[split], 0 if split == "eval" else int(seed))
    records = np.asarray(records, dtype=np.int64)
    out: list[Problem | None] = [None] * len(records)
    todo = np.arange(len(records))
    for round_ in range(64):
        if not len(todo):
            break
        ids = records[todo].astype(np.uint64) * np.uint64(64) + np.uint64(round_)
        words = random_bits(key, ids, 2 * _CANDIDATES)  # [2C, R]
        left = []
        for col, i in enumerate(todo.tolist()):
            for c in range(_CANDIDATES):
                w0, w1 = int(words[2 * c, col] >> 8), int(words[2 * c + 1, col] >> 8)
                prompt, answer = family.make(int(difficulty), w0, w1)
                if problem_split(task, prompt) == split:
                    out[i] = Problem(task, int(difficulty), prompt, answer)
                    break
            else:
                left.append(i)
        todo = np.asarray(left, dtype=np.int64)
    if len(todo):
        raise DataError(f"task {task!r} at difficulty {difficulty} has (almost) no {split} problems")
    return out  # type: ignore[return-value]


def test_problems(task: str, difficulty: int, n: int) -> list[Problem]:
    """The first n test problems (records 0..n-1 of the eval split; the same for every seed)."""
    return problems(task, difficulty, "eval", 0, np.arange(n))


def train_problems(task: str, difficulty: int, n: int, seed: int = 0, start: int = 0) -> list[Problem]:
    """Train-split problems at records start..start+n-1 (prompts for RL, for example)."""
    return problems(task, difficulty, "train", seed, np.arange(start, start + n))


def encode_prompts(batch: Sequence[Problem], width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded prompt tokens [B, width] (int32) and each prompt's length [B] (what the decoder takes)."""
    toks = [p.prompt_tokens for p in batch]
    width = max(map(len, toks)) if width is None else width
    out = np.full((len(toks), width), PAD, np.int32)
    for i, t in enumerate(toks):
        if len(t) > width:
            raise ValueError(f"prompt {decode(t)!r} is longer than width {width}")
        out[i, width - len(t):] = t
    return out, np.array([len(t) for t in toks], np.int32)


def max_prompt_len(task: str, difficulty: int) -> int:
    """Tokens in the longest prompt, `^` included."""
    return _check(task, difficulty).max_prompt(int(difficulty)) + 1


def max_answer_len(task: str, difficulty: int) -> int:
    """Tokens in the longest answer, `$` included."""
    return _check(task, difficulty).max_answer(int(difficulty)) + 1


# --- rows ------------------------------------------------------------------------------------------------------------

def task_spec(data_cfg: Any) -> tuple[str, str]:
    """(task family, format) from data.task (`name` or `name:lm`) and data.task_format when the config has one."""
    name, _, fmt = str(data_cfg.task).partition(":")
    fmt = fmt or str(data_cfg.get("task_format", "") or "sft")
    if fmt not in FORMATS:
        raise DataError(f"task format {fmt!r} (from data.task={data_cfg.task!r}) is not one of {FORMATS}")
    _check(name, int(data_cfg.difficulty))
    return name, fmt


class TaskBatcher:
    """grain map: int64 [B_local] record indices -> {"inputs", "targets", "weights"} [B_local, seq_len]."""

    def __init__(self, task: str, difficulty: int, fmt: str, seq_len: int, split: str, seed: int):
        self.task, self.difficulty, self.fmt, self.seq_len = task, int(difficulty), fmt, int(seq_len)
        self.split, self.seed = split, int(seed)

    def __call__(self, records: np.ndarray) -> dict[str, np.ndarray]:
        records = np.asarray(records, dtype=np.int64).reshape(-1)
        L = self.seq_len
        rows = np.full((len(records), L + 1), PAD, np.int32)
        answer_mask = np.zeros((len(records), L + 1), np.float32)
        if self.fmt == "sft":
            for i, p in enumerate(problems(self.task, self.difficulty, self.split, self.seed, records)):
                toks = p.prompt_tokens + p.answer_tokens
                rows[i, :len(toks)] = toks
                answer_mask[i, len(p.prompt_tokens):len(toks)] = 1.0
            weights = answer_mask[:, 1:]
        else:
            per_row = (L + 1) // (max_prompt_len(self.task, self.difficulty) + 1) + 2
            ids = (records[:, None] * per_row + np.arange(per_row)).reshape(-1)
            probs = problems(self.task, self.difficulty, self.split, self.seed, ids)
            for i in range(len(records)):
                seq: list[int] = []
                for p in probs[i * per_row:(i + 1) * per_row]:
                    seq += p.prompt_tokens + p.answer_tokens
                    if len(seq) >= L + 1:
                        break
                rows[i] = seq[:L + 1]
            weights = np.ones((len(records), L), np.float32)
        return {"inputs": rows[:, :-1], "targets": rows[:, 1:], "weights": weights}


def data_info(data_cfg: Any) -> DataInfo:
    """Vocabulary and a description; checks that a problem fits in seq_len (sft format)."""
    task, fmt = task_spec(data_cfg)
    d = int(data_cfg.difficulty)
    longest = max_prompt_len(task, d) + max_answer_len(task, d)
    if fmt == "sft" and longest > int(data_cfg.seq_len) + 1:
        raise DataError(f"data.seq_len={data_cfg.seq_len} is too short for {task} at difficulty {d}: the longest "
                        f"problem has {longest} tokens; set --config.data.seq_len={longest - 1} or more")
    what = "one problem per row, loss on answer tokens" if fmt == "sft" else "problems packed, loss on every token"
    return DataInfo(VOCAB_SIZE, None, f"task {task} (difficulty {d}, {fmt} format: {what}); vocabulary {CHARS!r}; "
                                      f"{TEST_FRACTION:.0%} of problems held out for eval by hash")


def make_batches(data_cfg: Any, split: str, seed: int, process_index: int = 0, process_count: int = 1, *,
                 start_batch: int = 0) -> grain.DatasetIterator:
    """This process's local batches of task rows (see the module docstring); deterministic, infinite, checkpointable."""
    if split not in _SPLIT_IDS:
        raise ValueError(f"split={split!r} must be 'train' or 'eval'")
    data_info(data_cfg)
    task, fmt = task_spec(data_cfg)
    batcher = TaskBatcher(task, int(data_cfg.difficulty), fmt, int(data_cfg.seq_len), split, int(seed))
    local = shard(grain.MapDataset.range(sys.maxsize), int(data_cfg.batch_size), process_index, process_count)
    if start_batch:
        local = local[int(start_batch):]
    return to_iterator(local.map(batcher), data_cfg)
