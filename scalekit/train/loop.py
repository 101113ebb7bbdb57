"""The training driver: config -> mesh + model + data -> jitted steps -> metrics, checkpoints and a summary.

`train(cfg, workdir)` is what `scalekit train` runs (and a warm sweep worker, many times in one process). It
validates the config before touching a device, builds the mesh and takes the jitted programs from a process-level
cache (`compiled.py`: runs of the same shapes compile once), restores the latest good checkpoint if there is one,
then runs the steps K per call (`dispatch.py`: a lax.scan block, exactly equal to K single steps), fetching each
call's per-step metrics one call late so the host never makes the device wait.

Nothing silently wrong: the trainer holds `<workdir>/trainer.lock` (and that of a separate local checkpoint.dir)
for its lifetime, so a second trainer on the same workdir fails at once, naming the PID that holds it. A non-finite
loss or gradient norm, seen in the one-step-late metrics, stops the run with one line on stderr and a summary with
"status": "diverged" and the step; that step is neither logged nor saved (the checkpoint just before it may already
hold the parameters that produced it). A finished run's summary has "status": "done" and, when its final eval loss
is not below the loss of predicting the data's unigram distribution, "flags": ["no_better_than_unigram"].
Checkpoints carry the run's identity (`scalekit.runkey`), so a workdir never resumes another run's checkpoint.
"""

from __future__ import annotations

import dataclasses
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
from scalekit.observe.goodput import Goodput
from scalekit.observe.metrics import MetricsRecorder
from scalekit.observe.profile import Profiler
from scalekit.observe.system import process_start_time
from scalekit.parallel.mesh import batch_sharding, check_batch, make_mesh
from scalekit.train import compiled, dispatch, history
from scalekit.train.guards import Diverged, check_finite, summary_flags, unigram_loss, workdir_lock
from scalekit.train.optim import schedule, set_total_steps
from scalekit.train.preemption import PreemptionGuard
from scalekit.train.state import abstract_state
from scalekit.train.step import stacked_batch_sharding


_RUNS_IN_PROCESS = 0  # a warm worker trains many runs in one process; only the first pays the imports


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
    global _RUNS_IN_PROCESS
    start_time = time.time()
    goodput = Goodput(start_time=None if _RUNS_IN_PROCESS == 0 else start_time)  # the first run's imports count
    _RUNS_IN_PROCESS += 1
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


@dataclasses.dataclass
class _Run:
    """A run's fixed parts, built once before its first step."""

    cfg: ml_collections.ConfigDict
    info: Any
    workdir: Path
    identity: dict[str, Any]
    goodput: Goodput
    start_time: float
    mesh: Any
    progs: compiled.Programs
    b_shard: Any
    blocks_shard: Any
    n_total: int
    n_nonembed: int
    tokens_per_step: int
    flops_per_token: float
    peak: float
    recorder: MetricsRecorder
    ckpt: Checkpointer
    first_step_at: float = 0.0  # unix time the first step was dispatched (0 until then)
    eval_batches: dict[str, jax.Array] | None = None  # the eval batches, stacked on the device at the first eval


def _train(cfg: ml_collections.ConfigDict, info: Any, workdir: Path, identity: dict[str, Any], goodput: Goodput,
           start_time: float) -> dict[str, Any]:
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(cfg.to_json_best_effort(indent=2, sort_keys=True))
    with goodput.phase("startup"):
        run = _setup(cfg, info, workdir, identity, goodput, start_time)
    _log(f"{run.n_total:,} parameters ({run.n_nonembed:,} non-embedding) on mesh {dict(run.mesh.shape)}; "
         f"{info.description}")
    try:
        started = _start(run)
    except BaseException:  # a warm worker's next run must find no exporter or checkpointer left open
        _close_quietly(run.ckpt, run.recorder)
        raise
    if isinstance(started, dict):  # already trained to the end
        return started
    state, start_step, train_iter = started
    outcome = _run_steps(run, state, start_step, train_iter)
    if outcome["status"] == "preempted":
        return outcome
    if outcome["status"] == "diverged":
        return _diverged(run, outcome["error"], outcome["eval_curve"])
    return _done(run, outcome)


