"""The SQLite results store: `<sweep_dir>/results.db`, WAL mode, one short `BEGIN IMMEDIATE` transaction per change.

`BEGIN IMMEDIATE` takes the write lock up front, so a claim's read-then-update is atomic across processes.
Opening checks the file (`check_store`: the SQLite header, `PRAGMA quick_check`, the tables and the schema version
in `PRAGMA user_version`): a damaged file raises StoreDamagedError, whose message points to `scalekit sweep repair
DIR` (scalekit.sweep.repair), which rebuilds the store from the run directories. Reads never write: they use
read-only connections (`file:...?mode=ro`), so a store on a read-only file or directory can still be read.

Schema versions: 1 (before several sweeps could share a database) had no `sweep` column, no `op` on events, and, in
the oldest stores, a CHECK that admits only four statuses. Opening a version-1 (or unstamped) store for writing
migrates it to version 2 in one transaction; read-only opens read it as it is. A newer version is refused.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from scalekit.sweep.store import SCHEMA_VERSION, SWEEP_NAME, StoreDamagedError, StoreError, check_sweep_name
from scalekit.sweep.store_sql import EVENT_COLUMNS, RUN_COLUMNS, SQLStore, new_op

T = TypeVar("T")
SQLITE_HEADER = b"SQLite format 3\x00"

SCHEMA = """
CREATE TABLE runs (
  sweep TEXT NOT NULL, key TEXT NOT NULL, ord INTEGER NOT NULL, name TEXT NOT NULL,
  status TEXT NOT NULL CHECK (length(status) > 0),
  source TEXT NOT NULL DEFAULT 'plan', config TEXT, fields TEXT,
  n_params INTEGER, n_params_nonembed INTEGER, tokens INTEGER, flops REAL, flops_6n REAL,
  final_loss REAL, eval_loss REAL, eval_curve TEXT, wall_time_s REAL, host TEXT, summary TEXT,
  attempts INTEGER NOT NULL DEFAULT 0, error TEXT, claim_token TEXT, worker TEXT, heartbeat REAL,
  created REAL, started REAL, finished REAL, PRIMARY KEY (sweep, key));
CREATE TABLE events (
  id INTEGER PRIMARY KEY AUTOINCREMENT, sweep TEXT NOT NULL, time REAL NOT NULL, key TEXT NOT NULL,
  event TEXT NOT NULL, worker TEXT, attempt INTEGER, detail TEXT, op TEXT);
