"""The PostgreSQL results store: one database a whole cluster's drivers, Slurm tasks and pods share.

`open_store("postgresql://user@host:port/db?sweep=NAME")` returns a `PostgresStore`; the usual libpq environment
variables (PGHOST, PGUSER, PGPASSWORD, ...) and `~/.pgpass` apply, as for `psql`. It needs psycopg 3 and
psycopg-pool (`pip install 'scalekit[postgres]'`).

- Same schema and SQL as SQLite (`store_sql`), in the PostgreSQL schema `scalekit`: tables `runs`, `events`,
  `meta` (the schema version) and `sweeps` (one row per sweep; every run and event row carries its sweep's name,
  so several sweeps share a database).
- Claims lock the row they take with `FOR UPDATE SKIP LOCKED`: concurrent claimers never wait for, or take, each
  other's rows. New rows are numbered under a per-sweep advisory lock.
- A small connection pool (psycopg_pool), checked before each use. A lost connection (network, a server restart)
  is retried with exponential backoff for up to `retry_for_s` seconds; each retried write first looks for its own
  audit event, so a write whose commit succeeded before the connection dropped is not applied twice.
- The URL's password never reaches a message, log line or row: locations print as `redact_url(url)`.

The sweep's name: `?sweep=NAME` in the URL, else the sweep directory's name, else the database's only sweep.
"""

from __future__ import annotations

import functools
import logging
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from scalekit.sweep import store as _store
from scalekit.sweep.store import SCHEMA_VERSION, StoreError, check_sweep_name, redact_url
from scalekit.sweep.store_sql import NOT_APPLIED, SQLStore, new_op

T = TypeVar("T")
log = logging.getLogger(__name__)
_SETUP_LOCK = 0x5CA1E  # advisory lock id held while the schema is created or migrated
SCHEMA = """
CREATE SCHEMA IF NOT EXISTS scalekit;
CREATE TABLE IF NOT EXISTS scalekit.meta (k TEXT PRIMARY KEY, v TEXT);
CREATE TABLE IF NOT EXISTS scalekit.sweeps (sweep TEXT PRIMARY KEY, workdir TEXT, created DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS scalekit.runs (
  sweep TEXT NOT NULL, key TEXT NOT NULL, ord INTEGER NOT NULL, name TEXT NOT NULL,
  status TEXT NOT NULL CHECK (length(status) > 0),
  source TEXT NOT NULL DEFAULT 'plan', config TEXT, fields TEXT,
  n_params BIGINT, n_params_nonembed BIGINT, tokens BIGINT, flops DOUBLE PRECISION, flops_6n DOUBLE PRECISION,
  final_loss DOUBLE PRECISION, eval_loss DOUBLE PRECISION, eval_curve TEXT, wall_time_s DOUBLE PRECISION, host TEXT,
  summary TEXT, attempts INTEGER NOT NULL DEFAULT 0, error TEXT, claim_token TEXT, worker TEXT,
  heartbeat DOUBLE PRECISION, created DOUBLE PRECISION, started DOUBLE PRECISION, finished DOUBLE PRECISION,
  PRIMARY KEY (sweep, key));
CREATE TABLE IF NOT EXISTS scalekit.events (
  id BIGSERIAL PRIMARY KEY, sweep TEXT NOT NULL, time DOUBLE PRECISION NOT NULL, key TEXT NOT NULL,
  event TEXT NOT NULL, worker TEXT, attempt INTEGER, detail TEXT, op TEXT);
CREATE INDEX IF NOT EXISTS runs_status ON scalekit.runs (sweep, status, ord);
CREATE INDEX IF NOT EXISTS events_key ON scalekit.events (sweep, key);
CREATE INDEX IF NOT EXISTS events_op ON scalekit.events (op);
"""
# Migrations from older PostgreSQL schema versions to SCHEMA_VERSION, each run in the setup transaction. Version 2
# is the first PostgreSQL schema, so there are none yet; a version without an entry is refused with how to copy it.
MIGRATIONS: dict[int, Callable[[Any], None]] = {}


def _psycopg() -> tuple[Any, Any]:
    try:
        import psycopg
        import psycopg_pool
    except ImportError as e:
        raise StoreError("the PostgreSQL results store needs psycopg 3 and psycopg-pool: pip install "
                         f"'scalekit[postgres]' ({e})") from None
    return psycopg, psycopg_pool


