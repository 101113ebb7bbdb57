"""Sweeps on the PostgreSQL results store, end to end: real drivers (`python -m scalekit sweep run ... --store URL`
as subprocesses, with the stand-in trainer scalekit.sweep.fake_train), a real server (the session's `pg_server`, or a
server of the test's own where it is restarted), no mocks.

- four drivers racing on one sweep directory and one store run every run once and record it done once;
- a driver SIGKILLed mid-sweep is resumed by a rerun that keeps what was done and records each run once;
- a server restart while runs are in flight loses nothing and runs nothing twice;
- `sweep migrate` SQLite -> PostgreSQL -> SQLite keeps every column and event and fits the same law;
- the URL's password reaches no file of the sweep directory, no output and no row of the database.

Each test starts its drivers in their own session and kills what is left of them afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

psycopg = pytest.importorskip("psycopg")
pytest.importorskip("psycopg_pool")

from scalekit.sweep import pg_local  # noqa: E402
from scalekit.sweep.plan import load_plan  # noqa: E402
from scalekit.sweep.store import StoreError, open_store, url_without_password  # noqa: E402
from scalekit.sweep.store_sql import RUN_COLUMNS  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "experiments" / "sweep_tiny.py")
FAKE = "{python} -m scalekit.sweep.fake_train --config {config} --workdir {workdir}"
FIT = ["--json", "--approach", "3", "--law", "chinchilla"]


# --- helpers ----------------------------------------------------------------------------------------------------------

def _plan() -> dict[str, str]:
    """key -> name of every planned run of the tiny sweep (7 runs)."""
    return {r.key: r.name for r in load_plan(TINY).expand()}


def _env(log: Path | None = None, sleep: float = 0.0, **extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: no libpq settings from outside (the password only where a test puts
    it), the fake trainer's knobs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "SCALEKIT_FAKE"))}
    env["PGPASSFILE"] = os.devnull  # no ~/.pgpass either: a password must come from the URL or PGPASSWORD
    if log is not None:
        env["SCALEKIT_FAKE_LOG"] = str(log)
    env["SCALEKIT_FAKE_SLEEP"] = str(sleep)
    env.update(extra)
    return env


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scalekit", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env if env is not None else _env(), timeout=timeout, check=False)


def _cli_all(*calls: tuple[list[str], dict[str, str] | None],
             timeout: float = 120) -> list[subprocess.CompletedProcess]:
    """Several independent CLI commands at once (args, env), their results in order."""
    procs = [subprocess.Popen([sys.executable, "-m", "scalekit", *args], cwd=ROOT, text=True,
                              env=env if env is not None else _env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for args, env in calls]
    out = []
    for (args, _), p in zip(calls, procs):
        try:
            stdout, stderr = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        out.append(subprocess.CompletedProcess(args, p.returncode, stdout, stderr))
    return out


def _log_events(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _starts(log: Path) -> Counter:
    return Counter(e["name"] for e in _log_events(log) if e["event"] == "start")


def _in_flight(log: Path) -> list[str]:
    """Names of runs the fake trainer started and has not ended (nor failed)."""
    open_: Counter = Counter()
    for e in _log_events(log):
        open_[e["name"]] += 1 if e["event"] == "start" else -1
    return [n for n, c in open_.items() if c > 0]


def _read(url: str) -> tuple[list[dict], list[dict]]:
    """(rows, events) of the sweep at `url` (a URL with ?sweep=, or a sweep directory), read-only."""
    s = open_store(url, create=False, readonly=True)
    try:
        return s.rows(), s.events()
    finally:
        s.close()


def _done_once(rows: list[dict], events: list[dict], keys: dict[str, str]) -> None:
    """Every planned run is stored once, done, with exactly one 'done' event, and nothing was dropped as a
    duplicate."""
    assert sorted(r["key"] for r in rows) == sorted(keys)
    assert {r["status"] for r in rows} == {"done"}, [(r["name"], r["status"]) for r in rows]
    done = Counter(e["key"] for e in events if e["event"] == "done")
    assert done == Counter(list(keys)), done
    assert not [e for e in events if e["event"] in ("duplicate_dropped", "failed_after_lost", "lost")]


def _ran_once(log: Path, keys: dict[str, str]) -> None:
    """The fake trainer started every planned run exactly once."""
    starts = _starts(log)
    assert starts == Counter(keys.values()), starts


class Drivers:
    """`sweep run` drivers as subprocesses, each in its own session (so a test can SIGKILL its process group)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, workdir: Path, store: str | None, *extra: str, env: dict[str, str]) -> subprocess.Popen:
        argv = [sys.executable, "-m", "scalekit", "sweep", "run", TINY, "--workdir", str(workdir),
                "--train-cmd", FAKE, *(["--store", store] if store else []), *extra]
        p = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
        self.procs.append(p)
        return p

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.communicate()


