"""Guards that keep a run from being silently wrong: one trainer per workdir, divergence, the unigram baseline.

- `workdir_lock(workdir, *more)`: an exclusive flock on `<dir>/trainer.lock` for the trainer's lifetime, holding
  the owner's PID for the message a second trainer gets; the trainer also locks a local `checkpoint.dir` outside its
  workdir, so two workdirs never train into one checkpoint directory at once. The kernel drops the lock when its
  process dies, so a stale lock of a dead trainer is simply taken over. (The sweep executor locks `<run dir>/.lock`
  itself, a different file.)
- `check_finite(step, metrics)`: raises `Diverged` when the loss or the gradient norm is not finite.
- `unigram_loss(data_cfg)`: nats/token of predicting the data's unigram distribution (exact for the synthetic
  language; the eval split's empirical unigram entropy for bytes and tokens; None where unknown). A run whose final
  eval loss is not below it learned nothing beyond token frequencies and is flagged in its summary.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import ml_collections
import numpy as np

LOCK_NAME = "trainer.lock"
UNIGRAM_SAMPLE = 1 << 22  # tokens of the eval split counted for the empirical unigram entropy
FLAG_NO_BETTER_THAN_UNIGRAM = "no_better_than_unigram"


class WorkdirBusy(RuntimeError):
    """Another live trainer holds this workdir's lock."""


class Diverged(RuntimeError):
    """The loss or the gradient norm became non-finite."""

    def __init__(self, step: int, loss: float, grad_norm: float):
        self.step, self.loss, self.grad_norm = step, loss, grad_norm
        self.reason = "loss" if not math.isfinite(loss) else "grad_norm"
        super().__init__(f"diverged at step {step}: non-finite {self.reason} (loss {loss}, grad_norm {grad_norm})")


# --- one trainer per workdir -----------------------------------------------------------------------------------------

def try_lock(workdir: str | os.PathLike, what: str = "workdir") -> TextIO:
    """Take `<workdir>/trainer.lock` exclusively and write our PID into it; raise WorkdirBusy naming the holder."""
    path = Path(workdir) / LOCK_NAME
    f = open(path, "a+")  # noqa: SIM115 - returned open; closing it releases the lock
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise WorkdirBusy(f"{what} {str(workdir)!r} is in use by another trainer (PID {holder}, lock {path}); "
                          "wait for it or stop it") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


@contextlib.contextmanager
def workdir_lock(workdir: str | os.PathLike, checkpoint_dir: str | os.PathLike | None = None,
                 enabled: bool = True) -> Iterator[None]:
    """Hold the trainer lock of the workdir (and of a separate local checkpoint dir) for the block.

    A no-op when not `enabled` (processes other than 0 of a multi-process run).
    """
    if not enabled:
        yield
        return
    with contextlib.ExitStack() as stack:
        stack.callback(try_lock(workdir).close)
        if checkpoint_dir is not None:
            Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
            stack.callback(try_lock(checkpoint_dir, "checkpoint dir").close)
        yield


# --- divergence ------------------------------------------------------------------------------------------------------

def check_finite(step: int, metrics: dict[str, Any]) -> None:
    """Raise Diverged when the step's loss or gradient norm (host values) is NaN or infinite."""
    loss, grad_norm = float(metrics["loss"]), float(metrics.get("grad_norm", 0.0))
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        raise Diverged(step, loss, grad_norm)


# --- the unigram baseline --------------------------------------------------------------------------------------------

def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def unigram_loss(data_cfg: ml_collections.ConfigDict) -> float | None:
    """Nats/token of the unigram predictor of the data (see the module doc); None where it is not known."""
    d = data_cfg
    if d.source == "synthetic":
        from scalekit.data.synthetic import markov_language  # noqa: PLC0415
        lang = markov_language(int(d.vocab_size), int(d.markov_order), float(d.concentration), int(d.language_seed))
        return float(lang.block_entropies[1])  # H(x_1) under the stationary chain: exact
    if d.source in ("bytes", "tokens"):
        from scalekit.data.pipeline import _regions  # noqa: PLC0415
        from scalekit.data.sources import open_corpus  # noqa: PLC0415
        _, evl = _regions(d)
        arr = open_corpus(evl.spec)
        sample = np.asarray(arr[evl.start:min(evl.stop, evl.start + UNIGRAM_SAMPLE)]).astype(np.int64)
        return _entropy(np.bincount(sample)) if sample.size else None
    return None


def summary_flags(eval_loss: float, unigram: float | None) -> list[str]:
    """Warnings about a finished run's result, for its summary."""
    flags = []
    if unigram is not None and not (math.isfinite(eval_loss) and eval_loss < unigram):
        flags.append(FLAG_NO_BETTER_THAN_UNIGRAM)
    return flags
