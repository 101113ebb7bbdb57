"""The results store's operations in the SQL both backends run (SQLite and PostgreSQL share schema and semantics).

`SQLStore` implements every `ResultsStore` method once. A backend supplies a connection that takes `?`
placeholders and returns rows as mappings, a write transaction (`_transaction`), and a read (`_query`); PostgreSQL
also locks the rows it claims (`FOR UPDATE SKIP LOCKED`, so concurrent claimers skip each other's rows instead of
waiting) and serialises inserts per sweep.

Each write runs as `fn(db, op)` inside one transaction, where `op` is a fresh id that the write's audit event
carries. A backend that can lose its connection mid-commit (PostgreSQL) retries the whole transaction; before it
does, `recover(db, op)` looks for that event: if the first attempt committed, its result is returned instead of
being applied twice. So a retried `finish` never records a run twice and a retried `claim` never claims two runs.
"""

from __future__ import annotations

import abc
import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from scalekit.sweep import store as _store
from scalekit.sweep.store import RESULT_FIELDS, Claim, ResultsStore, _clean, _dumps, tally

T = TypeVar("T")
NOT_APPLIED = object()  # what `recover` returns when the transaction it looks for never committed

RUN_COLUMNS = ("sweep", "key", "ord", "name", "status", "source", "config", "fields", "n_params", "n_params_nonembed",
               "tokens", "flops", "flops_6n", "final_loss", "eval_loss", "eval_curve", "wall_time_s", "host",
               "summary", "attempts", "error", "claim_token", "worker", "heartbeat", "created", "started", "finished")
EVENT_COLUMNS = ("id", "sweep", "time", "key", "event", "worker", "attempt", "detail", "op")
JSON_COLUMNS = ("config", "fields", "eval_curve", "summary")
_CLAIM_EVENTS = {"pending": "claimed", "running": "reclaimed", "failed": "retry"}


