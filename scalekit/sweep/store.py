"""The results store: one row per run, keyed by the hash of its config, safe under concurrent drivers.

`ResultsStore` is the interface every executor and CLI command uses. Two backends implement it with the same
schema and the same SQL (`scalekit.sweep.store_sql`):
- `SQLiteStore` (`store_sqlite`): `<sweep_dir>/results.db` in WAL mode, the default. Its locking needs a local
  file system (not NFS).
- `PostgresStore` (`store_postgres`): `postgresql://user@host:port/db`, one database a whole cluster shares
  (`pip install 'scalekit[postgres]'`). Several sweeps share one database: every row carries its sweep's name.

Every state change is one transaction. A claimed run is 'running' with a claim token and a heartbeat the worker
refreshes while it executes; a 'running' row whose heartbeat is older than `stale_after` seconds belongs to a dead
driver and is reclaimed. A 'done' row is never claimed again or overwritten. An `events` table logs each claim,
result and reclaim, so every execution of every run can be audited. Heartbeats are the clients' clocks (as on one
machine): keep a cluster's clocks NTP-synced, far inside the staleness window.

Where a sweep's results live (`open_store`): a `--store URL` given on the command line; else the URL the sweep
directory's `store.json` names (written when a sweep is first run with `--store`); else `<dir>/results.db`.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import math
import os
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pandas as pd

STATUSES = ("pending", "running", "done", "failed", "diverged")   # diverged: non-finite loss; never retried
SCHEMA_VERSION = 2  # the schema this code writes; older stores are migrated when opened for writing
RESULT_FIELDS = ("final_loss", "eval_loss", "eval_curve", "tokens", "flops", "flops_6n", "n_params",
                 "n_params_nonembed", "wall_time_s", "host")
FRAME_COLUMNS = ("key", "name", "status", "n_params", "n_params_nonembed", "tokens", "flops", "flops_6n",
                 "final_loss", "eval_loss", "eval_curve", "wall_time_s", "host", "attempts", "error", "source")
POINTER_FILE = "store.json"  # in a sweep directory whose results live in a database elsewhere
SWEEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


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
    """What executors and the CLI need from a results store (one sweep's runs in one backend)."""

    sweep: str  # the sweep's name: what its rows carry in a database shared by several sweeps
    location: str  # where the store is, printable (a path, or a URL without its password)

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
        return tally(self.rows(), keys)

    def close(self) -> None:
        """Release connections (a no-op where there are none kept open)."""


def tally(rows: Iterable[dict[str, Any]], keys: Sequence[str] | None = None) -> dict[str, int]:
    """Runs per status (every status in STATUSES, 0 when none) of the rows whose key is in `keys` (all if None)."""
    wanted = set(keys) if keys is not None else None
    out = {s: 0 for s in STATUSES}
    for r in rows:
        if wanted is None or r["key"] in wanted:
            out[r["status"]] = out.get(r["status"], 0) + 1
    return out


def _now() -> float:
    """The clock every backend stamps heartbeats and events with (tests replace it)."""
    return time.time()


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


def check_sweep_name(name: str) -> str:
    """A sweep name as rows carry it: letters, digits, '.', '_', '-' (1-128 characters); StoreError otherwise."""
    if not SWEEP_NAME.fullmatch(name or ""):
        raise StoreError(f"sweep name {name!r}: use 1-128 letters, digits, '.', '_' or '-', starting with a letter "
                         "or digit (set it with ?sweep=NAME in the store URL)")
    return name


def is_url(location: str | Path) -> bool:
    """Whether a store location is a URL (scheme://...) rather than a sweep directory or .db file."""
    return "://" in str(location)


def redact_url(url: str) -> str:
    """A URL safe to print or store: its password (in the authority or a `password=` parameter) replaced by ***."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        auth, host = netloc.rsplit("@", 1)
        if ":" in auth:
            netloc = f"{auth.split(':', 1)[0]}:***@{host}"
    query = urlencode([(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query)], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def url_without_password(url: str) -> str:
    """The URL with any password removed (what a sweep directory's store.json keeps; libpq finds the password in
    PGPASSWORD or ~/.pgpass)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        auth, host = netloc.rsplit("@", 1)
        netloc = f"{auth.split(':', 1)[0]}@{host}"
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "password"])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def sweep_in_url(url: str) -> str | None:
    """The sweep a store URL names with ?sweep=NAME, or None."""
    return next((v for k, v in parse_qsl(urlsplit(url).query) if k == "sweep"), None)


def store_path(sweep_dir: str | Path) -> Path:
    """Where a sweep directory keeps its SQLite database."""
    p = Path(sweep_dir)
    return p if p.suffix == ".db" else p / "results.db"


