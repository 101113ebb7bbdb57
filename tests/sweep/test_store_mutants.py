"""scalekit.sweep.store, method by method: every column each transition writes, the audit events it logs, the
claim order, stale-driver handling, read-only refusals, the store checks and their messages, and the frame.

Written to kill the mutants `make mutate` found alive. Time is a fake clock (store._now patched), so heartbeats,
staleness and timestamps are exact; each expectation follows the module's docstrings, written out by hand.
The tests of the store's operations run on both backends (the `backend` fixture, tests/sweep/conftest.py); those
about SQLite files (check_store, PRAGMAs, the version-1 migration) on SQLite only.
"""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from store_v1 import FOUR_STATUSES, make_v1_store

from scalekit.sweep import store as st
from scalekit.sweep.store import (FRAME_COLUMNS, SCHEMA_VERSION, Claim, ResultsStore, SQLiteStore, StoreDamagedError,
                                  StoreError, check_store, frame_from_rows, open_store, store_path)


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def _execute(path, *statements: str) -> None:
    """Run SQL statements on a store file directly (damaging or altering it behind the store's back)."""
    db = sqlite3.connect(path)
    for statement in statements:
        db.execute(statement)
    db.commit()
    db.close()


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(st, "_now", c)
    return c


def plan_rows(*names: str) -> list[dict]:
    return [{"key": f"key-{n}", "name": n, "config": {"name": n, "lr": 0.1}, "fields": {"model": "m", "seed": i},
             "n_params": 100 + i, "n_params_nonembed": 90 + i, "tokens": 1000, "flops": 1e9 + i, "flops_6n": 6e8}
            for i, n in enumerate(names)]


def events(store: ResultsStore, key: str | None = None) -> list[tuple]:
    return [(e["key"], e["event"], e["worker"], e["attempt"], e["detail"]) for e in store.events(key)]


def row(store: ResultsStore, key: str) -> dict:
    return next(r for r in store.rows() if r["key"] == key)


# --- the lifecycle of a run -----------------------------------------------------------------------------------------

def test_add_claim_heartbeat_finish_writes_every_column_and_event(backend, clock):
    store = backend.open()
    assert store.add_runs(plan_rows("a", "b")) == 2
    clock.t = 1001.0
    assert store.add_runs(plan_rows("b", "c")[::-1]) == 1       # c new, b already there
    rows = store.rows()
    assert [r["key"] for r in rows] == ["key-a", "key-b", "key-c"]
    assert rows[0]["ord"] < rows[1]["ord"] < rows[2]["ord"]
    a = rows[0]
    assert (a["status"], a["source"], a["attempts"], a["created"]) == ("pending", "plan", 0, 1000.0)
    assert a["config"] == {"name": "a", "lr": 0.1} and a["fields"] == {"model": "m", "seed": 0}
    assert (a["n_params"], a["n_params_nonembed"], a["tokens"], a["flops"], a["flops_6n"]) == (100, 90, 1000, 1e9,
                                                                                              6e8)
    assert rows[2]["created"] == 1001.0
    assert events(store) == [("key-a", "added", None, None, "a"), ("key-b", "added", None, None, "b"),
                             ("key-c", "added", None, None, "c")]

    clock.t = 1010.0
    c = store.claim("w1")
    assert isinstance(c, Claim)
    assert (c.key, c.name, c.attempt, c.config, c.reclaimed, c.retry) == ("key-a", "a", 1, {"name": "a", "lr": 0.1},
                                                                       False, False)
    assert len(c.token) == 32 and int(c.token, 16) >= 0
    r = row(store, "key-a")
    assert (r["status"], r["claim_token"], r["worker"], r["heartbeat"], r["started"], r["attempts"]) == (
        "running", c.token, "w1", 1010.0, 1010.0, 1)
    assert events(store, "key-a")[-1] == ("key-a", "claimed", "w1", 1, None)

    clock.t = 1020.0
    assert store.heartbeat(c) is True
    assert row(store, "key-a")["heartbeat"] == 1020.0
    assert store.heartbeat(Claim("key-a", "a", "0" * 32, 1, {}, False, False)) is False   # another token
    assert row(store, "key-a")["heartbeat"] == 1020.0

    clock.t = 1030.0
    result = {"final_loss": 2.5, "eval_loss": float("nan"), "eval_curve": [[1, 3.0], [2, float("inf")]],
              "wall_time_s": 4.0, "host": "h1", "tokens": 2000, "flops": None, "n_params": 111, "extra": "kept"}
    assert store.finish(c, result, "w1") is True
    r = row(store, "key-a")
    assert (r["status"], r["claim_token"], r["error"], r["finished"]) == ("done", None, None, 1030.0)
    assert (r["final_loss"], r["eval_loss"], r["eval_curve"], r["wall_time_s"], r["host"]) == (2.5, None,
                                                                                              [[1, 3.0], [2, None]],
                                                                                              4.0, "h1")
    assert r["summary"] == {"final_loss": 2.5, "eval_loss": None, "eval_curve": [[1, 3.0], [2, None]],
                            "wall_time_s": 4.0, "host": "h1", "tokens": 2000, "flops": None, "n_params": 111,
                            "extra": "kept"}
    # result values replace the planned ones; a missing or None one keeps the plan's (COALESCE)
    assert (r["tokens"], r["flops"], r["flops_6n"], r["n_params"], r["n_params_nonembed"]) == (2000, 1e9, 6e8, 111,
                                                                                              90)
    assert events(store, "key-a")[-1] == ("key-a", "done", "w1", 1, None)
    assert store.finish(c, {"final_loss": 9.0}, "w2") is False                 # a second result is dropped
    assert row(store, "key-a")["final_loss"] == 2.5
    assert events(store, "key-a")[-1] == ("key-a", "duplicate_dropped", "w2", 1, None)
    assert store.counts() == {"pending": 2, "running": 0, "done": 1, "failed": 0, "diverged": 0}
    assert store.counts(["key-a", "key-c"]) == {"pending": 1, "running": 0, "done": 1, "failed": 0, "diverged": 0}
    assert ResultsStore.counts(store, ["key-b"]) == {"pending": 1, "running": 0, "done": 0, "failed": 0,
                                                     "diverged": 0}
    assert ResultsStore.counts(store) == store.counts()


