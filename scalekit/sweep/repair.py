"""Rebuild a sweep's results store from its run directories (`scalekit sweep repair DIR`).

Each run keeps its own record next to its outputs (scalekit.sweep.executors writes `runs/<key[:12]>/config.json`
before it starts the trainer, the trainer writes `summary.json` when it finishes), so the store can be rebuilt when
its file is damaged:

- a run whose directory has a complete `summary.json` gets the summary's own `status` (a trainer that stopped a
  diverging run writes `"status": "diverged"`), or `done` when the summary names none;
- a run with a `config.json` but no complete summary becomes `pending`: the next `scalekit sweep run` runs it again
  (the error of a failed attempt lived only in the damaged store; its stderr.log is still in the run directory).

The key is recomputed from the config (`plan.run_key`, which leaves out what the executor adds), the name is the
config's `observe.run_name`, and N, D and C come from the summary or, for a run that has none, from the config (as
the plan computes them). The plan fields the store also keeps (model, lr, seed, steps, budget, flop_convention,
flops_plan) are taken from the config where it holds them; pass the plan (`--plan`) to get them exactly, in plan
order, with the plan's runs that never started as `pending`.

The damaged file is never deleted: it (and its -wal/-shm) is renamed `results.db.damaged-<UTC time>` (with
`--force` on a healthy store, `results.db.old-<UTC time>`) before the rebuilt store takes its place. Stop every driver of the sweep before repairing it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scalekit.sweep.store import (RESULT_FIELDS, StoreDamagedError, StoreError, _clean, _dumps, _now, read_pointer,
                                  store_path)
from scalekit.sweep.store_sqlite import SQLiteStore, check_store

_ATTEMPT = re.compile(rb"^--- attempt (\d+) by ", re.M)


class RepairRefused(StoreError):
    """The store is healthy: repair would only replace good data (pass force=True to rebuild it anyway)."""


@dataclasses.dataclass
class RepairReport:
    """What a repair found and did."""

    store: Path
    problem: str  # what was wrong with the old store ("missing", the damage, or "healthy (forced)")
    kept_aside: list[Path]  # the old store's files, renamed
    counts: dict[str, int]  # recovered runs per status
    skipped: list[str]  # run directories that could not be recovered, each with the reason
    notes: list[str]  # recovered, with a caveat

    def lines(self) -> list[str]:
        """The report as printed by `scalekit sweep repair`."""
        total = sum(self.counts.values())
        per = ", ".join(f"{n} {s}" for s, n in sorted(self.counts.items(), key=lambda kv: -kv[1])) or "none"
        out = [f"repaired {self.store}: it was {self.problem}"]
        out += [f"  kept the old file aside as {p}" for p in self.kept_aside]
        out.append(f"  recovered {total} runs from the run directories: {per}")
        out += [f"  skipped {s}" for s in self.skipped]
        out += [f"  note: {n}" for n in self.notes]
        return out


def _read_json(path: Path) -> tuple[Any, str]:
    """(document, '') or (None, why not)."""
    try:
        return json.loads(path.read_text()), ""
    except FileNotFoundError:
        return None, "missing"
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return None, f"unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"


def _attempts(rdir: Path) -> int:
    """The highest attempt number in the run's logs (the executor writes a banner per attempt), or 0."""
    best = 0
    for name in ("stderr.log", "stdout.log"):
        try:
            data = (rdir / name).read_bytes()
        except OSError:
            continue
        best = max([best, *(int(m) for m in _ATTEMPT.findall(data))])
    return best


def _derived(config: dict[str, Any]) -> dict[str, Any]:
    """N, D and C of a config, computed as the plan does; {} when the config cannot be resolved."""
    try:
        import ml_collections

        from scalekit.config import resolve
        from scalekit.model.counting import count_params, flops_per_token
        from scalekit.sweep.plan import data_vocab_size

        cfg = ml_collections.ConfigDict(config)
        m = resolve(cfg, data_vocab_size(cfg.data)).model
        n = count_params(m, "total")
        tokens = int(cfg.steps) * int(cfg.data.batch_size) * int(cfg.data.seq_len)
        return {"n_params": n, "n_params_nonembed": count_params(m, "non_embedding"), "tokens": tokens,
                "flops": flops_per_token(m, cfg.data.seq_len, "palm") * tokens, "flops_6n": 6.0 * n * tokens}
    except Exception:  # noqa: BLE001 - best effort: the summary, when there is one, has these numbers
        return {}


def _fields_from_config(config: dict[str, Any], name: str) -> dict[str, Any]:
    """The plan fields a config holds (lr, seed, steps) and the model name as the plan put it in the run name."""
    out: dict[str, Any] = {}
    opt = config.get("optimizer") if isinstance(config.get("optimizer"), dict) else {}
    if "lr" in opt:
        out["lr"] = opt["lr"]
    for k in ("seed", "steps"):
        if k in config:
            out[k] = config[k]
    m = re.match(r"^(.+?)_([CDS])([0-9.e+-]+)(?:_|$)", name)
    if m:
        out["model"] = m.group(1)
        if m.group(2) == "C":  # an IsoFLOP run's budget, to the 3 digits its name has
            try:
                out["budget"] = float(m.group(3))
            except ValueError:
                pass
    return out


