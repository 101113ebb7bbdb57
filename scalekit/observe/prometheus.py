"""Prometheus exporter: scalekit's training metrics on an HTTP endpoint, one per process.

Every series carries the labels run, process_index and host (nothing of higher cardinality, except a bounded
`device` label on device memory, `phase` on goodput and `stage` on compile time). The names follow Prometheus
conventions: one prefix (`scalekit_`), base units, `_total` on counters, ratios in 0..1. METRICS below is the
catalogue; the alert rules and the Grafana dashboard in deploy/ use only names from it.

The training loop pays for a few dict stores per step; everything else (building the families, memory, goodput,
compile time) happens when Prometheus scrapes, in the server's thread.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString
from prometheus_client.registry import Collector

from scalekit.observe import system
from scalekit.observe.goodput import compile_monitor

PREFIX = "scalekit_"
LABELS = ("run", "process_index", "host")

# Step-time buckets: a tiny CPU model (milliseconds) to a large model on a slow interconnect (minutes).
STEP_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 25, 60, 120, 300, math.inf)
WAIT_BUCKETS = (.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10, 60, math.inf)
SAVE_BUCKETS = (.01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, math.inf)

# name -> (type, help). Names are without the prefix.
METRICS: dict[str, tuple[str, str]] = {
    "train_step": ("gauge", "Last completed training step."),
    "train_loss": ("gauge", "Training loss at the last logged step (nats/token)."),
    "eval_loss": ("gauge", "Held-out loss at the last evaluation (nats/token)."),
    "eval_step": ("gauge", "Step of the last evaluation."),
    "learning_rate": ("gauge", "Learning rate of the last logged step."),
    "grad_norm": ("gauge", "Global gradient norm at the last logged step (before clipping)."),
    "tokens_total": ("counter", "Training tokens processed by this process's run (global batch, all processes)."),
    "step_duration_seconds": ("histogram", "Wall time of a training step, sampled at each logged step."),
    "data_wait_seconds": ("histogram", "Time the step waited for its batch, sampled at each logged step."),
    "tokens_per_second": ("gauge", "Training throughput of the last logged step (global tokens/s)."),
    "mfu_ratio": ("gauge", "Model FLOP utilisation of the last logged step (0-1, vs the measured peak)."),
    "last_step_timestamp_seconds": ("gauge", "Unix time the last logged step completed (for stall alerts)."),
    "checkpoint_saves_total": ("counter", "Checkpoint saves attempted."),
    "checkpoint_save_failures_total": ("counter", "Checkpoint saves that raised."),
    "checkpoint_save_duration_seconds": ("histogram", "Time the loop was blocked by a checkpoint save."),
    "checkpoint_restore_duration_seconds": ("gauge", "Time the last checkpoint restore took."),
    # computed at scrape time:
    "compile_seconds_total": ("counter", "Seconds spent tracing, lowering and compiling (jax.monitoring)."),
    "compile_stage_seconds_total": ("counter", "Compile seconds by stage (trace, lower, backend); may overlap."),
    "compilations_total": ("counter", "XLA compilations (or compilation-cache loads)."),
    "device_memory_in_use_bytes": ("gauge", "Device memory in use, per local device (where the device says)."),
    "device_memory_peak_bytes": ("gauge", "Peak device memory in use, per local device."),
    "device_memory_limit_bytes": ("gauge", "Device memory available to the process, per local device."),
    "host_memory_rss_bytes": ("gauge", "Resident memory of this process."),
    "host_memory_peak_rss_bytes": ("gauge", "Peak resident memory of this process."),
    "host_memory_available_bytes": ("gauge", "Memory available on the host (MemAvailable)."),
    "goodput_seconds": ("gauge", "Wall seconds of this process's run by phase (see scalekit.observe.goodput)."),
    "goodput_ratio": ("gauge", "Productive step seconds / (wall + lost-to-restart seconds), 0-1."),
    "process_start_time_seconds": ("gauge", "Unix time this process started."),
}


# Read by _ScrapeTimeCollector when Prometheus scrapes; the rest are set by the recorder.
SCRAPE_TIME = frozenset({
    "compile_seconds_total", "compile_stage_seconds_total", "compilations_total", "device_memory_in_use_bytes",
    "device_memory_peak_bytes", "device_memory_limit_bytes", "host_memory_rss_bytes", "host_memory_peak_rss_bytes",
    "host_memory_available_bytes", "goodput_seconds", "goodput_ratio", "process_start_time_seconds"})


class _ScrapeTimeCollector(Collector):
    """Memory, compile time and goodput, read when Prometheus scrapes."""

    def __init__(self, labels: dict[str, str], devices: list[Any], goodput: Callable[[], Any]) -> None:
        self.labels = labels
        self.devices = devices
        self.goodput = goodput
        self.start_time = system.process_start_time()
        compile_monitor()  # listen from now on: compiles before the first scrape count too

    def _family(self, kind: str, name: str, extra: tuple[str, ...] = ()) -> Any:
        cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
        # CounterMetricFamily wants the name without _total; it adds the suffix back.
        base = name[: -len("_total")] if kind == "counter" and name.endswith("_total") else name
        return cls(PREFIX + base, METRICS[name][1], labels=[*LABELS, *extra])

    def collect(self) -> Iterable[Any]:
        """The families, read now."""
        values = [self.labels[k] for k in LABELS]
        seconds, by_stage, count = compile_monitor().snapshot()
        for name, value in (("compile_seconds_total", seconds), ("compilations_total", count)):
            fam = self._family("counter", name)
            fam.add_metric(values, value)
            yield fam
        fam = self._family("counter", "compile_stage_seconds_total", ("stage",))
        for stage, value in by_stage.items():
            fam.add_metric([*values, stage], value)
        yield fam

        mem = system.device_memory(self.devices)
        for key in ("in_use_bytes", "peak_bytes", "limit_bytes"):
            fam = self._family("gauge", f"device_memory_{key}", ("device",))
            for dev, stats in mem.items():
                if key in stats:
                    fam.add_metric([*values, dev], stats[key])
            if fam.samples:
                yield fam
        for key, value in system.host_memory().items():
            fam = self._family("gauge", f"host_memory_{key}")
            fam.add_metric(values, value)
            yield fam
        fam = self._family("gauge", "process_start_time_seconds")
        fam.add_metric(values, self.start_time)
        yield fam

        goodput = self.goodput()
        if goodput is not None:
            summary = goodput.summary()
            fam = self._family("gauge", "goodput_seconds", ("phase",))
            for key, value in summary.items():
                if key.endswith("_s") and key not in ("wall_s", "total_s"):
                    fam.add_metric([*values, key[:-2]], value)
            yield fam
            fam = self._family("gauge", "goodput_ratio")
            fam.add_metric(values, summary["goodput_ratio"])
            yield fam


class _Histogram:
    """A histogram kept as plain numbers (observe is a bisect and two adds); exported as a HistogramMetricFamily."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.bounds = list(buckets)
        self.counts = [0] * len(buckets)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        if value != value:  # NaN: no bucket holds it
            return
        self.counts[min(bisect.bisect_left(self.bounds, value), len(self.counts) - 1)] += 1
        self.sum += value


