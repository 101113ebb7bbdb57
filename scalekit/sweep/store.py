"""The results store: one row per run, keyed by the hash of its config, safe under concurrent drivers.

`ResultsStore` is the interface every executor and CLI command uses; `SQLiteStore` implements it on
`<sweep_dir>/results.db` in WAL mode. Every state change is one transaction; a claim is `BEGIN IMMEDIATE` + a
conditional UPDATE, so two drivers never claim the same run. A claimed run is 'running' with a claim token and a
heartbeat the worker refreshes while it executes; a 'running' row whose heartbeat is older than `stale_after`
seconds belongs to a dead driver and is reclaimed. A 'done' row is never claimed again. An `events` table logs each
claim, result and reclaim, so every execution of every run can be audited.

Another backend (for example a PostgreSQL shared by a team: `SELECT ... FOR UPDATE SKIP LOCKED`) implements the
same `ResultsStore` methods and is returned by `open_store` for its URL. SQLite's locking needs a local file system
(not NFS) for the WAL; that is the case such a backend is for.

Opening a store checks it (`PRAGMA quick_check`, the SQLite header, the tables and the schema version in
`PRAGMA user_version`): a damaged file raises `StoreDamagedError`, whose message points to `scalekit sweep repair
DIR` (scalekit.sweep.repair), which rebuilds the store from the run directories. Reads never write: they use
read-only connections (`file:...?mode=ro`), so a store on a read-only file or directory can still be read.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import json
import math
import os
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

STATUSES = ("pending", "running", "done", "failed", "diverged")   # diverged: non-finite loss; never retried
SCHEMA_VERSION = 1  # PRAGMA user_version of a store this code writes; older unstamped stores are stamped on open
SQLITE_HEADER = b"SQLite format 3\x00"
RESULT_FIELDS = ("final_loss", "eval_loss", "eval_curve", "tokens", "flops", "flops_6n", "n_params",
                 "n_params_nonembed", "wall_time_s", "host")
FRAME_COLUMNS = ("key", "name", "status", "n_params", "n_params_nonembed", "tokens", "flops", "flops_6n",
                 "final_loss", "eval_loss", "eval_curve", "wall_time_s", "host", "attempts", "error", "source")


@dataclasses.dataclass(frozen=True)
class Claim:
    """A run a worker has claimed: it alone may execute it while it keeps the heartbeat fresh."""

    key: str
    name: str
    token: str
    attempt: int
    config: dict[str, Any]
    reclaimed: bool  # taken over from a dead driver (stale heartbeat)
    retry: bool  # a retry of a failed run


class StoreError(ValueError):
    """The results store or its location cannot be used; the one-line message says what is wrong and the fix."""


class StoreDamagedError(StoreError):
    """The results store file is damaged (not SQLite, truncated, failing quick_check, or another schema)."""

    def __init__(self, path: str | Path, problem: str):
        self.path, self.problem = Path(path), problem
        sweep_dir = self.path.parent if self.path.name == "results.db" else self.path
        super().__init__(f"results store {str(self.path)!r} is damaged: {problem}; rebuild it from the run "
                         f"directories with `scalekit sweep repair {sweep_dir}` (the damaged file is kept aside)")


class ResultsStore(abc.ABC):
    """What executors and the CLI need from a results store (the seam for another backend)."""

    @abc.abstractmethod
    def add_runs(self, rows: Iterable[dict[str, Any]]) -> int:
        """Insert planned runs as 'pending' unless their key is already stored; return how many were new."""

    @abc.abstractmethod
    def claim(self, worker: str, *, keys: Sequence[str] | None = None, max_attempts: int = 3,
              stale_after: float = 120.0) -> Claim | None:
        """Atomically take one runnable run (pending, stale running, or failed below max_attempts), or None."""

    @abc.abstractmethod
    def heartbeat(self, claim: Claim) -> bool:
        """Refresh the claim's heartbeat; False when the claim was lost (reclaimed by another driver)."""

    @abc.abstractmethod
    def finish(self, claim: Claim, result: dict[str, Any], worker: str) -> bool:
        """Record a successful result in one transaction; False when the run was already done (result dropped)."""

    @abc.abstractmethod
    def fail(self, claim: Claim, error: str, worker: str) -> None:
        """Record a failed attempt with its error text."""

    @abc.abstractmethod
    def diverge(self, claim: Claim, result: dict[str, Any], error: str, worker: str) -> bool:
        """Record a run that diverged (its summary kept, never retried, skipped by fits); False when the claim was
        lost."""

    @abc.abstractmethod
    def release(self, claim: Claim, worker: str) -> None:
        """Give back a claim without counting the attempt (the driver was interrupted, not the run)."""

    @abc.abstractmethod
    def add_done(self, rows: Iterable[dict[str, Any]], source: str) -> int:
        """Insert finished results from elsewhere (ingest); return how many were new."""

    @abc.abstractmethod
    def rows(self) -> list[dict[str, Any]]:
        """Every run as a dict (JSON columns decoded), in plan order."""

    @abc.abstractmethod
    def events(self, key: str | None = None) -> list[dict[str, Any]]:
        """The audit log, oldest first."""

    @abc.abstractmethod
    def reset_failed(self, keys: Sequence[str] | None = None) -> int:
        """Make failed runs retryable again (attempts back to 0); return how many."""

    def counts(self, keys: Sequence[str] | None = None) -> dict[str, int]:
        """Number of runs per status (restricted to `keys` when given)."""
        wanted = set(keys) if keys is not None else None
        out = {s: 0 for s in STATUSES}
        for r in self.rows():
            if wanted is None or r["key"] in wanted:
                out[r["status"]] = out.get(r["status"], 0) + 1
        return out


