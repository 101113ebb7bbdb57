"""Results-store traffic of sweep drivers: claims+records per second, SQLite vs PostgreSQL, 1/4/16 workers.

    python benchmarks/bench_store.py                        # 1000 runs; workers 1, 4, 16; every backend/setting
    python benchmarks/bench_store.py --quick                # smoke run: 200 runs, workers 1 and 4 (~20-30 s)
    python benchmarks/bench_store.py --backends sqlite --workers 1,2,8 --runs 500

What is measured: the store's side of a sweep, with the training replaced by nothing. Each configuration starts
from a fresh store holding `--runs` pending runs (rows shaped like the planner's `Run.to_row()`: a full training
config, its run_key, plan fields, parameter and FLOP counts). W worker processes (multiprocessing, 'forkserver'
context by default; each opens its own store, i.e. its own SQLite connection or PostgreSQL connection pool, as
separate drivers do) wait at a barrier, then loop claim -> heartbeat -> finish (with a result dict like a trainer's
summary.json: final_loss, eval_loss, a 20-point eval_curve, goodput and startup sections, a metrics tail; ~3 KB
of JSON) until claim returns None. Seconds = from the barrier's release to the last worker's empty claim;
runs/s = runs claimed and recorded per second (each is 3 transactions: claim, heartbeat, finish). Latencies are
per call, in the worker, over every claim that got a run and every finish.

Backends and settings (each configuration labelled with its setting):
- sqlite / wal+sync=NORMAL: the store's own pragmas (journal_mode=WAL, synchronous=NORMAL), a file in a temp dir.
- postgres / default: `scalekit.sweep.pg_local.LocalPostgres` as the tests start it: fsync=off,
  synchronous_commit=off, full_page_writes=off. NOT what a real shared server runs: no commit waits for the disk.
- postgres / durable: the same local server with fsync=on, synchronous_commit=on, full_page_writes=on, as a real
  shared store would run (each commit waits for its WAL flush). Both on 127.0.0.1 (no network round trip).
The PostgreSQL rows are skipped, with the reason, when psycopg/psycopg-pool or the server binaries are missing.

Correctness is checked, not assumed: after each configuration the store's audit log (`store.events()`) must hold
exactly one 'claimed' and one 'done' event for every run and nothing else but its 'added' (no reclaim, retry or
dropped duplicate), every run must be 'done', and the workers' own lists of claimed keys must cover every run once.
A configuration that double-claims (or loses a run) is reported as FAILED and the script exits 1.

Ratios are against the 1-worker SQLite configuration measured in the same invocation. The context line: a sweep
whose runs take >= 10 s each makes at most one claim+record per 10 s per worker (0.1 runs/s/worker), so W workers
need <= 0.1 x W runs/s; "headroom" is the measured rate over that need. Nothing asserts on wall-clock times.
Prints a table and appends one JSON line per configuration to benchmarks/results/bench_store.jsonl (`--out`).
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing as mp
import os
import platform
import queue as queue_mod
import shutil
import sqlite3
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = Path(__file__).resolve().parent / "results" / "bench_store.jsonl"

DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
PG_SETTINGS = {"default": {}, "durable": DURABLE}  # label -> LocalPostgres(settings=...)
SQLITE_SETTING = "wal+sync=NORMAL"
RUN_SECONDS = 10.0  # the context: runs that take >= 10 s each
SWEEP = "bench"
STALE_AFTER = 600.0  # no claim may go stale during the benchmark (a reclaim would be a double claim)
PRELOAD = ["scalekit.sweep.store", "scalekit.sweep.store_sqlite", "scalekit.sweep.store_postgres", "psycopg",
           "psycopg_pool"]


# --- the rows and results -------------------------------------------------------------------------------------------

def make_rows(n: int) -> list[dict[str, Any]]:
    """n planned runs shaped like `RunSpec.to_row()`: the default training config with a model shape, lr, seed and
    steps applied, keyed by its run_key."""
    from scalekit.config import default_config
    from scalekit.runkey import run_key

    base = default_config().to_dict()
    widths, depths, lrs = (64, 96, 128, 192, 256), (2, 4, 6, 8), (1e-3, 3e-3, 1e-2)
    rows = []
    for i in range(n):
        cfg = json.loads(json.dumps(base))
        d, L, lr, seed = widths[i % 5], depths[(i // 5) % 4], lrs[(i // 20) % 3], i // 60
        steps = 100 + 10 * (i % 7)
        cfg["model"].update(d_model=d, n_layers=L, n_heads=max(1, d // 32))
        cfg["optimizer"]["lr"], cfg["seed"], cfg["steps"] = lr, seed, steps
        n_params = 12 * L * d * d + 2 * 64 * d
        n_nonembed = 12 * L * d * d
        tokens = steps * cfg["data"]["batch_size"] * cfg["data"]["seq_len"]
        rows.append({"key": run_key(cfg), "name": f"d{d}_L{L}_lr{lr:g}_s{seed}_t{steps}_{i}", "config": cfg,
                     "fields": {"model": f"d{d}_L{L}", "lr": lr, "seed": seed, "steps": steps, "budget": None,
                                "flop_convention": "6N", "flops_plan": 6.0 * n_params * tokens},
                     "n_params": n_params, "n_params_nonembed": n_nonembed, "tokens": tokens,
                     "flops": 6.6 * n_params * tokens, "flops_6n": 6.0 * n_params * tokens})
    return rows


def make_result(i: int, host: str) -> dict[str, Any]:
    """A result dict like a trainer's summary.json (what `finish` stores, whole, as the run's summary)."""
    loss = 2.0 + 1.0 / (1 + i % 50)
    curve = [[10 * (j + 1), loss + 2.0 / (j + 1) + 1e-3 * (i % 7)] for j in range(20)]
    tail = [{"step": 180 + j, "loss": loss + 0.01 * j, "grad_norm": 0.5 + 0.001 * j, "lr": 3e-3 * (1 - j / 40),
             "step_time_s": 0.0123 + 1e-5 * j, "tokens_per_s": 83000.0 + j} for j in range(20)]
    return {"status": "done", "flags": [], "final_loss": loss, "eval_loss": loss + 0.05, "eval_curve": curve,
            "tokens": 204800, "flops": 1.2e12, "flops_6n": 1.1e12, "n_params": 100_000, "n_params_nonembed": 90_000,
            "steps": 200, "wall_time_s": 12.3 + i % 5, "entropy_floor": None, "unigram_loss": 4.1,
            "run_key": f"{i:064x}", "host": host, "process_count": 1,
            "goodput": {"startup_s": 1.2, "compile_s": 3.4, "data_wait_s": 0.1, "step_s": 7.0, "eval_s": 0.5,
                        "checkpoint_save_s": 0.0, "lost_s": 0.0, "wall_s": 12.2, "total_s": 12.2,
                        "goodput_ratio": 0.57},
            "startup": {"warm_process": i > 0, "imports_s": 0.0, "to_first_step_s": 4.1},
            "metrics_tail": tail}


# --- one worker (a separate process) --------------------------------------------------------------------------------

def open_bench_store(spec: dict[str, Any]) -> Any:
    if spec["backend"] == "sqlite":
        from scalekit.sweep.store_sqlite import SQLiteStore
        return SQLiteStore(spec["path"], sweep=SWEEP)
    from scalekit.sweep.store_postgres import PostgresStore
    return PostgresStore(spec["url"], sweep=SWEEP, pool_size=spec.get("pool_size", 1))


def worker(spec: dict[str, Any], name: str, go: Any, out: Any) -> None:
    """Open the store, say so, wait for the start signal, then claim -> heartbeat -> finish until nothing is
    claimable; put the timings (or the traceback) on `out`."""
    store = None
    try:
        store = open_bench_store(spec)
        out.put({"worker": name, "ready": True})
        if not go.wait(timeout=600):
            raise TimeoutError("no start signal within 600 s")
        start = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process of the machine
        claim_s, heartbeat_s, finish_s, keys = [], [], [], []
        lost_heartbeats = dropped = 0
        while True:
            t0 = time.perf_counter()
            claim = store.claim(name, stale_after=STALE_AFTER)
            t1 = time.perf_counter()
            if claim is None:
                break
            claim_s.append(t1 - t0)
            keys.append(claim.key)
            ok = store.heartbeat(claim)
            t2 = time.perf_counter()
            heartbeat_s.append(t2 - t1)
            lost_heartbeats += not ok
            ok = store.finish(claim, make_result(len(keys), name), name)
            finish_s.append(time.perf_counter() - t2)
            dropped += not ok
        end = time.monotonic()
        out.put({"worker": name, "start": start, "end": end, "claim_s": claim_s, "heartbeat_s": heartbeat_s,
                 "finish_s": finish_s, "keys": keys, "lost_heartbeats": lost_heartbeats, "dropped": dropped})
    except BaseException:  # noqa: BLE001 -- reported to the parent, which marks the configuration failed
        out.put({"worker": name, "error": traceback.format_exc()})
    finally:
        if store is not None:
            store.close()


# --- one configuration ----------------------------------------------------------------------------------------------

def pct(xs: list[float], q: float) -> float | None:
    """The q-quantile (nearest rank) of xs, or None when empty."""
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(q * len(s) + 0.5)) - 1))]


def verify(store: Any, rows: list[dict[str, Any]], reports: list[dict[str, Any]]) -> list[str]:
    """Everything wrong with the finished store: each run claimed and recorded exactly once, nothing else."""
    problems = []
    want = {r["key"] for r in rows}
    events = collections.defaultdict(collections.Counter)
    for e in store.events():
        events[e["key"]][e["event"]] += 1
    bad = {k: dict(c) for k, c in events.items() if dict(c) != {"added": 1, "claimed": 1, "done": 1}}
    missing = want - set(events)
    if bad:
        doubles = sum(c.get("claimed", 0) + c.get("reclaimed", 0) + c.get("retry", 0) > 1 for c in bad.values())
        sample = "; ".join(f"{k[:12]}: {c}" for k, c in list(bad.items())[:3])
        problems.append(f"{len(bad)} runs without exactly one claimed + one done event ({doubles} claimed more than "
                        f"once), e.g. {sample}")
    if missing:
        problems.append(f"{len(missing)} runs have no events at all")
    counts = store.counts()
    if counts.get("done") != len(want) or sum(counts.values()) != len(want):
        problems.append(f"store counts {counts}, expected {len(want)} done")
    claimed = collections.Counter(k for r in reports for k in r.get("keys", ()))
    twice = [k for k, n in claimed.items() if n > 1]
    if twice:
        problems.append(f"{len(twice)} runs were handed to more than one worker (client side)")
    if set(claimed) != want:
        problems.append(f"workers claimed {len(set(claimed))} distinct runs of {len(want)}")
    lost = sum(r.get("lost_heartbeats", 0) for r in reports)
    dropped = sum(r.get("dropped", 0) for r in reports)
    if lost or dropped:
        problems.append(f"{lost} heartbeats found their claim lost, {dropped} finishes were dropped")
    return problems


def run_config(ctx: Any, spec: dict[str, Any], rows: list[dict[str, Any]], workers: int) -> dict[str, Any]:
    """Fill a fresh store with the pending rows, run `workers` worker processes to the end, check the log."""
    setup = open_bench_store(spec)
    try:
        assert setup.add_runs(rows) == len(rows)
    finally:
        setup.close()
    go, out = ctx.Event(), ctx.Queue()
    names = [f"w{i:02d}" for i in range(workers)]
    procs = [ctx.Process(target=worker, args=(spec, n, go, out), daemon=True) for n in names]
    for p in procs:
        p.start()
    reports: list[dict[str, Any]] = []
    errors: list[str] = []
    ready: set[str] = set()  # workers that opened their store: timing starts when all have (or the rest died)
    silent: set[str] = set()  # workers that exited without a report
    deadline = time.monotonic() + 1800
    while len(reports) + len(silent) < workers and time.monotonic() < deadline:
        if len(ready | silent | {r["worker"] for r in reports}) >= workers:
            go.set()
        try:
            msg = out.get(timeout=1)
        except queue_mod.Empty:  # the queue is drained: an exited worker's report would have arrived
            reported = {r["worker"] for r in reports}
            silent = {n for n, p in zip(names, procs) if p.exitcode is not None and n not in reported}
            continue
        if msg.get("ready"):
            ready.add(msg["worker"])
        else:
            reports.append(msg)
    errors += [f"{n}: exited (code {p.exitcode}) without a report" for n, p in zip(names, procs) if n in silent]
    go.set()
    for p in procs:
        p.join(timeout=30)
        if p.is_alive():
            p.kill()
    errors += [f"{r['worker']}: {r['error'].strip().splitlines()[-1]}" for r in reports if "error" in r]
    good = [r for r in reports if "error" not in r]
    if len(reports) + len(silent) < workers:
        errors.append(f"{workers - len(reports) - len(silent)} workers did not finish within the time limit")
    for r in reports:
        if "error" in r:
            print(f"[bench_store] worker {r['worker']} failed:\n{r['error']}", file=sys.stderr, flush=True)
    check = open_bench_store(spec)
    try:
        problems = errors + verify(check, rows, good)
    finally:
        check.close()
    claim_s = [x for r in good for x in r["claim_s"]]
    finish_s = [x for r in good for x in r["finish_s"]]
    heartbeat_s = [x for r in good for x in r["heartbeat_s"]]
    done = len(finish_s)
    seconds = (max(r["end"] for r in good) - min(r["start"] for r in good)) if good else float("nan")
    per_worker = sorted(len(r["keys"]) for r in good)
    return {"workers": workers, "runs": len(rows), "recorded": done, "seconds": seconds,
            "runs_per_s": done / seconds if good and seconds > 0 else 0.0,
            "transactions_per_s": (len(claim_s) + len(heartbeat_s) + len(finish_s) + len(good)) / seconds
            if good and seconds > 0 else 0.0,
            "claim_p50_ms": _ms(pct(claim_s, 0.5)), "claim_p99_ms": _ms(pct(claim_s, 0.99)),
            "heartbeat_p50_ms": _ms(pct(heartbeat_s, 0.5)), "heartbeat_p99_ms": _ms(pct(heartbeat_s, 0.99)),
            "finish_p50_ms": _ms(pct(finish_s, 0.5)), "finish_p99_ms": _ms(pct(finish_s, 0.99)),
            "runs_per_worker": [per_worker[0], per_worker[-1]] if per_worker else None,
            "exactly_once": not problems, "problems": problems}


def _ms(x: float | None) -> float | None:
    return None if x is None else 1000.0 * x


# --- the backends ---------------------------------------------------------------------------------------------------

def postgres_missing() -> str | None:
    """Why the PostgreSQL rows cannot run here, or None."""
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError as e:
        return f"psycopg 3 / psycopg-pool not installed ({e}; pip install 'scalekit[postgres]')"
    from scalekit.sweep.pg_local import find_pg_bin
    if find_pg_bin() is None:
        return ("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found (install Debian's `postgresql`, "
                "or set PG_BIN)")
    return None


def pg_info(url: str) -> dict[str, str]:
    import psycopg
    with psycopg.connect(url) as conn:
        return {k: conn.execute(f"SHOW {k}").fetchone()[0]
                for k in ("server_version", "fsync", "synchronous_commit", "full_page_writes", "wal_sync_method")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=None, help="pending runs in each store (default 1000; --quick 200)")
    ap.add_argument("--workers", default=None, help="comma-separated worker counts (default 1,4,16; --quick 1,4)")
    ap.add_argument("--backends", default="sqlite,postgres", help="comma-separated, from sqlite, postgres")
    ap.add_argument("--pg-settings", default="default,durable",
                    help=f"comma-separated PostgreSQL settings, from {', '.join(PG_SETTINGS)}")
    ap.add_argument("--quick", action="store_true", help="smoke run: 200 runs, workers 1 and 4")
    ap.add_argument("--start-method", default="forkserver", choices=("forkserver", "spawn"),
                    help="multiprocessing context for the workers")
    ap.add_argument("--out", default=str(RESULTS), help="JSON lines appended here, one per configuration")
    args = ap.parse_args(argv)
    runs = args.runs if args.runs is not None else (200 if args.quick else 1000)
    try:
        worker_counts = [int(w) for w in (args.workers or ("1,4" if args.quick else "1,4,16")).split(",") if w]
    except ValueError:
        ap.error("--workers: comma-separated integers")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    settings = [s.strip() for s in args.pg_settings.split(",") if s.strip()]
    if runs < 1 or not worker_counts or min(worker_counts) < 1:
        ap.error("--runs and every --workers count must be >= 1")
    if set(backends) - {"sqlite", "postgres"} or not backends:
        ap.error("--backends: choose from sqlite, postgres")
    if set(settings) - set(PG_SETTINGS):
        ap.error(f"--pg-settings: choose from {', '.join(PG_SETTINGS)}")

    ctx = mp.get_context(args.start_method)
    if args.start_method == "forkserver":
        ctx.set_forkserver_preload(PRELOAD)  # workers fork from a process that has the store modules imported
    t_all = time.perf_counter()
    rows = make_rows(runs)
    summary_bytes = len(json.dumps(make_result(1, "w00")))
    env = {"time": time.time(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
           "python": platform.python_version(), "sqlite": sqlite3.sqlite_version, "start_method": args.start_method,
           "summary_bytes": summary_bytes, "run_seconds_context": RUN_SECONDS, "quick": args.quick}
    print(f"[bench_store] {runs} runs per store, workers {worker_counts}, {os.cpu_count()} CPU cores, "
          f"result dict {summary_bytes} bytes of JSON, workers via {args.start_method}", flush=True)

    results: list[dict[str, Any]] = []
    skipped: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="bench_store_"))
    try:
        if "sqlite" in backends:
            for w in worker_counts:
                spec = {"backend": "sqlite", "path": str(root / f"sqlite_w{w}" / "results.db")}
                res = {"backend": "sqlite", "setting": SQLITE_SETTING, **run_config(ctx, spec, rows, w)}
                results.append(res)
                _progress(res)
        if "postgres" in backends:
            why = postgres_missing()
            if why:
                skipped.append(f"PostgreSQL rows skipped: {why}")
                print(f"[bench_store] {skipped[-1]}", flush=True)
            else:
                from scalekit.sweep.pg_local import LocalPostgres
                for label in settings:
                    try:
                        pg = LocalPostgres(settings=PG_SETTINGS[label]).start()  # its own temp dir
                    except RuntimeError as e:
                        skipped.append(f"PostgreSQL ({label}) rows skipped: the local server did not start: "
                                       f"{str(e).splitlines()[0]}")
                        print(f"[bench_store] {skipped[-1]}", flush=True)
                        continue
                    try:
                        info = pg_info(pg.url())
                        for w in worker_counts:
                            spec = {"backend": "postgres", "url": pg.create_database(f"bench_w{w}"), "pool_size": 1}
                            res = {"backend": "postgres", "setting": label, "server": info,
                                   **run_config(ctx, spec, rows, w)}
                            results.append(res)
                            _progress(res)
                    finally:
                        pg.cleanup()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    report(results, skipped, env, Path(args.out), time.perf_counter() - t_all)
    return 0 if all(r["exactly_once"] for r in results) else 1  # skipped rows are not failures


def _progress(res: dict[str, Any]) -> None:
    print(f"[bench_store] {res['backend']}/{res['setting']} x{res['workers']}: {res['recorded']}/{res['runs']} in "
          f"{res['seconds']:.2f} s, exactly once: {res['exactly_once']}", flush=True)


def _k(r: dict[str, Any]) -> str:
    return f"{1000 / r['runs_per_s']:.1f}" if r["runs_per_s"] else "-"


def report(results: list[dict[str, Any]], skipped: list[str], env: dict[str, Any], out: Path, total_s: float) -> None:
    """The table (with ratios to 1-worker SQLite and the headroom over a >=10 s/run sweep's need) and JSON lines."""
    base = next((r for r in results if r["backend"] == "sqlite" and r["workers"] == 1), None)
    for r in results:
        r["vs_sqlite_1w"] = r["runs_per_s"] / base["runs_per_s"] if base and base["runs_per_s"] else None
        r["need_runs_per_s"] = r["workers"] / RUN_SECONDS
        r["headroom"] = r["runs_per_s"] / r["need_runs_per_s"]
    na = "-"
    print(f"\n{'backend':<9} {'setting':<16} {'workers':>7} {'runs':>5} {'seconds':>8} {'runs/s':>8} "
          f"{'vs sqlite 1w':>12} {'claim p50/p99 ms':>17} {'finish p50/p99 ms':>18} {'need/s':>7} {'headroom':>9} "
          f"{'1k-run s':>8} "
          f"{'exactly once':>12}")
    for r in results:
        ratio = f"{r['vs_sqlite_1w']:.2f}x" if r["vs_sqlite_1w"] is not None else na
        lat = [f"{v:.1f}" if v is not None else na for v in (r["claim_p50_ms"], r["claim_p99_ms"],
                                                              r["finish_p50_ms"], r["finish_p99_ms"])]
        print(f"{r['backend']:<9} {r['setting']:<16} {r['workers']:>7} {r['recorded']:>5} {r['seconds']:>8.2f} "
              f"{r['runs_per_s']:>8.1f} {ratio:>12} {lat[0] + ' / ' + lat[1]:>17} {lat[2] + ' / ' + lat[3]:>18} "
              f"{r['need_runs_per_s']:>7.1f} {r['headroom']:>8.0f}x {_k(r):>8} {'ok' if r['exactly_once'] else 'FAILED':>12}")
        for p in r["problems"]:
            print(f"    FAILED: {p}")
    for s in skipped:
        print(s)
    print(f"\nruns/s = runs claimed and recorded per second (each: claim + heartbeat + finish, 3 transactions), all "
          f"workers together; {env['cpu_count']} CPU cores shared by the workers and the database server.")
    print(f"context: a sweep whose runs take >= {RUN_SECONDS:g} s each makes at most 1 claim+record per "
          f"{RUN_SECONDS:g} s per worker ({1 / RUN_SECONDS:g} runs/s/worker, well under 1/s), so W workers need "
          f"<= {1 / RUN_SECONDS:g} x W runs/s (need/s); headroom = measured runs/s / need/s. 1k-run s = the store "
          "time a 1,000-run sweep's claims+records add up to at the measured rate.")
    print("postgres/default is LocalPostgres's test setting (fsync, synchronous_commit, full_page_writes off: no "
          "commit waits for the disk); postgres/durable turns all three on, as a real shared server runs.")
    failed = [r for r in results if not r["exactly_once"]]
    print("exactly-once check (store.events(): one 'claimed' + one 'done' per run, nothing else): "
          + (f"FAILED in {len(failed)} configurations" if failed else f"ok in all {len(results)} configurations")
          + f"; total {total_s:.1f} s")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        for r in results:
            f.write(json.dumps({**env, **r}) + "\n")
        for s in skipped:
            f.write(json.dumps({**env, "skipped": s}) + "\n")
    print(f"results appended to {out}")


if __name__ == "__main__":
    sys.exit(main())
