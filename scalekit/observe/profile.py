"""Profiler hook: `--config.profile_steps=A:B` writes a jax.profiler trace of steps A..B-1.

The loop calls `maybe_start(step)` before it fetches the batch for step `step` (0-based: the number of steps
already done) and `maybe_stop(done, state)` after dispatching it (`done` = steps done now). The trace stops only
after the device has finished the last traced step (it blocks on `state` then), since dispatch is asynchronous.
Open the trace with TensorBoard's profile plugin or Perfetto (the .xplane.pb / .trace.json.gz under `logdir`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def parse_steps(spec: str) -> tuple[int, int] | None:
    """"A:B" -> (A, B); "" -> None. Raises ValueError for anything else (B must exceed A)."""
    if not spec:
        return None
    try:
        a, b = (int(x) for x in spec.split(":"))
    except ValueError:
        raise ValueError(f"profile_steps={spec!r} must look like A:B (first step, step after the last)") from None
    if a < 0 or b <= a:
        raise ValueError(f"profile_steps={spec!r}: need 0 <= A < B")
    return a, b


class Profiler:
    """Starts a jax.profiler trace at step A and stops it once step B-1 has run (see the module docstring)."""

    def __init__(self, spec: str, logdir: str | os.PathLike) -> None:
        self.window = parse_steps(spec)
        self.logdir = Path(logdir)
        self.active = False
        self.done = False

    def maybe_start(self, step: int) -> None:
        """Start tracing if `step` (about to run) is the first step of the window (or inside it after a resume)."""
        if self.window is None or self.active or self.done:
            return
        a, b = self.window
        if a <= step < b:
            import jax

            self.logdir.mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(str(self.logdir))
            self.active = True

    def maybe_stop(self, done: int, wait_for: Any = None) -> None:
        """Stop once `done` steps have been dispatched and done >= B, after waiting for `wait_for` to be ready."""
        if self.active and self.window is not None and done >= self.window[1]:
            self._stop(wait_for)

    def step_annotation(self, step: int) -> Any:
        """A context manager naming the step in the trace (a no-op when not tracing)."""
        import contextlib

        if not self.active:
            return contextlib.nullcontext()
        import jax

        return jax.profiler.StepTraceAnnotation("train", step_num=step)

    def _stop(self, wait_for: Any) -> None:
        import jax

        if wait_for is not None:
            jax.block_until_ready(wait_for)
        jax.profiler.stop_trace()
        self.active = False
        self.done = True

    def close(self, wait_for: Any = None) -> None:
        """Stop a trace the run ended inside of (e.g. B past the last step, or an exception)."""
        if self.active:
            self._stop(wait_for)

    def trace_files(self) -> list[Path]:
        """The trace files written so far under logdir."""
        return sorted(p for p in self.logdir.rglob("*") if p.is_file()) if self.logdir.exists() else []