def _now() -> float:
    return time.time()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
  key TEXT PRIMARY KEY, ord INTEGER NOT NULL, name TEXT NOT NULL,
  status TEXT NOT NULL CHECK (length(status) > 0),
  source TEXT NOT NULL DEFAULT 'plan', config TEXT, fields TEXT,
  n_params INTEGER, n_params_nonembed INTEGER, tokens INTEGER, flops REAL, flops_6n REAL,
  final_loss REAL, eval_loss REAL, eval_curve TEXT, wall_time_s REAL, host TEXT, summary TEXT,
  attempts INTEGER NOT NULL DEFAULT 0, error TEXT, claim_token TEXT, worker TEXT, heartbeat REAL,
  created REAL, started REAL, finished REAL);
CREATE TABLE IF NOT EXISTS events (
  id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, key TEXT NOT NULL, event TEXT NOT NULL,
  worker TEXT, attempt INTEGER, detail TEXT);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status, ord);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT);
"""
_JSON_COLUMNS = ("config", "fields", "eval_curve", "summary")
_TABLES = {"runs": ("key", "ord", "name", "status", "source", "config", "fields", "n_params", "n_params_nonembed",
                    "tokens", "flops", "flops_6n", "final_loss", "eval_loss", "eval_curve", "wall_time_s", "host",
                    "summary", "attempts", "error", "claim_token", "worker", "heartbeat", "created", "started",
                    "finished"),
           "events": ("id", "time", "key", "event", "worker", "attempt", "detail"),
           "meta": ("k", "v")}


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
            problems = [r[0] for r in db.execute("PRAGMA quick_check(5)").fetchall()]
            if problems != ["ok"]:
                raise StoreDamagedError(path, "quick_check failed: " + " | ".join(map(str, problems)).replace(
                    "\n", " "))
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise StoreError(f"results store {str(path)!r} has schema version {version}, newer than this "
                                 f"scalekit's {SCHEMA_VERSION}: upgrade scalekit to read it")
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            tables.discard("sqlite_sequence")
            if not tables and version == 0:
                return None
            missing = sorted(set(_TABLES) - tables)
            if missing:
                raise StoreDamagedError(path, f"wrong schema: tables {sorted(tables)} lack {missing}")
            for table, cols in _TABLES.items():
                have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
                lack = [c for c in cols if c not in have]
                if lack:
                    raise StoreDamagedError(path, f"wrong schema: table {table!r} lacks columns {lack}")
            if version == 0:
                row = db.execute("SELECT v FROM meta WHERE k = 'schema_version'").fetchone()
                if row is not None and str(row[0]) != "1":
                    raise StoreDamagedError(path, f"unknown schema_version {row[0]!r} in its meta table")
        finally:
            db.close()
    except sqlite3.DatabaseError as e:
        raise StoreDamagedError(path, f"SQLite cannot read it ({e})") from e
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


def _clean(x: Any) -> Any:
    """Replace non-finite floats (NaN, inf) with None so the JSON and SQL stay standard."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    return x


def _dumps(x: Any) -> str | None:
    return None if x is None else json.dumps(_clean(x), sort_keys=True, allow_nan=False)


