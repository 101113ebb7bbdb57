"""Goodput accounting: phases, compile time found from jax.monitoring, lost-to-restart time, the report.

Timings here only bound what a phase must at least contain (a sleep inside it), never how fast anything is.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import pytest

from scalekit.observe.goodput import PHASES, CompileMonitor, Goodput, compile_monitor


def test_phases_add_up_to_wall_time_and_startup_ends_at_the_first_step():
    gp = Goodput(start_time=time.time(), track_compile=False)
    with gp.phase("checkpoint_restore"):
        time.sleep(0.02)
    time.sleep(0.02)  # unmarked, before training: startup
    assert gp.current == "startup"
    with gp.phase("data_wait"):
        time.sleep(0.02)
    with gp.phase("step"):
        assert gp.current == "step"
        time.sleep(0.03)
    time.sleep(0.02)  # unmarked, after the first step: other
    assert gp.current == "other"
    s = gp.summary()
    assert s["checkpoint_restore_s"] >= 0.02 and s["data_wait_s"] >= 0.02 and s["step_s"] >= 0.03
    assert s["startup_s"] >= 0.02 and s["other_s"] >= 0.02
    assert s["wall_s"] == pytest.approx(sum(s[f"{p}_s"] for p in PHASES))
    assert s["goodput_ratio"] == pytest.approx(s["step_s"] / s["wall_s"])


def test_nested_phases_charge_the_innermost():
    gp = Goodput(start_time=time.time(), track_compile=False)
    with gp.phase("eval"):
        time.sleep(0.02)
        with gp.phase("data_wait"):
            time.sleep(0.03)
        assert gp.current == "eval"
    s = gp.summary()
    assert s["data_wait_s"] >= 0.03 and s["eval_s"] >= 0.02


def test_default_start_is_the_process_start():
    gp = Goodput(track_compile=False)
    assert gp.summary()["startup_s"] > 0.1  # at least the time it took to import jax in this process


def test_compile_inside_a_step_is_moved_to_compile():
    gp = Goodput(start_time=time.time())
    fresh = jax.jit(lambda x: jnp.tanh(x) * 3.0 + jnp.sum(x))  # a new function: it must compile
    before, _, compiles = compile_monitor().snapshot()
    with gp.phase("step"):
        fresh(jnp.arange(16.0)).block_until_ready()
    after, _, compiles_after = compile_monitor().snapshot()
    assert compiles_after > compiles and after > before
    s = gp.summary()
    assert s["compile_s"] == pytest.approx(after - before, rel=1e-6, abs=1e-9)
    with gp.phase("step"):  # compiled now: all step
        fresh(jnp.arange(16.0)).block_until_ready()
    assert gp.summary()["compile_s"] == pytest.approx(s["compile_s"])


def test_an_explicit_compile_phase_is_not_counted_twice():
    gp = Goodput(start_time=time.time())
    fresh = jax.jit(lambda x: jnp.cos(x) * 5.0 - 1.0)
    with gp.phase("compile"):
        fresh(jnp.arange(8.0)).block_until_ready()
        time.sleep(0.02)
    s = gp.summary()
    assert s["compile_s"] >= 0.02
    assert s["wall_s"] == pytest.approx(sum(s[f"{p}_s"] for p in PHASES))


def test_compile_monitor_counts_nested_and_overlapping_spans_once():
    mon = CompileMonitor()
    mon.on_span("/jax/core/compile/backend_compile_duration", 10.0, 11.0)  # inner (arrives first)
    mon.on_span("/jax/core/compile/jaxpr_trace_duration", 9.0, 12.0)  # outer, contains it
    mon.on_span("/jax/core/compile/jaxpr_to_mlir_module_duration", 11.5, 13.0)  # overlaps the outer's end
    mon.on_span("/jax/core/compile/backend_compile_duration", 20.0, 20.5)  # separate
    mon.on_span("/jax/some/other_event", 0.0, 100.0)  # not a compile event
    seconds, by_stage, count = mon.snapshot()
    assert seconds == pytest.approx(4.0 + 0.5)
    assert by_stage == {"trace": 3.0, "lower": 1.5, "backend": 1.5}
    assert count == 2


def test_lost_time_counts_against_goodput():
    gp = Goodput(start_time=time.time(), track_compile=False)
    with gp.phase("step"):
        time.sleep(0.02)
    ratio = gp.summary()["goodput_ratio"]
    gp.lost(100.0)
    s = gp.summary()
    assert s["lost_s"] == 100.0 and s["total_s"] == pytest.approx(s["wall_s"] + 100.0)
    assert s["goodput_ratio"] < ratio
    with pytest.raises(ValueError):
        gp.lost(-1.0)


def test_unknown_phase_is_an_error():
    gp = Goodput(track_compile=False)
    with pytest.raises(ValueError, match="unknown goodput phase"):
        with gp.phase("lunch"):
            pass


def test_report_names_every_phase():
    gp = Goodput(track_compile=False)
    with gp.phase("step"):
        pass
    gp.lost(1.0)
    text = gp.report()
    assert text.startswith("goodput ")
    for name in (*PHASES, "lost"):
        assert name in text