class PrometheusExporter:
    """The per-process metric values and their HTTP server.

    The recorder writes plain numbers into `gauges`, `counters` and `hists` holding `lock` (a few dict stores per
    step); the families are built only when Prometheus scrapes, under the same lock, so one scrape never mixes two
    steps' values. A gauge nobody has set is not exported (no fake loss of 0 before the first step); counters and
    histograms start at 0 so that increase() sees their first event. `port=None` builds everything without serving
    it (tests and benchmarks read `collect()`).
    """

    def __init__(self, labels: dict[str, str], port: int | None, host: str = "127.0.0.1",
                 devices: list[Any] | None = None) -> None:
        self.labels = {k: str(labels[k]) for k in LABELS}
        self._label_values = [self.labels[k] for k in LABELS]
        self.lock = threading.Lock()
        self.gauges: dict[str, float] = {}
        self.counters = {n: 0.0 for n, (kind, _) in METRICS.items() if kind == "counter" and n not in SCRAPE_TIME}
        self.hists = {"step_duration_seconds": _Histogram(STEP_BUCKETS),
                      "data_wait_seconds": _Histogram(WAIT_BUCKETS),
                      "checkpoint_save_duration_seconds": _Histogram(SAVE_BUCKETS)}
        self._extra_help: dict[str, str] = {}
        self._goodput: Any = None
        devices = system.local_devices_if_ready() if devices is None else devices
        self.scrape_time = _ScrapeTimeCollector(self.labels, devices, lambda: self._goodput)
        self.port = port
        self.address = ""
        self._server = None
        if port is not None:
            try:
                self._server, _ = start_http_server(port, addr=host, registry=self)
            except OSError as err:
                raise OSError(f"scalekit: cannot serve Prometheus metrics on {host}:{port} ({err}); pick another "
                              "base port with --config.observe.prometheus_port (each process uses base + its local "
                              "process index) or 0 to turn the exporter off") from err
            self.port = self._server.server_address[1]
            self.address = f"{host}:{self.port}"

    def collect(self) -> Iterable[Any]:
        """All families (the prometheus_client Collector protocol; the HTTP server calls it per scrape)."""
        with self.lock:
            gauges = dict(self.gauges)
            counters = dict(self.counters)
            hists = {n: (list(h.counts), h.sum) for n, h in self.hists.items()}
        values = self._label_values
        for name, (kind, help_) in METRICS.items():
            if name in SCRAPE_TIME:
                continue
            if kind == "gauge" and name in gauges:
                fam = GaugeMetricFamily(PREFIX + name, help_, labels=LABELS)
                fam.add_metric(values, gauges[name])
            elif kind == "counter":
                fam = CounterMetricFamily(PREFIX + name, help_, labels=LABELS)
                fam.add_metric(values, counters[name])
            elif kind == "histogram":
                counts, total = hists[name]
                cumulative, running = [], 0
                for bound, count in zip(self.hists[name].bounds, counts):
                    running += count
                    cumulative.append((floatToGoString(bound), running))
                fam = HistogramMetricFamily(PREFIX + name, help_, labels=LABELS)
                fam.add_metric(values, cumulative, total)
            else:
                continue
            yield fam
        for name, help_ in self._extra_help.items():
            if name in gauges:
                fam = GaugeMetricFamily(PREFIX + name, help_, labels=LABELS)
                fam.add_metric(values, gauges[name])
                yield fam
        yield from self.scrape_time.collect()

    def attach_goodput(self, goodput: Any) -> None:
        """Export this Goodput's split (scalekit_goodput_seconds{phase}, scalekit_goodput_ratio) at each scrape."""
        self._goodput = goodput

    def declare(self, name: str, help_: str = "") -> None:
        """Allow a gauge `scalekit_<name>` outside the catalogue (for MetricsRecorder.observe)."""
        if name in self._extra_help:
            return
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise ValueError(f"metric name {name!r} must be lower_snake_case (it becomes {PREFIX}{name})")
        if name in METRICS:
            raise ValueError(f"{PREFIX}{name} is a catalogue metric; it is set by log_train/log_eval")
        with self.lock:
            self._extra_help[name] = help_ or f"{name} (set with MetricsRecorder.observe)"

    def close(self) -> None:
        """Stop the HTTP server (collect() still works)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def file_sd_targets(hosts: list[str], base_port: int, processes_per_host: int, labels: dict[str, str] | None = None,
                    ) -> list[dict[str, Any]]:
    """Prometheus file_sd entries for a job: host:base_port+i for each local process i (see deploy/prometheus/).

    A Slurm job writes this (e.g. from its batch script, with hosts from `scontrol show hostnames`) into a
    directory Prometheus watches, and removes it when the job ends.
    """
    targets = [f"{host}:{base_port + i}" for host in hosts for i in range(processes_per_host)]
    return [{"targets": targets, "labels": dict(labels or {})}]


def write_file_sd(path: str | os.PathLike, entries: list[dict[str, Any]]) -> Path:
    """Write file_sd entries atomically (Prometheus may read the file at any moment)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(entries, indent=1) + "\n")
    tmp.replace(path)
    return path