class SQLiteStore(ResultsStore):
    """The ResultsStore on one SQLite file (WAL mode, one short transaction per change).

    Opening checks the file (`check_store`) and raises StoreDamagedError when it is damaged. With `create` (the
    default) a missing store is created and an unstamped one stamped with SCHEMA_VERSION; with `create=False` the
    file must exist and opening writes nothing. `readonly` refuses every write. Reads always use read-only
    connections.
    """

    def __init__(self, path: str | Path, timeout_s: float = 60.0, *, create: bool = True, readonly: bool = False):
        self.path = Path(path)
        self.timeout_s = timeout_s
        self.readonly = readonly
        version = check_store(self.path, timeout_s)
        if version is None and (readonly or not create):
            raise FileNotFoundError(f"no sweep results at {str(self.path)!r} (run `scalekit sweep run PLAN "
                                    f"--workdir {self.path.parent}` first)")
        if version == SCHEMA_VERSION or readonly or not create:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._tx() as db:
                for stmt in filter(str.strip, _SCHEMA.split(";")):
                    db.execute(stmt)
                db.execute("INSERT OR IGNORE INTO meta (k, v) VALUES ('schema_version', '1')")
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except (OSError, sqlite3.OperationalError) as e:
            raise StoreError(f"cannot {'create' if version is None else 'stamp'} the results store at "
                             f"{str(self.path)!r}: {getattr(e, 'strerror', None) or e}") from e

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

    @staticmethod
    def _event(db: sqlite3.Connection, key: str, event: str, worker: str | None = None, attempt: int | None = None,
               detail: str | None = None) -> None:
        db.execute("INSERT INTO events (time, key, event, worker, attempt, detail) VALUES (?, ?, ?, ?, ?, ?)",
                   (_now(), key, event, worker, attempt, detail))

    def add_runs(self, rows: Iterable[dict[str, Any]]) -> int:
        new = 0
        with self._tx() as db:
            ord0 = db.execute("SELECT COALESCE(MAX(ord), -1) + 1 FROM runs").fetchone()[0]
            for i, r in enumerate(rows):
                cur = db.execute(
                    "INSERT OR IGNORE INTO runs (key, ord, name, status, source, config, fields, n_params, "
                    "n_params_nonembed, tokens, flops, flops_6n, created) "
                    "VALUES (?, ?, ?, 'pending', 'plan', ?, ?, ?, ?, ?, ?, ?, ?)",
                    (r["key"], ord0 + i, r["name"], _dumps(r["config"]), _dumps(r.get("fields", {})),
                     r.get("n_params"), r.get("n_params_nonembed"), r.get("tokens"), r.get("flops"),
                     r.get("flops_6n"), _now()))
                if cur.rowcount:
                    new += 1
                    self._event(db, r["key"], "added", detail=r["name"])
        return new

    def claim(self, worker: str, *, keys: Sequence[str] | None = None, max_attempts: int = 3,
              stale_after: float = 120.0) -> Claim | None:
        now = _now()
        where = ("(status = 'pending' OR (status = 'running' AND heartbeat < ?) "
                 "OR (status = 'failed' AND attempts < ?))")
        args: list[Any] = [now - stale_after, max_attempts]
        with self._tx() as db:
            # A dead driver's run that has used up its attempts becomes 'failed' rather than looping forever.
            for row in db.execute("SELECT key, attempts FROM runs WHERE status = 'running' AND heartbeat < ? "
                                  "AND attempts >= ?", (now - stale_after, max_attempts)).fetchall():
                db.execute("UPDATE runs SET status = 'failed', claim_token = NULL, finished = ?, error = "
                           "COALESCE(error || '\n', '') || 'driver lost (heartbeat stale) on the last attempt' "
                           "WHERE key = ?", (now, row["key"]))
                self._event(db, row["key"], "lost", worker, row["attempts"], "stale heartbeat, no attempts left")
            rows = db.execute(f"SELECT key, status FROM runs WHERE {where} ORDER BY "
                              "CASE status WHEN 'pending' THEN 0 WHEN 'running' THEN 1 ELSE 2 END, ord",
                              args).fetchall()
            if keys is not None:
                wanted = set(keys)
                rows = [r for r in rows if r["key"] in wanted]
            if not rows:
                return None
            key, old_status = rows[0]["key"], rows[0]["status"]
            token = uuid.uuid4().hex
            row = db.execute("UPDATE runs SET status = 'running', claim_token = ?, worker = ?, heartbeat = ?, "
                             "started = ?, attempts = attempts + 1 WHERE key = ? RETURNING name, attempts, config",
                             (token, worker, now, now, key)).fetchone()
            event = {"pending": "claimed", "running": "reclaimed", "failed": "retry"}[old_status]
            self._event(db, key, event, worker, row["attempts"])
        return Claim(key=key, name=row["name"], token=token, attempt=row["attempts"],
                     config=json.loads(row["config"] or "{}"), reclaimed=old_status == "running",
                     retry=old_status == "failed")

    def heartbeat(self, claim: Claim) -> bool:
        with self._tx() as db:
            cur = db.execute("UPDATE runs SET heartbeat = ? WHERE key = ? AND claim_token = ? AND status = 'running'",
                             (_now(), claim.key, claim.token))
            return cur.rowcount == 1

    def finish(self, claim: Claim, result: dict[str, Any], worker: str) -> bool:
        r = {k: result.get(k) for k in RESULT_FIELDS}
        with self._tx() as db:
            cur = db.execute(
                "UPDATE runs SET status = 'done', claim_token = NULL, error = NULL, finished = ?, "
                "final_loss = ?, eval_loss = ?, eval_curve = ?, wall_time_s = ?, host = ?, summary = ?, "
                "tokens = COALESCE(?, tokens), flops = COALESCE(?, flops), flops_6n = COALESCE(?, flops_6n), "
                "n_params = COALESCE(?, n_params), n_params_nonembed = COALESCE(?, n_params_nonembed) "
                "WHERE key = ? AND status != 'done'",
                (_now(), _clean(r["final_loss"]), _clean(r["eval_loss"]), _dumps(r["eval_curve"]),
                 r["wall_time_s"], r["host"], _dumps(result), r["tokens"], r["flops"], r["flops_6n"],
                 r["n_params"], r["n_params_nonembed"], claim.key))
            ok = cur.rowcount == 1
            self._event(db, claim.key, "done" if ok else "duplicate_dropped", worker, claim.attempt)
        return ok

    def fail(self, claim: Claim, error: str, worker: str) -> None:
        with self._tx() as db:
            cur = db.execute("UPDATE runs SET status = 'failed', claim_token = NULL, error = ?, finished = ? "
                             "WHERE key = ? AND claim_token = ? AND status = 'running'",
                             (error, _now(), claim.key, claim.token))
            self._event(db, claim.key, "failed" if cur.rowcount else "failed_after_lost", worker, claim.attempt,
                        error[-500:])

    def diverge(self, claim: Claim, result: dict[str, Any], error: str, worker: str) -> bool:
        try:
            with self._tx() as db:
                cur = db.execute("UPDATE runs SET status = 'diverged', claim_token = NULL, error = ?, finished = ?, "
                                 "summary = ? WHERE key = ? AND claim_token = ? AND status = 'running'",
                                 (error, _now(), _dumps(result), claim.key, claim.token))
                ok = cur.rowcount == 1
                self._event(db, claim.key, "diverged" if ok else "diverged_after_lost", worker, claim.attempt,
                            error[-500:])
            return ok
        except sqlite3.IntegrityError:     # a store made before 'diverged' existed (its CHECK lists 4 statuses)
            self.fail(claim, error, worker)
            return True

    def release(self, claim: Claim, worker: str) -> None:
        with self._tx() as db:
            cur = db.execute("UPDATE runs SET status = ?, attempts = MAX(attempts - 1, 0), claim_token = NULL "
                             "WHERE key = ? AND claim_token = ? AND status = 'running'",
                             ("failed" if claim.retry else "pending", claim.key, claim.token))
            if cur.rowcount:
                self._event(db, claim.key, "released", worker, claim.attempt)

    def add_done(self, rows: Iterable[dict[str, Any]], source: str) -> int:
        new = 0
        with self._tx() as db:
            ord0 = db.execute("SELECT COALESCE(MAX(ord), -1) + 1 FROM runs").fetchone()[0]
            for i, r in enumerate(rows):
                cur = db.execute(
                    "INSERT OR IGNORE INTO runs (key, ord, name, status, source, fields, n_params, n_params_nonembed, "
                    "tokens, flops, flops_6n, final_loss, eval_loss, eval_curve, wall_time_s, host, attempts, "
                    "created, finished) VALUES (?, ?, ?, 'done', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?)",
                    (r["key"], ord0 + i, r["name"], source, _dumps(r.get("fields", {})), r.get("n_params"),
                     r.get("n_params_nonembed"), r.get("tokens"), r.get("flops"), r.get("flops_6n"),
                     _clean(r.get("final_loss")), _clean(r.get("eval_loss")), _dumps(r.get("eval_curve")),
                     r.get("wall_time_s"), r.get("host"), _now(), _now()))
                if cur.rowcount:
                    new += 1
                    self._event(db, r["key"], "ingested", detail=source)
        return new

    def rows(self) -> list[dict[str, Any]]:
        db = self._connect_read()
        try:
            rows = [dict(r) for r in db.execute("SELECT * FROM runs ORDER BY ord")]
        finally:
            db.close()
        for r in rows:
            for col in _JSON_COLUMNS:
                r[col] = json.loads(r[col]) if r[col] is not None else None
        return rows

    def counts(self, keys: Sequence[str] | None = None) -> dict[str, int]:
        db = self._connect_read()
        try:
            rows = db.execute("SELECT key, status FROM runs").fetchall()
        finally:
            db.close()
        wanted = set(keys) if keys is not None else None
        out = {s: 0 for s in STATUSES}
        for r in rows:
            if wanted is None or r["key"] in wanted:
                out[r["status"]] = out.get(r["status"], 0) + 1
        return out

    def events(self, key: str | None = None) -> list[dict[str, Any]]:
        db = self._connect_read()
        try:
            q = "SELECT * FROM events" + (" WHERE key = ?" if key else "") + " ORDER BY id"
            return [dict(r) for r in db.execute(q, (key,) if key else ())]
        finally:
            db.close()

    def reset_failed(self, keys: Sequence[str] | None = None) -> int:
        n = 0
        with self._tx() as db:
            for row in db.execute("SELECT key FROM runs WHERE status = 'failed'").fetchall():
                if keys is None or row["key"] in set(keys):
                    db.execute("UPDATE runs SET attempts = 0 WHERE key = ?", (row["key"],))
                    self._event(db, row["key"], "reset")
                    n += 1
        return n


