"""Scaling results as validated float64 columns, from arrays, a DataFrame, a CSV/JSONL file or a sweep directory.

Canonical columns: N (parameters), D (tokens), C (FLOPs), U (unique tokens), X (post-training data or compute),
k (samples per problem), loss (the quantity fitted: loss, error, or a metric), run (a run id, for training curves),
budget (the planned IsoFLOP budget of a run).
Conventions, recorded in `notes` and printed by the CLI: D = C / (6 N) when tokens are absent, C = 6 N D when
FLOPs are absent.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from scalekit.laws.errors import DroppedPointsWarning, InvalidDataError

NUMERIC = ("N", "D", "C", "U", "X", "k", "loss", "budget")

# Column names recognised when the caller names none (first match wins, case-insensitive).
DEFAULT_COLUMNS: dict[str, tuple[str, ...]] = {
    "N": ("N", "n_params", "params", "parameters", "Model Size", "params_N", "model_size"),
    "D": ("D", "tokens", "n_tokens", "tokens_D", "data"),
    "C": ("C", "flops", "compute", "Training FLOP", "training_flops"),
    "U": ("U", "unique_tokens", "unique_tokens_U"),
    "X": ("X", "finetune_tokens", "finetune_flops"),
    "k": ("k", "samples", "num_samples"),
    "loss": ("loss", "eval_loss", "final_loss", "val_loss", "metric", "coverage"),
    "run": ("run", "run_id", "run_name"),
    "budget": ("budget", "flops_budget"),
}


@dataclass
class ScalingData:
    """Validated columns (float64 numpy arrays, all the same length) and the conventions used to derive them."""

    columns: dict[str, np.ndarray]
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.columns:
            raise InvalidDataError(f"column {name!r} is missing; available: {', '.join(self.columns)}")
        return self.columns[name]

    def has(self, name: str) -> bool:
        return name in self.columns

    @property
    def loss(self) -> np.ndarray:
        return self["loss"]

    def inputs(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        return {k: self[k] for k in names}

    def subset(self, mask: np.ndarray) -> "ScalingData":
        mask = np.asarray(mask)
        return ScalingData({k: v[mask] for k, v in self.columns.items()}, list(self.notes))

    def drop_highest_loss(self, k: int) -> "ScalingData":
        """Drop the k points with the highest loss (the Chinchilla replication drops 5 of 245)."""
        if k <= 0:
            return self
        keep = np.argsort(self.loss, kind="stable")[: len(self) - k]
        out = self.subset(np.sort(keep))
        out.notes.append(f"dropped the {k} highest-loss points")
        return out

    @classmethod
    def from_arrays(cls, *, N=None, D=None, C=None, U=None, X=None, k=None, loss=None, run=None, budget=None,
                    drop_invalid: bool = False, flops_per_param_token: float = 6.0) -> "ScalingData":
        """Validate and complete the columns: D = C/(6N) or C = 6ND when one of them is absent."""
        given = {"N": N, "D": D, "C": C, "U": U, "X": X, "k": k, "loss": loss, "budget": budget}
        cols: dict[str, np.ndarray] = {}
        for name, v in given.items():
            if v is None:
                continue
            try:
                arr = np.asarray(v, dtype=np.float64).reshape(-1)
            except (TypeError, ValueError) as err:
                raise InvalidDataError(f"column {name!r} is not numeric: {err}") from None
            cols[name] = arr
        if run is not None:
            cols["run"] = np.asarray(run).reshape(-1)
        if not any(k_ in cols for k_ in NUMERIC):
            raise InvalidDataError("no data columns given")
        lengths = {k_: len(v) for k_, v in cols.items()}
        if len(set(lengths.values())) > 1:
            raise InvalidDataError(f"columns have different lengths: {lengths}")
        bad = np.zeros(len(next(iter(cols.values()))), bool)
        problems = []
        for name in NUMERIC:
            if name in cols:
                v = cols[name]
                b = ~np.isfinite(v) | (v <= 0)
                if b.any():
                    problems.append(f"{name}: {int(b.sum())} row(s) NaN, infinite or <= 0 "
                                    f"(first at row {int(np.flatnonzero(b)[0])})")
                bad |= b
        if problems:
            if not drop_invalid:
                raise InvalidDataError("invalid values: " + "; ".join(problems) +
                                       ". Fix the data or pass drop_invalid=True to drop those rows with a warning.")
            warnings.warn(f"dropped {int(bad.sum())} of {len(bad)} rows with invalid values: " + "; ".join(problems),
                          DroppedPointsWarning, stacklevel=2)
            cols = {k_: v[~bad] for k_, v in cols.items()}
        notes = []
        f = flops_per_param_token
        if "D" not in cols and "C" in cols and "N" in cols:
            cols["D"] = cols["C"] / (f * cols["N"])
            notes.append(f"D = C / ({f:g} N) (tokens absent)")
        if "C" not in cols and "N" in cols and "D" in cols:
            cols["C"] = f * cols["N"] * cols["D"]
            notes.append(f"C = {f:g} N D (FLOPs absent)")
        return cls(cols, notes)

    @classmethod
    def from_frame(cls, df, columns: Mapping[str, str | None] | None = None, drop_invalid: bool = False,
                   flops_per_param_token: float = 6.0) -> "ScalingData":
        """Columns from a DataFrame: `columns` maps canonical names (N, D, C, U, X, k, loss, run) to frame columns;
        unnamed ones are looked up among DEFAULT_COLUMNS. A column named explicitly but absent is an error."""
        columns = dict(columns or {})
        lower = {str(c).lower(): c for c in df.columns}
        picked: dict[str, str] = {}
        for canon, candidates in DEFAULT_COLUMNS.items():
            explicit = columns.get(canon)
            if explicit is not None:
                if explicit not in df.columns:
                    raise InvalidDataError(f"column {explicit!r} (for {canon}) not in the data; columns are: "
                                           f"{', '.join(map(str, df.columns))}")
                picked[canon] = explicit
                continue
            for cand in candidates:
                if cand in df.columns:
                    picked[canon] = cand
                    break
                if len(cand) > 1 and cand.lower() in lower:     # one-letter names match case-sensitively
                    picked[canon] = lower[cand.lower()]
                    break
        arrays = {canon: (df[col].to_numpy() if canon == "run" else _numeric(df[col], col))
                  for canon, col in picked.items()}
        for canon, col in picked.items():
            if canon != "run" and df[col].isna().any():
                if not drop_invalid:
                    raise InvalidDataError(f"column {col!r} ({canon}) has {int(df[col].isna().sum())} missing "
                                           "value(s); pass drop_invalid=True to drop those rows with a warning")
        out = cls.from_arrays(**arrays, drop_invalid=drop_invalid, flops_per_param_token=flops_per_param_token)
        out.notes.insert(0, "columns: " + ", ".join(f"{k}={v!r}" for k, v in picked.items()))
        return out


def _numeric(series, name: str) -> np.ndarray:
    try:
        return series.to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError):
        raise InvalidDataError(f"column {name!r} is not numeric (first values: {list(series.head(3))})") from None


def load_table(path: str | Path):
    """A CSV or JSON-lines file as a DataFrame (by extension: .csv/.tsv, .jsonl/.ndjson/.json)."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return pd.read_json(path, lines=True)
    if suffix == ".json":
        try:
            return pd.read_json(path, lines=True)
        except ValueError:
            return pd.read_json(path)
    if suffix == ".tsv":
        return pd.read_csv(path, sep="\t")
    return pd.read_csv(path)


def as_data(data, **columns) -> ScalingData:
    """Accept ScalingData, a DataFrame, or a mapping of canonical names to arrays."""
    if isinstance(data, ScalingData):
        return data
    if hasattr(data, "columns") and hasattr(data, "to_numpy"):
        return ScalingData.from_frame(data, columns or None)
    if isinstance(data, Mapping):
        return ScalingData.from_arrays(**data)
    raise TypeError(f"cannot use {type(data).__name__} as scaling data")