CREATE INDEX runs_status ON runs (sweep, status, ord);
CREATE INDEX events_key ON events (sweep, key);
CREATE INDEX events_op ON events (op);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT);
"""
_V1_RUNS = tuple(c for c in RUN_COLUMNS if c != "sweep")
_V1_EVENTS = tuple(c for c in EVENT_COLUMNS if c not in ("sweep", "op"))
TABLES = {1: {"runs": _V1_RUNS, "events": _V1_EVENTS, "meta": ("k", "v")},
          2: {"runs": RUN_COLUMNS, "events": EVENT_COLUMNS, "meta": ("k", "v")}}


def _ro_uri(path: Path, immutable: bool = False) -> str:
    """The read-only SQLite URI of a file (immutable: no -shm/-wal needed, for a read-only directory)."""
    return f"file:{quote(str(path.resolve()))}?mode=ro" + ("&immutable=1" if immutable else "")


def check_store(path: str | Path, timeout_s: float = 60.0) -> int | None:
    """Check a store file without writing to it: the schema version it holds (0: unstamped), or None if it is new.

    New means missing, or an SQLite file with no tables at all. Raises StoreDamagedError for a 0-byte file, a file
    that is not SQLite, one that fails `PRAGMA quick_check`, tables or columns that are not a results store's, or a
    schema version newer than this code's.
    """
    path = Path(path)
    if not path.exists():
        return None
    if path.is_dir():
        raise StoreError(f"results store {str(path)!r} is a directory, not an SQLite file")
    size = path.stat().st_size
    if size == 0:
        raise StoreDamagedError(path, "it is an empty (0-byte) file, not an empty sweep")
    with open(path, "rb") as f:
        head = f.read(len(SQLITE_HEADER))
    if head != SQLITE_HEADER:
        what = "shorter than an SQLite header" if len(head) < len(SQLITE_HEADER) else f"it starts with {head[:8]!r}"
        raise StoreDamagedError(path, f"not an SQLite database ({size} bytes, {what})")
    try:
        db = _connect_ro(path, timeout_s)
        try:
            return _check_schema(db, path)
        finally:
            db.close()
    except sqlite3.DatabaseError as e:
        raise StoreDamagedError(path, f"SQLite cannot read it ({e})") from e


def _check_schema(db: sqlite3.Connection, path: Path) -> int | None:
    problems = [r[0] for r in db.execute("PRAGMA quick_check(5)").fetchall()]
    if problems != ["ok"]:
        raise StoreDamagedError(path, "quick_check failed: " + " | ".join(map(str, problems)).replace("\n", " "))
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise StoreError(f"results store {str(path)!r} has schema version {version}, newer than this "
                         f"scalekit's {SCHEMA_VERSION}: upgrade scalekit to read it")
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    tables.discard("sqlite_sequence")
    if not tables and version == 0:
        return None
    expected = TABLES[max(version, 1)]
    missing = sorted(set(expected) - tables)
    if missing:
        raise StoreDamagedError(path, f"wrong schema: tables {sorted(tables)} lack {missing}")
    for table, cols in expected.items():
        have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
        lack = [c for c in cols if c not in have]
        if lack:
            raise StoreDamagedError(path, f"wrong schema: table {table!r} lacks columns {lack}")
    if version == 0:
        row = db.execute("SELECT v FROM meta WHERE k = 'schema_version'").fetchone()
        if row is not None and str(row[0]) != "1":
            raise StoreDamagedError(path, f"unknown schema_version {row[0]!r} in its meta table")
    return version


def _connect_ro(path: Path, timeout_s: float) -> sqlite3.Connection:
    """A read-only connection; in a directory we cannot write (no -shm possible) the file is opened immutable."""
    db = sqlite3.connect(_ro_uri(path), uri=True, timeout=timeout_s, isolation_level=None)
    try:
        db.execute("PRAGMA schema_version").fetchone()  # opens the file now, so a failure shows here
    except sqlite3.OperationalError:
        db.close()
        if os.access(path.parent, os.W_OK):
            raise
        wal = Path(f"{path}-wal")
        if wal.exists() and wal.stat().st_size > 0:  # immutable would ignore the WAL: stale results, silently
            raise StoreError(f"results store {str(path)!r} has a write-ahead log (-wal) but no -shm, in a directory "
                             "this user cannot write: copy the sweep directory somewhere writable to read it") from None
        db = sqlite3.connect(_ro_uri(path, immutable=True), uri=True, timeout=timeout_s, isolation_level=None)
    db.row_factory = sqlite3.Row
    db.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
    return db


def _create(db: sqlite3.Connection, sweep: str) -> None:
    for stmt in filter(str.strip, SCHEMA.split(";")):
        db.execute(stmt)
    _stamp(db, sweep)


def _stamp(db: sqlite3.Connection, sweep: str) -> None:
    db.execute("INSERT INTO meta (k, v) VALUES ('schema_version', ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
               (str(SCHEMA_VERSION),))
    db.execute("INSERT INTO meta (k, v) VALUES ('sweep', ?) ON CONFLICT (k) DO NOTHING", (sweep,))
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _migrate_1_to_2(db: sqlite3.Connection, sweep: str) -> None:
    """Version 1 -> 2: add the sweep column (runs keyed by (sweep, key)), events' op, the events indexes, and drop
    the oldest stores' four-status CHECK. Tables are rebuilt (SQLite cannot alter a primary key), rows copied."""
    db.execute("ALTER TABLE runs RENAME TO runs_v1")
    db.execute("ALTER TABLE events RENAME TO events_v1")
    db.execute("DROP INDEX IF EXISTS runs_status")
    for stmt in filter(str.strip, SCHEMA.split(";")):
        db.execute(stmt)
    runs, events = ", ".join(_V1_RUNS), ", ".join(_V1_EVENTS)
    db.execute(f"INSERT INTO runs (sweep, {runs}) SELECT ?, {runs} FROM runs_v1", (sweep,))
    db.execute(f"INSERT INTO events (sweep, {events}) SELECT ?, {events} FROM events_v1", (sweep,))
    db.execute("DROP TABLE runs_v1")
    db.execute("DROP TABLE events_v1")
    _stamp(db, sweep)