def _setup(cfg: ml_collections.ConfigDict, info: Any, workdir: Path, identity: dict[str, Any], goodput: Goodput,
           start_time: float) -> _Run:
    """Mesh, the (cached) programs, counts, the peak to measure MFU by, the metrics recorder and checkpointer."""
    process_count = jax.process_count()
    mesh = make_mesh(cfg.mesh)
    check_batch(cfg.data.batch_size, mesh, cfg.optimizer.microbatches)
    if cfg.data.batch_size % process_count:
        raise config_lib.ConfigError(f"data.batch_size={cfg.data.batch_size} is not divisible by the "
                                     f"{process_count} processes")
    peak = cfg.peak_flops * (jax.device_count() if jax.devices()[0].platform != "cpu" else process_count)
    recorder = MetricsRecorder(workdir, run_name=cfg.observe.run_name or workdir.resolve().name,
                               process_index=jax.process_index(), prometheus_port=cfg.observe.prometheus_port,
                               prometheus_host=cfg.observe.prometheus_host, tensorboard=cfg.observe.tensorboard,
                               goodput=goodput)
    try:
        ckpt = Checkpointer(cfg, workdir, identity=identity)
        progs = compiled.programs(cfg, mesh)
    except BaseException:
        _close_quietly(recorder)
        raise
    return _Run(cfg=cfg, info=info, workdir=workdir, identity=identity, goodput=goodput, start_time=start_time,
                mesh=mesh, progs=progs, b_shard=batch_sharding(mesh),
                blocks_shard=stacked_batch_sharding(mesh),
                n_total=counting.count_params(cfg.model, "total"),
                n_nonembed=counting.count_params(cfg.model, "non_embedding"),
                tokens_per_step=cfg.data.batch_size * cfg.data.seq_len,
                flops_per_token=counting.flops_per_token(cfg.model, cfg.data.seq_len, "palm"),
                peak=peak or compiled.peak_flops(cfg.model.dtype), recorder=recorder, ckpt=ckpt)


def _start(run: _Run) -> tuple[Any, int, Any] | dict[str, Any]:
    """(state, start step, train iterator): restored from the latest good checkpoint, else fresh (or init_from).

    Returns the existing summary instead when the run has already been trained to its last step.
    """
    cfg, progs = run.cfg, run.progs
    process_index, process_count = jax.process_index(), jax.process_count()
    restore_start = time.perf_counter()
    with run.goodput.phase("checkpoint_restore"):
        target = restore_target(abstract_state(progs.model_def, progs.tx), progs.shardings)
        restored = run.ckpt.restore_latest(target)
    if restored is None:
        state = progs.init(cfg.seed, cfg.steps)
        if cfg.init_from:
            params = load_params(cfg.init_from, target.params)
            _check_same_shapes(params, progs.model_def.abstract_params, cfg.init_from)
            state = state.replace(params=params)
            _log(f"initialised parameters from {cfg.init_from}")
        return state, 0, make_batches(cfg.data, "train", cfg.seed, process_index, process_count)
    run.recorder.checkpoint_restored(time.perf_counter() - restore_start)
    state, data_state = restored
    state = state.replace(opt_state=set_total_steps(state.opt_state, cfg.steps))  # the run may be extended
    start_step = int(state.step)
    run.goodput.lost(history.seconds_lost(run.workdir, start_step))
    if start_step >= cfg.steps and (run.workdir / "summary.json").exists():
        _log(f"already trained to step {start_step} (steps={cfg.steps}); nothing to do")
        _close_quietly(run.ckpt, run.recorder)
        return json.loads((run.workdir / "summary.json").read_text())
    _log(f"resumed from checkpoint at step {start_step} ({run.ckpt.directory})")
    if data_state is None:
        _log(f"the checkpoint's data state was saved by another number of processes; data restarts at global "
             f"batch {start_step}")
        return state, start_step, make_batches(cfg.data, "train", cfg.seed, process_index, process_count,
                                               start_batch=start_step)
    train_iter = make_batches(cfg.data, "train", cfg.seed, process_index, process_count)
    train_iter.set_state(data_state)
    return state, start_step, train_iter