def test_claim_order_keys_filter_and_exhaustion(backend, clock):
    store = backend.open()
    store.add_runs(plan_rows("a", "b", "c"))
    assert store.claim("w", keys=["key-c"]).key == "key-c"
    assert store.claim("w", keys=["key-nothing"]) is None
    first = store.claim("w")
    assert first.key == "key-a"
    store.fail(first, "boom", "w")                      # a: failed (1 attempt), retried only after pending ones
    assert store.claim("w").key == "key-b"
    retry = store.claim("w", max_attempts=3)
    assert (retry.key, retry.retry, retry.reclaimed, retry.attempt) == ("key-a", True, False, 2)
    assert events(store, "key-a")[-1] == ("key-a", "retry", "w", 2, None)
    assert store.claim("w") is None                     # b and c running with fresh heartbeats, a running again


def test_a_pending_run_is_claimed_before_a_stale_one_and_stale_before_failed(backend, clock):
    store = backend.open()
    store.add_runs(plan_rows("failed", "stale", "pending"))
    f = store.claim("w", keys=["key-failed"])
    store.fail(f, "x", "w")
    store.claim("w", keys=["key-stale"])
    clock.t += 500
    assert [store.claim("w2", stale_after=100).key for _ in range(3)] == ["key-pending", "key-stale", "key-failed"]


def test_stale_running_run_is_reclaimed_then_failed_when_out_of_attempts(backend, clock):
    store = backend.open()
    store.add_runs(plan_rows("a"))
    c1 = store.claim("w1")
    clock.t += 100
    assert store.claim("w2", stale_after=100) is None           # exactly stale_after old: not yet stale
    clock.t += 1
    c2 = store.claim("w2", stale_after=100, max_attempts=2)
    assert (c2.key, c2.reclaimed, c2.retry, c2.attempt) == ("key-a", True, False, 2)
    assert events(store, "key-a")[-1] == ("key-a", "reclaimed", "w2", 2, None)
    assert store.heartbeat(c1) is False                         # the dead driver lost its claim
    store.fail(c1, "late", "w1")                                # its late failure changes nothing
    assert row(store, "key-a")["status"] == "running"
    assert events(store, "key-a")[-1] == ("key-a", "failed_after_lost", "w1", 1, "late")
    clock.t += 101
    assert store.claim("w3", stale_after=100, max_attempts=2) is None
    r = row(store, "key-a")
    assert (r["status"], r["claim_token"], r["finished"]) == ("failed", None, clock.t)
    assert r["error"] == "driver lost (heartbeat stale) on the last attempt"
    assert events(store, "key-a")[-1] == ("key-a", "lost", "w3", 2, "stale heartbeat, no attempts left")


