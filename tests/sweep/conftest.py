"""The results-store tests' `backend` fixture: the same test against SQLite and against PostgreSQL.

`backend` is parametrized over ["sqlite", "postgres"]. The PostgreSQL variant uses a fresh database of the
session's server (`pg_url`) and is skipped, with the reason, where PostgreSQL or psycopg is not installed.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from scalekit.sweep.store import ResultsStore


class Backend:
    """One backend's stores for a test, each named by its sweep (default "s").

    - `open(sweep, **kw)`: the backend's own class (SQLiteStore(<tmp>/<sweep>/results.db) or PostgresStore(pg_url,
      sweep=...)) with create/readonly/...; opening it again reopens the same store.
    - `url(sweep)`: what `open_store` takes for that store (the sweep directory, or the URL with ?sweep= and the
      password), e.g. for a subprocess.
    - `sweep_dir(sweep)`: a sweep directory that `open_store`, `load_sweep_frame`, `export_sweep` and `ingest`
      resolve to the store (PostgreSQL: a store.json pointer without the password; PGPASSWORD is set for libpq).
    - `location(sweep)`: the `location` the store prints, written out by hand (no password).
    - `exists()`: whether the backend holds a store at all (the SQLite file / the `scalekit` tables).
    """

    def __init__(self, name: str, tmp_path: Path, pg_server: Any = None, pg_url: str | None = None):
        self.name, self.tmp_path, self.pg_server, self.pg_url = name, tmp_path, pg_server, pg_url
        self._opened: list[ResultsStore] = []

    @property
    def dbname(self) -> str:
        assert self.pg_url is not None
        return urlsplit(self.pg_url).path.lstrip("/")

    def db_path(self, sweep: str = "s") -> Path:
        return self.tmp_path / sweep / "results.db"

    def open(self, sweep: str = "s", **kw: Any) -> ResultsStore:
        if self.name == "sqlite":
            from scalekit.sweep.store_sqlite import SQLiteStore
            store: ResultsStore = SQLiteStore(self.db_path(sweep), **kw)
        else:
            from scalekit.sweep.store_postgres import PostgresStore
            store = PostgresStore(self.pg_url, sweep=sweep, **kw)
        self._opened.append(store)
        return store

    def url(self, sweep: str = "s") -> str:
        return str(self.tmp_path / sweep) if self.name == "sqlite" else f"{self.pg_url}?sweep={sweep}"

    def sweep_dir(self, sweep: str = "s") -> Path:
        d = self.tmp_path / sweep
        if self.name == "postgres" and not (d / "store.json").exists():
            from scalekit.sweep.store import url_without_password, write_pointer
            write_pointer(d, self.open(sweep), self.pg_url)
            assert json.loads((d / "store.json").read_text()) == {"url": url_without_password(self.pg_url),
                                                                   "sweep": sweep}
        return d

    def location(self, sweep: str = "s") -> str:
        if self.name == "sqlite":
            return str(self.db_path(sweep))
        pg = self.pg_server
        return f"postgresql://{pg.user}:***@{pg.host}:{pg.port}/{self.dbname}"

    def exists(self, sweep: str = "s") -> bool:
        if self.name == "sqlite":
            return self.db_path(sweep).exists()
        import psycopg
        with psycopg.connect(self.pg_url) as conn:
            return conn.execute("SELECT to_regclass('scalekit.meta') IS NOT NULL").fetchone()[0]

    def close(self) -> None:
        for store in self._opened:
            with contextlib.suppress(Exception):
                store.close()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, tmp_path, monkeypatch):
    """A Backend (see its doc) with nothing stored yet; every store it opened is closed afterwards."""
    if request.param == "sqlite":
        b = Backend("sqlite", tmp_path)
    else:
        pg_server = request.getfixturevalue("pg_server")
        b = Backend("postgres", tmp_path, pg_server, request.getfixturevalue("pg_url"))
        monkeypatch.setenv("PGPASSWORD", pg_server.password)  # what a sweep directory's password-less pointer needs
    yield b
    b.close()