class _StepLog:
    """Per-step metrics from each call's output, fetched one call late so the host never makes the device wait.

    `flush()` checks every step of the pending call for a non-finite loss or gradient norm (raising Diverged at the
    first, so nothing from that step on is logged), then logs each step with its share of the call's wall time.
    """

    def __init__(self, run: _Run, start_step: int) -> None:
        self.run, self.cfg = run, run.cfg
        self.lr_at = schedule(run.cfg.optimizer, run.cfg.steps)
        self.pending: tuple[int, int, Any, float, bool] | None = None  # first step, n, metrics, data wait, timed
        self.last_loss = history.previous_train_loss(run.workdir, start_step) if start_step else float("nan")
        self.bar = _progress(run.cfg, start_step)
        self.clock = time.perf_counter()
        self.full_block = 0  # K of full blocks, whose timing is worth remembering for the next run's choice of K

    def restart_clock(self) -> None:
        """Time from now (after a compile, an eval or a save, which are not step time)."""
        self.clock = time.perf_counter()

    def push(self, first_step: int, n: int, metrics: Any, data_wait: float, timed: bool = True) -> None:
        """Queue this call's metrics and log the previous call's (the device runs this call meanwhile). A call
        that compiled is not `timed`: its time is not remembered as the programs' step time."""
        self.flush()
        self.pending = (first_step, n, metrics, data_wait, timed)

    def flush(self) -> None:
        """Wait for the pending call's metrics (step time: the device is computing), check and log them."""
        if self.pending is None:
            return
        first, n, metrics_dev, data_wait, timed = self.pending
        self.pending = None
        with self.run.goodput.phase("step"):
            metrics = {k: np.atleast_1d(v) for k, v in jax.device_get(metrics_dev).items()}
        now = time.perf_counter()
        step_time, self.clock = (now - self.clock) / n, now
        if timed and n > 1 and n == self.full_block:
            self.run.progs.note_step_time(step_time)
        for j in range(n):
            self._log_step(first + j + 1, {k: v[j] for k, v in metrics.items()}, step_time, data_wait / n)
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(loss=f"{self.last_loss:.4f}",
                                 tok_s=f"{self.run.tokens_per_step / step_time:.3g}", refresh=False)

    def _log_step(self, step_no: int, metrics: dict, step_time: float, data_wait: float) -> None:
        check_finite(step_no, metrics)  # raises Diverged
        run = self.run
        self.last_loss = float(metrics["loss"])
        if step_no % self.cfg.log_every and step_no != self.cfg.steps:
            return
        tokens = step_no * run.tokens_per_step
        run.recorder.log_train(step_no, {
            "loss": self.last_loss, "lr": self.lr_at(step_no - 1), "grad_norm": float(metrics["grad_norm"]),
            "tokens": tokens, "flops": tokens * run.flops_per_token, "step_time_s": step_time,
            "tokens_per_s": run.tokens_per_step / step_time,
            "mfu": run.tokens_per_step * run.flops_per_token / step_time / run.peak, "data_wait_s": data_wait})

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _evaluate(run: _Run, params: Any) -> float:
    """Mean held-out loss over the run's eval batches, in one call (the same numbers as `evaluate`, which calls
    once per batch). The eval batches are the same at every eval: put on the device once per run."""
    cfg = run.cfg
    if run.eval_batches is None:
        it = make_batches(cfg.data, "eval", cfg.seed, jax.process_index(), jax.process_count())
        local = [next(it) for _ in range(cfg.eval_batches)]
        stacked = {k: np.stack([b[k] for b in local]) for k in local[0]}
        run.eval_batches = {k: jax.make_array_from_process_local_data(
            run.blocks_shard, v, (len(local), cfg.data.batch_size, *v.shape[2:])) for k, v in stacked.items()}
    out = jax.device_get(run.progs.eval_block(params, run.eval_batches))
    nll, weight = 0.0, 0.0
    for batch_nll, batch_weight in zip(out["nll_sum"], out["weight_sum"]):
        nll, weight = nll + float(batch_nll), weight + float(batch_weight)
    return nll / max(weight, 1.0)