class SQLiteStore(SQLStore):
    """The ResultsStore on one SQLite file (WAL mode, one short transaction per change).

    Opening checks the file (`check_store`) and raises StoreDamagedError when it is damaged. A missing store is
    created when `create` (the default); an older schema is migrated unless `readonly`. With `create=False` the
    file must exist. `readonly` refuses every write. Reads always use read-only connections. The sweep's name is
    its directory's, or `sweep` when the store is created (kept in the store's meta table, so it survives renaming
    the directory).
    """

    def __init__(self, path: str | Path, timeout_s: float = 60.0, *, create: bool = True, readonly: bool = False,
                 sweep: str | None = None):
        self.path = Path(path)
        self.location = str(self.path)
        self.timeout_s = timeout_s
        self.readonly = readonly
        version = check_store(self.path, timeout_s)
        if version is None and (readonly or not create):
            raise FileNotFoundError(f"no sweep results at {str(self.path)!r} (run `scalekit sweep run PLAN "
                                    f"--workdir {self.path.parent}` first)")
        default_name = self.path.resolve().parent.name
        self.sweep = check_sweep_name(sweep) if sweep else (default_name if SWEEP_NAME.fullmatch(default_name)
                                                             else "sweep")
        if version == SCHEMA_VERSION or (readonly and version is not None):
            self.scoped = version == SCHEMA_VERSION
            if self.scoped:
                self.sweep = self._query("SELECT v FROM meta WHERE k = 'sweep'")[0]["v"]
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._tx() as db:
                if version is None:
                    _create(db, self.sweep)
                else:
                    _migrate_1_to_2(db, self.sweep)
        except (OSError, sqlite3.OperationalError) as e:
            what = "create" if version is None else f"migrate (schema version {version} to {SCHEMA_VERSION})"
            raise StoreError(f"cannot {what} the results store at {str(self.path)!r}: "
                             f"{getattr(e, 'strerror', None) or e}") from e

    def _connect_read(self) -> sqlite3.Connection:
        """A read-only connection: reads never write, so a read-only file or directory can still be read."""
        try:
            return _connect_ro(self.path, self.timeout_s)
        except sqlite3.DatabaseError as e:
            raise StoreDamagedError(self.path, f"SQLite cannot read it ({e})") from e

    def _connect(self) -> sqlite3.Connection:
        if self.readonly:
            raise StoreError(f"results store {str(self.path)!r} was opened read-only; open it with "
                             "open_store(DIR) to change it")
        db = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute(f"PRAGMA busy_timeout = {int(self.timeout_s * 1000)}")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        return db

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE takes the write lock up front, so read-then-update is atomic)."""
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    def _run(self, fn: Callable[[Any, str], T], recover: Callable[[Any, str], Any] | None = None) -> T:
        with self._tx() as db:  # a local file does not drop connections: nothing to retry or recover
            return fn(db, new_op())

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        db = self._connect_read()
        try:
            return [dict(r) for r in db.execute(sql, params)]
        finally:
            db.close()