def _summary_status(summary: Any) -> str | None:
    """The status a summary records: its 'status' field, 'done' for a complete one without it, None if incomplete."""
    if not isinstance(summary, dict):
        return None
    status = summary.get("status")
    if status is not None and str(status).strip():
        return "done" if str(status).strip().lower() in ("done", "ok", "finished", "success") else str(status).strip()
    return "done" if "final_loss" in summary else None


def scan_runs(sweep_dir: str | Path, plan_rows: Sequence[dict[str, Any]] = ()) -> tuple[list[dict[str, Any]],
                                                                                       list[str], list[str]]:
    """The store rows the run directories (and the plan's rows, if given) describe: (rows, skipped, notes)."""
    from scalekit.sweep.plan import run_key

    sweep_dir = Path(sweep_dir)
    planned = {r["key"]: (i, r) for i, r in enumerate(plan_rows)}
    found: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    notes: list[str] = []
    runs_dir = sweep_dir / "runs"
    rdirs = sorted((p for p in runs_dir.iterdir() if p.is_dir()), key=lambda p: p.name) if runs_dir.is_dir() else []
    for rdir in rdirs:
        config, why = _read_json(rdir / "config.json")
        summary, swhy = _read_json(rdir / "summary.json")
        if not isinstance(config, dict):
            if why == "missing" and swhy == "missing":
                notes.append(f"{rdir.name}: neither config.json nor summary.json (a run claimed but never started); "
                             "ignored")
            else:
                skipped.append(f"{rdir.name}: config.json {why or 'is not a JSON object'}"
                               + ("; its summary.json is there but cannot be keyed without the config"
                                  if summary is not None else ""))
            continue
        try:
            key = run_key(config)
        except (TypeError, ValueError) as e:
            skipped.append(f"{rdir.name}: config.json cannot be keyed ({e})")
            continue
        if not key.startswith(rdir.name):
            notes.append(f"{rdir.name}: its config.json hashes to {key[:12]} (edited, or keyed by another scalekit "
                         "version); recovered under the recomputed key")
        if key in found:
            skipped.append(f"{rdir.name}: same config as {found[key]['_dir']}")
            continue
        cfg = {k: v for k, v in config.items() if not (k == "compilation_cache_dir" and Path(str(v)).name
                                                        == "xla_cache")}
        obs = config.get("observe") if isinstance(config.get("observe"), dict) else {}
        name = str(obs.get("run_name") or rdir.name)
        if key in planned:
            row = dict(planned[key][1])
        else:
            row = {"key": key, "name": name, "config": cfg, "fields": _fields_from_config(config, name),
                   **_derived(config)}
        status = _summary_status(summary)
        if status is None and summary is None and swhy != "missing":
            notes.append(f"{rdir.name}: summary.json {swhy}; recovered as pending")
        elif status is None and summary is not None:
            notes.append(f"{rdir.name}: summary.json is incomplete (no final_loss); recovered as pending")
        row["status"] = status or "pending"
        row["attempts"] = _attempts(rdir) or (1 if status else 0)
        if status:
            row["result"] = summary
        if status is None:
            row["attempts"] = 0  # a pending run gets its full attempts again
        row["_dir"] = rdir.name
        row["_mtime"] = (rdir / "config.json").stat().st_mtime
        found[key] = row
    rows = list(found.values())
    unplanned = sum(r["key"] not in planned for r in rows)
    if unplanned:
        notes.append(f"{unplanned} run(s) not in a plan: their plan fields come from the config and the run name "
                     "(model; an IsoFLOP budget to 3 digits; no flop_convention or flops_plan); repair with "
                     "--plan PLAN for the exact fields")
    if planned:
        for key, (_i, r) in planned.items():
            if key not in found:
                rows.append({**r, "status": "pending", "attempts": 0, "_dir": None, "_mtime": 0.0})
        rows.sort(key=lambda r: (planned[r["key"]][0] if r["key"] in planned else len(planned), r["_mtime"],
                                 r["name"]))
    else:
        rows.sort(key=lambda r: (r["_mtime"], r["name"]))
    return rows, skipped, notes


def _error_of(row: dict[str, Any]) -> str:
    """The error text of a run whose summary records a status other than done."""
    summary = row.get("result") or {}
    from scalekit.sweep import executors

    diverged = getattr(executors, "diverged_error", None)  # the executor's own wording, where it has one
    text = diverged(summary) if diverged is not None else None
    if text:
        return f"{text} (from its summary.json)"
    why = next((str(summary[k]) for k in ("error", "reason", "message") if summary.get(k)), "")
    return f"status {row['status']!r} in its summary.json" + (f": {why}" if why else "")


