"""MetricsRecorder: the one place the training loop writes metrics to; it fans them out to the sinks.

Sinks: JSONL (`<workdir>/metrics.jsonl`, written by process 0; always on), a Prometheus exporter (an HTTP server
per process on prometheus_host:prometheus_port + local process index; off when the port is 0) and TensorBoard
(`<workdir>/tensorboard/`, process 0, optional). The JSONL line format is fixed by the interfaces doc:
{"step", "kind": "train"|"eval", <values>, "time", "process_index"}.

Per-step cost is a JSON line and a few dict stores (microseconds; benchmarks/bench_observe.py measures it against
the step time). Memory, compile time and goodput are read only when Prometheus scrapes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from scalekit.observe import system
from scalekit.observe.prometheus import PrometheusExporter

# log_train value key -> catalogue gauge it sets (see scalekit.observe.prometheus.METRICS).
_TRAIN_GAUGES = {"loss": "train_loss", "lr": "learning_rate", "grad_norm": "grad_norm",
                 "tokens_per_s": "tokens_per_second", "mfu": "mfu_ratio"}


def _jsonable(value: Any) -> Any:
    """Python scalars for numpy/jax scalars (json cannot encode them); NaN and inf stay as JSON's NaN/Infinity."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if hasattr(value, "item"):
        return value.item()
    return value