def _steps_per_dispatch(run: _Run) -> int:
    """K for this run (dispatch.choose_k): from the step time measured for these programs, else FLOPs / peak."""
    cfg = run.cfg
    step_time = run.progs.step_time_s or run.tokens_per_step * run.flops_per_token / run.peak
    batch_bytes = cfg.data.batch_size * cfg.data.seq_len * 12  # inputs, targets (int32) and weights (float32)
    return dispatch.choose_k(cfg, step_time, batch_bytes, compiled=run.progs.run_sizes)


def _next_batches(run: _Run, train_iter: Any, n: int, k: int) -> tuple[Any, ...]:
    """The arguments after the state for a call running the next n steps: (batch,) when k = 1, else the n batches
    stacked and padded to k, with the mask of the n active steps."""
    rows = run.cfg.data.batch_size
    local = [next(train_iter) for _ in range(n)]
    if k == 1:
        return (global_batch(local[0], run.b_shard, rows),)
    local += [{key: np.zeros_like(v) for key, v in local[0].items()}] * (k - n)
    stacked = {key: np.stack([b[key] for b in local]) for key in local[0]}
    batches = {key: jax.make_array_from_process_local_data(run.blocks_shard, v, (k, rows, *v.shape[2:]))
               for key, v in stacked.items()}
    return batches, np.arange(k) < n


def _run_steps(run: _Run, state: Any, start_step: int, train_iter: Any) -> dict[str, Any]:
    """Run the steps from `start_step`, K per call, with evals, saves and preemption between calls.

    Returns {"status": "done" | "preempted" | "diverged", ...} with the eval curve and the last losses.
    """
    cfg, goodput, progs, ckpt = run.cfg, run.goodput, run.progs, run.ckpt
    guard = PreemptionGuard()
    sync_every = guard.sync_every if jax.process_count() > 1 else 0
    profiler = Profiler(cfg.profile_steps, run.workdir / "profile")
    stops = dispatch.stops(cfg, profiler.window, sync_every)
    k = _steps_per_dispatch(run)
    _log(f"{k} step{'s' * (k > 1)} per call" + (" (steps_per_dispatch)" if cfg.steps_per_dispatch else ""))
    log = _StepLog(run, start_step)
    log.full_block = k
    eval_curve: list[list[float]] = history.previous_eval_curve(run.workdir) if start_step else []
    step, diverged = start_step, None
    try:
        while step < cfg.steps:
            n = dispatch.next_block(step, k, stops)
            profiler.maybe_start(step)
            t0 = time.perf_counter()
            with goodput.phase("data_wait"):
                args = _next_batches(run, train_iter, n, k)
            data_wait = time.perf_counter() - t0
            first_call = k not in progs.run_sizes
            run.first_step_at = run.first_step_at or time.time()
            with goodput.phase("compile" if first_call else "step"):
                state, metrics = progs.block(k)(state, *args)
                if first_call:
                    jax.block_until_ready(metrics)
                    progs.run_sizes.add(k)
                    log.restart_clock()
                log.push(step, n, metrics, data_wait, timed=not first_call)
            step += n
            profiler.maybe_stop(step, state)
            if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
                log.flush()
                with goodput.phase("eval"):
                    loss = _evaluate(run, state.params)
                eval_curve.append([step, loss])
                run.recorder.log_eval(step, {"eval_loss": loss})
                log.restart_clock()
            stop = guard.agreed(step)
            if ckpt.should_save(step) or step == cfg.steps or stop:
                log.flush()
                with goodput.phase("checkpoint_save"), run.recorder.checkpoint_save():
                    ckpt.save(step, state, train_iter.get_state(), force=step == cfg.steps or stop)
                log.restart_clock()
            if stop and step < cfg.steps:
                with goodput.phase("checkpoint_save"), run.recorder.checkpoint_save():
                    ckpt.wait()
                _log(f"received {guard.signal_name}: saved step {step} to {ckpt.directory}; exiting cleanly")
                return {"status": "preempted", "preempted": True, "step": step, "checkpoint": str(ckpt.directory)}
        log.flush()
        with goodput.phase("checkpoint_save"), run.recorder.checkpoint_save():
            ckpt.wait()
    except Diverged as e:
        diverged = e
        return {"status": "diverged", "error": e, "eval_curve": eval_curve}
    finally:
        log.close()
        guard.restore()
        profiler.close()
        if step < cfg.steps or diverged is not None:  # preempted, diverged or failed: finish saves, flush metrics
            _close_quietly(ckpt, run.recorder)
    return {"status": "done", "eval_curve": eval_curve, "last_loss": log.last_loss,
            "last_eval": eval_curve[-1][1] if eval_curve else float("nan")}


