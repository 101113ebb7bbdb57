"""Sweep results in and out as tables: export to CSV/JSONL/Parquet, and ingest runs trained elsewhere.

Ingest takes a CSV or JSONL of finished runs (for example PyTorch runs), renames its columns with a mapping
(`SRC=FIELD` or `SRC=FIELD*FACTOR`, e.g. `params_M=n_params*1e6`), checks every row before writing anything, and
adds them as 'done' rows with source 'ingest:<file>', so they are fitted alongside the sweep's own runs. Each row's
key is the hash of its original values: ingesting the same file twice adds nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from scalekit.sweep.store import ResultsStore, load_sweep_frame, open_store

FORMATS = ("csv", "jsonl", "parquet")
NUMERIC_FIELDS = ("n_params", "n_params_nonembed", "tokens", "flops", "flops_6n", "final_loss", "eval_loss",
                  "wall_time_s")


class IngestError(ValueError):
    """The table cannot be ingested; the message names the columns or rows and the fix."""


def export_sweep(sweep_dir: str | Path, fmt: str, out: str | Path | None = None, *,
                 store: str | None = None) -> Path:
    """Write the sweep's DataFrame as csv, jsonl or parquet (default `<sweep_dir>/results.<fmt>`); return the path.
    `store`: the store's URL when it is not the directory's own (see open_store)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {FORMATS}")
    if not out and "://" in str(sweep_dir):
        raise ValueError(f"exporting from a store URL needs --out PATH (there is no sweep directory to write "
                         f"results.{fmt} into)")
    df = load_sweep_frame(sweep_dir, store=store)
    path = Path(out) if out else Path(sweep_dir) / f"results.{fmt}"
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        df = df.assign(eval_curve=[json.dumps(c) if c is not None else "" for c in df["eval_curve"]])
        df.to_csv(path, index=False)
    elif fmt == "jsonl":
        with open(path, "w") as f:
            for rec in df.to_dict(orient="records"):
                f.write(json.dumps({k: _plain(v) for k, v in rec.items()}, allow_nan=False) + "\n")
    else:
        curves = [[[float(x) if x is not None else None for x in p] for p in c] if c is not None else None
                  for c in df["eval_curve"]]
        df = df.assign(eval_curve=curves)
        for col in df.columns:  # mixed-type plan/ingest columns become strings so Arrow can type them
            if df[col].dtype == object and col != "eval_curve":
                kinds = {type(v) for v in df[col] if v is not None and not (isinstance(v, float) and math.isnan(v))}
                if len(kinds) > 1:
                    df[col] = df[col].map(lambda v: None if v is None else str(v))
        df.to_parquet(path, index=False)
    return path