@functools.lru_cache(maxsize=512)
def _pg_sql(sql: str) -> str:
    """The portable SQL (`?` placeholders) in psycopg's paramstyle (`%s`, literal % doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


class _Connection:
    """A psycopg connection that takes the shared SQL's `?` placeholders."""

    def __init__(self, conn: Any):
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.conn.execute(_pg_sql(sql), params)


def split_url(url: str) -> tuple[str, str | None, str | None]:
    """(libpq URL without scalekit's `sweep` parameter, that sweep name or None, the password or None)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    sweep = next((v for k, v in query if k == "sweep"), None)
    conninfo = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode([(k, v) for k, v in query
                                                                              if k != "sweep"]), parts.fragment))
    password = unquote(parts.password) if parts.password else next((v for k, v in query if k == "password"), None)
    return conninfo, sweep, password


class PostgresStore(SQLStore):
    """The ResultsStore of one sweep in a PostgreSQL database (see the module doc).

    `sweep`: the sweep's name (else the URL's ?sweep=, else `workdir`'s name, else the database's only sweep).
    `create=False`: the tables and the sweep must exist. `readonly`: refuse every write. `retry_for_s`: how long a
    lost connection is retried before a StoreError. `pool_size`: connections kept per process.
    """

    lock_rows = "FOR UPDATE SKIP LOCKED"

    def __init__(self, url: str, *, sweep: str | None = None, workdir: str | Path | None = None, create: bool = True,
                 readonly: bool = False, retry_for_s: float = 300.0, pool_size: int = 4, connect_timeout_s: int = 10):
        psycopg, psycopg_pool = _psycopg()
        self._psycopg = psycopg
        conninfo, url_sweep, self._password = split_url(url)
        self.location = redact_url(conninfo)
        self.readonly, self.retry_for_s = readonly, retry_for_s
        self._check_server(conninfo, connect_timeout_s)
        self._pool = psycopg_pool.ConnectionPool(
            conninfo, min_size=1, max_size=max(2, pool_size), open=False, timeout=connect_timeout_s,
            kwargs={"row_factory": psycopg.rows.dict_row, "connect_timeout": connect_timeout_s},
            configure=_set_search_path, check=psycopg_pool.ConnectionPool.check_connection,
            name=f"scalekit-store-{new_op()[:6]}")
        weakref.finalize(self, self._pool.close)
        try:
            self._pool.open(wait=True, timeout=connect_timeout_s + 5)
            self._setup(create=create and not readonly)
            self.sweep = self._resolve_sweep(sweep or url_sweep, workdir, create=create and not readonly)
        except psycopg_pool.PoolTimeout as e:
            self._pool.close()
            raise StoreError(f"results store {self.location}: no connection within {connect_timeout_s + 5} s "
                             f"({' '.join(self._scrub(str(e)).split())})") from None
        except BaseException:
            self._pool.close()
            raise

    # --- opening ---------------------------------------------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        return text.replace(self._password, "***") if self._password else text

    def _check_server(self, conninfo: str, timeout_s: int) -> None:
        """One direct connection first, so a wrong password, host or database name is told as it is."""
        try:
            self._psycopg.connect(conninfo, connect_timeout=timeout_s).close()
        except self._psycopg.Error as e:
            raise StoreError(f"cannot connect to the results store {self.location}: "
                             f"{' '.join(self._scrub(str(e)).split())} (the password comes from the URL, PGPASSWORD "
                             "or ~/.pgpass)") from None

    def _setup(self, *, create: bool) -> None:
        """Create the schema, or check its version and migrate it, under an advisory lock (one opener at a time)."""
        def fn(db: Any, op: str) -> None:
            db.execute("SELECT pg_advisory_xact_lock(?)", (_SETUP_LOCK,))
            exists = db.execute("SELECT to_regclass('scalekit.meta') IS NOT NULL AS e").fetchone()["e"]
            version = None
            if exists:
                row = db.execute("SELECT v FROM scalekit.meta WHERE k = 'schema_version'").fetchone()
                version = int(row["v"]) if row else None
            if version is not None and version > SCHEMA_VERSION:
                raise StoreError(f"results store {self.location} has schema version {version}, newer than this "
                                 f"scalekit's {SCHEMA_VERSION}: upgrade scalekit to use it")
            if version == SCHEMA_VERSION:
                return
            if version is not None:
                if version not in MIGRATIONS:
                    raise StoreError(f"results store {self.location} has schema version {version}, which this "
                                     f"scalekit cannot migrate: open it with the scalekit that wrote it and copy the "
                                     "sweeps out with `scalekit sweep migrate URL DIR`")
                if not create:
                    raise StoreError(f"results store {self.location} has schema version {version}: open it once "
                                     f"for writing (e.g. `scalekit sweep status` is read-only; `scalekit sweep run` "
                                     f"migrates it to {SCHEMA_VERSION})")
                MIGRATIONS[version](db)
            elif not create:
                raise FileNotFoundError(f"no scalekit sweeps in the database {self.location} (run `scalekit sweep "
                                        "run PLAN --workdir DIR --store URL` first)")
            else:
                for stmt in filter(str.strip, SCHEMA.split(";")):
                    db.execute(stmt)
            db.execute("INSERT INTO scalekit.meta (k, v) VALUES ('schema_version', ?) ON CONFLICT (k) DO UPDATE "
                       "SET v = excluded.v", (str(SCHEMA_VERSION),))
        self._transact(fn, None, write=True, setup=True)

    def sweeps(self) -> list[dict[str, Any]]:
        """The sweeps this database holds: name, workdir it was created from, creation time."""
        return self._query("SELECT sweep, workdir, created FROM sweeps ORDER BY sweep")

    def _resolve_sweep(self, name: str | None, workdir: str | Path | None, *, create: bool) -> str:
        explicit = name is not None
        if name is None and workdir is not None:
            name = Path(workdir).resolve().name
        have = {s["sweep"]: s for s in self.sweeps()}
        if name is None:
            if len(have) == 1:
                return next(iter(have))
            raise StoreError(f"results store {self.location} holds {len(have)} sweeps "
                             f"({', '.join(sorted(have)) or 'none'}): name one with ?sweep=NAME in the URL")
        check_sweep_name(name)
        here = str(Path(workdir).resolve()) if workdir is not None else None
        if name in have:
            other = have[name]["workdir"]
            if not explicit and here and other and other != here:
                raise StoreError(f"sweep {name!r} in {self.location} belongs to the sweep directory {other!r}, not "
                                 f"{here!r}: name this one with ?sweep=OTHER_NAME in the URL (or pass ?sweep={name} "
                                 "to share it)")
            return name
        if not create:
            raise FileNotFoundError(f"no sweep {name!r} in the results store {self.location} (it holds: "
                                    f"{', '.join(sorted(have)) or 'none'})")
        self._transact(lambda db, op: db.execute("INSERT INTO sweeps (sweep, workdir, created) VALUES (?, ?, ?) "
                                                 "ON CONFLICT DO NOTHING", (name, here, _store._now())),
                       None, write=True)
        return name

    # --- the backend hooks -----------------------------------------------------------------------------------------
    def _lock_sweep(self, db: Any) -> None:
        db.execute("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", (f"scalekit:{self.sweep}",))

    def _run(self, fn: Callable[[Any, str], T], recover: Callable[[Any, str], Any] | None = None) -> T:
        return self._transact(fn, recover, write=True)

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return self._transact(lambda db, op: db.execute(sql, params).fetchall(), None, write=False)

    def _transact(self, fn: Callable[[Any, str], T], recover: Callable[[Any, str], Any] | None, *, write: bool,
                  setup: bool = False) -> T:
        """fn(db, op) in one transaction, retried with backoff while the connection is lost (see the module doc)."""
        if write and self.readonly and not setup:
            raise StoreError(f"results store {self.location} was opened read-only; open it with "
                             "open_store(URL) to change it")
        psycopg = self._psycopg
        op, tries, delay = new_op(), 0, 0.1
        deadline = time.monotonic() + self.retry_for_s
        while True:
            try:
                with self._pool.connection() as conn, conn.transaction():
                    db = _Connection(conn)
                    if tries and recover is not None:
                        got = recover(db, op)
                        if got is not NOT_APPLIED:
                            return got
                    return fn(db, op)
            except psycopg.OperationalError as e:
                tries += 1
                why = " ".join(self._scrub(str(e)).split())
                if time.monotonic() + delay > deadline:
                    raise StoreError(f"results store {self.location}: the connection was lost and not regained "
                                     f"within {self.retry_for_s:g} s ({why})") from None
                if tries == 1:
                    log.warning("results store %s: connection lost (%s); retrying for up to %g s", self.location, why,
                                self.retry_for_s)
                time.sleep(delay)
                delay = min(2 * delay, 5.0)
            except psycopg.Error as e:
                raise StoreError(f"results store {self.location}: {' '.join(self._scrub(str(e)).split())}") from None

    def close(self) -> None:
        self._pool.close()


def _set_search_path(conn: Any) -> None:
    """Each pooled connection resolves the shared SQL's table names in the `scalekit` schema."""
    conn.execute("SET search_path TO scalekit")
    conn.commit()
