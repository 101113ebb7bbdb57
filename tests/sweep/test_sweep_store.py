"""The results store: atomic claims across processes, stale reclaim, retry limits, ingest and export.

Each test that is not about SQLite files runs on both backends (the `backend` fixture, tests/sweep/conftest.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from scalekit.sweep.store import load_sweep_frame, open_store
from scalekit.sweep.tables import IngestError, export_sweep, ingest


def _rows(n: int) -> list[dict]:
    return [{"key": f"k{i:03d}", "name": f"run{i}", "config": {"i": i}, "fields": {"model": "m", "seed": i},
             "n_params": 1000 * (i + 1), "n_params_nonembed": 900 * (i + 1), "tokens": 10_000, "flops": 1e9,
             "flops_6n": 6e7 * (i + 1)} for i in range(n)]


def _result(loss: float) -> dict:
    return {"final_loss": loss, "eval_loss": loss + 0.1, "eval_curve": [[5, loss + 1], [10, loss]],
            "wall_time_s": 1.5, "host": "h", "tokens": 10_000}


def test_add_is_idempotent(backend) -> None:
    store = open_store(backend.url())
    assert store.add_runs(_rows(3)) == 3
    assert store.add_runs(_rows(4)) == 1
    assert store.counts() == {"pending": 4, "running": 0, "done": 0, "failed": 0, "diverged": 0}
    assert open_store(backend.url(), readonly=True).counts()["pending"] == 4
    with pytest.raises(FileNotFoundError):
        open_store(backend.url("nowhere"), create=False)


def test_store_is_sqlite_wal(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    assert store.add_runs(_rows(3)) == 3
    import sqlite3
    db = sqlite3.connect(tmp_path / "results.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(FileNotFoundError):
        open_store(tmp_path / "nowhere", create=False)


def test_claims_are_exclusive_across_processes(backend) -> None:
    backend.open().add_runs(_rows(40))
    code = ("import sys, json; from scalekit.sweep.store import open_store\n"
            "s = open_store(sys.argv[1]); got = []\n"
            "while (c := s.claim(sys.argv[2], max_attempts=1, stale_after=60)) is not None:\n"
            "    got.append(c.key); s.finish(c, {'final_loss': 1.0}, sys.argv[2])\n"
            "print(json.dumps(got))")
    procs = [subprocess.Popen([sys.executable, "-c", code, backend.url(), f"w{i}"],
                              stdout=subprocess.PIPE, text=True) for i in range(4)]
    claimed = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    flat = [k for c in claimed for k in c]
    assert sorted(flat) == [f"k{i:03d}" for i in range(40)]  # every run exactly once
    store = backend.open(readonly=True)
    assert store.counts()["done"] == 40
    assert sum(e["event"] == "claimed" for e in store.events()) == 40


def test_stale_running_run_is_reclaimed_and_late_results_dropped(backend) -> None:
    store = backend.open()
    store.add_runs(_rows(1))
    first = store.claim("a", stale_after=0.3)
    assert first is not None and store.claim("b", stale_after=0.3) is None
    time.sleep(0.5)  # 'a' died: its heartbeat goes stale
    second = store.claim("b", stale_after=0.3)
    assert second is not None and second.reclaimed and second.attempt == 2
    assert not store.heartbeat(first)  # 'a' learns it lost the run
    assert store.heartbeat(second)
    assert store.finish(second, _result(2.0), "b")
    assert not store.finish(first, _result(9.0), "a")  # never overwrites a finished result
    row = store.rows()[0]
    assert row["status"] == "done" and row["final_loss"] == 2.0 and row["eval_curve"] == [[5, 3.0], [10, 2.0]]
    time.sleep(0.5)
    assert store.claim("c", stale_after=0.3) is None  # done runs are never claimed again


def test_failed_runs_retry_up_to_the_limit(backend) -> None:
    store = backend.open()
    store.add_runs(_rows(1))
    for attempt in (1, 2):
        c = store.claim("w", max_attempts=2)
        assert c is not None and c.attempt == attempt and c.retry == (attempt > 1)
        store.fail(c, f"boom {attempt}", "w")
    assert store.claim("w", max_attempts=2) is None
    row = store.rows()[0]
    assert row["status"] == "failed" and row["attempts"] == 2 and row["error"] == "boom 2"
    assert store.reset_failed() == 1
    c = store.claim("w", max_attempts=2)
    assert c is not None and c.attempt == 1
    store.release(c, "w")  # an interrupted attempt does not count
    assert store.rows()[0]["attempts"] == 0 and store.rows()[0]["status"] == "failed"
    assert store.claim("w", max_attempts=2) is not None


def test_stale_run_without_attempts_left_becomes_failed(backend) -> None:
    store = backend.open()
    store.add_runs(_rows(1))
    assert store.claim("a", max_attempts=1, stale_after=0.2) is not None
    time.sleep(0.4)
    assert store.claim("b", max_attempts=1, stale_after=0.2) is None
    row = store.rows()[0]
    assert row["status"] == "failed" and "heartbeat stale" in row["error"]


def test_frame_and_exports(backend) -> None:
    sweep_dir = backend.sweep_dir()
    store = open_store(sweep_dir)
    store.add_runs(_rows(3))
    for loss in (3.0, 2.5):
        c = store.claim("w")
        store.finish(c, _result(loss), "w")
    c = store.claim("w")
    store.fail(c, "Traceback...\nValueError: bad", "w")
    df = load_sweep_frame(sweep_dir)
    for col in ("key", "name", "status", "n_params", "n_params_nonembed", "tokens", "flops", "flops_6n",
                "final_loss", "eval_loss", "eval_curve", "wall_time_s", "host", "attempts", "error", "model",
                "seed"):
        assert col in df.columns, col
    assert list(df["status"]) == ["done", "done", "failed"]
    assert df.loc[df.status == "done", "final_loss"].tolist() == [3.0, 2.5]
    assert df["eval_curve"][0] == [[5, 4.0], [10, 3.0]]
    csv = pd.read_csv(export_sweep(sweep_dir, "csv"))
    assert len(csv) == 3 and json.loads(csv["eval_curve"][0]) == [[5, 4.0], [10, 3.0]]
    lines = [json.loads(x) for x in export_sweep(sweep_dir, "jsonl").read_text().splitlines()]
    assert lines[2]["final_loss"] is None and lines[2]["error"].endswith("ValueError: bad")
    pq = pd.read_parquet(export_sweep(sweep_dir, "parquet", sweep_dir / "out" / "r.parquet"))
    assert pq["final_loss"].iloc[1] == 2.5 and list(map(list, pq["eval_curve"].iloc[0])) == [[5.0, 4.0], [10.0, 3.0]]


def test_ingest_with_column_mapping(backend, tmp_path: Path) -> None:
    sweep, other = backend.sweep_dir("sweep"), backend.sweep_dir("other")
    store = open_store(sweep)
    store.add_runs(_rows(1))
    table = tmp_path / "torch_runs.csv"
    pd.DataFrame({"run": ["a", "b", "c"], "params_M": [1.0, 2.0, 4.0], "tokens_seen": [2e7, 4e7, 8e7],
                  "val_loss": [3.1, 2.9, 2.7], "framework": ["torch"] * 3,
                  "state": ["finished", "finished", "crashed"]}).to_csv(table, index=False)
    mapping = ["run=name", "params_M=n_params*1e6", "tokens_seen=tokens", "val_loss=final_loss", "state=status"]
    with pytest.raises(IngestError, match="no column for final_loss"):
        ingest(sweep, table, ["run=name"])
    assert ingest(sweep, table, mapping[:-1]) == (3, 0)
    assert ingest(sweep, table, mapping[:-1]) == (0, 3)  # idempotent
    df = load_sweep_frame(sweep)
    got = df[df.source == "ingest:torch_runs.csv"]
    assert got["name"].tolist() == ["a", "b", "c"] and (got["status"] == "done").all()
    assert got["n_params"].tolist() == [1_000_000, 2_000_000, 4_000_000]
    assert got["flops_6n"].tolist() == pytest.approx([6 * 1e6 * 2e7, 6 * 2e6 * 4e7, 6 * 4e6 * 8e7])
    assert got["framework"].tolist() == ["torch"] * 3
    assert ingest(other, table, mapping) == (2, 0)  # the crashed run is not a result
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"n_params": [1, None], "tokens": [1, 2], "final_loss": [1.0, "x"]}).to_csv(bad, index=False)
    with pytest.raises(IngestError, match=r"row\(s\) lack a numeric"):
        ingest(sweep, bad)
    assert len(load_sweep_frame(sweep)) == 4  # nothing written by the failed ingest
