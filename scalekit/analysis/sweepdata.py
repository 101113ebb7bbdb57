"""A sweep's finished runs, ready to fit and plot: the DataFrame, the fitting columns, the training curves and
the data's known entropy floor.

Conventions (stated in every report): N = total parameters (`n_params`), D = training tokens, C = 6 N D
(`flops_6n`; the IsoFLOP plans spend their budgets under this convention), loss = held-out eval loss in
nats/token (`eval_loss`, falling back to the final training loss where a run has no eval).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from scalekit.analysis.lrsweep import envelope_note, has_lr_grid, lr_envelope
from scalekit.laws import ScalingData

CONVENTIONS = ("N = total parameters (embeddings included)", "D = training tokens",
               "C = 6 N D FLOPs (the IsoFLOP budgets' convention)", "loss = held-out eval loss, nats/token")


@dataclass(repr=False)
class SweepResults:
    """Finished runs of a sweep (`frame`, one row each) plus what the fits need to know about them."""

    frame: pd.DataFrame
    source: str = ""
    n_total: int = 0
    n_failed: int = 0
    entropy_floor: float | None = None       # nats/token a perfect model reaches (synthetic data), else None
    sequence_floor: float | None = None      # the floor of the eval loss over a seq_len window (>= entropy_floor)
    data_description: str = ""
    notes: list[str] = field(default_factory=list)
    # Sweeps with learning-rate grids (several lrs in some (size, budget) cell): `frame` holds one run per cell, the
    # best lr's (scalekit.analysis.lrsweep.lr_envelope); `lr_frame` every done run of the grids, plus the diverged
    # ones with an infinite loss, for the learning-rate law; `lr_envelope` what the envelope did. None otherwise.
    lr_frame: pd.DataFrame | None = None
    lr_envelope: dict | None = None

    def __len__(self) -> int:
        return len(self.frame)

    def __repr__(self) -> str:
        return (f"SweepResults({len(self)} done runs of {self.n_total} from {self.source or 'a frame'!r}, "
                f"floor={self.floor})")

    @property
    def N(self) -> np.ndarray:
        return self.frame["n_params"].to_numpy(np.float64)

    @property
    def D(self) -> np.ndarray:
        return self.frame["tokens"].to_numpy(np.float64)

    @property
    def C(self) -> np.ndarray:
        return self.frame["C"].to_numpy(np.float64)

    @property
    def loss(self) -> np.ndarray:
        return self.frame["loss"].to_numpy(np.float64)

    @property
    def budgets(self) -> np.ndarray | None:
        """The planned IsoFLOP budget of each run (None for a grid sweep or ingested runs)."""
        if "budget" not in self.frame or self.frame["budget"].isna().any():
            return None
        return self.frame["budget"].to_numpy(np.float64)

    @property
    def floor(self) -> float | None:
        """The floor to compare a fitted E with: the eval window's floor when known, else the entropy rate."""
        return self.sequence_floor if self.sequence_floor is not None else self.entropy_floor

    def data(self, mask: np.ndarray | None = None) -> ScalingData:
        """The runs as ScalingData (N, D, C, loss, and budget when planned) for `scalekit.laws`."""
        cols = {"N": self.N, "D": self.D, "C": self.C, "loss": self.loss}
        if self.budgets is not None:
            cols["budget"] = self.budgets
        if mask is not None:
            cols = {k: v[mask] for k, v in cols.items()}
        out = ScalingData.from_arrays(**cols)
        out.notes[:0] = list(CONVENTIONS)
        return out

    def curves(self) -> pd.DataFrame:
        """One row per eval point of every run: run, name, N, step, D, C, loss (D and C scale with step/steps)."""
        rows = []
        for _, r in self.frame.iterrows():
            curve = r.get("eval_curve")
            if not isinstance(curve, (list, tuple)) or not curve:
                continue
            steps = r.get("steps")
            steps = float(steps) if steps is not None and steps == steps else float(max(s for s, _ in curve))
            for step, loss in curve:
                if step is None or loss is None or step <= 0:
                    continue
                frac = float(step) / steps
                rows.append({"run": r["key"], "name": r["name"], "N": float(r["n_params"]), "step": int(step),
                             "D": float(r["tokens"]) * frac, "C": float(r["C"]) * frac, "loss": float(loss)})
        return pd.DataFrame(rows, columns=["run", "name", "N", "step", "D", "C", "loss"])

    def curve_data(self) -> ScalingData | None:
        """Training curves as ScalingData with a run column (approach 1), or None without curves."""
        c = self.curves()
        if c.empty or c["run"].nunique() < 2:
            return None
        return ScalingData.from_arrays(N=c["N"], D=c["D"], C=c["C"], loss=c["loss"], run=c["run"].to_numpy())


