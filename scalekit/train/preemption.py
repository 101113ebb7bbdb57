"""SIGTERM/SIGINT handling: finish the current step, save, wait for the save, exit 0.

Slurm and Kubernetes send SIGTERM some seconds before SIGKILL; the loop polls `requested` after each step.
A second signal falls through to the default handler so an impatient Ctrl-C still stops the process.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType


class PreemptionGuard:
    """Records a termination request instead of dying mid-step (main thread only; elsewhere a no-op)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
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

    def restore(self) -> None:
        """Put the previous handlers back."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)  # type: ignore[arg-type]
        self._previous.clear()
