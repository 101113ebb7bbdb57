"""What a run logged before a restart (metrics.jsonl), read back so a resumed run's summary covers all of it."""

from __future__ import annotations

import json
import math
from pathlib import Path


def read_metrics(workdir: Path) -> list[dict]:
    """Every record of `<workdir>/metrics.jsonl`, skipping a line cut short by a kill."""
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def seconds_lost(workdir: Path, restored_step: int) -> float:
    """Wall time of the steps logged after the restored checkpoint: work the restart must redo."""
    redo = [r.get("step_time_s", 0.0) for r in read_metrics(workdir)
            if r.get("kind") == "train" and r.get("step", 0) > restored_step]
    return float(sum(redo))


def previous_train_loss(workdir: Path, upto: int) -> float:
    """The train loss logged at the latest step <= `upto` before a restart (NaN when none was logged)."""
    best_step, loss = -1, float("nan")
    for rec in read_metrics(workdir):
        if rec.get("kind") == "train" and best_step < rec.get("step", -1) <= upto and "loss" in rec:
            best_step, loss = rec["step"], float(rec["loss"])
    return loss


def previous_eval_curve(workdir: Path) -> list[list[float]]:
    """Eval points logged before a restart, as [[step, eval_loss], ...] sorted by step."""
    curve = {}
    for rec in read_metrics(workdir):
        if rec.get("kind") == "eval" and math.isfinite(rec.get("eval_loss", float("nan"))):
            curve[rec["step"]] = rec["eval_loss"]
    return [[s, v] for s, v in sorted(curve.items())]
