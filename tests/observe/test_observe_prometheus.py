"""A real Prometheus scraping a live `scalekit train` run.

Prometheus (Debian's package; .ci/run installs it) runs on a free 127.0.0.1 port with its data in a temp dir, a 1 s
scrape and rule-evaluation interval, scalekit's rule file loaded, and the training process found through file-based
service discovery (the way Slurm jobs are found). The tests check that the metrics arrive with the values the run
wrote to metrics.jsonl and the right labels, that every PromQL expression in the Grafana dashboard and the rule file
parses and (where it uses only scalekit's metrics) returns data, and that the NaN-loss alert fires for real.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from scalekit.observe import prometheus as prom
from scalekit.observe.metrics import MetricsRecorder
from scalekit.observe.system import host_name

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "scalekit_rules.yml"
DASHBOARDS = sorted((REPO / "deploy" / "grafana").glob("*.json"))
RUN = "live-test"
STEPS = 400

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("prometheus") is None,
                       reason="needs Debian's `prometheus` on PATH (apt-get install prometheus; .ci/run does)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    """A Prometheus server in a temp dir, discovering scrape targets from `targets/*.json` (file_sd)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.targets = root / "targets"
        self.targets.mkdir(parents=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "scalekit", "file_sd_configs": [
                {"files": [str(self.targets / "*.json")], "refresh_interval": "1s"}]}],
        }
        (root / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = open(root / "prometheus.log", "w")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={root / 'prometheus.yml'}", f"--web.listen-address=127.0.0.1:{self.port}",
             f"--storage.tsdb.path={root / 'data'}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=root)
        deadline = time.time() + 90
        while True:
            try:
                if urllib.request.urlopen(f"{self.url}/-/ready", timeout=2).status == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError(f"prometheus did not start:\n{(root / 'prometheus.log').read_text()[-3000:]}")
            time.sleep(0.25)

    def add_target(self, name: str, address: str, labels: dict[str, str]) -> None:
        host, port = address.rsplit(":", 1)
        prom.write_file_sd(self.targets / f"{name}.json", prom.file_sd_targets([host], int(port), 1, labels))

    def api(self, path: str, **params: object) -> dict:
        """GET /api/v1/<path>; returns the parsed reply (status "success" or "error") without raising."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as reply:
                return json.loads(reply.read())
        except urllib.error.HTTPError as err:  # 400 for a bad query: the body says why
            return json.loads(err.read())

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        reply = self.api("query", query=expr, **({"time": at} if at is not None else {}))
        assert reply["status"] == "success", (expr, reply)
        return reply["data"]["result"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    server = Prometheus(tmp_path_factory.mktemp("prometheus"))
    yield server
    server.stop()


def listening_addresses(port: int) -> set[str]:
    """IPv4 addresses with a listening TCP socket on `port` (Linux /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
    return found


def scalekit_command() -> list[str]:
    """The installed `scalekit` console script (else `python -m scalekit`, the same entry point)."""
    script = Path(sys.executable).with_name("scalekit")
    return [str(script)] if script.exists() else [sys.executable, "-m", "scalekit"]


@pytest.fixture(scope="module")
def live_run(prometheus, tmp_path_factory):
    """`scalekit train` on the tiny model with the exporter on, scraped until it exits. Returns (workdir, time of
    the last scrape that saw it, that scrape's step, the addresses its exporter listened on)."""
    workdir = tmp_path_factory.mktemp("live") / "run"
    port = free_port()
    prometheus.add_target("train", f"127.0.0.1:{port}", {"test": "live"})
    cmd = [*scalekit_command(), "train", "--config", "configs/train.py:tiny", "--workdir", str(workdir),
           f"--config.steps={STEPS}", "--config.eval_every=100", "--config.optimizer.warmup_steps=2",
           "--config.progress=False", f"--config.observe.prometheus_port={port}",
           f"--config.observe.run_name={RUN}"]
    log_path = workdir.parent / "train.log"
    with open(log_path, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        bound: set[str] = set()
        deadline = time.time() + 480
        while proc.poll() is None and time.time() < deadline:
            bound |= listening_addresses(port)
            time.sleep(0.2)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    log = log_path.read_text()
    assert proc.returncode == 0, log[-4000:]
    time.sleep(1.5)  # let the last scrape and rule evaluation land
    samples = prometheus.query(f'last_over_time(timestamp(scalekit_train_step{{run="{RUN}"}})[10m:1s])')
    assert samples, f"Prometheus never scraped the run\n{log[-2000:]}"
    at = float(samples[0]["value"][1])
    (step,) = prometheus.query(f'scalekit_train_step{{run="{RUN}"}}', at)
    return workdir, at, int(float(step["value"][1])), bound


def jsonl(workdir: Path) -> tuple[dict[int, dict], list[dict]]:
    train, evals = {}, []
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["kind"] == "train":
            train[rec["step"]] = rec
        else:
            evals.append(rec)
    return train, evals


def one(prometheus: Prometheus, expr: str, at: float) -> float:
    result = prometheus.query(expr, at)
    assert len(result) == 1, (expr, result)
    return float(result[0]["value"][1])


def test_scraped_metrics_match_the_run(prometheus, live_run):
    workdir, at, step, bound = live_run
    assert bound == {"127.0.0.1"}  # the exporter's default: loopback only
    train, evals = jsonl(workdir)
    assert 1 <= step <= STEPS and step in train
    rec = train[step]
    sel = f'{{run="{RUN}"}}'
    # one scrape holds one step's values: the loss Prometheus saw is the one logged for the step it saw
    assert one(prometheus, f"scalekit_train_loss{sel}", at) == rec["loss"]
    assert one(prometheus, f"scalekit_learning_rate{sel}", at) == rec["lr"]
    assert one(prometheus, f"scalekit_grad_norm{sel}", at) == rec["grad_norm"]
    assert one(prometheus, f"scalekit_mfu_ratio{sel}", at) == rec["mfu"]
    assert one(prometheus, f"scalekit_tokens_per_second{sel}", at) == rec["tokens_per_s"]
    assert one(prometheus, f"scalekit_tokens_total{sel}", at) == pytest.approx(rec["tokens"], rel=1e-9)
    assert one(prometheus, f"scalekit_step_duration_seconds_count{sel}", at) == len([s for s in train if s <= step])
    assert one(prometheus, f"scalekit_step_duration_seconds_sum{sel}", at) == pytest.approx(
        sum(r["step_time_s"] for s, r in train.items() if s <= step), rel=1e-9)
    assert one(prometheus, f"scalekit_data_wait_seconds_sum{sel}", at) == pytest.approx(
        sum(r["data_wait_s"] for s, r in train.items() if s <= step), rel=1e-9)
    assert one(prometheus, f"scalekit_last_step_timestamp_seconds{sel}", at) == pytest.approx(rec["time"], abs=1e-3)
    if prometheus.query(f"scalekit_eval_step{sel}", at):  # an eval had happened by that scrape
        eval_step = one(prometheus, f"scalekit_eval_step{sel}", at)
        (logged,) = [e for e in evals if e["step"] == eval_step]
        assert one(prometheus, f"scalekit_eval_loss{sel}", at) == logged["eval_loss"]
    # read at scrape time
    assert one(prometheus, f"scalekit_compile_seconds_total{sel}", at) > 0
    assert one(prometheus, f"scalekit_compilations_total{sel}", at) >= 1
    assert one(prometheus, f"scalekit_host_memory_rss_bytes{sel}", at) > 10e6
    assert 0 < one(prometheus, f"scalekit_goodput_ratio{sel}", at) < 1
    phases = {r["metric"]["phase"]: float(r["value"][1])
              for r in prometheus.query(f"scalekit_goodput_seconds{sel}", at)}
    assert phases["step"] > 0 and phases["startup"] > 0 and set(phases) >= {"compile", "data_wait", "lost"}
    assert not prometheus.query(f"scalekit_device_memory_in_use_bytes{sel}", at)  # CPU devices report no stats
    assert one(prometheus, 'up{job="scalekit", test="live"}', at) == 1


def test_every_series_has_the_run_labels(prometheus, live_run):
    _, at, _, _ = live_run
    series = prometheus.query(f'{{__name__=~"scalekit_.+", run="{RUN}"}}', at)
    names = {s["metric"]["__name__"] for s in series}
    assert {"scalekit_train_step", "scalekit_train_loss", "scalekit_step_duration_seconds_bucket",
            "scalekit_tokens_total", "scalekit_mfu_ratio", "scalekit_goodput_ratio"} <= names
    allowed = {"__name__", "run", "process_index", "host", "job", "instance", "test", "le", "phase", "stage", "device"}
    for s in series:
        labels = s["metric"]
        assert set(labels) <= allowed, labels
        assert (labels["process_index"], labels["job"]) == ("0", "scalekit"), labels
        assert labels["host"] in (host_name(), socket.gethostname()), labels
    assert len(series) < 150  # low cardinality: a few dozen series per process


# --- every PromQL expression in the dashboard and the rules ------------------------------------------------------

GRAFANA_VARS = {"$__rate_interval": "5s", "$__interval": "2s", "$__range": "1m", "$run": RUN}
CLUSTER = re.compile(r"\b(DCGM_FI_\w+|node_\w+|up)\b")  # other exporters: not scraped here, so parse-only
SCALEKIT_NAME = re.compile(r"\b(scalekit[_:][A-Za-z0-9_:]+|\w+:scalekit\w*:\w+)")
# series that exist only after an event this CPU run does not have
ABSENT_HERE = {"scalekit_device_memory_in_use_bytes": "CPU devices report no memory stats",
               "scalekit_device_memory_limit_bytes": "CPU devices report no memory stats",
               "scalekit_device_memory_peak_bytes": "CPU devices report no memory stats",
               "scalekit_checkpoint_restore_duration_seconds": "a fresh run restores no checkpoint"}


def dashboard_exprs() -> list[tuple[str, str]]:
    out = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"]
                for var, value in GRAFANA_VARS.items():
                    expr = expr.replace(var, value)
                out.append((f"{path.name}: {panel['title']}", expr))
    return out


def rule_exprs() -> list[tuple[str, str, str]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [(r.get("alert") or r["record"], "alert" if "alert" in r else "record", r["expr"])
            for g in groups for r in g["rules"]]


def known_names() -> set[str]:
    names = set()
    for name, (kind, _) in prom.METRICS.items():
        names.add(prom.PREFIX + name)
        if kind == "histogram":
            names |= {prom.PREFIX + name + s for s in ("_bucket", "_sum", "_count")}
    return names | {name for name, kind, _ in rule_exprs() if kind == "record"}


def test_dashboard_and_rules_use_only_real_metric_names():
    assert DASHBOARDS, "no Grafana dashboard under deploy/grafana/"
    known = known_names()
    exprs = [e for _, e in dashboard_exprs()] + [e for _, _, e in rule_exprs()]
    for expr in exprs:
        unknown = set(SCALEKIT_NAME.findall(expr)) - known
        assert not unknown, f"{expr}: unknown metrics {unknown}"
    assert any("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE" in e for e in exprs)
    assert any("DCGM_FI_DEV_POWER_USAGE" in e for e in exprs)
    assert any("node_" in e for e in exprs)


def test_every_dashboard_query_parses_and_scalekit_ones_return_data(prometheus, live_run):
    _, at, _, _ = live_run
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    empty = []
    for where, expr in exprs:
        reply = prometheus.api("query", query=expr, time=at)
        assert reply["status"] == "success", f"{where}: {expr}\n{reply.get('error')}"
        names = set(SCALEKIT_NAME.findall(expr))
        if CLUSTER.search(expr) or names & set(ABSENT_HERE):
            continue
        if not reply["data"]["result"]:
            empty.append(f"{where}: {expr}")
    assert not empty, "queries on scalekit metrics returned no data:\n" + "\n".join(empty)


def test_every_rule_parses_evaluates_and_its_metrics_have_data(prometheus, live_run):
    _, at, _, _ = live_run
    rules = {r["name"]: r for g in prometheus.api("rules")["data"]["groups"] for r in g["rules"]}
    for name, kind, expr in rule_exprs():
        assert name in rules, f"Prometheus did not load rule {name}"
        assert rules[name]["health"] == "ok", (name, rules[name].get("lastError"))
        reply = prometheus.api("query", query=expr, time=at)
        assert reply["status"] == "success", f"{name}: {expr}\n{reply.get('error')}"
        if CLUSTER.search(expr):
            continue
        if kind == "record":  # a recording rule's value exists whenever its inputs do
            assert reply["data"]["result"], f"recording rule {name} returned no data"
        for metric in set(SCALEKIT_NAME.findall(expr)):
            assert prometheus.query(f'{metric}{{run="{RUN}"}}', at), f"{name}: {metric} has no data"


def test_nan_loss_alert_fires_from_a_real_exporter(prometheus, tmp_path):
    rec = MetricsRecorder(tmp_path, "nan-run", prometheus_port=free_port())
    try:
        prometheus.add_target("nan", rec.prometheus_address, {"test": "nan"})
        rec.log_train(1, {"loss": 3.0, "step_time_s": 0.1})
        rec.log_train(2, {"loss": math.nan, "step_time_s": 0.1})
        deadline = time.time() + 60
        while time.time() < deadline:
            alerts = prometheus.query('ALERTS{alertname="ScalekitLossNotFinite", run="nan-run"}')
            if any(a["metric"]["alertstate"] == "firing" for a in alerts):
                break
            time.sleep(0.5)
        else:
            pytest.fail("ScalekitLossNotFinite did not fire for a NaN loss")
        assert not prometheus.query(f'ALERTS{{alertname="ScalekitLossNotFinite", run="{RUN}"}}')
    finally:
        rec.close()
        (prometheus.targets / "nan.json").unlink(missing_ok=True)