def test_lost_appends_to_an_earlier_error(backend, clock):
    store = backend.open()
    store.add_runs(plan_rows("a"))
    store.fail(store.claim("w"), "first error", "w")
    store.claim("w", max_attempts=2)
    clock.t += 1000
    assert store.claim("w", max_attempts=2) is None
    assert row(store, "key-a")["error"] == "first error\ndriver lost (heartbeat stale) on the last attempt"


def test_fail_release_reset_and_retry_limits(backend, clock):
    store = backend.open()
    store.add_runs(plan_rows("a", "b"))
    c = store.claim("w", keys=["key-a"])
    clock.t = 1005.0
    store.fail(c, "E" * 400 + "tail" * 50, "w")              # 600 characters: the event keeps the last 500
    r = row(store, "key-a")
    assert (r["status"], r["claim_token"], r["error"], r["finished"], r["attempts"]) == (
        "failed", None, "E" * 400 + "tail" * 50, 1005.0, 1)
    assert events(store, "key-a")[-1] == ("key-a", "failed", "w", 1, ("E" * 400 + "tail" * 50)[-500:])
    assert store.claim("w", keys=["key-a"], max_attempts=1) is None     # attempts used up
    assert store.reset_failed(["key-b"]) == 0
    assert store.reset_failed(["key-a"]) == 1
    assert row(store, "key-a")["attempts"] == 0
    assert events(store, "key-a")[-1] == ("key-a", "reset", None, None, None)
    retry = store.claim("w", keys=["key-a"], max_attempts=1)
    assert retry.retry and retry.attempt == 1
    store.release(retry, "w")                                  # a released retry is failed again, uncounted
    r = row(store, "key-a")
    assert (r["status"], r["attempts"], r["claim_token"]) == ("failed", 0, None)
    assert events(store, "key-a")[-1] == ("key-a", "released", "w", 1, None)
    b = store.claim("w", keys=["key-b"])
    store.release(b, "w")                                      # a released first attempt is pending again
    assert (row(store, "key-b")["status"], row(store, "key-b")["attempts"]) == ("pending", 0)
    n_events = len(store.events())
    store.release(b, "w")                                      # releasing a lost claim does nothing
    assert len(store.events()) == n_events
    store.fail(store.claim("w", keys=["key-b"]), "x", "w")
    assert store.reset_failed() == 2


def test_diverge_keeps_the_summary_and_is_never_retried(backend, clock):
    store = backend.open()
    store.add_runs(plan_rows("a"))
    c = store.claim("w")
    clock.t = 1050.0
    assert store.diverge(c, {"final_loss": float("nan"), "step": 7}, "loss is nan at step 7", "w") is True
    r = row(store, "key-a")
    assert (r["status"], r["claim_token"], r["error"], r["finished"], r["summary"]) == (
        "diverged", None, "loss is nan at step 7", 1050.0, {"final_loss": None, "step": 7})
    assert events(store, "key-a")[-1] == ("key-a", "diverged", "w", 1, "loss is nan at step 7")
    clock.t += 10_000
    assert store.claim("w", stale_after=1) is None
    assert store.diverge(c, {}, "again", "w") is False
    assert events(store, "key-a")[-1] == ("key-a", "diverged_after_lost", "w", 1, "again")


def test_an_old_store_is_migrated_in_place_and_then_records_divergence(tmp_path, clock):
    path = tmp_path / "results.db"
    make_v1_store(path, [("key-a", "a", "pending"), ("key-b", "b", "done")], check=FOUR_STATUSES)
    assert check_store(path) == 1
    store = SQLiteStore(path)                # a writer migrates version 1 to 2 (and drops the four-status CHECK)
    assert check_store(path) == SCHEMA_VERSION == 2 and store.sweep == tmp_path.name
    assert [(r["sweep"], r["key"], r["status"], r["final_loss"]) for r in store.rows()] == [
        (tmp_path.name, "key-a", "pending", None), (tmp_path.name, "key-b", "done", 2.5)]
    assert events(store) == [("key-a", "added", None, None, "a"), ("key-b", "added", None, None, "b")]
    c = store.claim("w")
    assert store.diverge(c, {"final_loss": None}, "nan loss", "w") is True
    assert (row(store, "key-a")["status"], row(store, "key-a")["error"]) == ("diverged", "nan loss")
    assert "CHECK (length(status) > 0)" in sqlite3.connect(path).execute(
        "SELECT sql FROM sqlite_master WHERE name = 'runs'").fetchone()[0]


