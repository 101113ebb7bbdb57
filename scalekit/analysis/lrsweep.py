"""Learning-rate grids in a sweep: the envelope over learning rates that the fits see, and the learning-rate law.

A plan may train each (model size, budget) cell at several learning rates (`scalekit.sweep.plan`, `lrs=`). Those runs
differ only in learning rate, so a scaling fit must count each cell once, at its best learning rate (Porian et al.
2024: one learning rate for every size biases the compute-optimal exponent):

- `lr_envelope(frame)`: one row per cell, the run of the learning rate with the lowest loss. Where a cell repeats a
  learning rate over several seeds, the losses of each learning rate are averaged over its seeds first and the best
  learning rate is the one with the lowest mean; the cell's row is then that learning rate's first run, its `loss`
  set to the seed mean. Columns added: `lr_best`, `lr_grid_size` (learning rates tried in the cell), `n_seeds`
  (runs averaged at the best learning rate).
- `lr_optima(frame)`: per cell, the learning-rate grid with its (seed-averaged) losses and the interpolated optimum
  (`scalekit.laws.lr_law.interpolate_lr_opt`; diverged runs count as an infinite loss), flagged where the best
  learning rate is at the edge of the grid.
- `fit_sweep_lr_law(results)`: those optima fitted as lr_opt(N) = c N^(-k) (`scalekit.laws.lr_law.fit_lr_law`).

A cell is the runs that share model name, N, D and budget (for a grid plan: model size and tokens). Sweeps where every
cell has one learning rate are left exactly as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from scalekit.laws.lr_law import LrLawFit, fit_lr_law, interpolate_lr_opt

CELL_COLUMNS = ("model", "n_params", "tokens", "budget")
EDGE_HINT = "at edge: widen the grid"


def cell_columns(df: pd.DataFrame) -> list[str]:
    """The columns whose values name a cell (those of CELL_COLUMNS that `df` has)."""
    return [c for c in CELL_COLUMNS if c in df.columns]


def _groups(df: pd.DataFrame):
    cols = cell_columns(df)
    if not cols:
        return [((), df)]
    return list(df.groupby(cols, dropna=False, sort=False))


def _lr_values(g: pd.DataFrame) -> pd.Series:
    return pd.to_numeric(g["lr"], errors="coerce").astype(float)


def has_lr_grid(df: pd.DataFrame) -> bool:
    """Whether some cell of `df` holds runs at two or more learning rates."""
    if "lr" not in df.columns or df.empty:
        return False
    return any(_lr_values(g).dropna().nunique() > 1 for _, g in _groups(df))


def _by_lr(g: pd.DataFrame) -> pd.DataFrame:
    """One row per learning rate of a cell: lr, mean loss over its seeds, the number of runs, the first run's index."""
    lr = _lr_values(g)
    loss = pd.to_numeric(g["loss"], errors="coerce").astype(float)
    t = pd.DataFrame({"lr": lr.to_numpy(), "loss": loss.to_numpy(), "row": g.index.to_numpy()})
    t["lr_key"] = t["lr"].fillna(-1.0)        # runs without an lr: one group of their own
    agg = t.groupby("lr_key", sort=True).agg(lr=("lr", "first"), loss=("loss", "mean"), n=("loss", "size"),
                                             row=("row", "first"))
    return agg.reset_index(drop=True)


