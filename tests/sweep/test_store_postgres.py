"""The PostgreSQL results store's own behaviour, on a real server (the session's `pg_server`; no mocks): several
sweeps in one database, the schema version, passwords kept out of every message and row, lost connections and lost
commit acknowledgements, a server restart, and many processes claiming at once (FOR UPDATE SKIP LOCKED).

What the backends share (the lifecycle, claims, events, read-only refusals...) is tested on both backends in
test_sweep_store.py and test_store_mutants.py.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest

psycopg = pytest.importorskip("psycopg")
pytest.importorskip("psycopg_pool")

from scalekit.sweep.pg_local import free_port  # noqa: E402
from scalekit.sweep.store import StoreError, open_store  # noqa: E402
from scalekit.sweep.store_postgres import PostgresStore, _Connection  # noqa: E402

TERMINATE = ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND "
             "pid <> pg_backend_pid()")


def plan(n: int, prefix: str = "k") -> list[dict]:
    return [{"key": f"{prefix}{i:03d}", "name": f"run{i}", "config": {"i": i}, "fields": {"seed": i}}
            for i in range(n)]


def result(loss: float = 2.0) -> dict:
    return {"final_loss": loss, "eval_loss": loss, "eval_curve": [[1, loss]], "wall_time_s": 1.0, "host": "h"}


def location(pg_server, url: str) -> str:
    """The printable location of a store in the database of `url`, written out: the password as ***."""
    return f"postgresql://{pg_server.user}:***@{pg_server.host}:{pg_server.port}{urlsplit(url).path}"


def terminate_backends(url: str) -> int:
    """Terminate every other session on the URL's database (the store's pooled connections); how many."""
    with psycopg.connect(url, autocommit=True) as admin:
        return len(admin.execute(TERMINATE).fetchall())


def event_names(store: PostgresStore) -> Counter:
    return Counter((e["key"], e["event"]) for e in store.events())


@pytest.fixture
def stores():
    """Open PostgresStores through this (`stores(url, **kw)`); each is closed after the test."""
    opened: list[PostgresStore] = []

    def make(url: str, **kw) -> PostgresStore:
        opened.append(PostgresStore(url, **kw))
        return opened[-1]
    yield make
    for s in opened:
        s.close()


# --- several sweeps in one database ---------------------------------------------------------------------------------

def test_two_sweeps_in_one_database_are_isolated(pg_server, pg_url, stores):
    a, b = stores(f"{pg_url}?sweep=a"), stores(pg_url, sweep="b")
    assert (a.sweep, b.sweep) == ("a", "b")
    assert a.add_runs(plan(3)) == 3
    assert b.add_runs(plan(2)) == 2                       # the same keys: each sweep has its own
    assert b.add_runs(plan(3)) == 1
    assert [(r["sweep"], r["key"], r["ord"]) for r in a.rows()] == [("a", "k000", 0), ("a", "k001", 1),
                                                                     ("a", "k002", 2)]
    assert [(r["sweep"], r["key"], r["ord"]) for r in b.rows()] == [("b", "k000", 0), ("b", "k001", 1),
                                                                     ("b", "k002", 4)]  # 2nd add: ord 2 + index 2
    claims = [a.claim("w") for _ in range(3)]
    assert [c.key for c in claims] == ["k000", "k001", "k002"] and a.claim("w") is None
    assert b.counts() == {"pending": 3, "running": 0, "done": 0, "failed": 0, "diverged": 0}
    assert b.heartbeat(claims[0]) is False                 # a's claim means nothing in b
    assert a.finish(claims[0], result(), "w") is True
    assert b.rows()[0]["status"] == "pending" and b.rows()[0]["final_loss"] is None
    assert b.claim("w").key == "k000"                      # b's runs are still there to claim
    assert a.counts() == {"pending": 0, "running": 2, "done": 1, "failed": 0, "diverged": 0}
    assert b.counts() == {"pending": 2, "running": 1, "done": 0, "failed": 0, "diverged": 0}
    assert {e["sweep"] for e in a.events()} == {"a"} and {e["sweep"] for e in b.events()} == {"b"}
    assert [e["event"] for e in a.events("k000")] == ["added", "claimed", "done"]
    assert [e["event"] for e in b.events("k000")] == ["added", "claimed"]
    a.fail(claims[1], "boom", "w")
    assert b.reset_failed() == 0 and a.reset_failed() == 1
    assert [s["sweep"] for s in a.sweeps()] == ["a", "b"]

    with pytest.raises(StoreError) as e:
        open_store(pg_url)
    assert str(e.value) == (f"results store {location(pg_server, pg_url)} holds 2 sweeps (a, b): name one with "
                            "?sweep=NAME in the URL")
    with pytest.raises(StoreError, match=r"holds 2 sweeps \(a, b\)"):
        open_store(pg_url, readonly=True)


def test_a_database_with_one_sweep_opens_it_without_naming_it(pg_server, pg_url, stores):
    with pytest.raises(StoreError) as e:                   # an empty database: no sweep to pick
        open_store(pg_url)
    assert str(e.value) == (f"results store {location(pg_server, pg_url)} holds 0 sweeps (none): name one with "
                            "?sweep=NAME in the URL")
    stores(f"{pg_url}?sweep=only").add_runs(plan(2))
    s = open_store(pg_url, create=False, readonly=True)
    try:
        assert s.sweep == "only" and s.counts()["pending"] == 2
    finally:
        s.close()
    with pytest.raises(FileNotFoundError) as e:
        stores(pg_url, sweep="other", create=False)
    assert str(e.value) == f"no sweep 'other' in the results store {location(pg_server, pg_url)} (it holds: only)"
    with pytest.raises(StoreError, match="sweep name 'bad name'"):
        stores(pg_url, sweep="bad name")


# --- the schema version ---------------------------------------------------------------------------------------------

def test_schema_version_is_recorded_and_a_newer_one_refused(pg_server, pg_url, stores):
    with pytest.raises(FileNotFoundError) as e:
        stores(f"{pg_url}?sweep=s", create=False)
    assert str(e.value) == (f"no scalekit sweeps in the database {location(pg_server, pg_url)} (run `scalekit sweep "
                            "run PLAN --workdir DIR --store URL` first)")
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT to_regclass('scalekit.meta')").fetchone() == (None,)   # nothing was created
    stores(f"{pg_url}?sweep=s").add_runs(plan(1))
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT v FROM scalekit.meta WHERE k = 'schema_version'").fetchone() == ("2",)
        conn.execute("UPDATE scalekit.meta SET v = '3' WHERE k = 'schema_version'")
    for kw in ({}, {"readonly": True}, {"create": False}):
        with pytest.raises(StoreError) as e:
            stores(pg_url, sweep="s", **kw)
        assert str(e.value) == (f"results store {location(pg_server, pg_url)} has schema version 3, newer than this "
                                "scalekit's 2: upgrade scalekit to use it")
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT v FROM scalekit.meta WHERE k = 'schema_version'").fetchone() == ("3",)
        conn.execute("UPDATE scalekit.meta SET v = '1' WHERE k = 'schema_version'")
    with pytest.raises(StoreError) as e:                   # no PostgreSQL schema before 2: nothing to migrate
        stores(pg_url, sweep="s")
    assert str(e.value) == (f"results store {location(pg_server, pg_url)} has schema version 1, which this scalekit "
                            "cannot migrate: open it with the scalekit that wrote it and copy the sweeps out with "
                            "`scalekit sweep migrate URL DIR`")


# --- passwords ------------------------------------------------------------------------------------------------------

def _no_password(pw: str, *texts: object) -> None:
    for t in texts:
        assert pw not in str(t), t


def test_passwords_never_leak(pg_server, pg_url, stores, tmp_path, caplog):
    pw = pg_server.password
    caplog.set_level(logging.DEBUG)
    s = stores(f"{pg_url}?sweep=s")
    assert s.location == location(pg_server, pg_url)
    s.add_runs(plan(2))
    c = s.claim("w")
    s.finish(c, result(), "w")
    ro = stores(pg_url, sweep="s", readonly=True)
    with pytest.raises(StoreError) as refused:
        ro.claim("w")
    assert str(refused.value) == (f"results store {location(pg_server, pg_url)} was opened read-only; open it with "
                                  "open_store(URL) to change it")

    wrong = pg_url.replace(pw, "wrong" + pw[:8])
    with pytest.raises(StoreError) as bad_pw:
        open_store(wrong + "?sweep=s")
    assert str(bad_pw.value).startswith(f"cannot connect to the results store {location(pg_server, pg_url)}: ")
    assert "password authentication failed" in str(bad_pw.value)
    assert str(bad_pw.value).endswith("(the password comes from the URL, PGPASSWORD or ~/.pgpass)")

    port = free_port()
    unreachable = pg_url.replace(f":{pg_server.port}/", f":{port}/")
    with pytest.raises(StoreError) as refused_port:
        PostgresStore(unreachable, sweep="s", connect_timeout_s=2)
    assert str(refused_port.value).startswith(f"cannot connect to the results store postgresql://{pg_server.user}:***"
                                              f"@{pg_server.host}:{port}/")
    assert str(refused_port.value).endswith("(the password comes from the URL, PGPASSWORD or ~/.pgpass)")

    query_pw = pg_server.url(urlsplit(pg_url).path[1:], password=False) + f"?password={pw}&sweep=s"
    q = stores(query_pw)                                    # the password as a URL parameter
    assert q.location == pg_server.url(urlsplit(pg_url).path[1:], password=False) + "?password=***"
    assert q.counts()["done"] == 1
    with pytest.raises(StoreError) as bad_query_pw:
        open_store(query_pw.replace(pw, "wrong" + pw[:8]))
    assert "?password=***" in str(bad_query_pw.value)

    errors = [refused.value, bad_pw.value, refused_port.value, bad_query_pw.value]
    _no_password(pw, s.location, ro.location, q.location, *errors, s.rows(), s.events(), s.sweeps(), caplog.text)
    _no_password("wrong" + pw[:8], *errors)
    for err in errors:                                     # nor in the traceback a user would see
        assert isinstance(err, StoreError) and err.__cause__ is None
        assert err.__context__ is None or err.__suppress_context__
        _no_password(pw, "".join(traceback.format_exception(err)))
        _no_password("wrong" + pw[:8], "".join(traceback.format_exception(err)))
    with psycopg.connect(pg_url) as conn:                  # nor anywhere in the database's tables
        dump = conn.execute("SELECT (SELECT json_agg(r) FROM scalekit.runs r)::text || "
                            "(SELECT json_agg(e) FROM scalekit.events e)::text || "
                            "(SELECT json_agg(m) FROM scalekit.meta m)::text || "
                            "(SELECT json_agg(w) FROM scalekit.sweeps w)::text").fetchone()[0]
    assert '"event":"done"' in dump and '"k":"schema_version"' in dump
    _no_password(pw, dump)


# --- lost connections -----------------------------------------------------------------------------------------------

def test_connections_terminated_between_operations(pg_url, stores):
    s = stores(f"{pg_url}?sweep=s")
    s.add_runs(plan(3))
    assert terminate_backends(pg_url) >= 1
    c = s.claim("w")
    assert c.key == "k000" and c.attempt == 1
    assert terminate_backends(pg_url) >= 1
    assert s.heartbeat(c) is True
    assert terminate_backends(pg_url) >= 1
    assert s.finish(c, result(), "w") is True
    assert terminate_backends(pg_url) >= 1
    assert s.rows()[0]["status"] == "done"
    assert event_names(s) == Counter({("k000", "added"): 1, ("k001", "added"): 1, ("k002", "added"): 1,
                                      ("k000", "claimed"): 1, ("k000", "done"): 1})


def test_connections_terminated_during_operations(pg_url, stores, caplog):
    """The operation waits on a table lock; its backend (and the locker's) is terminated while it waits."""
    s = stores(f"{pg_url}?sweep=s", retry_for_s=30)
    s.add_runs(plan(2))
    c = s.claim("w")
    ops = [("heartbeat", lambda: s.heartbeat(c)), ("finish", lambda: s.finish(c, result(), "w")),
           ("claim", lambda: s.claim("w")), ("events", lambda: s.events())]
    got = {}
    with psycopg.connect(pg_url, autocommit=True) as admin, ThreadPoolExecutor(1) as pool:
        for name, op in ops:
            locker = psycopg.connect(pg_url)
            locker.execute("LOCK TABLE scalekit.runs, scalekit.events IN ACCESS EXCLUSIVE MODE")
            future = pool.submit(op)
            deadline = time.monotonic() + 10
            while not admin.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                    "AND wait_event_type = 'Lock'").fetchone()[0]:
                assert time.monotonic() < deadline and not future.done(), f"{name} never waited on the lock"
                time.sleep(0.01)
            assert len(admin.execute(TERMINATE).fetchall()) >= 2      # the waiting store backend and the locker
            got[name] = future.result(timeout=30)
            locker.close()
    assert got["heartbeat"] is True and got["finish"] is True
    assert got["claim"].key == "k001" and got["claim"].attempt == 1
    assert [e["event"] for e in got["events"]].count("done") == 1
    assert "connection lost" in caplog.text                # each op failed once and was retried
    rows = {r["key"]: r for r in s.rows()}
    assert (rows["k000"]["status"], rows["k001"]["status"], rows["k001"]["attempts"]) == ("done", "running", 1)
    assert event_names(s) == Counter({("k000", "added"): 1, ("k001", "added"): 1, ("k000", "claimed"): 1,
                                      ("k000", "done"): 1, ("k001", "claimed"): 1})


