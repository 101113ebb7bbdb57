"""Shared text/HTML/JSON rendering of fit results (parameters with intervals)."""

from __future__ import annotations

import html
import math
from typing import Iterable

import numpy as np


def fmt(v: float) -> str:
    if v is None:
        return "-"
    v = float(v)
    if not math.isfinite(v):
        return str(v)
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return f"{v:.5g}"
    return f"{v:.6g}"


def header(level: float | None, with_intervals: bool) -> tuple[str, ...]:
    return ("param", "value") + ((f"{round((level or 0) * 100):g}% interval",) if with_intervals else ())


def param_rows(params: dict[str, float], intervals: dict[str, tuple[float, float]]) -> list[tuple[str, str, str]]:
    rows = []
    for k, v in params.items():
        iv = intervals.get(k)
        rows.append((k, fmt(v)) + ((f"[{fmt(iv[0])}, {fmt(iv[1])}]" if iv is not None else "",) if intervals else ()))
    return rows


def text_table(rows: Iterable[tuple[str, ...]], header: tuple[str, ...]) -> str:
    rows = [header] + [(tuple(r) + ("",) * len(header))[: len(header)] for r in rows]   # short rows padded
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def html_table(title: str, rows: Iterable[tuple[str, ...]], header: tuple[str, ...], footer: str = "") -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    foot = f"<p><small>{html.escape(footer)}</small></p>" if footer else ""
    return (f"<div><b>{html.escape(title)}</b><table><thead><tr>{h}</tr></thead>"
            f"<tbody>{body}</tbody></table>{foot}</div>")


def jsonable(v):
    """Plain Python types for json.dumps: numpy scalars/arrays, tuples, non-finite floats as None."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return jsonable(v.tolist())
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, (np.bool_,)):
        return bool(v)
    return v


def percentile_interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    lo = (1.0 - level) / 2.0
    s = np.asarray(samples, np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return (float("nan"), float("nan"))
    return float(np.quantile(s, lo)), float(np.quantile(s, 1.0 - lo))