class MetricsRecorder:
    """Fan-out of training metrics to JSONL, Prometheus and TensorBoard for one process.

    Args:
      workdir: the run's directory (metrics.jsonl, tensorboard/).
      run_name: the `run` label on every series.
      process_index: jax.process_index(); the `process_index` label and field.
      host: the `host` label; default $SCALEKIT_HOST, $NODE_NAME or the short hostname (what DCGM/node exporter use).
      local_process_index: this process's index on its host (the port offset); default from the launcher's env
        (SLURM_LOCALID, LOCAL_RANK, ...), else 0.
      prometheus_port: base port; 0 turns the exporter off.
      prometheus_host: address the exporter binds (127.0.0.1 unless told otherwise; 0.0.0.0 to be scraped remotely).
      tensorboard: also write TensorBoard scalars (process 0).
      write_jsonl: default True on process 0 (metrics.jsonl), False elsewhere; True on another process writes
        metrics.process<N>.jsonl.
      goodput: a scalekit.observe.goodput.Goodput to export live (or attach later with attach_goodput).
      flush_every_s: JSONL lines reach the file at least this often (and at close(); 0 = every line). A process
        killed with SIGKILL loses at most this much; an exception or SIGTERM that reaches close() loses nothing.
    """

    def __init__(self, workdir: str | os.PathLike, run_name: str, process_index: int = 0, host: str | None = None,
                 *, local_process_index: int | None = None, prometheus_port: int = 0,
                 prometheus_host: str = "127.0.0.1", tensorboard: bool = False, write_jsonl: bool | None = None,
                 goodput: Any = None, flush_every_s: float = 1.0) -> None:
        self.workdir = Path(workdir)
        self.process_index = int(process_index)
        self.host = host or system.host_name()
        self.run_name = run_name
        self.labels = {"run": run_name, "process_index": str(self.process_index), "host": self.host}
        self.exporter: PrometheusExporter | None = None
        if prometheus_port:  # first: a taken port fails before any file is opened
            local = system.local_process_index() if local_process_index is None else local_process_index
            self.exporter = PrometheusExporter(self.labels, prometheus_port + local, prometheus_host)
        self._jsonl = None
        self._flushed = 0.0
        self.flush_every_s = flush_every_s
        if write_jsonl is None:
            write_jsonl = self.process_index == 0
        if write_jsonl:
            self.workdir.mkdir(parents=True, exist_ok=True)
            name = "metrics.jsonl" if self.process_index == 0 else f"metrics.process{self.process_index}.jsonl"
            self.jsonl_path = self.workdir / name
            self._jsonl = open(self.jsonl_path, "a", buffering=1 << 16)
        self._tb = None
        if tensorboard and self.process_index == 0:
            try:
                from tensorboardX import SummaryWriter
            except ImportError as e:
                raise ImportError("observe.tensorboard=True needs tensorboardX: pip install 'scalekit[tensorboard]'"
                                  ) from e
            self._tb = SummaryWriter(str(self.workdir / "tensorboard"))
        self._last_tokens: float | None = None
        if goodput is not None:
            self.attach_goodput(goodput)

    @property
    def prometheus_address(self) -> str:
        """host:port the exporter serves on ("" when off)."""
        return self.exporter.address if self.exporter else ""

    def _write(self, step: int, kind: str, values: Mapping[str, Any], now: float) -> None:
        if self._jsonl is not None:
            record = {"step": int(step), "kind": kind}
            record.update({k: _jsonable(v) for k, v in values.items()})
            record["time"] = now
            record["process_index"] = self.process_index
            self._jsonl.write(json.dumps(record) + "\n")
            if kind != "train" or now - self._flushed >= self.flush_every_s:  # a flush is a syscall: rarely per step
                self._jsonl.flush()
                self._flushed = now
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(f"{kind}/{key}", float(value), global_step=step, walltime=now)

    def log_train(self, step: int, values: Mapping[str, Any]) -> None:
        """Record a completed training step. Keys the exporter knows: loss, lr, grad_norm, tokens (cumulative,
        global), step_time_s, tokens_per_s, mfu, data_wait_s; any other keys go to JSONL/TensorBoard only."""
        now = time.time()
        self._write(step, "train", values, now)
        if self.exporter is None:
            return
        ex = self.exporter
        with ex.lock:  # a scrape sees all of a step's values or none of them
            gauges = ex.gauges
            for key, name in _TRAIN_GAUGES.items():
                if key in values:
                    gauges[name] = float(values[key])
            if "step_time_s" in values:
                ex.hists["step_duration_seconds"].observe(float(values["step_time_s"]))
            if "data_wait_s" in values:
                ex.hists["data_wait_seconds"].observe(float(values["data_wait_s"]))
            if "tokens" in values:
                tokens = float(values["tokens"])
                if self._last_tokens is None:
                    # First log of this process: count this step's tokens, not the total carried over from a restart.
                    step_tokens = float(values.get("tokens_per_s", 0.0)) * float(values.get("step_time_s", 0.0))
                    delta = min(tokens, step_tokens) if math.isfinite(step_tokens) else 0.0
                else:
                    delta = tokens - self._last_tokens
                if delta > 0:
                    ex.counters["tokens_total"] += delta
                self._last_tokens = tokens
            gauges["train_step"] = float(step)
            gauges["last_step_timestamp_seconds"] = now

    def log_eval(self, step: int, values: Mapping[str, Any]) -> None:
        """Record an evaluation (values: eval_loss, and anything else for JSONL/TensorBoard)."""
        self._write(step, "eval", values, time.time())
        if self.exporter is not None and "eval_loss" in values:
            with self.exporter.lock:
                self.exporter.gauges["eval_loss"] = float(values["eval_loss"])
                self.exporter.gauges["eval_step"] = float(step)

    def observe(self, name: str, value: float, help_: str = "") -> None:
        """Set a gauge `scalekit_<name>` outside the catalogue (name: lower_snake_case with its unit suffix)."""
        if self.exporter is not None:
            self.exporter.declare(name, help_)
            with self.exporter.lock:
                self.exporter.gauges[name] = float(value)

    @contextlib.contextmanager
    def checkpoint_save(self) -> Iterator[None]:
        """Time a checkpoint save (the part that blocks the loop); a save that raises counts as a failure.

        The JSONL lines are flushed first: a step inside a checkpoint is never trained again after a resume, so its
        metrics must reach the file before the checkpoint does (a kill -9 would lose buffered lines for good)."""
        if self._jsonl is not None:
            self._jsonl.flush()
            self._flushed = time.time()
        start = time.perf_counter()
        try:
            yield
        except BaseException:
            self.checkpoint_saved(time.perf_counter() - start, ok=False)
            raise
        self.checkpoint_saved(time.perf_counter() - start, ok=True)

    def checkpoint_saved(self, seconds: float, ok: bool = True) -> None:
        """Record a checkpoint save that took `seconds` (ok=False: it failed, e.g. an async save that raised)."""
        if self.exporter is None:
            return
        with self.exporter.lock:
            self.exporter.counters["checkpoint_saves_total"] += 1
            if ok:
                self.exporter.hists["checkpoint_save_duration_seconds"].observe(seconds)
            else:
                self.exporter.counters["checkpoint_save_failures_total"] += 1

    def checkpoint_restored(self, seconds: float) -> None:
        """Record how long restoring the checkpoint took."""
        if self.exporter is not None:
            with self.exporter.lock:
                self.exporter.gauges["checkpoint_restore_duration_seconds"] = float(seconds)

    def attach_goodput(self, goodput: Any) -> None:
        """Export `goodput` (a Goodput) at every scrape: scalekit_goodput_seconds{phase}, scalekit_goodput_ratio."""
        if self.exporter is not None:
            self.exporter.attach_goodput(goodput)

    def close(self) -> None:
        """Flush and close the files and stop the exporter. Idempotent."""
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self.exporter is not None:
            self.exporter.close()

    def __enter__(self) -> MetricsRecorder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
