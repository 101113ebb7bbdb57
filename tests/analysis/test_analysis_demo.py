"""The demo end to end with real training (a quick 8-run plan): sweep -> fits -> report, then a rerun that trains
nothing and refits nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "experiments" / "demo.py"
QUICK = f"{REPO / 'experiments' / 'sweep_demo.py'}:quick"

pytestmark = pytest.mark.slow


def _demo(workdir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")  # as `make demo` exports it
    return subprocess.run([sys.executable, str(DEMO), "--workdir", str(workdir), "--plan", QUICK,
                           "--bootstrap", "20"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def test_demo_sweeps_fits_reports_and_reruns_from_the_store(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    first = _demo(workdir)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    out = first.stdout
    assert "[8/8] done" in out                               # progress, run by run
    assert "compute-optimal allocation" in out and "tokens/param" in out
    assert "fitted E =" in out and "known floor" in out      # the synthetic language's floor is known
    report = workdir / "report"
    assert (report / "report.html").stat().st_size > 50_000
    fits = json.loads((report / "fits.json").read_text())
    assert fits["runs"]["done"] == 8 and fits["data"]["entropy_floor"] == pytest.approx(1.8487, abs=1e-3)
    assert {"2", "3"} <= set(fits["approaches"])

    second = _demo(workdir)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "already done" in second.stdout and "nothing to train" in second.stdout
    assert "up to date" in second.stdout and "start " not in second.stdout
