"""experiments/lr_transfer.py --quick: the miniature learning-rate transfer study through the sweep driver (2 widths x
3 learning rates x both parametrizations, a few steps each) writes its table, JSON and figure; a rerun trains nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "experiments" / "lr_transfer.py"


def _run(workdir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, MPLBACKEND="Agg")
    return subprocess.run([sys.executable, str(SCRIPT), "--workdir", str(workdir), "--quick"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_quick_study_writes_table_json_and_png_and_reruns_from_the_store(tmp_path: Path) -> None:
    workdir = tmp_path / "lrt"
    first = _run(workdir)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    out = first.stdout
    assert "[12/12] done" in out
    assert "drift standard" in out and "drift muP" in out and "goal (muP < 2x" in out
    assert "lr_opt" in out and "95% interval" in out

    png = workdir / "lr_transfer.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

    doc = json.loads((workdir / "lr_transfer.json").read_text())
    assert doc["quick"] is True and doc["setup"]["widths"] == [16, 32] and len(doc["setup"]["lrs"]) == 3
    assert set(doc["parametrizations"]) == {"standard", "mup"}
    for p, res in doc["parametrizations"].items():
        rows = res["widths"]
        assert [r["width"] for r in rows] == [16, 32], p        # one optimum per width and parametrization
        for r in rows:
            assert r["lrs"] == sorted(doc["setup"]["lrs"]) and len(r["losses"]) == 3
            assert all(v is None or 0 < v < 10 for v in r["losses"])
            assert r["lr_best"] in r["lrs"] and min(r["lrs"]) <= r["lr_opt"] <= max(r["lrs"])
            assert isinstance(r["at_edge"], bool) and len(r["interval"]) == 2
            lo, hi = r["interval"]
            assert (lo is None and hi is None) or lo <= hi
            assert r["interval_method"] in ("delta-t", "delta-z", "none")
        drift = max(r["lr_opt"] for r in rows) / min(r["lr_opt"] for r in rows)
        assert res["drift"] == drift and drift >= 1.0
    # at the base width muP is exactly standard parametrization: the same losses
    std16, mup16 = doc["parametrizations"]["standard"]["widths"][0], doc["parametrizations"]["mup"]["widths"][0]
    assert mup16["losses"] == std16["losses"]
    assert set(doc["goal"]) >= {"mup_drift", "standard_drift", "holds"}

    second = _run(workdir)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "nothing to train" in second.stdout
