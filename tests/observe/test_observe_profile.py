"""Profiler hook: profile_steps=A:B traces exactly that window of a loop shaped like scalekit's."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from scalekit.observe.profile import Profiler, parse_steps


def run_loop(profiler: Profiler, steps: int) -> list[bool]:
    """The loop's calling pattern; returns whether tracing was on during each step."""
    step_fn = jax.jit(lambda x: x @ x.T / x.shape[0])
    state = jnp.ones((32, 32))
    active = []
    for step in range(steps):
        profiler.maybe_start(step)
        with profiler.step_annotation(step):
            state = step_fn(state)
        active.append(profiler.active)
        profiler.maybe_stop(step + 1, state)
    profiler.close(state)
    return active


def test_traces_the_window_and_writes_a_trace(tmp_path):
    prof = Profiler("2:4", tmp_path / "profile")
    assert run_loop(prof, 6) == [False, False, True, True, False, False]
    files = prof.trace_files()
    assert any(f.name.endswith(".xplane.pb") for f in files), files


def test_a_window_past_the_end_is_closed_by_close(tmp_path):
    prof = Profiler("4:100", tmp_path / "profile")
    assert run_loop(prof, 6) == [False] * 4 + [True, True]
    assert not prof.active and prof.trace_files()


def test_off_by_default(tmp_path):
    prof = Profiler("", tmp_path / "profile")
    assert run_loop(prof, 3) == [False] * 3
    assert prof.trace_files() == []


@pytest.mark.parametrize("spec", ["3", "a:b", "5:5", "6:2", "-1:3"])
def test_bad_specs(spec):
    with pytest.raises(ValueError, match="profile_steps"):
        parse_steps(spec)
