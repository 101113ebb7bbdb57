"""Goodput: where a run's wall time went, and how much of it trained the model.

Wall time is split into phases: startup, compile, data_wait, step (productive), eval, checkpoint_save,
checkpoint_restore and other, plus `lost`: progress a restart threw away (steps after the last checkpoint that must
be run again). goodput_ratio = step seconds / (wall seconds + lost seconds).

The loop marks phases with `with goodput.phase(name):`. Everything before the first "step" phase that is not in an
explicit phase counts as startup (from the process's start, so imports count); after it, unmarked time is "other".
Compilation is found wherever it happens: a listener on jax.monitoring's compile events (tracing, lowering, XLA
compile) moves their seconds from whatever phase was active into "compile", so a first step or first eval that
compiles is not counted as productive.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from scalekit.observe.system import process_start_time

PHASES = ("startup", "compile", "data_wait", "step", "eval", "checkpoint_save", "checkpoint_restore", "other")

# jax 0.12 event names (jax/_src/dispatch.py): trace -> MLIR lowering -> XLA compile (or a compilation-cache load).
COMPILE_EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
    "/jax/core/compile/backend_compile_duration": "backend",
}


class CompileMonitor:
    """Seconds this process spent compiling, from jax.monitoring time spans, with nested spans counted once.

    One per process (`compile_monitor()`): jax's listeners are global. Spans arrive when they end, so a nested
    span (an eager op compiled while tracing) arrives before the span that contains it; each new span adds only its
    part not already covered.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._intervals: list[tuple[float, float]] = []  # disjoint, sorted by start; recent ones only
        self.seconds = 0.0  # union of all compile spans
        self.by_stage = {stage: 0.0 for stage in COMPILE_EVENTS.values()}  # per stage, overlaps not removed
        self.compilations = 0  # XLA compiles (or cache loads): backend_compile events

    def on_span(self, event: str, start: float, end: float, **_: Any) -> None:
        """jax.monitoring time-span listener."""
        stage = COMPILE_EVENTS.get(event)
        if stage is None or end < start:
            return
        with self._lock:
            self.by_stage[stage] += end - start
            if stage == "backend":
                self.compilations += 1
            covered = sum(max(0.0, min(end, b) - max(start, a)) for a, b in self._intervals if b > start)
            self.seconds += max(0.0, (end - start) - covered)
            merged = [(a, b) for a, b in self._intervals if b < start or a > end]
            lo = min([start] + [a for a, b in self._intervals if not (b < start or a > end)])
            hi = max([end] + [b for a, b in self._intervals if not (b < start or a > end)])
            merged.append((lo, hi))
            self._intervals = sorted(merged)[-256:]

    def snapshot(self) -> tuple[float, dict[str, float], int]:
        """(union seconds, seconds by stage, number of XLA compiles) so far."""
        with self._lock:
            return self.seconds, dict(self.by_stage), self.compilations


_MONITOR: CompileMonitor | None = None
_MONITOR_LOCK = threading.Lock()


def compile_monitor() -> CompileMonitor:
    """The process's CompileMonitor, registered with jax.monitoring on first use."""
    global _MONITOR
    with _MONITOR_LOCK:
        if _MONITOR is None:
            import jax.monitoring

            _MONITOR = CompileMonitor()
            jax.monitoring.register_event_time_span_listener(_MONITOR.on_span)
        return _MONITOR


class _Phase:
    """The context manager Goodput.phase returns (a class, not a generator: it runs twice per training step)."""

    __slots__ = ("goodput", "name")

    def __init__(self, goodput: Goodput, name: str) -> None:
        self.goodput, self.name = goodput, name

    def __enter__(self) -> None:
        self.goodput._enter(self.name)

    def __exit__(self, *exc: Any) -> None:
        self.goodput._exit()


