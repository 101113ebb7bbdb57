"""The training driver: config -> mesh + model + data -> jitted steps -> metrics, checkpoints and a summary.

`train(cfg, workdir)` is what `scalekit train` runs. It validates the config before touching a device, builds the
mesh and shardings, restores the latest good checkpoint if there is one, then runs the steps, fetching each step's
metrics one step late so the host never makes the device wait.

Nothing silently wrong: the trainer holds `<workdir>/trainer.lock` (and that of a separate local checkpoint.dir)
for its lifetime, so a second trainer on the same workdir fails at once, naming the PID that holds it. A non-finite
loss or gradient norm, seen in the one-step-late metrics, stops the run with one line on stderr and a summary with
"status": "diverged" and the step; that step is neither logged nor saved (the checkpoint just before it may already
hold the parameters that produced it). A finished run's summary has "status": "done" and, when its final eval loss
is not below the loss of predicting the data's unigram distribution, "flags": ["no_better_than_unigram"].
Checkpoints carry the run's identity (`scalekit.runkey`), so a workdir never resumes another run's checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from scalekit import config as config_lib
from scalekit import runkey
from scalekit.checkpoint import Checkpointer, load_params, restore_target
from scalekit.data.pipeline import data_info, make_batches
from scalekit.model import counting
from scalekit.model.functional import define
from scalekit.observe.goodput import Goodput
from scalekit.observe.metrics import MetricsRecorder
from scalekit.observe.profile import Profiler
from scalekit.parallel.mesh import batch_sharding, check_batch, make_mesh
from scalekit.train import mfu as mfu_lib
from scalekit.train.guards import Diverged, check_finite, summary_flags, unigram_loss, workdir_lock
from scalekit.train.optim import make_optimizer, schedule, set_total_steps
from scalekit.train.preemption import PreemptionGuard
from scalekit.train.state import abstract_state, init_state, state_shardings
from scalekit.train.step import jit_steps, make_eval_step, make_train_step


def _log(msg: str) -> None:
    if jax.process_index() == 0:
        print(f"[scalekit] {msg}", file=sys.stderr, flush=True)


def global_batch(local: dict[str, np.ndarray], sharding: jax.sharding.NamedSharding, global_rows: int,
                 ) -> dict[str, jax.Array]:
    """Assemble each process's rows into global arrays (jax.make_array_from_process_local_data)."""
    return {k: jax.make_array_from_process_local_data(sharding, v, (global_rows, *v.shape[1:]))
            for k, v in local.items()}


def evaluate(eval_fn: Any, params: Any, data_cfg: Any, seed: int, n_batches: int, sharding: Any) -> float:
    """Mean held-out loss (nats/token) over the first `n_batches` eval batches (the same batches every time)."""
    it = make_batches(data_cfg, "eval", seed, jax.process_index(), jax.process_count())
    nll, weight = 0.0, 0.0
    for _ in range(n_batches):
        out = jax.device_get(eval_fn(params, global_batch(next(it), sharding, data_cfg.batch_size)))
        nll, weight = nll + float(out["nll_sum"]), weight + float(out["weight_sum"])
    return nll / max(weight, 1.0)


def prepare(cfg: ml_collections.ConfigDict) -> tuple[ml_collections.ConfigDict, Any]:
    """Validate, and resolve derived fields against the data source; returns (resolved config, data info)."""
    config_lib.validate(cfg)
    info = data_info(cfg.data)
    return config_lib.resolve(cfg, info.vocab_size), info