def store_path(sweep_dir: str | Path) -> Path:
    """Where a sweep directory keeps its SQLite database."""
    p = Path(sweep_dir)
    return p if p.suffix == ".db" else p / "results.db"


def open_store(location: str | Path, create: bool = True, readonly: bool = False) -> ResultsStore:
    """The store for a sweep directory (SQLite at <dir>/results.db) or, in future, a database URL.

    create=False: the store must exist and opening writes nothing; readonly=True also refuses every write (what
    read-only commands use). A damaged store raises StoreDamagedError; a location that cannot hold a store (a file
    where the directory should be) raises StoreError.
    """
    loc = str(location)
    if "://" in loc:
        scheme = loc.split("://", 1)[0]
        if scheme == "sqlite":
            return SQLiteStore(loc.split("://", 1)[1], create=create, readonly=readonly)
        raise NotImplementedError(f"results store backend {scheme!r} is not built yet; implement "
                                  "scalekit.sweep.store.ResultsStore for it and return it from open_store")
    path = store_path(loc)
    for parent in (path.parent, *path.parent.parents):
        if parent.exists():
            if not parent.is_dir():
                raise StoreError(f"sweep directory {loc!r}: {str(parent)!r} is a file, not a directory")
            break
    if (not create or readonly) and not path.exists():
        raise FileNotFoundError(f"no sweep results at {str(path)!r} (run `scalekit sweep run PLAN --workdir "
                                f"{loc}` first)")
    return SQLiteStore(path, create=create, readonly=readonly)