def test_terminations_while_a_driver_works_record_nothing_twice(pg_url, stores):
    """A killer terminates the store's backend whenever it is in the middle of a statement or transaction (then lets
    the retry through): every run is still claimed, heartbeated and finished once, with one event each."""
    s = stores(f"{pg_url}?sweep=s", retry_for_s=30)
    n = 100
    s.add_runs(plan(n))
    stop = threading.Event()
    kills = []

    def killer(admin) -> None:
        while not stop.is_set():
            kills.append(len(admin.execute(TERMINATE + " AND state <> 'idle'").fetchall()))
            time.sleep(0.15 if kills[-1] else 0.002)
    with psycopg.connect(pg_url, autocommit=True) as admin:
        t = threading.Thread(target=killer, args=(admin,))
        t.start()
        try:
            done = []
            while (c := s.claim("w", max_attempts=1)) is not None:
                assert s.heartbeat(c) is True
                assert s.finish(c, result(), "w") is True
                done.append(c.key)
        finally:
            stop.set()
            t.join()
    assert sum(kills) > 0
    assert sorted(done) == [f"k{i:03d}" for i in range(n)]
    assert {(r["status"], r["attempts"]) for r in s.rows()} == {("done", 1)}
    names = event_names(s)
    assert all(names[(f"k{i:03d}", ev)] == 1 for i in range(n) for ev in ("added", "claimed", "done")), names
    assert sum(names.values()) == 3 * n