def run_identity(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """{"run_key", "config"}: the run's key (the sweep store's, for the config as given) and its identity fields."""
    doc = cfg.to_dict()
    return {"run_key": runkey.run_key(doc, allow_nan=True), "config": runkey.identity(doc)}


def train(cfg: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
    """Train to `cfg.steps`, resuming from `workdir`'s checkpoints; returns the summary written to summary.json.

    The summary's "status" is "done", "diverged" (see the module doc) or "preempted" (saved and stopped early; no
    summary.json is written). Raises guards.WorkdirBusy when another trainer holds the workdir.
    """
    goodput = Goodput()
    start_time = time.time()
    workdir = Path(workdir)
    identity = run_identity(cfg)
    cfg, info = prepare(cfg)
    workdir.mkdir(parents=True, exist_ok=True)
    with workdir_lock(workdir, _separate_local_dir(cfg.checkpoint.dir, workdir), enabled=jax.process_index() == 0):
        return _train(cfg, info, workdir, identity, goodput, start_time)


def _separate_local_dir(directory: str, workdir: Path) -> Path | None:
    """`checkpoint.dir` when it is a local directory outside the workdir (it then gets a trainer lock of its own)."""
    if not directory or "://" in directory:
        return None
    path = Path(directory).expanduser().resolve()
    return None if path.is_relative_to(workdir.resolve()) else path


def _train(cfg: ml_collections.ConfigDict, info: Any, workdir: Path, identity: dict[str, Any], goodput: Goodput,
           start_time: float) -> dict[str, Any]:
    process_index, process_count = jax.process_index(), jax.process_count()
    if process_index == 0:
        (workdir / "config.json").write_text(cfg.to_json_best_effort(indent=2, sort_keys=True))

    with goodput.phase("startup"):
        mesh = make_mesh(cfg.mesh)
        check_batch(cfg.data.batch_size, mesh, cfg.optimizer.microbatches)
        if cfg.data.batch_size % process_count:
            raise config_lib.ConfigError(f"data.batch_size={cfg.data.batch_size} is not divisible by the "
                                         f"{process_count} processes")
        model_def = define(cfg.model)
        tx = make_optimizer(cfg.optimizer, cfg.steps)
        shardings = state_shardings(model_def, tx, mesh)
        train_fn, eval_fn = jit_steps(make_train_step(model_def, tx, cfg.model.z_loss, cfg.optimizer.microbatches),
                                      make_eval_step(model_def), shardings, mesh)
        b_shard = batch_sharding(mesh)
        n_total = counting.count_params(cfg.model, "total")
        n_nonembed = counting.count_params(cfg.model, "non_embedding")
        tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
        flops_per_token = counting.flops_per_token(cfg.model, cfg.data.seq_len, "palm")
        peak = cfg.peak_flops * (jax.device_count() if jax.devices()[0].platform != "cpu" else process_count)
        if not peak:
            peak = mfu_lib.machine_peak_flops(cfg.model.dtype)
        run_name = cfg.observe.run_name or workdir.resolve().name
        recorder = MetricsRecorder(workdir, run_name=run_name, process_index=process_index,
                                   prometheus_port=cfg.observe.prometheus_port,
                                   prometheus_host=cfg.observe.prometheus_host, tensorboard=cfg.observe.tensorboard,
                                   goodput=goodput)
        ckpt = Checkpointer(cfg, workdir, identity=identity)

    _log(f"{n_total:,} parameters ({n_nonembed:,} non-embedding) on mesh {dict(mesh.shape)}; "
         f"{info.description}")
    restore_start = time.perf_counter()
    with goodput.phase("checkpoint_restore"):
        target = restore_target(abstract_state(model_def, tx), shardings)
        restored = ckpt.restore_latest(target)
    if restored is not None:
        recorder.checkpoint_restored(time.perf_counter() - restore_start)
        state, data_state = restored
        state = state.replace(opt_state=set_total_steps(state.opt_state, cfg.steps))  # the run may be extended
        start_step = int(state.step)
        goodput.lost(_seconds_lost(workdir, start_step))
        if start_step >= cfg.steps and (workdir / "summary.json").exists():
            _log(f"already trained to step {start_step} (steps={cfg.steps}); nothing to do")
            _close_quietly(ckpt, recorder)
            return json.loads((workdir / "summary.json").read_text())
        _log(f"resumed from checkpoint at step {start_step} ({ckpt.directory})")
    else:
        state, data_state, start_step = init_state(model_def, tx, cfg.seed, shardings), None, 0
        if cfg.init_from:
            params = load_params(cfg.init_from, target.params)
            _check_same_shapes(params, model_def.abstract_params, cfg.init_from)
            state = state.replace(params=params)
            _log(f"initialised parameters from {cfg.init_from}")
    if restored is not None and data_state is None:
        _log(f"the checkpoint's data state was saved by another number of processes; data restarts at global "
             f"batch {start_step}")
        train_iter = make_batches(cfg.data, "train", cfg.seed, process_index, process_count, start_batch=start_step)
    else:
        train_iter = make_batches(cfg.data, "train", cfg.seed, process_index, process_count)
        if data_state is not None:
            train_iter.set_state(data_state)

    guard = PreemptionGuard()
    profiler = Profiler(cfg.profile_steps, workdir / "profile")
    eval_curve: list[list[float]] = _previous_eval_curve(workdir) if start_step else []
    # a resume starts from what was logged before (a run killed after its final save trains nothing more)
    last_loss = _previous_train_loss(workdir, start_step) if start_step else float("nan")
    last_eval = eval_curve[-1][1] if eval_curve else float("nan")
    pending: tuple[int, dict, float, float] | None = None
    bar = _progress(cfg, start_step)
    step_clock = time.perf_counter()
    compiled = False

    def flush(item: tuple[int, dict, float, float] | None) -> None:
        nonlocal last_loss, step_clock
        if item is None:
            return
        step_no, metrics_dev, data_wait, lr = item
        metrics = jax.device_get(metrics_dev)
        check_finite(step_no, metrics)  # raises Diverged: nothing from this step on is logged or saved
        now = time.perf_counter()
        step_time, step_clock = now - step_clock, now
        last_loss = float(metrics["loss"])
        tokens = step_no * tokens_per_step
        values = {"loss": last_loss, "lr": lr, "grad_norm": float(metrics["grad_norm"]), "tokens": tokens,
                  "flops": tokens * flops_per_token, "step_time_s": step_time,
                  "tokens_per_s": tokens_per_step / step_time,
                  "mfu": tokens_per_step * flops_per_token / step_time / peak, "data_wait_s": data_wait}
        if step_no % cfg.log_every == 0 or step_no == cfg.steps:
            recorder.log_train(step_no, values)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.4f}", tok_s=f"{values['tokens_per_s']:.3g}", refresh=False)

    lr_at = schedule(cfg.optimizer, cfg.steps)
    step = start_step
    diverged: Diverged | None = None
    try:
        while step < cfg.steps:
            profiler.maybe_start(step)
            t0 = time.perf_counter()
            with goodput.phase("data_wait"):
                batch = global_batch(next(train_iter), b_shard, cfg.data.batch_size)
            data_wait = time.perf_counter() - t0
            with goodput.phase("step" if compiled else "compile"):
                state, metrics = train_fn(state, batch)
                if not compiled:
                    jax.block_until_ready(metrics)
                    compiled = True
                    step_clock = time.perf_counter()
                flush(pending)
            step += 1
            pending = (step, metrics, data_wait, lr_at(step - 1))
            profiler.maybe_stop(step, state)
            if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
                flush(pending)
                pending = None
                with goodput.phase("eval"):
                    last_eval = evaluate(eval_fn, state.params, cfg.data, cfg.seed, cfg.eval_batches, b_shard)
                eval_curve.append([step, last_eval])
                recorder.log_eval(step, {"eval_loss": last_eval})
                step_clock = time.perf_counter()
            stop = guard.agreed(step)
            if ckpt.should_save(step) or step == cfg.steps or stop:
                flush(pending)
                pending = None
                with goodput.phase("checkpoint_save"), recorder.checkpoint_save():
                    ckpt.save(step, state, train_iter.get_state(), force=step == cfg.steps or stop)
                step_clock = time.perf_counter()
            if stop and step < cfg.steps:
                with goodput.phase("checkpoint_save"), recorder.checkpoint_save():
                    ckpt.wait()
                _log(f"received {guard.signal_name}: saved step {step} to {ckpt.directory}; exiting cleanly")
                return {"status": "preempted", "preempted": True, "step": step,
                        "checkpoint": str(ckpt.directory)}
        flush(pending)
        with goodput.phase("checkpoint_save"), recorder.checkpoint_save():
            ckpt.wait()
    except Diverged as e:
        diverged = e
    finally:
        if bar is not None:
            bar.close()
        guard.restore()
        profiler.close()
        if step < cfg.steps or diverged is not None:  # preempted, diverged or failed: finish saves, flush metrics
            _close_quietly(ckpt, recorder)

    if diverged is not None:
        summary = {"status": "diverged", "step": diverged.step, "reason": diverged.reason,
                   "loss": _json_float(diverged.loss), "grad_norm": _json_float(diverged.grad_norm),
                   "steps": cfg.steps, "eval_curve": eval_curve, "run_key": identity["run_key"],
                   "wall_time_s": time.time() - start_time, "host": socket.gethostname(),
                   "process_count": process_count}
        if process_index == 0:
            _write_summary(workdir, summary)
            _log(f"diverged: non-finite {diverged.reason} at step {diverged.step} (loss {diverged.loss}, grad_norm "
                 f"{diverged.grad_norm}); stopped; status in {workdir / 'summary.json'}")
        return summary

    goodput.export(recorder)
    unigram = _unigram_loss(cfg.data)
    flags = summary_flags(last_eval, unigram)
    summary = {
        "status": "done", "flags": flags, "final_loss": last_loss, "eval_loss": last_eval, "eval_curve": eval_curve,
        "tokens": cfg.steps * tokens_per_step, "flops": cfg.steps * tokens_per_step * flops_per_token,
        "flops_6n": 6.0 * n_total * cfg.steps * tokens_per_step, "n_params": n_total,
        "n_params_nonembed": n_nonembed, "steps": cfg.steps, "wall_time_s": time.time() - start_time,
        "entropy_floor": info.entropy_floor, "unigram_loss": unigram, "run_key": identity["run_key"],
        "host": socket.gethostname(), "process_count": process_count, "goodput": goodput.summary(),
    }
    if process_index == 0:
        _write_summary(workdir, summary)
        _log(goodput.report())
        if flags:
            _log(f"flags: {', '.join(flags)} (eval loss {last_eval:.4f} is not below the unigram loss "
                 f"{unigram:.4f} of the data)")
        _log(f"done: loss {last_loss:.4f}, eval loss {last_eval:.4f}; metrics in {workdir / 'metrics.jsonl'}")
    ckpt.close()
    recorder.close()
    return summary


def _write_summary(workdir: Path, summary: dict[str, Any]) -> None:
    tmp = workdir / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(workdir / "summary.json")


def _json_float(x: float) -> float | str:
    """A float for strict JSON: non-finite values as their names ("nan", "inf", "-inf")."""
    return x if math.isfinite(x) else str(x)


def _unigram_loss(data_cfg: Any) -> float | None:
    try:
        return unigram_loss(data_cfg)
    except Exception as e:  # noqa: BLE001 - a baseline must never fail a finished run
        _log(f"could not compute the unigram baseline of the data: {type(e).__name__}: {e}")
        return None


def _close_quietly(*closables: Any) -> None:
    """Close on the way out of a failed run without masking the error that got us here."""
    for c in closables:
        try:
            c.close()
        except Exception as e:  # noqa: BLE001
            print(f"[scalekit] while closing {type(c).__name__}: {type(e).__name__}: {e}", file=sys.stderr)


def _check_same_shapes(params: Any, expected: Any, source: str) -> None:
    got = jax.tree.map(lambda x: tuple(x.shape), params)
    want = jax.tree.map(lambda x: tuple(x.shape), expected)
    if got != want:
        raise config_lib.ConfigError(f"init_from={source!r}: its parameter shapes differ from this model's; the "
                                     "model fields (and the data vocabulary) must match the pre-trained run")


def _read_metrics(workdir: Path) -> list[dict]:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill
            continue
    return records


def _seconds_lost(workdir: Path, restored_step: int) -> float:
    """Wall time of the steps logged after the restored checkpoint: work the restart must redo."""
    redo = [r.get("step_time_s", 0.0) for r in _read_metrics(workdir)
            if r.get("kind") == "train" and r.get("step", 0) > restored_step]
    return float(sum(redo))


def _previous_train_loss(workdir: Path, upto: int) -> float:
    """The train loss logged at the latest step <= `upto` before a restart (NaN when none was logged)."""
    best_step, loss = -1, float("nan")
    for rec in _read_metrics(workdir):
        if rec.get("kind") == "train" and best_step < rec.get("step", -1) <= upto and "loss" in rec:
            best_step, loss = rec["step"], float(rec["loss"])
    return loss


def _previous_eval_curve(workdir: Path) -> list[list[float]]:
    """Eval points logged before a restart (so the summary's curve covers the whole run)."""
    curve = {}
    for rec in _read_metrics(workdir):
        if rec.get("kind") == "eval" and math.isfinite(rec.get("eval_loss", float("nan"))):
            curve[rec["step"]] = rec["eval_loss"]
    return [[s, v] for s, v in sorted(curve.items())]


def _progress(cfg: ml_collections.ConfigDict, start: int) -> Any:
    if not cfg.progress or jax.process_index() != 0 or not sys.stderr.isatty():
        return None
    from tqdm import tqdm
    return tqdm(total=cfg.steps, initial=start, desc="train", unit="step", dynamic_ncols=True)