def frame_from_rows(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The sweep DataFrame from store rows: the FRAME_COLUMNS plus each run's plan fields."""
    records = []
    for r in rows:
        rec = {c: r.get(c) for c in FRAME_COLUMNS}
        for k, v in (r.get("fields") or {}).items():
            rec.setdefault(k, v)
        records.append(rec)
    df = pd.DataFrame.from_records(records, columns=None if records else list(FRAME_COLUMNS))
    for c in ("n_params", "n_params_nonembed", "tokens", "attempts"):
        df[c] = pd.to_numeric(df[c]).astype("Int64")
    for c in ("flops", "flops_6n", "final_loss", "eval_loss", "wall_time_s"):
        df[c] = pd.to_numeric(df[c]).astype(float)
    return df


def load_sweep_frame(sweep_dir: str | Path) -> pd.DataFrame:
    """Load a sweep's results as a DataFrame, one row per run (filter `status == 'done'` for fits).

    Columns: key, name, status, n_params, n_params_nonembed, tokens, flops (palm convention, attention included),
    flops_6n (6 N_total D), final_loss, eval_loss, eval_curve (list of [step, loss]), wall_time_s, host, attempts,
    error, source ('plan' or 'ingest:<file>'), plus the plan fields (model, lr, seed, steps, budget,
    flop_convention, flops_plan) and any extra columns of ingested rows.
    """
    return frame_from_rows(open_store(sweep_dir, create=False, readonly=True).rows())