def _lose_first_ack(store: PostgresStore, url: str) -> list:
    """Make each write's first attempt commit its work (on a connection of its own) and then fail as a lost
    connection would: the commit went through but its acknowledgement never arrived. Returns what those committed
    first attempts returned."""
    inner, committed = store._transact, []

    def transact(fn, recover, *, write, setup=False):
        if not write:
            return inner(fn, recover, write=write, setup=setup)
        first = [True]

        def once(db, op):
            if not first[0]:
                return fn(db, op)
            first[0] = False
            with psycopg.connect(url, row_factory=psycopg.rows.dict_row) as side:
                side.execute("SET search_path TO scalekit")
                committed.append(fn(_Connection(side), op))
                side.commit()
            raise psycopg.OperationalError("server closed the connection unexpectedly (simulated after COMMIT)")
        return inner(once, recover, write=write, setup=setup)
    store._transact = transact
    return committed


def test_a_commit_whose_acknowledgement_was_lost_is_not_applied_twice(pg_url, stores):
    s = stores(f"{pg_url}?sweep=s")
    s.add_runs(plan(3))
    committed = _lose_first_ack(s, pg_url)

    c = s.claim("w")
    assert c == committed[-1]                             # the claim the first attempt committed, not a second one
    assert (c.key, c.attempt, c.reclaimed, c.retry) == ("k000", 1, False, False)
    assert s.counts()["running"] == 1 and s.rows()[0]["claim_token"] == c.token and s.rows()[0]["attempts"] == 1
    assert s.heartbeat(c) is True
    assert s.finish(c, result(), "w") is True and committed[-1] is True
    assert s.rows()[0]["status"] == "done"

    c2 = s.claim("w")
    assert c2 == committed[-1] and c2.key == "k001"
    s.fail(c2, "boom", "w")
    c3 = s.claim("w")
    assert c3 == committed[-1] and c3.key == "k002"
    assert s.diverge(c3, {"final_loss": None}, "nan", "w") is True
    retry = s.claim("w", max_attempts=3)
    assert retry == committed[-1] and (retry.key, retry.retry, retry.attempt) == ("k001", True, 2)
    s.release(retry, "w")
    assert {r["key"]: (r["status"], r["attempts"]) for r in s.rows()} == {
        "k000": ("done", 1), "k001": ("failed", 1), "k002": ("diverged", 1)}
    names = event_names(s)
    assert names == Counter({("k000", "added"): 1, ("k001", "added"): 1, ("k002", "added"): 1,
                             ("k000", "claimed"): 1, ("k000", "done"): 1, ("k001", "claimed"): 1,
                             ("k001", "failed"): 1, ("k002", "claimed"): 1, ("k002", "diverged"): 1,
                             ("k001", "retry"): 1, ("k001", "released"): 1})
    assert s.claim("w", max_attempts=1) is None