@pytest.fixture
def drivers():
    d = Drivers()
    yield d
    d.close()


def _wait_for(cond, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the driver exited ({proc.returncode}) before {what}:\n{proc.communicate()[0][-4000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"not {what} after {timeout} s")
        time.sleep(0.05)


# --- racing drivers -----------------------------------------------------------------------------------------------

def test_four_drivers_racing_on_one_directory_and_store(pg_url, tmp_path, drivers):
    keys = _plan()
    workdir, log = tmp_path / "sweep", tmp_path / "fake.log"
    url = f"{pg_url}?sweep=race"
    procs = [drivers.start(workdir, url, "--parallel", "2", env=_env(log, sleep=0.3)) for _ in range(4)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n-----\n".join(outs)
    for out in outs:
        assert "sweep: 7/7 done, 0 failed, 0 running, 0 pending" in out, out
    _ran_once(log, keys)
    rows, events = _read(url)
    _done_once(rows, events, keys)
    assert {r["attempts"] for r in rows} == {1}
    claims = Counter((e["key"], e["event"]) for e in events if e["event"] in ("claimed", "reclaimed", "retry"))
    assert claims == Counter((k, "claimed") for k in keys), claims
    added = Counter(e["key"] for e in events if e["event"] == "added")
    assert added == Counter(list(keys))  # four drivers planned the same runs: each stored once
    assert [r["ord"] for r in rows] == list(range(len(keys)))
    # They raced: at least two drivers claimed runs (each driver's workers are named host:pid/i).
    drivers_that_worked = {e["worker"].rsplit("/", 1)[0] for e in events if e["event"] == "claimed"}
    assert len(drivers_that_worked) >= 2, (drivers_that_worked, outs)
    assert json.loads((workdir / "store.json").read_text()) == {"url": url_without_password(url), "sweep": "race"}


def test_concurrent_pointer_writes_do_not_fail(tmp_path):
    """Drivers started at once on one directory all write its store.json; none may fail doing so."""
    script = ("import sys, types\n"
              "from scalekit.sweep.store import write_pointer\n"
              "s = types.SimpleNamespace(sweep='x')\n"
              "for _ in range(300):\n"
              "    write_pointer(sys.argv[1], s, 'postgresql://u:pw@127.0.0.1:1/db')\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, stderr=subprocess.PIPE,
                              text=True) for _ in range(4)]
    errs = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(errs)
    assert json.loads((tmp_path / "store.json").read_text()) == {"url": "postgresql://u@127.0.0.1:1/db",
                                                                 "sweep": "x"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.json"]  # no temp file left behind


# --- a driver killed mid-sweep --------------------------------------------------------------------------------------

def test_sigkill_a_driver_mid_sweep_then_resume(pg_url, tmp_path, drivers):
    keys = _plan()
    workdir, log = tmp_path / "sweep", tmp_path / "fake.log"
    url = f"{pg_url}?sweep=killed"
    driver = drivers.start(workdir, url, "--parallel", "2", "--stale-after", "2", env=_env(log, sleep=0.7))

    watch = None

    def two_done_and_one_running() -> bool:  # two results stored, and a trainer mid-run
        nonlocal watch
        if watch is None:
            try:
                watch = open_store(url, create=False, readonly=True)
            except (FileNotFoundError, StoreError):  # the driver has not created the sweep yet
                return False
        return watch.counts()["done"] >= 2 and bool(_in_flight(log))
    try:
        _wait_for(two_done_and_one_running, 60, "two runs done and another running", driver)
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and everything in its process group, no clean-up
    finally:
        if watch is not None:
            watch.close()
    driver.communicate(timeout=30)
    killed = set(_in_flight(log))
    rows, _ = _read(url)
    before = {r["key"]: r for r in rows if r["status"] == "done"}
    running = {r["name"] for r in rows if r["status"] == "running"}
    assert len(before) >= 2 and running, [(r["name"], r["status"]) for r in rows]
    assert killed <= running  # what was in flight is still 'running' in the store, its driver gone

    rerun = drivers.start(workdir, url, "--stale-after", "2", env=_env(log))
    out = rerun.communicate(timeout=120)[0]
    assert rerun.returncode == 0, out
    assert "reclaimed from dead drivers" in out and "0 reclaimed from dead drivers" not in out, out
    rows, events = _read(url)
    _done_once(rows, events, keys)
    after = {r["key"]: r for r in rows}
    for key, old in before.items():  # done before the kill: not touched since (every column)
        assert after[key] == old, (old["name"], {c: (old[c], after[key][c]) for c in old if old[c] != after[key][c]})
        assert (after[key]["final_loss"], after[key]["finished"], after[key]["attempts"]) == \
            (old["final_loss"], old["finished"], 1)
    reclaimed = {e["key"] for e in events if e["event"] == "reclaimed"}
    assert {keys[k] for k in reclaimed} == running  # each run the dead driver held was reclaimed, once
    assert all(after[k]["attempts"] == 2 for k in reclaimed)
    assert all(r["attempts"] == 1 for k, r in after.items() if k not in reclaimed)
    ev = _log_events(log)
    for name in keys.values():  # no run started again after it had finished
        seq = [e["event"] for e in ev if e["name"] == name]
        assert seq.count("end") == 1 and "start" not in seq[seq.index("end"):], (name, seq)


# --- the server restarted mid-sweep --------------------------------------------------------------------------------

@pytest.fixture
def own_server():
    """A LocalPostgres of this test's own (it gets restarted), removed afterwards."""
    if pg_local.find_pg_bin() is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: install Debian's `postgresql` "
                    "package or set PG_BIN")
    with pg_local.LocalPostgres() as server:
        yield server


def test_server_restart_mid_sweep_loses_nothing(own_server, tmp_path, drivers):
    keys = _plan()
    workdir, log = tmp_path / "sweep", tmp_path / "fake.log"
    url = own_server.create_database("sweeps") + "?sweep=restarted"
    driver = drivers.start(workdir, url, "--parallel", "2", env=_env(log, sleep=0.5))
    ends = lambda: sum(e["event"] == "end" for e in _log_events(log))  # noqa: E731
    _wait_for(lambda: ends() >= 1 and bool(_in_flight(log)), 60, "one run done and another running", driver)
    pid = own_server.postmaster_pid()
    in_flight = set(_in_flight(log))
    own_server.restart()  # pg_ctl stop -m fast (every connection dropped), then start on the same port
    assert own_server.postmaster_pid() != pid
    # A second restart that a result must wait out: the server stays down until a trainer has finished, so the
    # driver records that result through the outage (its pool reconnects, or it retries the transaction).
    _wait_for(lambda: bool(_in_flight(log)), 30, "another run running", driver)
    n_ends = ends()
    own_server.stop()
    _wait_for(lambda: ends() > n_ends, 30, "a run finished while the server was down")
    time.sleep(0.5)
    own_server.start()
    out = driver.communicate(timeout=120)[0]
    assert driver.returncode == 0, out
    assert own_server.password not in out
    assert "sweep: 7/7 done" in out and "0 reclaimed from dead drivers" in out, out
    _ran_once(log, keys)
    rows, events = _read(url)
    _done_once(rows, events, keys)
    assert {r["attempts"] for r in rows} == {1}  # nothing was retried or reclaimed
    assert Counter(e["event"] for e in events) == {"added": 7, "claimed": 7, "done": 7}
    assert in_flight <= {r["name"] for r in rows if r["status"] == "done"}


# --- migrate SQLite <-> PostgreSQL ---------------------------------------------------------------------------------

def _dump(location: str) -> tuple[list[dict], list[dict]]:
    s = open_store(location, create=False, readonly=True)
    try:
        return s.dump()
    finally:
        s.close()


def test_migrate_sqlite_to_postgres_and_back(pg_server, pg_url, tmp_path, drivers):
    keys = _plan()
    src, back = tmp_path / "src", tmp_path / "back"
    url = f"{pg_url}?sweep=x"
    p = drivers.start(src, None, "--parallel", "2", "--max-attempts", "2", env=_env(tmp_path / "fake.log"))
    assert p.communicate(timeout=120)[0] and p.returncode == 0
    assert (src / "results.db").exists() and not (src / "store.json").exists()

    there = _cli("sweep", "migrate", str(src), url)
    assert there.returncode == 0, there.stdout + there.stderr
    assert ": 7 runs, 7 copied with 21 events, 0 already there" in there.stdout, there.stdout
    home = _cli("sweep", "migrate", url, str(back))
    assert home.returncode == 0, home.stdout + home.stderr
    assert ": 7 runs, 7 copied with 21 events, 0 already there" in home.stdout, home.stdout
    for out in (there.stdout + there.stderr, home.stdout + home.stderr):
        assert pg_server.password not in out and "***" in out

    (runs_a, ev_a), (runs_pg, ev_pg), (runs_b, ev_b) = _dump(str(src)), _dump(url), _dump(str(back))
    assert [r["sweep"] for r in runs_a] == ["src"] * 7 and [r["sweep"] for r in runs_pg + runs_b] == ["x"] * 14
    for runs in (runs_a, runs_pg, runs_b):
        assert set(runs[0]) == set(RUN_COLUMNS)
    strip = lambda rows, *cols: [{k: v for k, v in r.items() if k not in cols} for r in rows]  # noqa: E731
    assert strip(runs_a, "sweep") == strip(runs_pg, "sweep") == strip(runs_b, "sweep")  # every other column
    assert [r["key"] for r in runs_a] == list(keys) and {r["status"] for r in runs_a} == {"done"}
    assert all(r["summary"] and r["finished"] and r["final_loss"] for r in runs_pg)
    assert len(ev_a) == 21 and strip(ev_a, "id", "sweep") == strip(ev_pg, "id", "sweep") == strip(ev_b, "id", "sweep")

    # At once: the same two migrations again (idempotent: they copy nothing), and a fit of each store.
    fits = [(["fit", *data, *FIT], None) for data in ([str(src)], ["--store", url], [str(back)])]
    *again, fit_src, fit_pg, fit_back = _cli_all((["sweep", "migrate", str(src), url], None),
                                                 (["sweep", "migrate", url, str(back)], None), *fits)
    for res in again:
        assert res.returncode == 0 and ": 7 runs, 0 copied with 0 events, 7 already there" in res.stdout, \
            res.stdout + res.stderr
    assert _dump(url) == (runs_pg, ev_pg) and _dump(str(back)) == (runs_b, ev_b)
    params = []
    for res in (fit_src, fit_pg, fit_back):
        assert res.returncode == 0, res.stdout + res.stderr
        out = json.loads(res.stdout)
        assert out["n_points"] == 7 and out["law"] == "chinchilla", out
        params.append(out["params"])
    assert set(params[0]) == {"A", "B", "E", "alpha", "beta"}
    assert params[1] == params[0] and params[2] == params[0]  # the same numbers, to the last bit
    assert pg_server.password not in fit_pg.stdout + fit_pg.stderr


# --- passwords -----------------------------------------------------------------------------------------------------

def test_the_password_reaches_no_file_output_or_row(pg_server, pg_url, tmp_path, drivers):
    pw = pg_server.password
    assert len(pw) >= 16 and pw in pg_url
    keys = _plan()
    workdir, log = tmp_path / "sweep", tmp_path / "fake.log"
    outputs: list[str] = []

    # A sweep whose first pass fails one run (its error text is stored), then finishes with --retry-failed.
    first = drivers.start(workdir, pg_url, "--parallel", "2", "--max-attempts", "1",
                          env=_env(log, SCALEKIT_FAKE_FAIL="^tiny_C1.2e10$"))
    outputs.append(first.communicate(timeout=120)[0])
    assert first.returncode == 1 and "failed tiny_C1.2e10 after 1 attempt(s)" in outputs[-1], outputs[-1]
    second = drivers.start(workdir, pg_url, "--max-attempts", "1", "--retry-failed", env=_env(log))
    outputs.append(second.communicate(timeout=120)[0])
    assert second.returncode == 0, outputs[-1]
    pointer = json.loads((workdir / "store.json").read_text())
    assert pointer == {"url": url_without_password(pg_url), "sweep": "sweep"}
    # The commands after it, at once: a Slurm dry run (its script lands in DIR); commands on DIR, which find the
    # store through store.json: without a password they cannot log in, with PGPASSWORD they can; and commands
    # given the URL with its password again, which print it as ***.
    with_pw = _env(PGPASSWORD=pw)
    dry, no_pw, *rest = _cli_all(
        (["sweep", "run", TINY, "--workdir", str(workdir), "--store", pg_url, "--executor", "slurm", "--dry-run",
          "--train-cmd", FAKE], None),
        (["sweep", "status", str(workdir)], None),
        (["sweep", "status", str(workdir)], with_pw), (["sweep", "status", str(workdir), "--json"], with_pw),
        (["sweep", "status", str(workdir), "--store", pg_url], None),
        (["sweep", "export", str(workdir), "--format", "jsonl"], with_pw),
        (["fit", str(workdir), *FIT], with_pw), (["fit", "--store", pg_url, *FIT], None))
    outputs += [dry.stdout + dry.stderr, no_pw.stdout + no_pw.stderr]
    assert dry.returncode == 0 and "dry run: wrote" in dry.stdout, outputs[-2]
    assert no_pw.returncode == 2 and "cannot connect to the results store" in no_pw.stderr, outputs[-1]
    for res in rest:
        outputs.append(res.stdout + res.stderr)
        assert res.returncode == 0, (res.args, outputs[-1])
        if res.args[-1] == "--json":
            status = json.loads(res.stdout)
    assert status["counts"]["done"] == 7 and status["store"] == url_without_password(pg_url)
    assert f"(store postgresql://{pg_server.user}:***@" in outputs[0] and "***" in outputs[-1]
    for out in outputs:
        assert pw not in out, out

    files = [p for p in workdir.rglob("*") if p.is_file()]
    names = {str(p.relative_to(workdir)) for p in files}
    assert "store.json" in names and "results.jsonl" in names and any(n.endswith(".sbatch") for n in names)
    assert sum(n.endswith("config.json") for n in names) == 7 and any(n.endswith("stderr.log") for n in names)
    assert "results.db" not in names  # the results went to PostgreSQL only
    for p in files:
        assert pw.encode() not in p.read_bytes(), p
    for p in (log, *tmp_path.glob("*")):
        if p.is_file():
            assert pw.encode() not in p.read_bytes(), p

    with psycopg.connect(pg_url) as conn:  # every table of the store's schema, as text
        tables = [r[0] for r in conn.execute("SELECT table_name FROM information_schema.tables "
                                             "WHERE table_schema = 'scalekit'").fetchall()]
        assert sorted(tables) == ["events", "meta", "runs", "sweeps"]
        dump = {t: conn.execute(f"SELECT coalesce(json_agg(t)::text, '') FROM scalekit.{t} t").fetchone()[0]
                for t in tables}
    assert "fake failure for tiny_C1.2e10" in dump["events"] and '"event":"done"' in dump["events"]
    assert str(workdir.resolve()) in dump["sweeps"] and len(dump["runs"]) > 1000
    for t, text in dump.items():
        assert pw not in text, t
    rows, events = _read(f"{pg_url}?sweep=sweep")
    _done_once(rows, events, keys)
