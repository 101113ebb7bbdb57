"""The results store survives damage: checked on open, repaired from the run directories, readable read-only, and
every store or path error of `scalekit sweep` is one line with exit code 2.

The sweep these tests damage is made the way the executors make one: the tiny plan run by `run_local` with the
stand-in trainer (scalekit.sweep.fake_train, a test double), so each run directory holds the executor's config.json
and the trainer's summary.json.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from store_v1 import make_v1_store

from scalekit.cli import sweep as cli
from scalekit.sweep import executors as ex
from scalekit.sweep.plan import load_plan
from scalekit.sweep.repair import RepairRefused, repair
from scalekit.sweep.store import (SCHEMA_VERSION, StoreDamagedError, load_sweep_frame, open_store)

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "experiments" / "sweep_tiny.py")
FAKE = ["{python}", "-m", "scalekit.sweep.fake_train", "--config", "{config}", "--workdir", "{workdir}"]
COMPARED = ("name", "n_params", "n_params_nonembed", "tokens", "flops", "flops_6n", "final_loss", "eval_loss",
            "eval_curve", "host", "wall_time_s", "attempts", "fields")


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny sweep (7 runs), made once per module; tests copy it."""
    d = tmp_path_factory.mktemp("sweep")
    runs = load_plan(TINY).expand()
    store = open_store(d)
    store.add_runs(r.to_row() for r in runs)
    outcomes = ex.run_local(store, d, ex.WorkerOptions(command=FAKE, keys=[r.key for r in runs]), parallel=2)
    assert {o.status for o in outcomes} == {"done"}
    return d


@pytest.fixture
def sweep(finished_sweep: Path, tmp_path: Path) -> Path:
    d = tmp_path / "sweep"
    shutil.copytree(finished_sweep, d)
    return d


def _cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _assert_one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for n in needles:
        assert n in err, (n, err)