def test_a_lost_acknowledgement_of_a_claim_already_lost_to_another_driver(pg_url, stores, monkeypatch):
    """The first attempt's claim committed, then (before the retry) another driver reclaimed the run: the retry
    returns None, not a claim of some other run."""
    s, other = stores(f"{pg_url}?sweep=s"), stores(f"{pg_url}?sweep=s")
    s.add_runs(plan(2))
    committed = _lose_first_ack(s, pg_url)
    inner = s._transact

    def reclaim_in_between(fn, recover, **kw):
        def recover_after_reclaim(db, op):
            other.claim("x", keys=[committed[-1].key], stale_after=-1.0)   # the first attempt's run, taken over
            return recover(db, op)
        return inner(fn, recover_after_reclaim if recover else None, **kw)
    s._transact = reclaim_in_between
    assert s.claim("w") is None
    assert {r["key"]: (r["status"], r["worker"]) for r in other.rows()} == {"k000": ("running", "x"),
                                                                            "k001": ("pending", None)}


@pytest.mark.parametrize("op", ["add_runs", "add_done", "reset_failed"])
def test_a_lost_acknowledgement_of_an_insert_or_reset(pg_url, stores, op):
    s = stores(f"{pg_url}?sweep=s")
    if op == "reset_failed":
        s.add_runs(plan(1))
        s.fail(s.claim("w"), "boom", "w")
    committed = _lose_first_ack(s, pg_url)
    if op == "add_runs":
        got, want = s.add_runs(plan(2)), 2
    elif op == "add_done":
        got, want = s.add_done([{"key": "x", "name": "x"}], "ingest:t.csv"), 1
    else:
        got, want = s.reset_failed(), 1
    assert committed == [want]                            # the first attempt committed
    names = event_names(s)
    assert max(names.values()) == 1, names                # no event recorded twice
    assert got == want                                    # what the caller is told: how many it added / reset


