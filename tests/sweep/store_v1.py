"""A results store as scalekit wrote it at schema version 1 (before rows carried their sweep's name): the DDL is that
version's, kept here as the historical format the migration to version 2 must read."""

from __future__ import annotations

import sqlite3
from pathlib import Path

V1_SCHEMA = """
CREATE TABLE runs (
  key TEXT PRIMARY KEY, ord INTEGER NOT NULL, name TEXT NOT NULL,
  status TEXT NOT NULL CHECK ({check}),
  source TEXT NOT NULL DEFAULT 'plan', config TEXT, fields TEXT,
  n_params INTEGER, n_params_nonembed INTEGER, tokens INTEGER, flops REAL, flops_6n REAL,
  final_loss REAL, eval_loss REAL, eval_curve TEXT, wall_time_s REAL, host TEXT, summary TEXT,
  attempts INTEGER NOT NULL DEFAULT 0, error TEXT, claim_token TEXT, worker TEXT, heartbeat REAL,
  created REAL, started REAL, finished REAL);
CREATE TABLE events (
  id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, key TEXT NOT NULL, event TEXT NOT NULL,
  worker TEXT, attempt INTEGER, detail TEXT);
CREATE INDEX runs_status ON runs (status, ord);
CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT);
"""
FOUR_STATUSES = "status IN ('pending', 'running', 'done', 'failed')"  # the oldest stores: no 'diverged'


def make_v1_store(path: Path, runs: list[tuple[str, str, str]], *, user_version: int = 1,
                  check: str = "length(status) > 0") -> None:
    """A version-1 store at `path` holding `runs` as (key, name, status), each with an 'added' event.
    user_version 0 makes it unstamped (as before the version was recorded)."""
    db = sqlite3.connect(path)
    db.executescript(V1_SCHEMA.format(check=check))
    for i, (key, name, status) in enumerate(runs):
        db.execute("INSERT INTO runs (key, ord, name, status, config, fields, attempts, created, final_loss) "
                   "VALUES (?, ?, ?, ?, '{}', '{\"model\": \"m\"}', ?, 1.0, ?)",
                   (key, i, name, status, int(status != "pending"), 2.5 if status == "done" else None))
        db.execute("INSERT INTO events (time, key, event, detail) VALUES (1.0, ?, 'added', ?)", (key, name))
    db.execute("INSERT INTO meta (k, v) VALUES ('schema_version', '1')")
    db.execute(f"PRAGMA user_version = {user_version}")
    db.commit()
    db.close()