def test_an_old_store_read_only_is_read_as_it_is(tmp_path):
    path = tmp_path / "results.db"
    make_v1_store(path, [("key-a", "a", "done")])
    ro = SQLiteStore(path, readonly=True)
    assert [(r["key"], r["final_loss"]) for r in ro.rows()] == [("key-a", 2.5)] and ro.counts()["done"] == 1
    assert check_store(path) == 1            # reading migrated nothing


def test_add_done_ingests_finished_rows(backend, clock):
    store = backend.open()
    store.add_runs(plan_rows("a"))
    rows = [{"key": "key-a", "name": "dup"},
            {"key": "key-x", "name": "x", "fields": {"budget": 1e18}, "n_params": 5, "n_params_nonembed": 4,
             "tokens": 6, "flops": 7.0, "flops_6n": 8.0, "final_loss": float("inf"), "eval_loss": 3.25,
             "eval_curve": [[1, float("nan")]], "wall_time_s": 9.0, "host": "hx"}]
    assert store.add_done(rows, "ingest:table.csv") == 1
    r = row(store, "key-x")
    assert (r["status"], r["source"], r["attempts"], r["created"], r["finished"]) == ("done", "ingest:table.csv", 1,
                                                                                    1000.0, 1000.0)
    assert (r["n_params"], r["n_params_nonembed"], r["tokens"], r["flops"], r["flops_6n"]) == (5, 4, 6, 7.0, 8.0)
    assert (r["final_loss"], r["eval_loss"], r["eval_curve"], r["wall_time_s"], r["host"]) == (None, 3.25, [[1, None]],
                                                                                              9.0, "hx")
    assert r["fields"] == {"budget": 1e18} and r["config"] is None
    assert row(store, "key-a")["name"] == "a"
    assert events(store, "key-x") == [("key-x", "ingested", None, None, "ingest:table.csv")]
    assert [r["key"] for r in store.rows()] == ["key-a", "key-x"]
    assert store.add_done([{"key": "key-y", "name": "y"}], "s") == 1
    assert row(store, "key-y")["fields"] == {} and row(store, "key-y")["eval_curve"] is None


# --- read-only and creation ---------------------------------------------------------------------------------------

def test_readonly_and_create_false(backend, clock):
    with pytest.raises(FileNotFoundError) as e:
        backend.open(readonly=True)
    if backend.name == "sqlite":
        path = backend.db_path()
        assert str(e.value) == (f"no sweep results at {str(path)!r} (run `scalekit sweep run PLAN --workdir "
                                f"{path.parent}` first)")
    else:
        assert str(e.value) == (f"no scalekit sweeps in the database {backend.location()} (run `scalekit sweep run "
                                "PLAN --workdir DIR --store URL` first)")
    with pytest.raises(FileNotFoundError):
        backend.open(create=False)
    assert not backend.exists()
    backend.open().add_runs(plan_rows("a"))
    ro = backend.open(readonly=True)
    assert ro.readonly and ro.counts()["pending"] == 1
    with pytest.raises(StoreError) as e:
        ro.add_runs(plan_rows("b"))
    if backend.name == "sqlite":
        assert str(e.value) == (f"results store {str(backend.db_path())!r} was opened read-only; open it with "
                                "open_store(DIR) to change it")
    else:
        assert str(e.value) == (f"results store {backend.location()} was opened read-only; open it with "
                                "open_store(URL) to change it")
    for write in (lambda: ro.claim("w"), lambda: ro.add_done(plan_rows("c"), "x"), lambda: ro.reset_failed()):
        with pytest.raises(StoreError, match="was opened read-only"):
            write()
    assert ro.counts()["pending"] == 1 and len(ro.events()) == 1
    assert backend.open(create=False).claim("w").key == "key-a"
    assert ro.counts()["running"] == 1                          # a read-only store sees the writers' changes


