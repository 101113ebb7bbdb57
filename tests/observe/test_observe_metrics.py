"""MetricsRecorder: the JSONL format, the Prometheus endpoint (served over HTTP, read back with the client's parser),
the metric catalogue's naming conventions, and the TensorBoard writer."""

from __future__ import annotations

import json
import math
import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from scalekit.observe import prometheus as prom
from scalekit.observe.goodput import Goodput
from scalekit.observe.metrics import MetricsRecorder

TRAIN = {"loss": 2.5, "lr": 1e-3, "grad_norm": 0.75, "tokens": 4096, "flops": 1e9, "step_time_s": 0.2,
         "tokens_per_s": 1024.0 / 0.2, "mfu": 0.4, "data_wait_s": 0.01}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(address: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from a live /metrics endpoint."""
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: dict, name: str, **extra: str) -> float:
    hits = [v for (n, labels), v in samples.items() if n == name and all((k, x) in labels for k, x in extra.items())]
    assert len(hits) == 1, f"{name} {extra}: {len(hits)} samples"
    return hits[0]


def test_jsonl_lines_have_the_interface_fields(tmp_path):
    with MetricsRecorder(tmp_path, "run-a", process_index=0) as rec:
        rec.log_train(1, TRAIN)
        rec.log_train(2, {**TRAIN, "loss": float("nan")})
        rec.log_eval(2, {"eval_loss": 2.25})
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["kind"]) for r in lines] == [(1, "train"), (2, "train"), (2, "eval")]
    assert set(lines[0]) == {"step", "kind", *TRAIN, "time", "process_index"}
    assert lines[0]["loss"] == 2.5 and lines[0]["process_index"] == 0 and isinstance(lines[0]["tokens"], int)
    assert math.isnan(lines[1]["loss"])
    assert set(lines[2]) == {"step", "kind", "eval_loss", "time", "process_index"}


def test_only_process_zero_writes_metrics_jsonl_unless_asked(tmp_path):
    with MetricsRecorder(tmp_path, "r", process_index=1) as rec:
        rec.log_train(1, TRAIN)
    assert not list(tmp_path.iterdir())
    with MetricsRecorder(tmp_path, "r", process_index=1, write_jsonl=True) as rec:
        rec.log_train(1, TRAIN)
    assert json.loads((tmp_path / "metrics.process1.jsonl").read_text())["process_index"] == 1


def test_exporter_serves_values_with_labels_on_localhost(tmp_path):
    base = free_port()
    goodput = Goodput()
    rec = MetricsRecorder(tmp_path, "run-b", process_index=3, host="node7", local_process_index=0,
                          prometheus_port=base, goodput=goodput)
    try:
        assert rec.prometheus_address == f"127.0.0.1:{base}"
        assert rec.exporter._server.server_address[0] == "127.0.0.1"
        rec.log_train(10, TRAIN)
        rec.log_train(11, {**TRAIN, "tokens": 8192, "loss": 2.0})
        rec.log_eval(11, {"eval_loss": 2.1})
        rec.observe("custom_ratio", 0.5)
        with rec.checkpoint_save():
            pass
        with pytest.raises(RuntimeError), rec.checkpoint_save():
            raise RuntimeError("disk full")
        rec.checkpoint_restored(1.5)
        s = scrape(rec.prometheus_address)
    finally:
        rec.close()
    labels = {"run": "run-b", "process_index": "3", "host": "node7"}
    for (name, lab), _ in s.items():
        assert name.startswith("scalekit_"), name
        assert {k: v for k, v in lab if k in labels} == labels, (name, lab)
    assert value(s, "scalekit_train_step") == 11
    assert value(s, "scalekit_train_loss") == 2.0
    assert value(s, "scalekit_eval_loss") == 2.1
    assert value(s, "scalekit_learning_rate") == 1e-3
    assert value(s, "scalekit_grad_norm") == 0.75
    assert value(s, "scalekit_mfu_ratio") == 0.4
    assert value(s, "scalekit_tokens_per_second") == pytest.approx(5120.0)
    # the first log counts one step's tokens (not a total carried over from a restart), then the differences
    assert value(s, "scalekit_tokens_total") == pytest.approx(1024 + 4096)
    assert value(s, "scalekit_step_duration_seconds_count") == 2
    assert value(s, "scalekit_step_duration_seconds_sum") == pytest.approx(0.4)
    assert value(s, "scalekit_step_duration_seconds_bucket", le="0.25") == 2
    assert value(s, "scalekit_step_duration_seconds_bucket", le="0.1") == 0
    assert value(s, "scalekit_data_wait_seconds_sum") == pytest.approx(0.02)
    assert value(s, "scalekit_checkpoint_saves_total") == 2
    assert value(s, "scalekit_checkpoint_save_failures_total") == 1
    assert value(s, "scalekit_checkpoint_save_duration_seconds_count") == 1
    assert value(s, "scalekit_checkpoint_restore_duration_seconds") == 1.5
    assert value(s, "scalekit_custom_ratio") == 0.5
    assert value(s, "scalekit_host_memory_rss_bytes") > 1e6
    assert value(s, "scalekit_last_step_timestamp_seconds") > 1.5e9
    assert 0.0 <= value(s, "scalekit_goodput_ratio") <= 1.0
    assert value(s, "scalekit_goodput_seconds", phase="startup") > 0
    assert {dict(lab)["phase"] for (n, lab) in s if n == "scalekit_goodput_seconds"} == {
        "startup", "compile", "data_wait", "step", "eval", "checkpoint_save", "checkpoint_restore", "other", "lost"}
    with pytest.raises(OSError):  # the server is gone after close()
        urllib.request.urlopen(f"http://127.0.0.1:{base}/metrics", timeout=2)


def test_gauges_nobody_set_are_not_exported(tmp_path):
    with MetricsRecorder(tmp_path, "r", prometheus_port=free_port()) as rec:
        s = scrape(rec.prometheus_address)
    names = {n for n, _ in s}
    assert "scalekit_eval_loss" not in names and "scalekit_train_loss" not in names  # no fake loss of 0
    assert "scalekit_checkpoint_save_failures_total" in names  # counters start at 0, so increase() sees a first failure


def test_port_is_base_plus_local_process_index(tmp_path, monkeypatch):
    base = free_port()
    monkeypatch.setenv("SLURM_LOCALID", "1")
    for var in ("SCALEKIT_LOCAL_PROCESS_INDEX", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    try:
        rec = MetricsRecorder(tmp_path, "r", process_index=5, prometheus_port=base)
    except OSError:
        pytest.skip(f"port {base + 1} is taken on this machine")
    with rec:
        assert rec.exporter.port == base + 1
        with pytest.raises(OSError, match="prometheus_port"):  # a second exporter on the same port says what to do
            MetricsRecorder(tmp_path, "r", process_index=6, local_process_index=1, prometheus_port=base)


def test_exporter_off_by_default_and_observe_is_then_a_no_op(tmp_path):
    with MetricsRecorder(tmp_path, "r") as rec:
        assert rec.exporter is None and rec.prometheus_address == ""
        rec.observe("x_seconds", 1.0)
        rec.log_train(1, TRAIN)


def test_observe_rejects_bad_and_catalogue_names(tmp_path):
    with MetricsRecorder(tmp_path, "r", prometheus_port=free_port()) as rec:
        with pytest.raises(ValueError):
            rec.observe("Bad-Name", 1.0)
        with pytest.raises(ValueError):
            rec.observe("train_loss", 1.0)


def test_catalogue_follows_prometheus_naming():
    assert prom.LABELS == ("run", "process_index", "host")
    for name, (kind, help_) in prom.METRICS.items():
        assert help_ and name == name.lower()
        assert (kind == "counter") == name.endswith("_total"), name
        if kind == "histogram":
            assert name.endswith("_seconds"), name
        if "ratio" in name.split("_"):
            assert name.endswith("_ratio"), name
        assert not any(unit in name for unit in ("_ms", "_milliseconds", "_mb", "_gb", "_percent")), name


def test_file_sd_targets_name_every_process():
    entries = prom.file_sd_targets(["n1", "n2"], 9450, 2, {"slurm_job_id": "7"})
    assert entries == [{"targets": ["n1:9450", "n1:9451", "n2:9450", "n2:9451"], "labels": {"slurm_job_id": "7"}}]


def _read_tfevents(path) -> list[tuple[int, str, float]]:
    """(step, tag, value) of every scalar in a TFRecord event file (length, crc, Event proto, crc)."""
    from tensorboardX.proto import event_pb2
    data, out, i = path.read_bytes(), [], 0
    while i < len(data):
        n = int.from_bytes(data[i:i + 8], "little")
        event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
        out += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
        i += 12 + n + 4
    return out


def test_tensorboard_scalars_round_trip(tmp_path):
    pytest.importorskip("tensorboardX", reason="tensorboardX is not installed (optional: scalekit[tensorboard])")
    with MetricsRecorder(tmp_path, "r", tensorboard=True) as rec:
        rec.log_train(1, TRAIN)
        rec.log_eval(1, {"eval_loss": 2.0})
    (path,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
    got = {(step, tag): v for step, tag, v in _read_tfevents(path)}
    assert got[(1, "train/loss")] == 2.5 and got[(1, "eval/eval_loss")] == 2.0
    assert got[(1, "train/tokens")] == 4096