def _plain(v: Any) -> Any:
    """A JSON-ready value: numpy/pandas scalars to Python, NaN/NA to None."""
    if v is None or v is pd.NA:
        return None
    if hasattr(v, "item") and not isinstance(v, (list, dict)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def parse_mapping(items: Sequence[str]) -> dict[str, tuple[str, float]]:
    """`["params=n_params", "params_M=n_params*1e6"]` -> {source column: (field, factor)}."""
    out: dict[str, tuple[str, float]] = {}
    for item in items:
        src, sep, dst = item.partition("=")
        if not sep or not src or not dst:
            raise IngestError(f"bad column mapping {item!r}; write SOURCE_COLUMN=FIELD or SOURCE_COLUMN=FIELD*FACTOR")
        field, _, factor = dst.partition("*")
        try:
            out[src] = (field.strip(), float(factor) if factor else 1.0)
        except ValueError as e:
            raise IngestError(f"bad factor in column mapping {item!r}") from e
    return out


def read_table(path: str | Path) -> pd.DataFrame:
    """A CSV or JSONL file as a DataFrame."""
    p = Path(path)
    if not p.is_file():
        raise IngestError(f"no such file {str(p)!r}")
    if p.suffix in (".jsonl", ".ndjson"):
        return pd.read_json(p, lines=True)
    if p.suffix == ".json":
        return pd.read_json(p)
    return pd.read_csv(p)


def ingest_rows(df: pd.DataFrame, mapping: Mapping[str, tuple[str, float]], source: str) -> list[dict[str, Any]]:
    """Turn a table of finished runs into store rows; raise IngestError naming every problem before any write."""
    missing_src = [s for s in mapping if s not in df.columns]
    if missing_src:
        raise IngestError(f"mapped column(s) {missing_src} are not in the table; its columns are {list(df.columns)}")
    renamed = {s: f for s, (f, _) in mapping.items()}
    table = df.rename(columns=renamed)
    if "status" in table.columns:  # only finished runs are results
        keep = table["status"].astype(str).str.lower().isin(("done", "finished", "completed", "success")).to_numpy()
        df, table = df[keep], table[keep]
    for f, factor in mapping.values():
        if factor != 1.0:
            table[f] = pd.to_numeric(table[f], errors="coerce") * factor
    problems = []
    need = [("final_loss", "final_loss (or eval_loss)"), ("n_params", "n_params"), ("tokens", "tokens (or flops)")]
    if "final_loss" not in table.columns and "eval_loss" in table.columns:
        table["final_loss"] = table["eval_loss"]
    if "tokens" not in table.columns and "flops" in table.columns and "n_params" in table.columns:
        table["tokens"] = pd.to_numeric(table["flops"], errors="coerce") / (6.0 * pd.to_numeric(table["n_params"],
                                                                                              errors="coerce"))
    for col, label in need:
        if col not in table.columns:
            problems.append(f"no column for {label}: map one with --map SOURCE={col}")
    if problems:
        raise IngestError("cannot ingest: " + "; ".join(problems) + f" (the table's columns: {list(df.columns)})")
    for col in NUMERIC_FIELDS:
        if col in table.columns:
            table[col] = pd.to_numeric(table[col], errors="coerce")
    bad = table.index[table[["final_loss", "n_params", "tokens"]].isna().any(axis=1)].tolist()
    if bad:
        raise IngestError(f"{len(bad)} row(s) lack a numeric final_loss, n_params or tokens (data rows "
                          f"{[int(i) + 1 for i in bad[:10]]}{' ...' if len(bad) > 10 else ''})")
    rows = []
    for (i, orig), (_, r) in zip(df.iterrows(), table.iterrows(), strict=True):
        raw = {str(k): _plain(v) for k, v in orig.items()}
        key = hashlib.sha256(("ingest:" + json.dumps(raw, sort_keys=True, default=str)).encode()).hexdigest()
        rec = {k: _plain(v) for k, v in r.items()}
        n, d = float(rec["n_params"]), float(rec["tokens"])
        row = {"key": key, "name": str(rec.get("name") or f"{Path(source).stem}-{int(i) + 1}"),
               "n_params": int(n), "n_params_nonembed": _int(rec.get("n_params_nonembed")), "tokens": round(d),
               "flops_6n": rec.get("flops_6n") or 6.0 * n * d, "final_loss": float(rec["final_loss"]),
               "eval_loss": rec.get("eval_loss"), "wall_time_s": rec.get("wall_time_s"), "host": rec.get("host"),
               "eval_curve": None}
        row["flops"] = rec.get("flops") or row["flops_6n"]
        row["fields"] = {k: v for k, v in rec.items() if k not in row and k not in ("status", "key")}
        rows.append(row)
    return rows


def _int(v: Any) -> int | None:
    return None if v is None else int(v)


def ingest(sweep_dir: str | Path, table_path: str | Path, mapping: Sequence[str] = (),
           store: ResultsStore | None = None) -> tuple[int, int]:
    """Add finished runs from a CSV/JSONL table to the sweep; return (added, already present)."""
    rows = ingest_rows(read_table(table_path), parse_mapping(mapping), Path(table_path).name)
    store = store or open_store(sweep_dir)
    added = store.add_done(rows, source=f"ingest:{Path(table_path).name}")
    return added, len(rows) - added
