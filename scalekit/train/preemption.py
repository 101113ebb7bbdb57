"""SIGTERM/SIGINT handling: finish the current step, save, wait for the save, exit 0.

Slurm and Kubernetes send SIGTERM some seconds before SIGKILL; the loop asks `agreed(step)` after each step.
With several processes all must stop at the same step (the save is collective), so the flag is all-gathered every
`sync_every` steps and every process stops at the first such step where any of them was signalled: at most
`sync_every` steps after the signal, within any grace period worth having. A second signal falls through to the
default handler so an impatient Ctrl-C still stops the process.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType


class PreemptionGuard:
    """Records a termination request instead of dying mid-step (main thread only; elsewhere a no-op)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, sync_every: int = 10) -> None:
        self.sync_every = sync_every
        self.requested = False
        self.signal_name = ""
        self._previous: dict[int, object] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:  # second signal: behave as if we were not here
            previous = self._previous.get(signum, signal.SIG_DFL)
            signal.signal(signum, previous if callable(previous) else signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def agreed(self, step: int) -> bool:
        """True when this step is where to stop: at once with one process, at a common sync step with several."""
        import jax
        if jax.process_count() == 1:
            return self.requested
        if step % self.sync_every:
            return False
        import numpy as np
        from jax.experimental import multihost_utils
        flags = multihost_utils.process_allgather(np.int32(self.requested))
        if np.any(flags) and not self.requested:
            self.requested, self.signal_name = True, "a peer's termination signal"
        return bool(np.any(flags))

    def restore(self) -> None:
        """Put the previous handlers back."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)  # type: ignore[arg-type]
        self._previous.clear()