def _floats(df: pd.DataFrame, col: str) -> pd.Series:
    return pd.to_numeric(df[col], errors="coerce").astype(float) if col in df else pd.Series(np.nan, df.index)


def results_from_frame(df: pd.DataFrame, source: str = "") -> SweepResults:
    """SweepResults from a sweep DataFrame (`load_sweep_frame`) or any frame with its columns; keeps 'done' rows.

    Where some (size, budget) cell was trained at several learning rates (an `lr` column with several values in a
    cell), the fits count each cell once, at its best lr: seeds averaged per lr first, then the lr with the lowest
    mean loss (`scalekit.analysis.lrsweep.lr_envelope`; columns lr_best, lr_grid_size, n_seeds; a note says how many
    runs it dropped). Frames with one lr per cell come back exactly as before."""
    n_total = len(df)
    n_failed = int((df["status"] == "failed").sum()) if "status" in df else 0
    n_diverged = int((df["status"] == "diverged").sum()) if "status" in df else 0
    diverged = df[df["status"] == "diverged"].copy() if "status" in df else df.iloc[:0].copy()
    if "status" in df:
        df = df[df["status"] == "done"]
    df = df.copy()
    loss = _floats(df, "eval_loss")
    df["loss"] = loss.where(loss.notna(), _floats(df, "final_loss"))
    c = _floats(df, "flops_6n")
    df["C"] = c.where(c.notna(), 6.0 * _floats(df, "n_params") * _floats(df, "tokens"))
    ok = df["loss"].gt(0) & df["C"].gt(0) & _floats(df, "n_params").gt(0) & _floats(df, "tokens").gt(0)
    notes = [f"{n_diverged} diverged run(s) left out of the fits"] if n_diverged else []
    if not ok.all():
        notes.append(f"{int((~ok).sum())} done run(s) without a usable loss, N or D were left out")
    df = df[ok].reset_index(drop=True)
    lr_frame = lr_info = None
    if has_lr_grid(df):
        diverged["loss"] = np.inf
        lr_frame = pd.concat([df, diverged], ignore_index=True) if len(diverged) else df.copy()
        df, lr_info = lr_envelope(df)
        notes.append(envelope_note(lr_info))
    floor = None
    if "entropy_floor" in df and _floats(df, "entropy_floor").notna().any():
        floor = float(_floats(df, "entropy_floor").dropna().iloc[0])
    seq = None
    if "sequence_floor" in df and _floats(df, "sequence_floor").notna().any():
        seq = float(_floats(df, "sequence_floor").dropna().iloc[0])
    return SweepResults(df, source=source, n_total=n_total, n_failed=n_failed, entropy_floor=floor,
                        sequence_floor=seq, notes=notes, lr_frame=lr_frame, lr_envelope=lr_info)


def _floors_from_store(sweep_dir: Path, store: str | None = None) -> tuple[float | None, float | None, str]:
    """(entropy floor, eval-window floor, data description) from the runs' summaries and configs, when known."""
    from scalekit.sweep.store import open_store

    floor, seq, desc = None, None, ""
    s = open_store(sweep_dir, create=False, readonly=True, store=store)
    rows = s.rows()
    s.close()
    for r in rows:
        if r.get("status") != "done":
            continue
        summ = r.get("summary") or {}
        if floor is None and summ.get("entropy_floor") is not None:
            floor = float(summ["entropy_floor"])
        cfg = r.get("config")
        if cfg and not desc:
            try:  # the data layer knows the exact floors of the synthetic language
                import ml_collections

                from scalekit.data.pipeline import data_info

                info = data_info(ml_collections.ConfigDict(cfg["data"]))
                desc = info.description
                floor = info.entropy_floor if info.entropy_floor is not None else floor
                seq = getattr(info, "sequence_floor", None)
            except Exception:  # noqa: BLE001 - a floor is a bonus; a sweep on unknown data has none
                pass
        if floor is not None and desc:
            break
    return floor, seq, desc


def load_sweep(sweep_dir: str | Path, *, store: str | None = None) -> SweepResults:
    """The finished runs of a sweep directory, with the data's floors when the runs' data has one. `store`: the
    sweep's results store URL when it is not the directory's own (see scalekit.sweep.store.open_store)."""
    from scalekit.sweep.store import load_sweep_frame, redact_url

    sweep_dir = Path(sweep_dir) if "://" not in str(sweep_dir) else sweep_dir
    source = str(sweep_dir) if not store else f"{sweep_dir} (store {redact_url(store)})"
    res = results_from_frame(load_sweep_frame(sweep_dir, store=store), source=source)
    if res.entropy_floor is None or res.sequence_floor is None:
        floor, seq, desc = _floors_from_store(sweep_dir, store)
        res.entropy_floor = res.entropy_floor if res.entropy_floor is not None else floor
        res.sequence_floor = res.sequence_floor if res.sequence_floor is not None else seq
        res.data_description = res.data_description or desc
    return res