class Goodput:
    """Wall-time accounting by phase for one process's run (see the module docstring).

    Args:
      start_time: unix time the accounting starts from; default the process's start (imports count as startup).
      track_compile: move jax compile time out of the active phase into "compile".
    """

    def __init__(self, start_time: float | None = None, track_compile: bool = True) -> None:
        self._lock = threading.Lock()
        self._seconds = dict.fromkeys(PHASES, 0.0)
        self._lost = 0.0
        self._stack: list[str] = []
        self._base = "startup"
        start = process_start_time() if start_time is None else start_time
        self._seconds["startup"] = max(0.0, time.time() - start)
        self._mark = time.perf_counter()
        self._monitor = compile_monitor() if track_compile else None
        self._compile_mark = self._monitor.snapshot()[0] if self._monitor else 0.0

    @property
    def current(self) -> str:
        """The phase time is being charged to now."""
        with self._lock:
            return self._stack[-1] if self._stack else self._base

    def _charge(self, now: float) -> None:
        """Charge the time since the last transition to the current phase, less any compile inside it."""
        elapsed, self._mark = now - self._mark, now
        phase = self._stack[-1] if self._stack else self._base
        compiled = 0.0
        if self._monitor is not None:
            total = self._monitor.seconds  # one float read; the monitor only ever adds to it
            compiled, self._compile_mark = total - self._compile_mark, total
        moved = 0.0 if phase == "compile" else min(max(compiled, 0.0), elapsed)
        self._seconds[phase] += elapsed - moved
        self._seconds["compile"] += moved

    def phase(self, name: str) -> _Phase:
        """Charge the time inside `with goodput.phase(name):` to `name` (one of PHASES); phases nest, the
        innermost is charged."""
        if name not in PHASES:
            raise ValueError(f"unknown goodput phase {name!r}; use one of {PHASES}")
        return _Phase(self, name)

    def _enter(self, name: str) -> None:
        with self._lock:
            self._charge(time.perf_counter())
            self._stack.append(name)
            if name == "step":
                self._base = "other"  # training has begun: unmarked time is no longer startup

    def _exit(self) -> None:
        with self._lock:
            self._charge(time.perf_counter())
            self._stack.pop()

    def lost(self, seconds: float) -> None:
        """Add progress lost to a restart: the seconds a previous run spent on steps after its last checkpoint."""
        if seconds < 0:
            raise ValueError(f"lost seconds must be >= 0, got {seconds}")
        with self._lock:
            self._lost += float(seconds)

    def summary(self) -> dict[str, float]:
        """{"<phase>_s" for each phase, "lost_s", "wall_s", "total_s", "goodput_ratio"}; includes the open phase.

        Does not move the clock: safe to call from the metrics exporter's thread at any time.
        """
        with self._lock:
            seconds = dict(self._seconds)
            now = time.perf_counter()
            elapsed = now - self._mark
            phase = self._stack[-1] if self._stack else self._base
            compiled = (self._monitor.seconds - self._compile_mark) if self._monitor else 0.0
            moved = 0.0 if phase == "compile" else min(max(compiled, 0.0), elapsed)
            seconds[phase] += elapsed - moved
            seconds["compile"] += moved
            lost = self._lost
        wall = sum(seconds.values())
        out = {f"{p}_s": v for p, v in seconds.items()}
        out.update(lost_s=lost, wall_s=wall, total_s=wall + lost,
                   goodput_ratio=seconds["step"] / (wall + lost) if wall + lost > 0 else 0.0)
        return out

    def report(self) -> str:
        """The split as a small table, for the end of a run."""
        s = self.summary()
        total = s["total_s"] or 1.0
        lines = [f"goodput {100 * s['goodput_ratio']:.1f}% of {s['total_s']:.1f} s "
                 f"(wall {s['wall_s']:.1f} s + {s['lost_s']:.1f} s lost to restarts)"]
        for name in (*PHASES, "lost"):
            value = s[f"{name}_s"]
            label = "step (productive)" if name == "step" else name
            lines.append(f"  {label:<20} {value:10.2f} s {100 * value / total:6.1f}%")
        return "\n".join(lines)

    def export(self, recorder: Any) -> None:
        """Hand this accounting to a MetricsRecorder, which exports it live (scalekit_goodput_*) from now on."""
        recorder.attach_goodput(self)
