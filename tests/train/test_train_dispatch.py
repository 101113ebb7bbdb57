"""K steps per dispatch: a lax.scan block of K steps gives exactly the losses, gradient norms and parameters of K
single steps (float32, CPU), across a resume too, and blocks end at every eval, save and the last step."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest

from train_helpers import read_metrics, set_fields, tiny
from scalekit.checkpoint import load_params, restore_target
from scalekit.config import default_config, resolve
from scalekit.model.functional import define
from scalekit.parallel.mesh import make_mesh
from scalekit.train import compiled, dispatch
from scalekit.train import loop
from scalekit.train.loop import train
from scalekit.train.optim import make_optimizer
from scalekit.train.state import state_shardings


def _params(cfg, workdir):
    cfg = resolve(cfg, 64)
    model_def = define(cfg.model)
    tx = make_optimizer(cfg.optimizer, cfg.steps)
    target = restore_target(model_def.abstract_params, state_shardings(model_def, tx, make_mesh(cfg.mesh)).params)
    return [np.asarray(x) for x in jax.tree.leaves(load_params(str(workdir), target))]


def _curve(workdir, field):
    return {s: r[field] for s, r in read_metrics(workdir).items()}


def _dispatch_sizes(monkeypatch):
    """Record (steps run, K compiled) of every train call the loop makes."""
    calls = []
    real = loop._next_batches

    def next_batches(run, train_iter, n, k):
        calls.append((n, k))
        return real(run, train_iter, n, k)
    monkeypatch.setattr(loop, "_next_batches", next_batches)
    return calls


def test_k_step_blocks_equal_single_steps_exactly(tmp_path, monkeypatch):
    # eval every 6 and a save every 4: blocks of 4 end early (padded with inactive steps) at 6, 12 and 14;
    # microbatches and z-loss on, so the scanned step is the full one
    common = dict(eval_every=6, checkpoint__every=4, model__z_loss=1e-3, optimizer__microbatches=2)
    single = train(tiny(steps=14, steps_per_dispatch=1, **common), tmp_path / "k1")
    calls = _dispatch_sizes(monkeypatch)
    block = train(tiny(steps=14, steps_per_dispatch=4, **common), tmp_path / "k4")
    assert calls == [(4, 4), (2, 4), (2, 4), (4, 4), (2, 4)]  # stops at 4, 6, 8, 12, 14
    for field in ("loss", "grad_norm", "lr"):
        assert _curve(tmp_path / "k4", field) == _curve(tmp_path / "k1", field), field  # exact float equality
    assert sorted(_curve(tmp_path / "k4", "loss")) == list(range(1, 15))  # every step logged
    assert block["eval_curve"] == single["eval_curve"] and [s for s, _ in block["eval_curve"]] == [6, 12, 14]
    assert block["final_loss"] == single["final_loss"]
    for a, b in zip(_params(tiny(steps=14), tmp_path / "k4"), _params(tiny(steps=14), tmp_path / "k1")):
        np.testing.assert_array_equal(a, b)


def test_resume_with_another_k_is_bit_exact(tmp_path):
    # the uninterrupted reference, one step per call
    ref = tmp_path / "ref"
    train(tiny(steps=12, steps_per_dispatch=1, checkpoint__every=6, checkpoint__keep=5), ref)
    # the same run with K = 2, as if killed after its step-6 save (later checkpoint, summary and log lines removed),
    # resumed with K = 3
    run = tmp_path / "run"
    train(tiny(steps=12, steps_per_dispatch=2, checkpoint__every=6, checkpoint__keep=5), run)
    shutil.rmtree(run / "checkpoints" / "12")
    (run / "summary.json").unlink()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("".join(ln + "\n" for ln in lines if json.loads(ln)["step"] <= 6))
    summary = train(tiny(steps=12, steps_per_dispatch=3, checkpoint__every=6, checkpoint__keep=5), run)
    assert _curve(run, "loss") == _curve(ref, "loss")
    assert summary["final_loss"] == read_metrics(ref)[12]["loss"]
    for a, b in zip(_params(tiny(steps=12), run), _params(tiny(steps=12), ref)):
        np.testing.assert_array_equal(a, b)


def test_auto_k_runs_blocks_and_matches_single_steps(tmp_path, monkeypatch):
    single = train(tiny(steps=10, steps_per_dispatch=1), tmp_path / "k1")
    calls = _dispatch_sizes(monkeypatch)
    auto = train(tiny(steps=10), tmp_path / "auto")  # steps_per_dispatch = 0: chosen from the step time
    assert max(n for n, _ in calls) > 1, calls  # a tiny model is dispatch-bound: auto K groups steps
    assert auto["final_loss"] == single["final_loss"] and _curve(tmp_path / "auto", "loss") == \
        _curve(tmp_path / "k1", "loss")


def test_divergence_inside_a_block_names_the_first_bad_step(tmp_path):
    single = train(tiny(steps=8, steps_per_dispatch=1, optimizer__lr=1e30, optimizer__warmup_steps=0),
                   tmp_path / "k1")
    block = train(tiny(steps=8, steps_per_dispatch=8, optimizer__lr=1e30, optimizer__warmup_steps=0),
                  tmp_path / "k8")
    assert single["status"] == block["status"] == "diverged"
    assert block["step"] == single["step"] and block["reason"] == single["reason"]
    assert max(read_metrics(tmp_path / "k8"), default=0) == block["step"] - 1  # steps before it logged, not it


# --- choosing K and the block boundaries (dispatch.py) ---------------------------------------------------------------

def _cfg(**fields):
    return set_fields(default_config(), **fields)


@pytest.mark.parametrize("step_time, expect", [
    (1e-4, 256),   # 0.1 ms steps: 500 would make the 50 ms target; MAX_K caps it at 256
    (1e-3, 64),    # 1 ms: 50 steps make 50 ms, rounded up to a power of two
    (0.03, 2),     # 30 ms: 2 steps (60 ms)
    (2.0, 1),      # 2 s a step: one step per call
])
def test_auto_k_reaches_the_target_call_time_within_the_caps(step_time, expect):
    assert dispatch.choose_k(_cfg(steps=1000), step_time, batch_bytes=1000) == expect


def test_auto_k_respects_the_memory_and_run_length_caps():
    assert dispatch.choose_k(_cfg(steps=1000), 1e-5, batch_bytes=dispatch.MAX_BLOCK_BYTES // 5) == 4
    assert dispatch.choose_k(_cfg(steps=40), 1e-5, batch_bytes=1) == 32  # never more than the run's steps


def test_a_set_k_is_used_as_given():
    assert dispatch.choose_k(_cfg(steps_per_dispatch=7), 1e-4, 1) == 7


def test_auto_k_reuses_a_block_size_this_process_has_compiled():
    cfg = _cfg(steps=1000)
    assert dispatch.choose_k(cfg, 1e-3, 1) == 64
    assert dispatch.choose_k(cfg, 1e-3, 1, compiled={1, 32, 128}) == 128  # the largest compiled within the caps
    assert dispatch.choose_k(cfg, 1e-3, 1, compiled={1, 16}) == 16  # a quarter of 64: shorter calls, no compile
    assert dispatch.choose_k(cfg, 1e-3, 1, compiled={1, 8}) == 64  # too short a call: compile 64
    assert dispatch.choose_k(cfg, 0.1, 1, compiled={1, 16}) == 1  # 16 x 0.1 s is past MAX_CALL_S


def test_blocks_end_at_every_stop():
    stops = dispatch.stops(_cfg(steps=20, eval_every=6, checkpoint__every=0), profile_window=(3, 5))
    assert stops == [3, 5, 6, 12, 18, 20]
    sizes, step = [], 0
    while step < 20:
        n = dispatch.next_block(step, 4, stops)
        assert not any(step < s < step + n for s in stops)  # a block never crosses a stop
        sizes.append(n)
        step += n
    assert sizes == [3, 2, 1, 4, 2, 4, 2, 2]


def test_a_second_run_of_the_same_shapes_in_one_process_compiles_nothing(tmp_path):
    # what a warm sweep worker relies on: the programs come from the process's cache (train/compiled.py)
    compiled.clear()
    first = train(tiny(steps=8, eval_every=4, seed=1, optimizer__warmup_steps=2), tmp_path / "a")
    (progs,) = compiled._CACHE.values()
    jitted = [progs.train_step, progs.eval_step, *progs._blocks.values(), *progs._inits.values()]
    sizes = [f._cache_size() for f in jitted]
    # longer: the run's length is not in the programs (the schedule's length is in the optimizer state)
    second = train(tiny(steps=12, eval_every=4, seed=1, optimizer__warmup_steps=2), tmp_path / "b")
    assert list(compiled._CACHE.values()) == [progs] and len(progs._blocks) == 1  # the same programs, the same K
    assert [f._cache_size() for f in jitted] == sizes  # no jitted function traced or compiled again
    assert second["startup"]["warm_process"] and first["startup"]["to_first_step_s"] is not None
    assert second["startup"]["imports_s"] == 0.0 and second["startup"]["to_first_step_s"] is not None


def test_eval_in_one_call_equals_eval_batch_by_batch(tmp_path):
    cfg = tiny(steps=6, eval_every=3, eval_batches=3)
    summary = train(cfg, tmp_path / "run")
    # the held-out loss the old way, one call per eval batch (loop.evaluate), from the run's final parameters
    r = resolve(cfg, 64)
    progs = compiled.programs(r, make_mesh(r.mesh))  # the run's own (cached) programs
    params = jax.device_put(load_params(str(tmp_path / "run"), restore_target(
        progs.model_def.abstract_params, progs.shardings.params)), progs.shardings.params)
    from scalekit.parallel.mesh import batch_sharding
    expected = loop.evaluate(progs.eval_step, params, r.data, r.seed, 3, batch_sharding(progs.mesh))
    assert summary["eval_loss"] == expected
