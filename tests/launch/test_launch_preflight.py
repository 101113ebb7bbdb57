"""`scalekit preflight`: matmul throughput per device, collective bandwidth, stragglers, metrics; 1 and 2 processes."""

from __future__ import annotations

import json
import sys
import time
import urllib.request

from scalekit.parallel.preflight import find_stragglers, format_report

SMALL = ["--size", "128", "--iters", "2", "--collective-mb", "0.0625"]


def _check_bandwidth_formulas(report: dict) -> None:
    for c in report["collectives"]:
        n = c["n"]
        factor = 2 * (n - 1) / n if c["op"] == "all_reduce" else (n - 1) / n
        out_bytes = c["bytes"] * (1 if c["op"] == "all_reduce" else n)
        assert c["time_s"] > 0
        assert abs(c["algbw_gbps"] - out_bytes / c["time_s"] / 1e9) < 1e-9 * max(1.0, c["algbw_gbps"])
        assert abs(c["busbw_gbps"] - c["algbw_gbps"] * factor) < 1e-9 * max(1.0, c["busbw_gbps"])


def test_stragglers_are_below_the_ratio_of_the_median() -> None:
    values = {("h1", 0): 100.0, ("h1", 1): 98.0, ("h2", 0): 60.0, ("h2", 1): 101.0}
    assert find_stragglers(values, 0.8) == [("h2", 0)]
    assert find_stragglers({"only": 1.0}, 0.8) == []
    report = {"device_count": 2, "platform": "gpu", "process_count": 1, "size": 8, "iters": 1,
              "straggler_ratio": 0.8, "median_tflops": {"bfloat16": 80.0},
              "devices": [{"process": 0, "host": "h1", "device": i, "tflops": {"bfloat16": v}}
                          for i, v in enumerate((100.0, 60.0))],
              "collectives": [], "stragglers": {"devices": [{"process": 0, "device": 1, "host": "h1",
                                                              "dtype": "bfloat16", "tflops": 60.0, "median": 80.0}],
                                                 "hosts": []}}
    text = format_report(report)
    assert "<- straggler" in text.splitlines()[3] and "1 device(s)" in text


def test_preflight_on_eight_cpu_devices_exports_metrics(group, clean_env, free_port, tmp_path) -> None:
    out, prom = tmp_path / "preflight.json", tmp_path / "preflight.prom"
    argv = [sys.executable, "-m", "scalekit", "preflight", *SMALL, "--out", str(out), "--textfile", str(prom),
            "--prometheus-port", str(free_port), "--prometheus-host", "127.0.0.1", "--hold", "20"]
    (proc,) = group.start(argv, [clean_env(8)])
    lines = []
    for line in proc.stdout:  # the table, then "serving metrics ..." while it holds
        lines.append(line)
        if line.startswith("serving metrics"):
            break
    text = "".join(lines)
    assert "preflight: 8 cpu devices in 1 process(es)" in text, text
    scraped = urllib.request.urlopen(f"http://127.0.0.1:{free_port}/metrics", timeout=10).read().decode()
    proc.kill()
    report = json.loads(out.read_text())
    assert report["device_count"] == 8 and len(report["devices"]) == 8
    assert all(d["tflops"]["float32"] > 0 and d["tflops"]["bfloat16"] > 0 for d in report["devices"])
    assert {(c["op"], c["scope"], c["n"]) for c in report["collectives"]} == {("all_reduce", "all", 8),
                                                                              ("all_gather", "all", 8)}
    _check_bandwidth_formulas(report)
    for metrics in (scraped, prom.read_text()):
        assert metrics.count("scalekit_preflight_matmul_tflops{") == 16  # 8 devices x 2 dtypes
        assert 'scalekit_preflight_busbw_gbps{bytes="65536",op="all_reduce",scope="all"}' in metrics
        assert "scalekit_preflight_straggler{" in metrics and "scalekit_preflight_devices 8.0" in metrics
    print(text)  # the report, for the log (pytest -s)


def test_preflight_on_two_processes(group, clean_env, free_port, tmp_path) -> None:
    out = tmp_path / "preflight.json"
    argv = [sys.executable, "-m", "scalekit", "preflight", *SMALL, "--out", str(out), "--timeout", "60"]
    envs = [clean_env(4, SCALEKIT_COORDINATOR_ADDRESS=f"127.0.0.1:{free_port}", SCALEKIT_NUM_PROCESSES="2",
                      SCALEKIT_PROCESS_ID=str(i)) for i in range(2)]
    started = time.monotonic()
    (rc0, out0), (rc1, out1) = group.run(argv, envs, timeout=120)
    assert rc0 == 0 and rc1 == 0, out0[-3000:] + out1[-3000:]
    assert "preflight: 8 cpu devices in 2 process(es)" in out0 and "preflight:" not in out1  # process 0 reports
    report = json.loads(out.read_text())
    assert report["process_count"] == 2 and sorted({d["process"] for d in report["devices"]}) == [0, 1]
    scopes = {(c["scope"], c["n"]) for c in report["collectives"]}
    assert scopes == {("all", 8), ("inter", 2), ("intra", 4)}  # the network layer and the node layer, apart
    _check_bandwidth_formulas(report)
    assert set(report["stragglers"]) == {"devices", "hosts"}
    print(out0[out0.index("preflight:"):], f"\n({time.monotonic() - started:.1f} s)")