def test_a_new_sqlite_store_is_stamped_in_wal_mode(tmp_path, clock):
    path = tmp_path / "results.db"
    SQLiteStore(path).add_runs(plan_rows("a"))
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    assert db.execute("SELECT v FROM meta WHERE k = 'schema_version'").fetchone()[0] == "2"
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_store_that_cannot_be_created_is_a_store_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError) as e:
        SQLiteStore(blocker / "sub" / "results.db")
    assert str(e.value).startswith(f"cannot create the results store at {str(blocker / 'sub' / 'results.db')!r}: ")


# --- check_store ----------------------------------------------------------------------------------------------------

def damaged(path: Path, problem: str) -> str:
    return (f"results store {str(path)!r} is damaged: {problem}; rebuild it from the run directories with "
            f"`scalekit sweep repair {path.parent}` (the damaged file is kept aside)")


def test_check_store_new_directory_empty_and_not_sqlite(tmp_path):
    assert check_store(tmp_path / "missing.db") is None
    with pytest.raises(StoreError) as e:
        check_store(tmp_path)
    assert str(e.value) == f"results store {str(tmp_path)!r} is a directory, not an SQLite file"
    p = tmp_path / "results.db"
    p.write_bytes(b"")
    with pytest.raises(StoreDamagedError) as e:
        check_store(p)
    assert str(e.value) == damaged(p, "it is an empty (0-byte) file, not an empty sweep")
    assert e.value.path == p and e.value.problem == "it is an empty (0-byte) file, not an empty sweep"
    p.write_bytes(b"SQLite")
    with pytest.raises(StoreDamagedError) as e:
        check_store(p)
    assert e.value.problem == "not an SQLite database (6 bytes, shorter than an SQLite header)"
    data = b"PK\x03\x04 zip file and then some more bytes"
    p.write_bytes(data)
    with pytest.raises(StoreDamagedError) as e:
        check_store(p)
    assert e.value.problem == f"not an SQLite database ({len(data)} bytes, it starts with b'PK\\x03\\x04 zip')"


def test_damaged_error_names_the_sweep_dir_or_the_file():
    assert "`scalekit sweep repair /s/w`" in str(StoreDamagedError("/s/w/results.db", "x"))
    assert "`scalekit sweep repair /s/w/other.db`" in str(StoreDamagedError("/s/w/other.db", "x"))


def test_check_store_schema_checks(tmp_path):
    p = tmp_path / "results.db"
    sqlite3.connect(p).close()
    p.write_bytes(b"")                       # sqlite makes a 0-byte file; give it a real empty database
    _execute(p, "PRAGMA user_version = 0", "CREATE TABLE t (x)", "DROP TABLE t")
    assert check_store(p) is None            # an SQLite file with no tables: a new store

    _execute(p, "PRAGMA user_version = 3")
    with pytest.raises(StoreError) as e:
        check_store(p)
    assert not isinstance(e.value, StoreDamagedError)
    assert str(e.value) == (f"results store {str(p)!r} has schema version 3, newer than this scalekit's 2: upgrade "
                            "scalekit to read it")

    p.unlink()
    _execute(p, "CREATE TABLE runs (key TEXT)")
    with pytest.raises(StoreDamagedError) as e:
        check_store(p)
    assert e.value.problem == "wrong schema: tables ['runs'] lack ['events', 'meta']"

    p.unlink()
    SQLiteStore(p)
    _execute(p, "ALTER TABLE events DROP COLUMN detail")
    with pytest.raises(StoreDamagedError) as e:
        check_store(p)
    assert e.value.problem == "wrong schema: table 'events' lacks columns ['detail']"

    p.unlink()
    make_v1_store(p, [("key-a", "a", "pending")], user_version=0)
    _execute(p, "UPDATE meta SET v = '7' WHERE k = 'schema_version'")
    with pytest.raises(StoreDamagedError) as e:
        check_store(p)
    assert e.value.problem == "unknown schema_version '7' in its meta table"
    _execute(p, "UPDATE meta SET v = '1' WHERE k = 'schema_version'")
    assert check_store(p) == 0
    SQLiteStore(p)                           # a writer migrates an unstamped (version 1) store
    assert check_store(p) == SCHEMA_VERSION