# --- a server restart and many processes ----------------------------------------------------------------------------

def test_a_server_restart_while_claiming_and_finishing(pg_server, pg_url, stores):
    s = stores(f"{pg_url}?sweep=s", retry_for_s=60)
    n = 400                                                # paced at >= 10 ms a run until the restart is over
    s.add_runs(plan(n))
    started, restarted = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def restart() -> None:
        try:
            started.wait(10)
            time.sleep(0.2)
            pg_server.restart()
        except BaseException as e:  # noqa: BLE001 -- reported by the main thread
            errors.append(e)
        finally:
            restarted.set()
    pid = pg_server.postmaster_pid()
    t = threading.Thread(target=restart)
    t.start()
    done, after, slowest = [], 0, 0.0
    try:
        while True:
            t0 = time.monotonic()
            if (c := s.claim("w", max_attempts=1, stale_after=600)) is None:
                break
            started.set()
            assert s.finish(c, result(), "w") is True
            slowest = max(slowest, time.monotonic() - t0)
            done.append(c.key)
            if restarted.is_set():
                after += 1
            else:
                time.sleep(0.01)
    finally:
        t.join(60)
    assert not errors and pg_server.postmaster_pid() != pid
    assert after > 0 and slowest > 0.05                    # the loop ran before, through and after the restart
    assert sorted(done) == [f"k{i:03d}" for i in range(n)]
    assert {(r["status"], r["attempts"]) for r in s.rows()} == {("done", 1)}
    names = event_names(s)
    assert all(names[(f"k{i:03d}", ev)] == 1 for i in range(n) for ev in ("claimed", "done"))
    assert sum(names.values()) == 3 * n


CLAIMER = """
import json, sys
from scalekit.sweep.store import open_store
s = open_store(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
got = []
while (c := s.claim(sys.argv[2], max_attempts=1, stale_after=600)) is not None:
    got.append(c.key)
    s.finish(c, {"final_loss": 1.0}, sys.argv[2])
print(json.dumps(got), flush=True)
"""


def test_eight_processes_claim_every_run_exactly_once(pg_url, stores):
    s = stores(f"{pg_url}?sweep=s")
    s.add_runs(plan(200))
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, f"{pg_url}?sweep=s", f"w{i}"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for i in range(8)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        for p in procs:                                    # all open: start them together
            p.stdin.write("go\n")
            p.stdin.flush()
        claimed = {f"w{i}": json.loads(p.communicate(timeout=60)[0]) for i, p in enumerate(procs)}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs)
    flat = [k for keys in claimed.values() for k in keys]
    assert sorted(flat) == [f"k{i:03d}" for i in range(200)]   # every run exactly once
    assert sum(1 for keys in claimed.values() if keys) >= 2     # the claims really were concurrent
    assert {(r["status"], r["attempts"]) for r in s.rows()} == {("done", 1)}
    names = event_names(s)
    assert all(names[(f"k{i:03d}", ev)] == 1 for i in range(200) for ev in ("claimed", "done"))
    by_worker = Counter(e["worker"] for e in s.events() if e["event"] == "claimed")
    assert by_worker == Counter({w: len(keys) for w, keys in claimed.items() if keys})