def lr_envelope(df: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The best learning rate of each cell (see the module docstring): (frame with one row per cell, what it did).

    `df` needs the fitting column `loss` (lower is better) and `lr`; returns it unchanged (and info with
    n_dropped = 0) when no cell has two or more learning rates. Losses are averaged over a learning rate's seeds
    before the best learning rate is chosen; ties go to the smaller learning rate."""
    info: dict[str, Any] = {"n_before": len(df), "n_after": len(df), "n_dropped": 0, "n_cells": 0,
                            "n_grid_cells": 0, "seeds_averaged": False}
    if not has_lr_grid(df):
        return df, info
    df = df.reset_index(drop=True)
    keep, lr_best, grid_size, n_seeds, loss = [], [], [], [], []
    for _, g in _groups(df):
        t = _by_lr(g)
        j = int(np.argmin(np.where(np.isfinite(t["loss"].to_numpy()), t["loss"].to_numpy(), np.inf)))
        keep.append(int(t["row"].iloc[j]))
        lr_best.append(float(t["lr"].iloc[j]))
        grid_size.append(int(t["lr"].notna().sum()) or 1)
        n_seeds.append(int(t["n"].iloc[j]))
        loss.append(float(t["loss"].iloc[j]))
        info["n_grid_cells"] += int(len(t) > 1)
        info["seeds_averaged"] |= bool((t["n"] > 1).any())
    out = df.loc[keep].copy()
    out["loss"] = loss
    out["lr_best"] = lr_best
    out["lr_grid_size"] = grid_size
    out["n_seeds"] = n_seeds
    out = out.sort_index().reset_index(drop=True)
    info.update(n_after=len(out), n_dropped=len(df) - len(out), n_cells=len(out))
    return out, info


def envelope_note(info: dict[str, Any]) -> str:
    """One line for a result's notes: what the learning-rate envelope dropped."""
    return (f"learning-rate envelope: {info['n_before']} runs in {info['n_cells']} (size, budget) cells, "
            f"{info['n_grid_cells']} with several learning rates; each cell fitted once at its best lr "
            f"(lowest loss{', averaged over seeds first' if info['seeds_averaged'] else ''}): "
            f"{info['n_dropped']} runs dropped from the fits")


def lr_optima(df: pd.DataFrame) -> pd.DataFrame:
    """Per cell: model, n_params, tokens, budget (where known), lrs, losses (seed means; inf for a diverged lr),
    n_runs, lr_best, loss_best, lr_opt, loss_opt, at_edge, edge, method; sorted by N, then budget or tokens."""
    rows = []
    for key, g in _groups(df):
        t = _by_lr(g)
        t = t[t["lr"].notna()]
        if t.empty:
            continue
        if isinstance(key, tuple):
            cell = dict(zip(cell_columns(df), key))
        else:
            cell = {cell_columns(df)[0]: key}
        losses = t["loss"].to_numpy(np.float64)
        losses = np.where(np.isnan(losses), np.inf, losses)
        if not np.isfinite(losses).any():
            continue
        opt = interpolate_lr_opt(t["lr"].to_numpy(np.float64), losses)
        rows.append({**{k: cell.get(k) for k in CELL_COLUMNS}, "lrs": list(opt.lrs), "losses": list(opt.losses),
                     "n_runs": int(t["n"].sum()), "lr_best": opt.lr_best, "loss_best": opt.loss_best,
                     "lr_opt": opt.lr_opt, "loss_opt": opt.loss_opt, "at_edge": opt.at_edge, "edge": opt.edge,
                     "method": opt.method})
    cols = list(CELL_COLUMNS) + ["lrs", "losses", "n_runs", "lr_best", "loss_best", "lr_opt", "loss_opt", "at_edge",
                                 "edge", "method"]
    out = pd.DataFrame(rows, columns=cols)
    if out.empty:
        return out
    out["_b"] = pd.to_numeric(out["budget"], errors="coerce").fillna(pd.to_numeric(out["tokens"], errors="coerce"))
    return out.sort_values(["n_params", "_b"], kind="stable").drop(columns="_b").reset_index(drop=True)


@dataclass(repr=False)
class SweepLrLaw:
    """A sweep's learning-rate grids: the per-cell optima (`table`, see `lr_optima`) and the fitted law (None with
    `error` saying why when it could not be fitted)."""

    table: pd.DataFrame
    law: LrLawFit | None = None
    error: str | None = None
    exclude_edge: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def n_at_edge(self) -> int:
        return int(self.grid_cells()["at_edge"].sum())

    def grid_cells(self) -> pd.DataFrame:
        """The cells with two or more learning rates (the others say nothing about the optimum)."""
        return self.table[self.table["lrs"].map(len) >= 2]

    def summary(self) -> str:
        g = self.grid_cells()
        lines = [f"learning-rate grids: {len(g)} (size, budget) cells, {self.n_at_edge} with the best lr at the "
                 f"edge of the grid" + (f" ({EDGE_HINT})" if self.n_at_edge else "")]
        lines.append(f"lr law: {self.law.summary()}" if self.law is not None else f"lr law: not fitted ({self.error})")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        recs = []
        for r in self.table.to_dict("records"):
            recs.append({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()
                         if k != "losses"} | {"losses": [x if math.isfinite(x) else None for x in r["losses"]]})
        return {"cells": recs, "law": self.law.to_dict() if self.law is not None else None, "error": self.error,
                "exclude_edge": self.exclude_edge, "n_at_edge": self.n_at_edge, "notes": list(self.notes)}

    def __repr__(self) -> str:
        return f"SweepLrLaw({self.summary()})"


def fit_sweep_lr_law(results, *, level: float = 0.95, bootstrap: int = 0, seed: int = 0,
                     exclude_edge: bool = False) -> SweepLrLaw | None:
    """The learning-rate law of a sweep with learning-rate grids (None without grids: `results.lr_frame` is None).

    One point per cell with two or more learning rates: its interpolated lr_opt against its N. `exclude_edge` leaves
    out the cells whose best lr is at the edge of their grid (their optimum may lie beyond it). Intervals: t-based
    (`bootstrap` = 0) or from `bootstrap` resamples of the points (`scalekit.laws.lr_law.fit_lr_law`)."""
    frame = getattr(results, "lr_frame", None)
    if frame is None:
        return None
    out = SweepLrLaw(lr_optima(frame), exclude_edge=exclude_edge)
    g = out.grid_cells()
    if exclude_edge:
        g = g[~g["at_edge"].astype(bool)]
    if out.n_at_edge:
        out.notes.append(f"{out.n_at_edge} cell(s) have their best lr at the edge of the grid: their lr_opt is "
                         "the edge value, and the true optimum may lie beyond it; widen the grid"
                         + (" (left out of the law)" if exclude_edge else ""))
    try:
        out.law = fit_lr_law(g["n_params"].to_numpy(np.float64), g["lr_opt"].to_numpy(np.float64), level=level,
                             bootstrap=bootstrap, seed=seed)
    except ValueError as err:
        out.error = str(err)
    return out
