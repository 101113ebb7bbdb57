"""deploy/: promtool checks the rules and the scrape config and runs the alert unit tests; the Grafana dashboard,
its provisioning and the Kubernetes PodMonitors are well formed; the Slurm file_sd writer names every process."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scalekit.observe import prometheus as prom

REPO = Path(__file__).resolve().parents[2]
PROM_DIR = REPO / "deploy" / "prometheus"
GRAFANA_DIR = REPO / "deploy" / "grafana"
needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="needs promtool (Debian's `prometheus` package; .ci/run installs it)")


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], cwd=PROM_DIR, capture_output=True, text=True, timeout=120)


def test_rule_files_exist():
    assert sorted(p.name for p in PROM_DIR.glob("*rules*.yml")) == ["scalekit_rules.yml"]


@needs_promtool
def test_promtool_check_rules():
    for path in PROM_DIR.glob("*rules*.yml"):
        result = promtool("check", "rules", path.name)
        assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_rule_unit_tests_pass():
    """NaN/inf loss, stall, step-time regression, MFU floor, checkpoint failures, data starvation: each fires when it
    should and stays quiet when it should not (deploy/prometheus/scalekit_alert_tests.yml)."""
    result = promtool("test", "rules", "scalekit_alert_tests.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_rule_unit_tests_catch_a_broken_nan_alert(tmp_path):
    """The unit tests are not vacuous: with the NaN clause removed from the alert they fail."""
    rules = (PROM_DIR / "scalekit_rules.yml").read_text()
    broken = rules.replace("(scalekit_train_loss != scalekit_train_loss) or ", "")
    assert broken != rules
    (tmp_path / "scalekit_rules.yml").write_text(broken)
    shutil.copy(PROM_DIR / "scalekit_alert_tests.yml", tmp_path)
    result = subprocess.run(["promtool", "test", "rules", "scalekit_alert_tests.yml"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "ScalekitLossNotFinite" in result.stdout + result.stderr


@needs_promtool
def test_promtool_check_scrape_config():
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert "static_configs" in jobs["scalekit"] and "file_sd_configs" in jobs["scalekit-slurm"]
    for job in ("dcgm", "node"):  # their series get `host` for the dashboard's joins
        assert any(r.get("target_label") == "host" for r in jobs[job]["relabel_configs"])


def test_file_sd_example_is_valid():
    entries = json.loads((PROM_DIR / "file_sd.example.json").read_text())
    assert all(set(e) == {"targets", "labels"} and all(":" in t for t in e["targets"]) for e in entries)


def test_podmonitors_select_scalekit_and_dcgm():
    docs = list(yaml.safe_load_all((PROM_DIR / "podmonitor.yaml").read_text()))
    assert [d["kind"] for d in docs] == ["PodMonitor", "PodMonitor"]
    assert all(d["apiVersion"] == "monitoring.coreos.com/v1" for d in docs)
    scalekit, dcgm = docs
    assert scalekit["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "scalekit"}
    assert scalekit["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert any(r["targetLabel"] == "host" for r in dcgm["spec"]["podMetricsEndpoints"][0]["relabelings"])


def test_dashboard_is_generated_and_well_formed(tmp_path):
    spec = importlib.util.spec_from_file_location("build_dashboard", GRAFANA_DIR / "build_dashboard.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    committed = json.loads((GRAFANA_DIR / "scalekit-training.json").read_text())
    assert committed == json.loads(json.dumps(builder.dashboard())), "run deploy/grafana/build_dashboard.py"
    ids = [p["id"] for p in committed["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(p["title"] for p in committed["panels"]).lower()
    for word in ("loss", "throughput", "mfu", "goodput", "step time per process", "memory", "tensor", "power"):
        assert word in titles, word
    for p in committed["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24
        for t in p.get("targets", []):
            assert t["expr"] and t["refId"] and t["datasource"]["uid"] == "${datasource}"
    assert {v["name"] for v in committed["templating"]["list"]} == {"datasource", "run"}


def test_grafana_provisioning_files():
    dashboards = yaml.safe_load((GRAFANA_DIR / "provisioning-dashboards.yaml").read_text())
    (provider,) = dashboards["providers"]
    assert dashboards["apiVersion"] == 1 and provider["type"] == "file" and provider["options"]["path"]
    datasources = yaml.safe_load((GRAFANA_DIR / "provisioning-datasources.yaml").read_text())
    assert datasources["datasources"][0]["type"] == "prometheus"


@pytest.mark.skipif(shutil.which("scontrol") is None, reason="needs Slurm's scontrol (to expand the node list)")
def test_slurm_file_sd_from_the_job_environment(tmp_path):
    (tmp_path / "slurm.conf").write_text("ClusterName=t\nSlurmctldHost=localhost\n")  # scontrol wants a config
    env = {**os.environ, "SLURM_CONF": str(tmp_path / "slurm.conf"), "SLURM_JOB_ID": "42",
           "SLURM_JOB_NODELIST": "gpu[1-2]", "SLURM_NTASKS_PER_NODE": "2"}
    result = subprocess.run([sys.executable, "-m", "scalekit.observe.prometheus", str(tmp_path / "sd"), "9450", "demo"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    entries = json.loads((tmp_path / "sd" / "scalekit-42.json").read_text())
    assert entries == prom.file_sd_targets(["gpu1", "gpu2"], 9450, 2, {"slurm_job_id": "42", "slurm_run": "demo"})