# --- open_store, store_path, the helpers and the frame -----------------------------------------------------------

def test_open_store_locations(tmp_path):
    assert store_path(tmp_path) == tmp_path / "results.db"
    assert store_path(tmp_path / "x.db") == tmp_path / "x.db"
    s = open_store(f"sqlite://{tmp_path / 'url.db'}")
    assert isinstance(s, SQLiteStore) and s.path == tmp_path / "url.db" and (tmp_path / "url.db").exists()
    with pytest.raises(StoreError) as e:
        open_store("mysql://db/sweeps")
    assert str(e.value) == ("results store URL 'mysql://db/sweeps': unknown scheme 'mysql' (use postgresql://... or "
                            "sqlite:///path/results.db, or a sweep directory)")
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(StoreError) as e:
        open_store(f / "deeper" / "sweep")
    assert str(e.value) == f"sweep directory {str(f / 'deeper' / 'sweep')!r}: {str(f)!r} is a file, not a directory"
    with pytest.raises(FileNotFoundError) as e:
        open_store(tmp_path / "none", readonly=True)
    assert str(e.value) == (f"no sweep results at {str(tmp_path / 'none' / 'results.db')!r} (run `scalekit sweep run "
                            f"PLAN --workdir {tmp_path / 'none'}` first)")
    with pytest.raises(FileNotFoundError):
        open_store(tmp_path / "none", create=False)
    made = open_store(tmp_path / "new" / "sweep")
    assert made.path == tmp_path / "new" / "sweep" / "results.db" and made.path.exists()
    assert open_store(tmp_path / "new" / "sweep", readonly=True).readonly


def test_clean_and_dumps():
    nan, inf = float("nan"), float("inf")
    assert st._clean({"a": [1.0, nan, (inf, -inf, 2)], "b": "s", "c": None}) == {"a": [1.0, None, [None, None, 2]],
                                                                                 "b": "s", "c": None}
    assert st._clean(3) == 3 and st._clean(2.5) == 2.5
    assert st._dumps(None) is None
    assert st._dumps({"b": 1, "a": nan}) == '{"a": null, "b": 1}'


def test_frame_from_rows_types_and_fields():
    empty = frame_from_rows([])
    assert list(empty.columns) == list(FRAME_COLUMNS) and len(empty) == 0
    rows = [{"key": "k1", "name": "n1", "status": "done", "n_params": 10, "tokens": 5, "attempts": 1,
             "final_loss": 2.0, "flops": 3, "fields": {"model": "m1", "name": "not this"}},
            {"key": "k2", "name": "n2", "status": "pending", "n_params": None, "fields": None}]
    df = frame_from_rows(rows)
    assert list(df.columns) == list(FRAME_COLUMNS) + ["model"]
    assert df["name"].tolist() == ["n1", "n2"]                   # a field never overrides a column
    assert df["model"].tolist()[0] == "m1" and pd.isna(df["model"].tolist()[1])
    for c in ("n_params", "n_params_nonembed", "tokens", "attempts"):
        assert str(df[c].dtype) == "Int64"
    for c in ("flops", "flops_6n", "final_loss", "eval_loss", "wall_time_s"):
        assert df[c].dtype == float
    assert df["n_params"].tolist()[0] == 10 and pd.isna(df["n_params"].tolist()[1])
    assert df["flops"].tolist()[0] == 3.0 and math.isnan(df["final_loss"].tolist()[1])


def test_load_sweep_frame_reads_without_writing(backend, tmp_path):
    backend.open().add_runs(plan_rows("a", "b"))
    df = st.load_sweep_frame(backend.sweep_dir())
    assert df["key"].tolist() == ["key-a", "key-b"] and df["status"].tolist() == ["pending", "pending"]
    assert df["seed"].tolist() == [0, 1]
    assert df["name"].tolist() == ["a", "b"] and df["attempts"].tolist() == [0, 0]
    assert len(backend.open().events()) == 2                    # reading logged nothing
    with pytest.raises(FileNotFoundError):
        st.load_sweep_frame(tmp_path / "nothing")
    if backend.name == "postgres":
        with pytest.raises(FileNotFoundError):
            st.load_sweep_frame(tmp_path / "nothing", store=backend.url("nothing"))
        assert [s["sweep"] for s in backend.open().sweeps()] == ["s"]    # the missing sweep was not created
