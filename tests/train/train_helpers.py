"""Shared helpers for training tests: a tiny config and metrics readers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import ml_collections

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "configs"))

from train import get_config  # noqa: E402


def tiny(steps: int = 20, **overrides) -> ml_collections.ConfigDict:
    """The tiny preset, made faster: no peak measurement, no progress bar, small eval."""
    cfg = get_config("tiny")
    cfg.steps = steps
    cfg.peak_flops = 1e11
    cfg.progress = False
    cfg.eval_batches = 2
    cfg.eval_every = 0
    cfg.optimizer.warmup_steps = min(cfg.optimizer.warmup_steps, steps)
    return set_fields(cfg, **overrides)


def set_fields(cfg: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
    """Set config fields given as group__field=value (e.g. optimizer__lr=1e-3); returns cfg."""
    for dotted, value in fields.items():
        node = cfg
        *groups, leaf = dotted.split("__")
        for g in groups:
            node = node[g]
        node[leaf] = value
    return cfg


def read_metrics(workdir: Path, kind: str = "train") -> dict[int, dict]:
    """The last record of each step of `kind` (a restart re-logs the steps after its checkpoint)."""
    out = {}
    for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["kind"] == kind:
            out[rec["step"]] = rec
    return out


def cli_args(cfg: ml_collections.ConfigDict, workdir: Path) -> list[str]:
    """`scalekit train` arguments that reproduce `cfg` exactly (through a JSON config file)."""
    path = Path(workdir).parent / (Path(workdir).name + ".config.json")
    path.write_text(cfg.to_json_best_effort())
    return ["--config", str(path), "--workdir", str(workdir)]