def slurm_file_sd(directory: str | os.PathLike, base_port: int, run: str = "") -> Path:
    """From inside a Slurm job: write `<directory>/scalekit-<job id>.json` naming every process's exporter.

    Hosts come from `scontrol show hostnames $SLURM_JOB_NODELIST`, processes per host from SLURM_NTASKS_PER_NODE
    (else SLURM_NTASKS / SLURM_JOB_NUM_NODES). The job removes the file at its end (`rm -f` in the batch script).
    """
    env = os.environ
    job = env["SLURM_JOB_ID"]
    hosts = subprocess.run(["scontrol", "show", "hostnames", env["SLURM_JOB_NODELIST"]], check=True,
                           capture_output=True, text=True).stdout.split()
    per_host = env.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]
    if not per_host.isdigit():
        per_host = str(max(1, int(env.get("SLURM_NTASKS", "1")) // max(1, len(hosts))))
    labels = {"slurm_job_id": job, **({"slurm_run": run} if run else {})}
    return write_file_sd(Path(directory) / f"scalekit-{job}.json",
                         file_sd_targets([h.split(".")[0] for h in hosts], base_port, int(per_host), labels))


if __name__ == "__main__":  # python -m scalekit.observe.prometheus DIR BASE_PORT [RUN]: file_sd for this Slurm job
    print(slurm_file_sd(sys.argv[1], int(sys.argv[2]), *sys.argv[3:4]))
