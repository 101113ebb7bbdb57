"""`scalekit sweep migrate SRC DST`: copy one sweep's runs and audit events between stores (SQLite <-> PostgreSQL).

SRC is opened read-only. Each run of SRC whose key DST lacks is copied with every column (status, attempts, results,
summary, timestamps) and all its events; a run DST already has is left alone: identical, it is counted as present;
different, it is reported as a conflict and not overwritten. So running the same migration twice copies nothing the
second time, and a sweep that has moved on in DST is never rolled back. Runs still 'running' in SRC are copied as
they are and named, since their results will land in SRC, not DST.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from scalekit.sweep.store import is_url, open_store, sweep_in_url
from scalekit.sweep.store_sql import RUN_COLUMNS, SQLStore


@dataclasses.dataclass
class MigrateReport:
    """What a migration did."""

    src: str
    dst: str
    sweep: str
    runs: int  # runs in SRC
    copied: int  # runs added to DST
    events: int  # events added to DST
    present: int  # runs DST already had, identical
    conflicts: list[str]  # names of runs DST has with other values (left as DST has them)
    running: list[str]  # names of runs that were running in SRC

    def lines(self) -> list[str]:
        out = [f"migrated sweep {self.sweep!r} from {self.src} to {self.dst}: {self.runs} runs, {self.copied} copied "
               f"with {self.events} events, {self.present} already there"]
        if self.running:
            out.append(f"  {len(self.running)} run(s) were running in the source; their results will be recorded "
                       f"there, not here: {', '.join(self.running[:10])}")
        if self.conflicts:
            out.append(f"  {len(self.conflicts)} run(s) differ in the destination and were left as they are there: "
                       f"{', '.join(self.conflicts[:10])}")
        return out


def _comparable(row: dict) -> tuple:
    return tuple(row.get(c) for c in RUN_COLUMNS if c != "sweep")


def migrate(src: str | Path, dst: str | Path, *, sweep: str | None = None) -> MigrateReport:
    """Copy the sweep at `src` (a directory or URL) into `dst` (created if missing) under `sweep` (default: DST's
    ?sweep=, else its name in SRC). Idempotent; see the module doc."""
    source = open_store(src, create=False, readonly=True)
    try:
        name = sweep or (sweep_in_url(str(dst)) if is_url(dst) else None) or source.sweep
        target = open_store(dst, sweep=name)
        try:
            if not isinstance(source, SQLStore) or not isinstance(target, SQLStore):
                raise TypeError("migrate copies between SQL stores")
            runs, events = source.dump()
            have = {r["key"]: r for r in target.dump()[0]}
            copied, n_events = target.load([r for r in runs if r["key"] not in have], events)
            same = [r for r in runs if r["key"] in have and _comparable(r) == _comparable(have[r["key"]])]
            conflicts = [r["name"] for r in runs if r["key"] in have and _comparable(r) != _comparable(have[r["key"]])]
            return MigrateReport(src=source.location, dst=target.location, sweep=target.sweep, runs=len(runs),
                                 copied=copied, events=n_events, present=len(same), conflicts=conflicts,
                                 running=[r["name"] for r in runs if r["status"] == "running"])
        finally:
            target.close()
    finally:
        source.close()