def read_pointer(sweep_dir: str | Path) -> dict[str, str] | None:
    """The {'url', 'sweep'} a sweep directory's store.json names, or None when its results are local."""
    p = Path(sweep_dir) / POINTER_FILE
    if Path(sweep_dir).suffix == ".db" or not p.is_file():
        return None
    try:
        pointer = json.loads(p.read_text())
        if not (isinstance(pointer, dict) and isinstance(pointer.get("url"), str) and is_url(pointer["url"])):
            raise ValueError("no 'url' naming a database")
    except (OSError, ValueError) as e:
        raise StoreError(f"{str(p)!r} is not a store pointer ({e}); remove it, or rewrite it by running the sweep "
                         "with --store URL") from e
    return pointer


def write_pointer(sweep_dir: str | Path, store: ResultsStore, url: str) -> None:
    """Record in the sweep directory where its results live (the URL without its password), atomically."""
    d = Path(sweep_dir)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{POINTER_FILE}.{os.getpid()}.{time.monotonic_ns()}.tmp"  # one per writer: drivers race
    tmp.write_text(json.dumps({"url": url_without_password(url), "sweep": store.sweep}, indent=1) + "\n")
    tmp.replace(d / POINTER_FILE)


def _open_url(url: str, *, sweep: str | None, workdir: str | Path | None, create: bool,
              readonly: bool) -> ResultsStore:
    scheme = url.split("://", 1)[0].lower()
    if scheme == "sqlite":
        from scalekit.sweep.store_sqlite import SQLiteStore
        return SQLiteStore(url.split("://", 1)[1], create=create, readonly=readonly, sweep=sweep)
    if scheme in ("postgresql", "postgres"):
        from scalekit.sweep.store_postgres import PostgresStore
        return PostgresStore(url, sweep=sweep, workdir=workdir, create=create, readonly=readonly)
    raise StoreError(f"results store URL {redact_url(url)!r}: unknown scheme {scheme!r} (use postgresql://... or "
                     "sqlite:///path/results.db, or a sweep directory)")


def open_store(location: str | Path, create: bool = True, readonly: bool = False, *, store: str | None = None,
               sweep: str | None = None) -> ResultsStore:
    """The store of a sweep: `store` (a URL) if given, else `location` as a URL, else the sweep directory's
    store.json pointer, else SQLite at <dir>/results.db.

    create=False: the store must exist (opening may migrate an older schema, nothing else); readonly=True also
    refuses every write (what read-only commands use). `sweep` names the sweep in a shared database, or a new
    SQLite store's sweep (default: the URL's ?sweep=, else the directory's name). A damaged store raises
    StoreDamagedError; a location that cannot hold a store (a file where the directory should be) raises StoreError.
    """
    loc = str(location)
    if store:
        return _open_url(store, sweep=sweep, workdir=None if is_url(loc) else loc, create=create, readonly=readonly)
    if is_url(loc):
        return _open_url(loc, sweep=sweep, workdir=None, create=create, readonly=readonly)
    pointer = read_pointer(loc)
    if pointer is not None:
        return _open_url(pointer["url"], sweep=sweep or pointer.get("sweep"), workdir=loc, create=create,
                         readonly=readonly)
    path = store_path(loc)
    for parent in (path.parent, *path.parent.parents):
        if parent.exists():
            if not parent.is_dir():
                raise StoreError(f"sweep directory {loc!r}: {str(parent)!r} is a file, not a directory")
            break
    if (not create or readonly) and not path.exists():
        raise FileNotFoundError(f"no sweep results at {str(path)!r} (run `scalekit sweep run PLAN --workdir "
                                f"{loc}` first)")
    from scalekit.sweep.store_sqlite import SQLiteStore
    return SQLiteStore(path, create=create, readonly=readonly, sweep=sweep)


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


def load_sweep_frame(sweep_dir: str | Path, *, store: str | None = None) -> pd.DataFrame:
    """Load a sweep's results as a DataFrame, one row per run (filter `status == 'done'` for fits).

    Columns: key, name, status, n_params, n_params_nonembed, tokens, flops (palm convention, attention included),
    flops_6n (6 N_total D), final_loss, eval_loss, eval_curve (list of [step, loss]), wall_time_s, host, attempts,
    error, source ('plan' or 'ingest:<file>'), plus the plan fields (model, lr, seed, steps, budget,
    flop_convention, flops_plan) and any extra columns of ingested rows. `store`: a store URL (see open_store).
    """
    s = open_store(sweep_dir, create=False, readonly=True, store=store)
    try:
        return frame_from_rows(s.rows())
    finally:
        s.close()


def __getattr__(name: str) -> Any:
    """The SQLite backend's names, importable from here as before (loaded on first use: no import cycle)."""
    if name in ("SQLiteStore", "check_store", "SQLITE_HEADER"):
        from scalekit.sweep import store_sqlite
        return getattr(store_sqlite, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