class SQLStore(ResultsStore):
    """Every ResultsStore method in portable SQL over the tables `runs` and `events`, scoped to `self.sweep`."""

    sweep: str
    readonly: bool = False
    scoped: bool = True  # rows carry a sweep column (False only when reading an old store that cannot be migrated)
    lock_rows: str = ""  # appended to a claim's SELECT (PostgreSQL: FOR UPDATE SKIP LOCKED)

    # --- what a backend supplies -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def _run(self, fn: Callable[[Any, str], T], recover: Callable[[Any, str], Any] | None = None) -> T:
        """fn(db, op) in one write transaction; on a retry, recover(db, op) first (NOT_APPLIED: run fn)."""

    @abc.abstractmethod
    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows of a read-only query, as dicts."""

    def _lock_sweep(self, db: Any) -> None:
        """Serialise writers that number new rows (SQLite's write lock already does)."""

    # --- helpers ---------------------------------------------------------------------------------------------------
    def _where(self, extra: str = "") -> tuple[str, list[Any]]:
        """A WHERE clause for this sweep's rows (and `extra`), with its parameters."""
        parts = (["sweep = ?"] if self.scoped else []) + ([extra] if extra else [])
        return (" WHERE " + " AND ".join(parts)) if parts else "", [self.sweep] if self.scoped else []

    def _event(self, db: Any, key: str, event: str, worker: str | None = None, attempt: int | None = None,
               detail: str | None = None, op: str | None = None) -> None:
        db.execute("INSERT INTO events (sweep, time, key, event, worker, attempt, detail, op) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (self.sweep, _store._now(), key, event, worker, attempt, detail,
                                                       op))

    def _event_of(self, db: Any, op: str) -> str | None:
        """The name of the event a committed write `op` logged, or None when it did not commit."""
        row = db.execute("SELECT event FROM events WHERE op = ?", (op,)).fetchone()
        return None if row is None else row["event"]

    def _count_of(self, db: Any, op: str) -> Any:
        """A committed write's count of new rows (one event each), or NOT_APPLIED when it logged none: a write that
        added nothing is safe to run again."""
        n = db.execute("SELECT COUNT(*) AS n FROM events WHERE op = ?", (op,)).fetchone()["n"]
        return n if n else NOT_APPLIED

    def _next_ord(self, db: Any) -> int:
        self._lock_sweep(db)
        return db.execute("SELECT COALESCE(MAX(ord), -1) + 1 AS n FROM runs WHERE sweep = ?",
                          (self.sweep,)).fetchone()["n"]

    def _insert_run(self, db: Any, row: dict[str, Any]) -> bool:
        """INSERT one run (the columns `row` names, plus this sweep) unless its key is stored; True if new."""
        cols = ["sweep", *[c for c in row if c != "sweep"]]
        vals = [self.sweep, *[row[c] for c in cols[1:]]]
        cur = db.execute(f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
                         "ON CONFLICT DO NOTHING", vals)
        return cur.rowcount == 1

    @staticmethod
    def _decode(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for r in rows:
            for col in JSON_COLUMNS:
                r[col] = json.loads(r[col]) if r[col] is not None else None
        return rows

    # --- the operations --------------------------------------------------------------------------------------------
    def add_runs(self, rows: Iterable[dict[str, Any]]) -> int:
        rows = list(rows)

        def fn(db: Any, op: str) -> int:
            ord0, new = self._next_ord(db), 0
            for i, r in enumerate(rows):
                if self._insert_run(db, {
                        "key": r["key"], "ord": ord0 + i, "name": r["name"], "status": "pending", "source": "plan",
                        "config": _dumps(r["config"]), "fields": _dumps(r.get("fields", {})),
                        "n_params": r.get("n_params"), "n_params_nonembed": r.get("n_params_nonembed"),
                        "tokens": r.get("tokens"), "flops": r.get("flops"), "flops_6n": r.get("flops_6n"),
                        "attempts": 0, "created": _store._now()}):
                    new += 1
                    self._event(db, r["key"], "added", detail=r["name"], op=op)
            return new
        return self._run(fn, self._count_of)

    def claim(self, worker: str, *, keys: Sequence[str] | None = None, max_attempts: int = 3,
              stale_after: float = 120.0) -> Claim | None:
        def fn(db: Any, token: str) -> Claim | None:
            now = _store._now()
            # A dead driver's run that has used up its attempts becomes 'failed' rather than looping forever.
            for row in db.execute("SELECT key, attempts FROM runs WHERE sweep = ? AND status = 'running' AND "
                                  f"heartbeat < ? AND attempts >= ? {self.lock_rows}",
                                  (self.sweep, now - stale_after, max_attempts)).fetchall():
                db.execute("UPDATE runs SET status = 'failed', claim_token = NULL, finished = ?, error = "
                           "COALESCE(error || ?, '') || 'driver lost (heartbeat stale) on the last attempt' "
                           "WHERE sweep = ? AND key = ?", (now, "\n", self.sweep, row["key"]))
                self._event(db, row["key"], "lost", worker, row["attempts"], "stale heartbeat, no attempts left")
            where = ("sweep = ? AND (status = 'pending' OR (status = 'running' AND heartbeat < ?) "
                     "OR (status = 'failed' AND attempts < ?))")
            args: list[Any] = [self.sweep, now - stale_after, max_attempts]
            if keys is not None:
                if not keys:
                    return None
                where += f" AND key IN ({', '.join('?' * len(keys))})"
                args += list(keys)
            row = db.execute(f"SELECT key, status FROM runs WHERE {where} ORDER BY "
                             "CASE status WHEN 'pending' THEN 0 WHEN 'running' THEN 1 ELSE 2 END, ord "
                             f"LIMIT 1 {self.lock_rows}", args).fetchone()
            if row is None:
                return None
            key, old_status = row["key"], row["status"]
            got = db.execute("UPDATE runs SET status = 'running', claim_token = ?, worker = ?, heartbeat = ?, "
                             "started = ?, attempts = attempts + 1 WHERE sweep = ? AND key = ? "
                             "RETURNING name, attempts, config", (token, worker, now, now, self.sweep, key)).fetchone()
            self._event(db, key, _CLAIM_EVENTS[old_status], worker, got["attempts"], op=token)
            return Claim(key=key, name=got["name"], token=token, attempt=got["attempts"],
                         config=json.loads(got["config"] or "{}"), reclaimed=old_status == "running",
                         retry=old_status == "failed")

        def recover(db: Any, token: str) -> Any:
            event = self._event_of(db, token)
            if event is None:
                return NOT_APPLIED
            got = db.execute("SELECT key, name, attempts, config FROM runs WHERE sweep = ? AND claim_token = ?",
                             (self.sweep, token)).fetchone()
            if got is None:            # claimed, then already lost to another driver: nothing of it is ours
                return None
            return Claim(key=got["key"], name=got["name"], token=token, attempt=got["attempts"],
                         config=json.loads(got["config"] or "{}"), reclaimed=event == "reclaimed",
                         retry=event == "retry")
        return self._run(fn, recover)

    def heartbeat(self, claim: Claim) -> bool:
        def fn(db: Any, op: str) -> bool:
            cur = db.execute("UPDATE runs SET heartbeat = ? WHERE sweep = ? AND key = ? AND claim_token = ? AND "
                             "status = 'running'", (_store._now(), self.sweep, claim.key, claim.token))
            return cur.rowcount == 1
        return self._run(fn)

    def finish(self, claim: Claim, result: dict[str, Any], worker: str) -> bool:
        r = {k: result.get(k) for k in RESULT_FIELDS}

        def fn(db: Any, op: str) -> bool:
            cur = db.execute(
                "UPDATE runs SET status = 'done', claim_token = NULL, error = NULL, finished = ?, "
                "final_loss = ?, eval_loss = ?, eval_curve = ?, wall_time_s = ?, host = ?, summary = ?, "
                "tokens = COALESCE(?, tokens), flops = COALESCE(?, flops), flops_6n = COALESCE(?, flops_6n), "
                "n_params = COALESCE(?, n_params), n_params_nonembed = COALESCE(?, n_params_nonembed) "
                "WHERE sweep = ? AND key = ? AND status != 'done'",
                (_store._now(), _clean(r["final_loss"]), _clean(r["eval_loss"]), _dumps(r["eval_curve"]),
                 r["wall_time_s"], r["host"], _dumps(result), r["tokens"], r["flops"], r["flops_6n"],
                 r["n_params"], r["n_params_nonembed"], self.sweep, claim.key))
            ok = cur.rowcount == 1
            self._event(db, claim.key, "done" if ok else "duplicate_dropped", worker, claim.attempt, op=op)
            return ok
        return self._run(fn, lambda db, op: NOT_APPLIED if (e := self._event_of(db, op)) is None else e == "done")

    def fail(self, claim: Claim, error: str, worker: str) -> None:
        def fn(db: Any, op: str) -> None:
            cur = db.execute("UPDATE runs SET status = 'failed', claim_token = NULL, error = ?, finished = ? "
                             "WHERE sweep = ? AND key = ? AND claim_token = ? AND status = 'running'",
                             (error, _store._now(), self.sweep, claim.key, claim.token))
            self._event(db, claim.key, "failed" if cur.rowcount else "failed_after_lost", worker, claim.attempt,
                        error[-500:], op=op)
        self._run(fn, lambda db, op: NOT_APPLIED if self._event_of(db, op) is None else None)

    def diverge(self, claim: Claim, result: dict[str, Any], error: str, worker: str) -> bool:
        def fn(db: Any, op: str) -> bool:
            cur = db.execute("UPDATE runs SET status = 'diverged', claim_token = NULL, error = ?, finished = ?, "
                             "summary = ? WHERE sweep = ? AND key = ? AND claim_token = ? AND status = 'running'",
                             (error, _store._now(), _dumps(result), self.sweep, claim.key, claim.token))
            ok = cur.rowcount == 1
            self._event(db, claim.key, "diverged" if ok else "diverged_after_lost", worker, claim.attempt,
                        error[-500:], op=op)
            return ok
        return self._run(fn, lambda db, op: NOT_APPLIED if (e := self._event_of(db, op)) is None else e == "diverged")

    def release(self, claim: Claim, worker: str) -> None:
        def fn(db: Any, op: str) -> None:
            cur = db.execute("UPDATE runs SET status = ?, claim_token = NULL, "
                             "attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END "
                             "WHERE sweep = ? AND key = ? AND claim_token = ? AND status = 'running'",
                             ("failed" if claim.retry else "pending", self.sweep, claim.key, claim.token))
            if cur.rowcount:
                self._event(db, claim.key, "released", worker, claim.attempt, op=op)
        self._run(fn)  # idempotent: a retry after a commit finds the claim token gone and changes nothing

    def add_done(self, rows: Iterable[dict[str, Any]], source: str) -> int:
        rows = list(rows)

        def fn(db: Any, op: str) -> int:
            ord0, new, now = self._next_ord(db), 0, _store._now()
            for i, r in enumerate(rows):
                if self._insert_run(db, {
                        "key": r["key"], "ord": ord0 + i, "name": r["name"], "status": "done", "source": source,
                        "fields": _dumps(r.get("fields", {})), "n_params": r.get("n_params"),
                        "n_params_nonembed": r.get("n_params_nonembed"), "tokens": r.get("tokens"),
                        "flops": r.get("flops"), "flops_6n": r.get("flops_6n"),
                        "final_loss": _clean(r.get("final_loss")), "eval_loss": _clean(r.get("eval_loss")),
                        "eval_curve": _dumps(r.get("eval_curve")), "wall_time_s": r.get("wall_time_s"),
                        "host": r.get("host"), "attempts": 1, "created": now, "finished": now}):
                    new += 1
                    self._event(db, r["key"], "ingested", detail=source, op=op)
            return new
        return self._run(fn, self._count_of)

    def rows(self) -> list[dict[str, Any]]:
        where, args = self._where()
        return self._decode(self._query(f"SELECT * FROM runs{where} ORDER BY ord", args))

    def counts(self, keys: Sequence[str] | None = None) -> dict[str, int]:
        where, args = self._where()
        return tally(self._query(f"SELECT key, status FROM runs{where}", args), keys)

    def events(self, key: str | None = None) -> list[dict[str, Any]]:
        where, args = self._where("key = ?" if key else "")
        return self._query(f"SELECT * FROM events{where} ORDER BY id", args + ([key] if key else []))

    def reset_failed(self, keys: Sequence[str] | None = None) -> int:
        def fn(db: Any, op: str) -> int:
            n = 0
            wanted = set(keys) if keys is not None else None
            for row in db.execute("SELECT key FROM runs WHERE sweep = ? AND status = 'failed'",
                                  (self.sweep,)).fetchall():
                if wanted is None or row["key"] in wanted:
                    db.execute("UPDATE runs SET attempts = 0 WHERE sweep = ? AND key = ?", (self.sweep, row["key"]))
                    self._event(db, row["key"], "reset", op=op)
                    n += 1
            return n
        return self._run(fn, self._count_of)

    # --- whole sweeps (migrate, repair) ----------------------------------------------------------------------------
    def dump(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Every run row and every event of this sweep as stored (JSON columns as their text)."""
        where, args = self._where()
        return (self._query(f"SELECT * FROM runs{where} ORDER BY ord", args),
                self._query(f"SELECT * FROM events{where} ORDER BY id", args))

    def load(self, runs: Sequence[dict[str, Any]], events: Sequence[dict[str, Any]]) -> tuple[int, int]:
        """Copy runs and their events in (as `dump` gives them) into this sweep, in one transaction: a run whose key
        is already here is skipped with its events, so loading twice changes nothing. Returns (runs, events) added."""
        def fn(db: Any, op: str) -> tuple[int, int]:
            added: set[str] = set()
            for r in runs:
                if self._insert_run(db, {c: r.get(c) for c in RUN_COLUMNS if c != "sweep"}):
                    added.add(r["key"])
            n_events = 0
            for e in events:
                if e["key"] in added:
                    db.execute("INSERT INTO events (sweep, time, key, event, worker, attempt, detail, op) "
                               "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (self.sweep, e["time"], e["key"], e["event"],
                                                                  e["worker"], e["attempt"], e["detail"],
                                                                  e.get("op")))
                    n_events += 1
            return len(added), n_events
        return self._run(fn)


def new_op() -> str:
    """A fresh id for one write (and the claim token of a claim)."""
    return uuid.uuid4().hex