def test_zero_byte_store_is_damaged_not_an_empty_sweep(sweep: Path, capsys: pytest.CaptureFixture) -> None:
    (sweep / "results.db").write_bytes(b"")
    for suffix in ("-wal", "-shm"):
        Path(f"{sweep / 'results.db'}{suffix}").unlink(missing_ok=True)
    with pytest.raises(StoreDamagedError, match=r"0-byte.*scalekit sweep repair"):
        load_sweep_frame(sweep)
    with pytest.raises(StoreDamagedError, match="sweep repair"):
        open_store(sweep)  # the writing open does not turn it into a fresh store either
    assert (sweep / "results.db").stat().st_size == 0
    rc, out, err = _cli(capsys, "status", str(sweep))
    _assert_one_line_error(rc, err, "damaged", f"scalekit sweep repair {sweep}")
    assert "0 runs" not in out
    # and through the real entry point: exit code 2, one line, no traceback
    proc = subprocess.run([sys.executable, "-m", "scalekit", "sweep", "export", str(sweep)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    _assert_one_line_error(proc.returncode, proc.stderr, "sweep repair")


@pytest.mark.parametrize("damage", ["garbage", "garbage_after_header_page", "truncated_half", "short_header"])
def test_garbage_and_truncated_stores_are_damaged(sweep: Path, damage: str, capsys: pytest.CaptureFixture) -> None:
    db = sweep / "results.db"
    open_store(sweep).rows()  # make sure the WAL is checkpointed into the file first
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    good = db.read_bytes()
    rng = __import__("random").Random(0)
    junk = bytes(rng.randrange(256) for _ in range(len(good)))
    db.write_bytes({"garbage": junk, "garbage_after_header_page": good[:4096] + junk[4096:],
                    "truncated_half": good[:len(good) // 2], "short_header": b"SQLite f"}[damage])
    with pytest.raises(StoreDamagedError, match="scalekit sweep repair"):
        load_sweep_frame(sweep)
    rc, _, err = _cli(capsys, "status", str(sweep))
    _assert_one_line_error(rc, err, "damaged", "sweep repair")


def test_sqlite_file_with_another_schema_is_damaged(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    db = sqlite3.connect(tmp_path / "results.db")
    db.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, loss REAL)")  # a 'runs' table, but not ours
    db.commit()
    db.close()
    with pytest.raises(StoreDamagedError, match=r"wrong schema.*sweep repair"):
        open_store(tmp_path)
    with pytest.raises(StoreDamagedError, match="wrong schema"):
        load_sweep_frame(tmp_path)
    rc, _, err = _cli(capsys, "status", str(tmp_path))
    _assert_one_line_error(rc, err, "wrong schema", "sweep repair")


def test_unversioned_store_is_accepted_and_migrated_only_by_a_writer(tmp_path: Path) -> None:
    make_v1_store(tmp_path / "results.db", [("k" * 16, "r", "pending")], user_version=0)  # before versions existed

    def version() -> int:
        c = sqlite3.connect(tmp_path / "results.db")
        try:
            return c.execute("PRAGMA user_version").fetchone()[0]
        finally:
            c.close()

    assert len(load_sweep_frame(tmp_path)) == 1 and version() == 0  # reading accepts it and writes nothing
    assert open_store(tmp_path).counts()["pending"] == 1 and version() == SCHEMA_VERSION


def _break(sweep: Path) -> None:
    """Runs in three states: a pending one (config, no summary), a diverged one, the rest done; then a 0-byte db."""
    rdirs = sorted((sweep / "runs").iterdir())
    (rdirs[0] / "summary.json").unlink()
    s = json.loads((rdirs[1] / "summary.json").read_text())
    (rdirs[1] / "summary.json").write_text(json.dumps({**s, "status": "diverged", "reason": "loss", "step": 7}))
    (sweep / "results.db").write_bytes(b"")


def test_repair_rebuilds_rows_from_run_dirs_and_keeps_the_damaged_file(sweep: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    before = {r["key"]: r for r in open_store(sweep, create=False, readonly=True).rows()}
    rdirs = sorted((sweep / "runs").iterdir())
    pending_key = next(k for k in before if k.startswith(rdirs[0].name))
    diverged_key = next(k for k in before if k.startswith(rdirs[1].name))
    _break(sweep)
    rc, out, err = _cli(capsys, "repair", str(sweep), "--plan", TINY)
    assert rc == 0, err
    assert "recovered 7 runs" in out and "5 done" in out and "1 diverged" in out and "1 pending" in out, out
    aside = sorted(sweep.glob("results.db.damaged-*"))
    assert aside and aside[0].stat().st_size == 0  # the damaged file is kept, as it was
    after = {r["key"]: r for r in open_store(sweep, create=False, readonly=True).rows()}
    assert set(after) == set(before)
    for key, b in before.items():
        a = after[key]
        if key == pending_key:
            assert a["status"] == "pending" and a["final_loss"] is None and a["attempts"] == 0
            assert a["name"] == b["name"] and a["fields"] == b["fields"] and a["n_params"] == b["n_params"]
            continue
        assert a["status"] == ("diverged" if key == diverged_key else "done")
        assert {c: a[c] for c in COMPARED} == {c: b[c] for c in COMPARED}, a["name"]
    assert "diverged" in after[diverged_key]["error"] and "step 7" in after[diverged_key]["error"]
    assert [r["name"] for r in open_store(sweep).rows()] == [r["name"] for r in before.values()]  # plan order
    df = load_sweep_frame(sweep)
    assert (df.status == "done").sum() == 5
    assert all(e["event"] == "repaired" for e in open_store(sweep).events())
    # the repaired sweep resumes: only the pending run is run again
    store = open_store(sweep)
    keys = [r.key for r in load_plan(TINY).expand()]
    outcomes = ex.run_local(store, sweep, ex.WorkerOptions(command=FAKE, keys=keys))
    assert [o.key for o in outcomes] == [pending_key] and outcomes[0].status == "done"


def test_repair_without_plan_recovers_keys_names_and_results(sweep: Path) -> None:
    before = {r["key"]: r for r in open_store(sweep, create=False, readonly=True).rows()}
    _break(sweep)
    report = repair(sweep)
    assert report.counts == {"done": 5, "diverged": 1, "pending": 1}
    after = {r["key"]: r for r in open_store(sweep, create=False, readonly=True).rows()}
    assert set(after) == set(before)
    for key, b in before.items():
        a = after[key]
        assert a["name"] == b["name"] and a["n_params"] == b["n_params"] and a["tokens"] == b["tokens"]
        assert {f: a["fields"][f] for f in ("model", "lr", "seed", "steps")} == \
            {f: b["fields"][f] for f in ("model", "lr", "seed", "steps")}, a["name"]
        assert a["fields"]["budget"] == pytest.approx(b["fields"]["budget"], rel=1e-2), a["name"]
        if a["status"] != "pending":
            assert a["final_loss"] == b["final_loss"]
    assert any("--plan" in n for n in report.notes)


def test_repair_refuses_a_healthy_store_unless_forced(sweep: Path, capsys: pytest.CaptureFixture) -> None:
    good = (sweep / "results.db").read_bytes()
    with pytest.raises(RepairRefused, match="healthy"):
        repair(sweep)
    rc, _, err = _cli(capsys, "repair", str(sweep))
    _assert_one_line_error(rc, err, "healthy", "--force")
    assert (sweep / "results.db").read_bytes() == good and not list(sweep.glob("results.db.*-*"))
    rc, out, err = _cli(capsys, "repair", str(sweep), "--force")
    assert rc == 0 and "recovered 7 runs" in out and "7 done" in out, (out, err)
    assert len(list(sweep.glob("results.db.old-*"))) >= 1  # the healthy file is kept aside, not deleted
    assert open_store(sweep).counts()["done"] == 7


def test_status_and_export_read_a_read_only_store(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Read-only commands open SQLite only with `mode=ro` URIs.

    We run as root in the test containers and root ignores file permissions (and chattr +i is unavailable), so
    chmod alone proves nothing here; the test records every sqlite3.connect the commands make and requires each to be
    a read-only URI: without the fix, `sweep status` opened the store read-write (and ran CREATE TABLE on it). The
    chmod 0o444 file in a 0o555 directory still makes the test real for a non-root user.
    """
    open_store(sweep).rows()
    for suffix in ("-wal", "-shm"):
        Path(f"{sweep / 'results.db'}{suffix}").unlink(missing_ok=True)
    opened: list[tuple[str, bool]] = []
    real_connect = sqlite3.connect

    def recording_connect(database, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        opened.append((str(database), bool(kwargs.get("uri"))))
        return real_connect(database, *args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", recording_connect)
    os.chmod(sweep / "results.db", 0o444)
    os.chmod(sweep, 0o555)
    try:
        rc, out, err = _cli(capsys, "status", str(sweep), "--json")
        assert rc == 0, err
        assert json.loads(out)["counts"]["done"] == 7
        rc, out, err = _cli(capsys, "export", str(sweep), "--format", "csv", "--out", str(tmp_path / "r.csv"))
        assert rc == 0 and (tmp_path / "r.csv").exists(), err
        assert len(load_sweep_frame(sweep)) == 7
    finally:
        os.chmod(sweep, 0o755)
        os.chmod(sweep / "results.db", 0o644)
    assert opened, "the commands must open the store"
    bad = [db for db, uri in opened if not (uri and db.startswith("file:") and "mode=ro" in db)]
    assert not bad, f"read paths opened the store for writing: {bad}"


def test_cli_store_and_path_errors_are_one_line_exit_2(sweep: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    a_file = tmp_path / "not_a_dir"
    a_file.write_text("x")
    rc, _, err = _cli(capsys, "status", str(a_file))
    _assert_one_line_error(rc, err, "is a file")
    rc, _, err = _cli(capsys, "run", TINY, "--workdir", str(a_file / "sub"), "--train-cmd", " ".join(FAKE))
    _assert_one_line_error(rc, err, "is a file")
    rc, _, err = _cli(capsys, "status", str(tmp_path / "missing"))
    _assert_one_line_error(rc, err, "no sweep results")
    rc, _, err = _cli(capsys, "export", str(sweep), "--out", str(a_file / "r.csv"))
    _assert_one_line_error(rc, err, "not_a_dir")
    rc, _, err = _cli(capsys, "repair", str(a_file))
    _assert_one_line_error(rc, err, "is a file")
    table = tmp_path / "t.csv"
    table.write_text("name,n_params,tokens,final_loss\na,1000,20000,3.0\n")
    (sweep / "results.db").write_bytes(b"\x00" * 100)
    for cmd in (["status", str(sweep)], ["export", str(sweep)], ["work", str(sweep)],
                ["run", TINY, "--workdir", str(sweep), "--train-cmd", " ".join(FAKE)],
                ["ingest", str(sweep), str(table)]):
        rc, _, err = _cli(capsys, *cmd)
        _assert_one_line_error(rc, err, "damaged", "sweep repair")


def _without_dac_caps() -> list[str] | None:
    """A command prefix that runs as root without CAP_DAC_OVERRIDE, so file permissions apply; None if unavailable."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return None
    prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--inh-caps", "-all"]
    probe = subprocess.run([*prefix, "true"], capture_output=True)
    return prefix if probe.returncode == 0 else None


def test_status_and_export_on_a_truly_read_only_directory(sweep: Path, tmp_path: Path) -> None:
    """The same as above, enforced by the kernel: the commands run under `setpriv` with CAP_DAC_OVERRIDE dropped,
    so root obeys the 0o444 file in the 0o555 directory (no -wal/-shm present, so SQLite must open it immutable).
    Without the fix `sweep status` fails with 'attempt to write a readonly database'. Skipped where setpriv or root
    is missing (a non-root user gets the same check from the plain chmod)."""
    prefix = _without_dac_caps()
    if prefix is None:
        pytest.skip("needs root and setpriv to drop CAP_DAC_OVERRIDE")
    open_store(sweep).rows()
    for suffix in ("-wal", "-shm"):
        Path(f"{sweep / 'results.db'}{suffix}").unlink(missing_ok=True)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    os.chmod(sweep / "results.db", 0o444)
    os.chmod(sweep, 0o555)
    try:
        listing = sorted(p.name for p in sweep.iterdir())
        for argv in (["status", str(sweep), "--json"], ["export", str(sweep), "--out", str(out_dir / "r.jsonl"),
                                                        "--format", "jsonl"]):
            proc = subprocess.run([*prefix, sys.executable, "-m", "scalekit", "sweep", *argv], cwd=ROOT,
                                  capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, proc.stderr
        assert sorted(p.name for p in sweep.iterdir()) == listing  # nothing written next to the store
        # writing into it fails with one line, not a traceback
        proc = subprocess.run([*prefix, sys.executable, "-m", "scalekit", "sweep", "export", str(sweep)], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        _assert_one_line_error(proc.returncode, proc.stderr, "results.csv")
        for argv, needle in ((["run", TINY, "--workdir", str(sweep / "sub"), "--train-cmd", " ".join(FAKE)],
                              "Permission denied"), (["repair", str(sweep), "--force"], "not writable")):
            proc = subprocess.run([*prefix, sys.executable, "-m", "scalekit", "sweep", *argv], cwd=ROOT,
                                  capture_output=True, text=True, timeout=120)
            _assert_one_line_error(proc.returncode, proc.stderr, needle)
    finally:
        os.chmod(sweep, 0o755)
        os.chmod(sweep / "results.db", 0o644)
    assert len((out_dir / "r.jsonl").read_text().splitlines()) == 7