def _write_rows(store: SQLiteStore, rows: Sequence[dict[str, Any]], problem: str) -> None:
    """Insert recovered rows into a fresh store, each with a 'repaired' event."""
    now = _now()
    with store._tx() as db:  # noqa: SLF001 - the store's own transaction
        for i, r in enumerate(rows):
            res = {k: (r.get("result") or {}).get(k) for k in RESULT_FIELDS}

            def pick(k: str) -> Any:
                return res[k] if res.get(k) is not None else r.get(k)

            finished = r["status"] != "pending"
            store._insert_run(db, {  # noqa: SLF001 - the store's own insert
                "key": r["key"], "ord": i, "name": r["name"], "status": r["status"], "source": "plan",
                "config": _dumps(r.get("config")), "fields": _dumps(r.get("fields") or {}),
                "n_params": pick("n_params"), "n_params_nonembed": pick("n_params_nonembed"),
                "tokens": pick("tokens"), "flops": pick("flops"), "flops_6n": pick("flops_6n"),
                "final_loss": _clean(res["final_loss"]), "eval_loss": _clean(res["eval_loss"]),
                "eval_curve": _dumps(res["eval_curve"]), "wall_time_s": res["wall_time_s"], "host": res["host"],
                "summary": _dumps(r.get("result")), "attempts": r["attempts"],
                "error": None if r["status"] in ("done", "pending") else _error_of(r),
                "created": now, "finished": now if finished else None})
            store._event(db, r["key"], "repaired", attempt=r["attempts"],  # noqa: SLF001
                         detail=f"{r['status']} from {'runs/' + r['_dir'] if r['_dir'] else 'the plan'}; old store "
                                f"{problem}")


def repair(sweep_dir: str | Path, *, force: bool = False, plan_rows: Sequence[dict[str, Any]] = ()) -> RepairReport:
    """Rebuild `<sweep_dir>/results.db` from the run directories; keep the old file aside. See the module doc.

    Raises RepairRefused when the store is healthy and not `force`, StoreError when the directory is unusable.
    """
    sweep_dir = Path(sweep_dir)
    pointer = read_pointer(sweep_dir) if sweep_dir.is_dir() else None
    if pointer is not None:
        raise StoreError(f"{str(sweep_dir)!r} keeps its results in the database {pointer['url']} (its store.json), "
                         "which a server keeps consistent: repair rebuilds SQLite stores only. To rebuild a local "
                         "copy instead, move store.json aside and run `scalekit sweep repair` again")
    if not sweep_dir.is_dir():
        raise StoreError(f"sweep directory {str(sweep_dir)!r} " + ("is a file, not a directory" if sweep_dir.exists()
                                                                   else "does not exist"))
    path = store_path(sweep_dir)
    try:
        version = check_store(path)
        problem = "missing" if not path.exists() else ("healthy (rebuilt with --force)" if version is not None else
                                                       "an SQLite file without tables")
        if path.exists() and version is not None and not force:
            raise RepairRefused(f"results store {str(path)!r} is healthy (quick_check ok, schema version "
                                f"{version or 'unstamped'}): nothing to repair; pass --force to rebuild it from "
                                "the run directories anyway (the current file is kept aside)")
    except StoreDamagedError as e:
        problem = f"damaged ({e.problem})"
    if not os.access(sweep_dir, os.W_OK):
        raise StoreError(f"cannot repair {str(sweep_dir)!r}: the directory is not writable")
    rows, skipped, notes = scan_runs(sweep_dir, plan_rows)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    tmp = path.with_name(f"{path.name}.repair-{stamp}-{os.getpid()}.tmp")
    try:
        store = SQLiteStore(tmp)
        _write_rows(store, rows, problem)
        check_store(tmp)  # the rebuilt file reads back before it replaces anything
    except BaseException:
        for p in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
            p.unlink(missing_ok=True)
        raise
    kept: list[Path] = []
    label = "old" if problem.startswith("healthy") else "damaged"
    aside = path.with_name(f"{path.name}.{label}-{stamp}")
    n = 1
    while any(Path(f"{aside}{s}").exists() for s in ("", "-wal", "-shm")):
        aside, n = path.with_name(f"{path.name}.{label}-{stamp}.{n}"), n + 1
    for suffix in ("", "-wal", "-shm"):  # the WAL goes with its file: next to the new store it would be replayed
        old = Path(f"{path}{suffix}")
        if old.exists():
            old.rename(f"{aside}{suffix}")
            kept.append(Path(f"{aside}{suffix}"))
    tmp.rename(path)
    for suffix in ("-wal", "-shm"):
        Path(f"{tmp}{suffix}").unlink(missing_ok=True)
    return RepairReport(store=path, problem=problem, kept_aside=kept, counts=dict(Counter(r["status"] for r in rows)),
                        skipped=skipped, notes=notes)
