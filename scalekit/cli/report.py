"""`scalekit report DIR`: fit a sweep every way and write a self-contained HTML report, its PNGs and fits.json.

    scalekit report runs/demo                       # -> runs/demo/report/report.html, fits.json, *.png
    scalekit report runs/demo --out /tmp/r --bootstrap 500 --level 0.9
"""

from __future__ import annotations

import argparse
import math
import os
import sqlite3
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scalekit report", description="Fit a sweep (approaches 1, 2, 3 of Chinchilla, "
                                "extrapolation check, compute-optimal allocation) and write an HTML report.")
    p.add_argument("sweep_dir", help="a sweep directory (results.db), e.g. runs/demo")
    p.add_argument("--store", default="", metavar="URL", help="the sweep's results store when it is not "
                   "SWEEP_DIR/results.db: postgresql://user@host:port/db?sweep=NAME (SWEEP_DIR then only holds the "
                   "report)")
    p.add_argument("--out", default=None, help="output directory (default: SWEEP_DIR/report)")
    p.add_argument("--bootstrap", type=int, default=200, metavar="K", help="bootstrap resamples for intervals")
    p.add_argument("--level", type=float, default=0.95, help="interval level (default 0.95)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--title", default="scalekit scaling report")
    p.add_argument("--quiet", action="store_true", help="print only the paths written")
    return p


def _check(args: argparse.Namespace) -> str | None:
    """The first problem with the arguments, as one line naming the flag and the fix; None when they are fine."""
    sweep = Path(args.sweep_dir)
    if not sweep.exists() and not args.store:  # with --store, SWEEP_DIR only receives the report
        return (f"no sweep results at {sweep}: no such directory (run `scalekit sweep run PLAN --workdir {sweep}` "
                "first)")
    if sweep.exists() and not sweep.is_dir():
        return f"{sweep} is a file; give a sweep directory (the one holding results.db)"
    if args.bootstrap < 0:
        return f"--bootstrap {args.bootstrap}: must be >= 0 (0 = no intervals)"
    if not (math.isfinite(args.level) and 0 < args.level < 1):
        return f"--level {args.level}: must lie strictly between 0 and 1 (e.g. 0.95)"
    out = Path(args.out) if args.out else sweep / "report"
    if out.exists() and not out.is_dir():
        return f"--out {out}: is a file; give a directory for the report"
    probe = out
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        return f"--out {out}: {probe} is a file, so the directory cannot be created; give another path"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"--out {out}: {probe} is not writable; give a directory you can write to"
    return None


def main(argv: list[str]) -> int:
    """Entry point of `scalekit report`; exit code 0 on success, 2 for a missing or empty sweep or bad arguments."""
    args = _parser().parse_args(argv)
    problem = _check(args)
    if problem:
        print(f"scalekit report: error: {problem}", file=sys.stderr)
        return 2
    os.environ.setdefault("MPLBACKEND", "Agg")
    cache = Path(args.sweep_dir) / "xla_cache"
    if cache.is_dir() and "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # the sweep's cache: refits compile fast
        os.environ["JAX_COMPILATION_CACHE_DIR"] = str(cache.resolve())
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    from scalekit.analysis.report import write_report
    from scalekit.analysis.sweepdata import load_sweep

    sweep = Path(args.sweep_dir)
    try:
        results = load_sweep(sweep, store=args.store or None)
    except (OSError, ValueError, sqlite3.Error) as err:  # missing/unreadable/damaged store: one line
        print(f"scalekit report: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    if len(results) < 3:
        print(f"scalekit report: error: {sweep} has {len(results)} finished run(s) with a loss; a report needs at "
              "least 3 (run the sweep first: scalekit sweep run PLAN --workdir DIR)", file=sys.stderr)
        return 2
    try:
        rep = write_report(results, args.out, bootstrap=args.bootstrap, level=args.level, seed=args.seed,
                           title=args.title)
    except OSError as err:
        where = err.filename or args.out or sweep / "report"
        print(f"scalekit report: error: cannot write the report to {where} ({err.strerror or err}); give --out a "
              "writable directory", file=sys.stderr)
        return 2
    if not args.quiet:
        print(rep.fits.summary())
        print()
    print(f"report: {rep.html}")
    print(f"fits:   {rep.json}")
    print(f"plots:  {', '.join(str(p.name) for p in rep.pngs.values())} in {rep.html.parent}")
    return 0
