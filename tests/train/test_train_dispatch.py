"""K steps per dispatch: a lax.scan block of K steps gives exactly the losses, gradient norms and parameters of K
single steps (float32, CPU), across a resume too, and blocks end at every eval, save and the last step."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest

from train_helpers import read_metrics, tiny
from scalekit.checkpoint import load_params, restore_target
from scalekit.config import default_config, resolve
from scalekit.model.functional import define
from scalekit.parallel.mesh import make_mesh
from scalekit.train import compiled, dispatch
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
    """Record the step count of every train call the loop makes."""
    sizes = []
    real = compiled.Programs.block

    def block(self, k):
        sizes.append(k)
        return real(self, k)
    monkeypatch.setattr(compiled.Programs, "block", block)
    return sizes


def test_k_step_blocks_equal_single_steps_exactly(tmp_path, monkeypatch):
    # eval every 6 and a save every 4: a block of 4 can run only from steps 0 and 8 before the end at 14 (the rest
    # are single steps); microbatches and z-loss on, so the scanned step is the full one
    common = dict(eval_every=6, checkpoint__every=4, model__z_loss=1e-3, optimizer__microbatches=2)
    single = train(tiny(steps=14, steps_per_dispatch=1, **common), tmp_path / "k1")
    sizes = _dispatch_sizes(monkeypatch)
    block = train(tiny(steps=14, steps_per_dispatch=4, **common), tmp_path / "k4")
    assert 4 in sizes and sum(sizes) == 14  # blocks did run, and never across a boundary (14 steps in all)
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
    sizes = _dispatch_sizes(monkeypatch)
    auto = train(tiny(steps=10), tmp_path / "auto")  # steps_per_dispatch = 0: chosen from the step time
    assert max(sizes) > 1, sizes  # a tiny model is dispatch-bound: auto K groups steps
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
    cfg = default_config()
    for dotted, value in fields.items():
        node = cfg
        *groups, leaf = dotted.split("__")
        for g in groups:
            node = node[g]
        node[leaf] = value
    return cfg


def test_period_is_the_gcd_of_the_boundaries():
    assert dispatch.boundary_period(_cfg(steps=600, eval_every=100, checkpoint__every=0)) == 100
    assert dispatch.boundary_period(_cfg(steps=600, eval_every=0, checkpoint__every=0)) == 600
    assert dispatch.boundary_period(_cfg(steps=600, eval_every=100, checkpoint__every=250)) == 50
    assert dispatch.boundary_period(_cfg(steps=600, eval_every=100, checkpoint__every=0), sync_every=15) == 5


@pytest.mark.parametrize("step_time, expect", [
    (1e-4, 500),   # 0.1 ms steps: 500 would make the 50 ms target, but MAX_K caps it at 250 (a divisor)
    (1e-3, 50),    # 1 ms: 50 steps = 50 ms, and 50 divides 1000
    (0.03, 2),     # 30 ms: 2 steps (60 ms) is the smallest divisor reaching 50 ms
    (2.0, 1),      # 2 s a step: one step per call
])
def test_auto_k_reaches_the_target_call_time_within_the_caps(step_time, expect):
    cfg = _cfg(steps=1000, eval_every=0, checkpoint__every=0)
    k = dispatch.choose_k(cfg, dispatch.boundary_period(cfg), step_time, batch_bytes=1000)
    divisors_of_1000_up_to_cap = [d for d in range(1, dispatch.MAX_K + 1) if 1000 % d == 0]
    want = min(expect, max(divisors_of_1000_up_to_cap))
    assert k == want and 1000 % k == 0


def test_auto_k_respects_memory_and_call_length_caps():
    cfg = _cfg(steps=1000, eval_every=0, checkpoint__every=0)
    assert dispatch.choose_k(cfg, 1000, 1e-5, batch_bytes=dispatch.MAX_BLOCK_BYTES // 4) <= 4
    assert dispatch.choose_k(cfg, 1000, 0.4, batch_bytes=1) <= 2  # at most MAX_CALL_S = 1 s of work per call


def test_a_set_k_is_used_as_given():
    assert dispatch.choose_k(_cfg(steps_per_dispatch=7), 100, 1e-4, 1) == 7


def test_blocks_stop_at_every_boundary():
    stops = dispatch.stops(_cfg(steps=20, eval_every=6, checkpoint__every=0), profile_window=(3, 5))
    assert stops == [3, 5, 6, 12, 18, 20]
    sizes, step = [], 0
    while step < 20:
        n = dispatch.next_block(step, 4, stops)
        assert not any(step < s < step + n for s in stops)  # a block never crosses a stop
        sizes.append(n)
        step += n
    assert step == 20 and sizes.count(4) == 2  # from 8 (to 12) and from 12 (to 16)


def test_auto_k_reuses_a_block_size_this_process_has_compiled():
    cfg = _cfg(steps=1000, eval_every=0, checkpoint__every=0)
    assert dispatch.choose_k(cfg, 1000, 1e-3, 1) == 50  # 50 steps of 1 ms make the 50 ms target
    assert dispatch.choose_k(cfg, 1000, 1e-3, 1, compiled={1, 20, 100}) == 100  # the largest compiled divisor
    assert dispatch.choose_k(cfg, 1000, 1e-3, 1, compiled={1, 20}) == 20  # shorter calls, but no new compile
    assert dispatch.choose_k(cfg, 1000, 1e-3, 1, compiled={1, 30}) == 50  # 30 does not divide the period
    assert dispatch.choose_k(cfg, 1000, 0.06, 1, compiled={1, 20}) == 1  # 20 x 60 ms is past MAX_CALL_S