def _diverged(run: _Run, e: Diverged, eval_curve: list[list[float]]) -> dict[str, Any]:
    """Write and return the summary of a run stopped by a non-finite loss or gradient norm."""
    summary = {"status": "diverged", "step": e.step, "reason": e.reason, "loss": _json_float(e.loss),
               "grad_norm": _json_float(e.grad_norm), "steps": run.cfg.steps, "eval_curve": eval_curve,
               "run_key": run.identity["run_key"], "wall_time_s": time.time() - run.start_time,
               "host": socket.gethostname(), "process_count": jax.process_count()}
    if jax.process_index() == 0:
        _write_summary(run.workdir, summary)
        _log(f"diverged: non-finite {e.reason} at step {e.step} (loss {e.loss}, grad_norm {e.grad_norm}); stopped; "
             f"status in {run.workdir / 'summary.json'}")
    return summary


def _done(run: _Run, outcome: dict[str, Any]) -> dict[str, Any]:
    """Write and return the summary of a run trained to its last step."""
    cfg, goodput = run.cfg, run.goodput
    goodput.export(run.recorder)
    last_loss, last_eval = outcome["last_loss"], outcome["last_eval"]
    unigram = _unigram_loss(cfg.data)
    flags = summary_flags(last_eval, unigram)
    tokens = cfg.steps * run.tokens_per_step
    summary = {
        "status": "done", "flags": flags, "final_loss": last_loss, "eval_loss": last_eval,
        "eval_curve": outcome["eval_curve"], "tokens": tokens, "flops": tokens * run.flops_per_token,
        "flops_6n": 6.0 * run.n_total * tokens, "n_params": run.n_total, "n_params_nonembed": run.n_nonembed,
        "steps": cfg.steps, "wall_time_s": time.time() - run.start_time, "entropy_floor": run.info.entropy_floor,
        "unigram_loss": unigram, "run_key": run.identity["run_key"], "host": socket.gethostname(),
        "process_count": jax.process_count(), "goodput": goodput.summary(), "startup": _startup(run),
    }
    if jax.process_index() == 0:
        _write_summary(run.workdir, summary)
        _log(goodput.report())
        if flags:
            _log(f"flags: {', '.join(flags)} (eval loss {last_eval:.4f} is not below the unigram loss "
                 f"{unigram:.4f} of the data)")
        _log(f"done: loss {last_loss:.4f}, eval loss {last_eval:.4f}; metrics in {run.workdir / 'metrics.jsonl'}")
    run.ckpt.close()
    run.recorder.close()
    return summary


def _startup(run: _Run) -> dict[str, Any]:
    """Where the run's first seconds went: the process's start (imports) before train() was called, when this was
    the process's first run, and train()'s call to the first step's dispatch (setup, restore, data)."""
    warm = _RUNS_IN_PROCESS > 1
    return {"warm_process": warm, "imports_s": 0.0 if warm else max(0.0, run.start_time - process_start_time()),
            "to_first_step_s": max(0.0, run.first_step_at - run.start_time) if run.first_step_at else None}


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


def _progress(cfg: ml_collections.ConfigDict, start: int) -> Any:
    if not cfg.progress or jax.process_index() != 0 or not sys.stderr.isatty():
        return None
    from tqdm import tqdm
    return tqdm(total=cfg.steps, initial=start, desc="train", unit="step", dynamic_ncols=True)
