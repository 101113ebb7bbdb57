"""Write deploy/grafana/scalekit-training.json, the scalekit training dashboard (run: python build_dashboard.py).

The dashboard is generated so its panels stay consistent; edit this file, not the JSON. Every PromQL expression in
it is sent to a real Prometheus by tests/observe/test_observe_prometheus.py.

Joins to the cluster's exporters use the `host` label, which scalekit sets on its own series and the scrape config
(deploy/prometheus/prometheus.yml) copies onto DCGM and node exporter series; `and on (host) group by (host)
(scalekit_train_step{run=~"$run"})` keeps only the hosts the selected run is on.
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).with_name("scalekit-training.json")
DS = {"type": "prometheus", "uid": "${datasource}"}
RUN = 'run=~"$run"'
P0 = 'run=~"$run", process_index="0"'
RATE = "$__rate_interval"
PROC = "{{host}} p{{process_index}}"
BUCKETS = f"rate(scalekit_step_duration_seconds_bucket{{{RUN}}}[{RATE}])"
ON_RUN_HOSTS = f"and on (host) group by (host) (scalekit_train_step{{{RUN}}})"


def _mean(metric: str, by: str = "") -> str:
    """Mean of a histogram over the rate window (sum rate / count rate)."""
    num = f"rate({metric}_sum{{{RUN}}}[{RATE}])"
    den = f"rate({metric}_count{{{RUN}}}[{RATE}])"
    if by:
        return f"sum by ({by}) ({num}) / sum by ({by}) ({den})"
    return f"{num} / {den}"


def panel(title: str, targets: list[tuple[str, str]], unit: str = "short", kind: str = "timeseries",
          description: str = "", w: int = 8, h: int = 8, **options: object) -> dict:
    """A Grafana panel with (expr, legend) targets."""
    p = {
        "type": kind, "title": title, "description": description, "datasource": DS,
        "gridPos": {"w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}} if kind == "timeseries" else {},
        "targets": [{"datasource": DS, "expr": expr, "legendFormat": legend, "refId": chr(ord("A") + i)}
                    for i, (expr, legend) in enumerate(targets)],
    }
    p["options"].update(options)
    return p


def row(title: str) -> dict:
    """A collapsible row header."""
    return {"type": "row", "title": title, "collapsed": False, "gridPos": {"w": 24, "h": 1}, "panels": []}


def panels() -> list[dict]:
    """All panels, top to bottom."""
    step_time = _mean("scalekit_step_duration_seconds")
    return [
        row("Training"),
        panel("Loss", [(f"scalekit_train_loss{{{P0}}}", "train {{run}}"),
                       (f"scalekit_eval_loss{{{P0}}}", "eval {{run}}")], description="nats/token"),
        panel("Step", [(f"max by (run) (scalekit_train_step{{{RUN}}})", "{{run}}")], kind="stat", w=4),
        panel("Goodput", [(f"scalekit_goodput_ratio{{{P0}}}", "{{run}}")], unit="percentunit", kind="stat", w=4,
              description="Productive step time / (wall time + progress lost to restarts), process 0."),
        panel("Wall time by phase", [(f"sum by (phase) (scalekit_goodput_seconds{{{P0}}})", "{{phase}}")],
              unit="s", kind="bargauge", w=8),
        panel("Throughput", [(f"max by (run) (rate(scalekit_tokens_total{{{RUN}}}[{RATE}]))", "{{run}}")],
              unit="short", description="tokens/s (global batch)"),
        panel("MFU", [(f"avg by (run) (scalekit_mfu_ratio{{{RUN}}})", "{{run}}")], unit="percentunit"),
        panel("Learning rate and gradient norm", [(f"scalekit_learning_rate{{{P0}}}", "lr {{run}}"),
                                                  (f"scalekit_grad_norm{{{P0}}}", "grad norm {{run}}")]),
        row("Stragglers and stalls"),
        panel("Step time per process", [(step_time, "{{host}} p{{process_index}}")], unit="s",
              description="Mean step time per process over the rate window."),
        panel("Step time vs the run's median", [
            (f"({step_time}) / on (run) group_left () quantile by (run) (0.5, {step_time})",
             "{{host}} p{{process_index}}")], unit="percentunit",
              description="1.0 = the median process; a straggler stands out above it."),
        panel("Step time quantiles", [
            (f"histogram_quantile({q}, sum by (le, run) ({BUCKETS}))", f"p{int(q * 100)} {{{{run}}}}")
            for q in (0.5, 0.9, 0.99)], unit="s"),
        panel("Data wait share per process", [
            (f"rate(scalekit_data_wait_seconds_sum{{{RUN}}}[{RATE}]) / "
             f"rate(scalekit_step_duration_seconds_sum{{{RUN}}}[{RATE}])", "{{host}} p{{process_index}}")],
              unit="percentunit", description="Share of step time spent waiting for the data loader."),
        panel("Seconds since the last step", [(f"time() - scalekit_last_step_timestamp_seconds{{{RUN}}}",
                                               "{{host}} p{{process_index}}")], unit="s"),
        panel("Compilation", [(f"increase(scalekit_compilations_total{{{RUN}}}[{RATE}])", f"compiles {PROC}"),
                              (f"scalekit_compile_seconds_total{{{RUN}}}", f"seconds {PROC}")],
              description="Compiles after the first steps mean something is being recompiled."),
        panel("Checkpoints", [
            (f"rate(scalekit_checkpoint_save_duration_seconds_sum{{{RUN}}}[{RATE}]) / "
             f"rate(scalekit_checkpoint_save_duration_seconds_count{{{RUN}}}[{RATE}])", f"save s {PROC}"),
            (f"scalekit_checkpoint_restore_duration_seconds{{{RUN}}}", "restore s {{host}} p{{process_index}}"),
            (f"increase(scalekit_checkpoint_save_failures_total{{{RUN}}}[1h])", f"failures/h {PROC}")],
              unit="s"),
        row("Memory"),
        panel("Device memory in use", [(f"scalekit_device_memory_in_use_bytes{{{RUN}}}",
                                        "{{host}} p{{process_index}} d{{device}}"),
                                       (f"scalekit_device_memory_limit_bytes{{{RUN}}}", "limit {{host}} d{{device}}")],
              unit="bytes", description="From the devices' memory stats (GPUs and TPUs; the CPU backend has none)."),
        panel("Device memory peak", [(f"max by (host, process_index) (scalekit_device_memory_peak_bytes{{{RUN}}})",
                                      "{{host}} p{{process_index}}")], unit="bytes"),
        panel("Host memory", [(f"scalekit_host_memory_rss_bytes{{{RUN}}}", "rss {{host}} p{{process_index}}"),
                              (f"min by (host) (scalekit_host_memory_available_bytes{{{RUN}}})", "available {{host}}")],
              unit="bytes"),
        row("Cluster: GPUs (DCGM exporter) and hosts (node exporter), on the run's hosts"),
        panel("Tensor-core activity vs MFU", [
            (f"avg by (host) (DCGM_FI_PROF_PIPE_TENSOR_ACTIVE) {ON_RUN_HOSTS}", "tensor active {{host}}"),
            (f"avg by (host) (scalekit_mfu_ratio{{{RUN}}})", "MFU {{host}}")], unit="percentunit",
              description="A host whose tensor activity drops while the others' does not is the straggler."),
        panel("GPU power", [(f"sum by (host) (DCGM_FI_DEV_POWER_USAGE) {ON_RUN_HOSTS}", "{{host}}")], unit="watt"),
        panel("GPU SM clock (throttling)", [
            (f"min by (host) (DCGM_FI_DEV_SM_CLOCK) {ON_RUN_HOSTS}", "SM MHz {{host}}"),
            (f"max by (host) (DCGM_FI_DEV_GPU_TEMP) {ON_RUN_HOSTS}", "temp C {{host}}")],
              description="A falling SM clock with a rising temperature is thermal throttling."),
        panel("Step time vs GPU utilisation by host", [
            (f"max by (host) ({step_time})", "step s {{host}}"),
            (f"avg by (host) (DCGM_FI_DEV_GPU_UTIL) {ON_RUN_HOSTS}", "GPU util % {{host}}")]),
        panel("Host CPU busy", [
            (f'1 - avg by (host) (rate(node_cpu_seconds_total{{mode="idle"}}[{RATE}])) {ON_RUN_HOSTS}', "{{host}}")],
              unit="percentunit", description="A busy CPU with a high data wait share is a starved input pipeline."),
        panel("Data wait vs disk reads", [
            (f"max by (host) (rate(scalekit_data_wait_seconds_sum{{{RUN}}}[{RATE}]))", "data wait s/s {{host}}"),
            (f"sum by (host) (rate(node_disk_read_bytes_total[{RATE}])) {ON_RUN_HOSTS}", "disk read B/s {{host}}")]),
        panel("Network receive", [
            (f'sum by (host) (rate(node_network_receive_bytes_total{{device!~"lo|docker.*|veth.*"}}[{RATE}])) '
             f"{ON_RUN_HOSTS}", "{{host}}")], unit="Bps"),
        panel("Host memory available (node exporter)", [
            (f"node_memory_MemAvailable_bytes {ON_RUN_HOSTS}", "{{host}}")], unit="bytes"),
    ]


def layout(items: list[dict]) -> list[dict]:
    """Give each panel an id and an x, y position (rows of 24 columns)."""
    x = y = height = 0
    for i, p in enumerate(items, start=1):
        p["id"] = i
        w, h = p["gridPos"]["w"], p["gridPos"]["h"]
        if p["type"] == "row" or x + w > 24:
            x, y, height = 0, y + height, 0
        p["gridPos"].update(x=x, y=y)
        x, height = x + w, max(height, h)
        if p["type"] == "row":
            x, y, height = 0, y + h, 0
    return items


def dashboard() -> dict:
    """The dashboard JSON model."""
    variable = {"type": "query", "datasource": DS, "refresh": 2, "includeAll": True, "multi": True,
                "current": {"text": "All", "value": "$__all"}, "sort": 1}
    return {
        "uid": "scalekit-training", "title": "scalekit training", "tags": ["scalekit", "training"],
        "description": "scalekit training metrics joined to DCGM GPU and node exporter metrics by host.",
        "schemaVersion": 39, "version": 1, "editable": True, "graphTooltip": 1, "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"}, "timezone": "",
        "annotations": {"list": []},
        "templating": {"list": [
            {"type": "datasource", "name": "datasource", "label": "Prometheus", "query": "prometheus",
             "current": {}, "hide": 0},
            {**variable, "name": "run", "label": "run", "query": "label_values(scalekit_train_step, run)",
             "definition": "label_values(scalekit_train_step, run)"},
        ]},
        "panels": layout(panels()),
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(dashboard(), indent=1) + "\n")
    print(f"wrote {OUT}")
