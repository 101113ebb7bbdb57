"""Scaling sweeps: plans (grids, IsoFLOP), the results store, and executors (local, Slurm array).

    from scalekit.sweep import load_sweep_frame
    df = load_sweep_frame("/tmp/sweep_tiny")       # one row per run; filter df.status == "done" to fit

Names are imported lazily so that `python -m scalekit.sweep.fake_train` and the CLI start fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Plan": "plan", "PlanError": "plan", "RunSpec": "plan", "grid_plan": "plan", "isoflop_plan": "plan",
    "load_plan": "plan", "lr_grid": "plan", "ResultsStore": "store", "SQLiteStore": "store", "load_sweep_frame": "store",
    "open_store": "store",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import `scalekit.sweep.<module>` on first use of one of its public names."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"scalekit.sweep.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'scalekit.sweep' has no attribute {name!r}")
