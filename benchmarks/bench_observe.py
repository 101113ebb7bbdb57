"""Cost of observability per training step: recording every metric, the goodput phases, and serving scrapes,
as a share of the step time of a real model measured in the same process.

    python benchmarks/bench_observe.py                       # the tiny model (the smallest step: the worst case)
    python benchmarks/bench_observe.py --models tiny,bench19m --steps 10

Two figures per model:
  direct    per-step cost of what the loop calls (MetricsRecorder.log_train with JSONL + Prometheus on, two
            goodput phases) timed over many calls, plus one scrape's cost (the server holds the GIL while it renders)
            spread over the steps between scrapes, divided by the median step time; shown for a 15 s scrape
            interval (Prometheus's default, and deploy/prometheus/prometheus.yml's) and for --scrape-interval (1 s).
  a/b       step time with all of that on (and a scraper every --scrape-interval) vs off, in short interleaved
            blocks: the median over block pairs of (on block median / off block median - 1), with its interquartile
            range. On a shared CPU that range is wider than the effect: it bounds the cost, it cannot resolve it.
            The honest end-to-end figure, but on a shared CPU its noise is larger than the effect.
Prints a table and appends JSON lines to benchmarks/results/observe.jsonl.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "configs"))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from scalekit.config import resolve  # noqa: E402
from scalekit.model.functional import define  # noqa: E402
from scalekit.observe.goodput import Goodput  # noqa: E402
from scalekit.observe.metrics import MetricsRecorder  # noqa: E402
from scalekit.parallel.mesh import make_mesh  # noqa: E402
from scalekit.train.optim import make_optimizer  # noqa: E402
from scalekit.train.state import init_state, state_shardings  # noqa: E402
from scalekit.train.step import jit_steps, make_eval_step, make_train_step  # noqa: E402
from train import get_config  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "observe.jsonl"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def values(step: int, step_time: float) -> dict:
    return {"loss": 3.0 - step * 1e-4, "lr": 1e-3, "grad_norm": 0.5, "tokens": step * 1024,
            "flops": step * 1e9, "step_time_s": step_time, "tokens_per_s": 1024 / step_time, "mfu": 0.3,
            "data_wait_s": 1e-4}


def direct_costs(workdir: Path, calls: int, scrapes: int) -> dict:
    """Seconds per log_train call, per pair of goodput phases, and per scrape (HTTP GET of /metrics)."""
    goodput = Goodput()
    rec = MetricsRecorder(workdir, "bench", prometheus_port=free_port(), goodput=goodput)
    url = f"http://{rec.prometheus_address}/metrics"
    try:
        for step in range(1, 200):  # warm up
            rec.log_train(step, values(step, 0.01))
        start = time.perf_counter()
        for step in range(200, 200 + calls):
            rec.log_train(step, values(step, 0.01))
        log_s = (time.perf_counter() - start) / calls
        start = time.perf_counter()
        for _ in range(calls):
            with goodput.phase("data_wait"):
                pass
            with goodput.phase("step"):
                pass
        phase_s = (time.perf_counter() - start) / calls
        urllib.request.urlopen(url).read()
        start = time.perf_counter()
        for _ in range(scrapes):
            size = len(urllib.request.urlopen(url).read())
        scrape_s = (time.perf_counter() - start) / scrapes
    finally:
        rec.close()
    return {"log_train_s": log_s, "goodput_phases_s": phase_s, "scrape_s": scrape_s, "scrape_bytes": size}


def model_step(preset: str, batch: int, seq: int, vocab: int):
    """A jitted train step of `preset` on one device, its state and a batch (as in bench_train.py)."""
    cfg = get_config(preset)
    cfg.data.batch_size, cfg.data.seq_len = batch, seq
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 1, 1, 1
    cfg.optimizer.warmup_steps = 1
    cfg = resolve(cfg, vocab)
    device = jax.devices()[0]
    mesh = make_mesh(cfg.mesh, [device])
    model_def = define(cfg.model)
    tx = make_optimizer(cfg.optimizer, cfg.steps)
    shardings = state_shardings(model_def, tx, mesh)
    state = init_state(model_def, tx, 0, shardings)
    train, _ = jit_steps(make_train_step(model_def, tx, cfg.model.z_loss), make_eval_step(model_def), shardings, mesh)
    tokens = np.random.default_rng(0).integers(0, vocab, (batch, seq + 1)).astype(np.int32)
    arrays = jax.device_put({"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
                             "weights": np.ones((batch, seq), np.float32)}, device)
    return train, state, arrays


def ab_step_times(train, state, arrays, workdir: Path, steps: int, blocks: int, scrape_interval: float,
                  ) -> tuple[list[list[float]], list[list[float]]]:
    """Step times with observability off and on, in interleaved blocks (the loop's pattern: fetch metrics, log)."""
    goodput = Goodput()
    rec = MetricsRecorder(workdir, "bench-ab", prometheus_port=free_port(), goodput=goodput)
    scraping, stop = threading.Event(), threading.Event()

    def scraper() -> None:
        while not stop.wait(scrape_interval):
            if scraping.is_set():
                urllib.request.urlopen(f"http://{rec.prometheus_address}/metrics").read()

    thread = threading.Thread(target=scraper, daemon=True)
    thread.start()
    off, on = [], []
    step_no = 0
    try:
        for _ in range(3):
            state, metrics = train(state, arrays)
        jax.block_until_ready(metrics)
        for block in range(2 * blocks):
            observe = block % 2 == 1
            scraping.set() if observe else scraping.clear()
            (on if observe else off).append([])
            for _ in range(steps):
                start = time.perf_counter()
                if observe:
                    with goodput.phase("data_wait"):
                        pass
                    with goodput.phase("step"):
                        state, metrics = train(state, arrays)
                        fetched = jax.device_get(metrics)
                    step_no += 1
                    rec.log_train(step_no, {**values(step_no, 0.01), "loss": float(fetched["loss"])})
                else:
                    state, metrics = train(state, arrays)
                    fetched = jax.device_get(metrics)
                    float(fetched["loss"])
                (on if observe else off)[-1].append(time.perf_counter() - start)
    finally:
        stop.set()
        thread.join()
        rec.close()
    return off, on


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny", help="comma-separated presets from configs/train.py")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="steps per a/b block (short blocks: drift cancels)")
    parser.add_argument("--blocks", type=int, default=60, help="a/b block pairs")
    parser.add_argument("--calls", type=int, default=20000, help="log_train calls timed for the direct figure")
    parser.add_argument("--scrape-interval", type=float, default=1.0)
    args = parser.parse_args()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cost = direct_costs(Path(tmp) / "direct", args.calls, scrapes=50)
        print(f"log_train (JSONL + Prometheus): {cost['log_train_s'] * 1e6:.1f} us   goodput phases: "
              f"{cost['goodput_phases_s'] * 1e6:.1f} us   one scrape: {cost['scrape_s'] * 1e3:.2f} ms "
              f"({cost['scrape_bytes']} bytes)")
        print(f"{'model':>9} {'step ms':>9} {'log+phases us':>14} {'% @15s scrape':>14} "
              f"{'% @' + format(args.scrape_interval, 'g') + 's scrape':>14} {'a/b % [IQR]':>24}")
        for preset in args.models.split(","):
            train, state, arrays = model_step(preset, args.batch, args.seq, args.vocab)
            off, on = ab_step_times(train, state, arrays, Path(tmp) / preset, args.steps, args.blocks,
                                    args.scrape_interval)
            step = statistics.median([t for block in off for t in block])
            pair = sorted(statistics.median(b) / statistics.median(a) - 1.0 for a, b in zip(off, on))
            ab, ab_lo, ab_hi = statistics.median(pair), pair[len(pair) // 4], pair[(3 * len(pair)) // 4]
            per_step = cost["log_train_s"] + cost["goodput_phases_s"]

            def ratio(interval: float) -> float:
                return (per_step + cost["scrape_s"] * step / interval) / step  # scrapes per step: step / interval

            row = {"bench": "observe", "preset": preset, "platform": jax.devices()[0].platform,
                   "batch": args.batch, "seq": args.seq, "step_time_s": step, **cost,
                   "per_step_record_s": per_step, "ratio_scrape_15s": ratio(15.0),
                   "ratio_scrape_fast": ratio(args.scrape_interval), "scrape_interval_s": args.scrape_interval,
                   "ab_ratio": ab, "ab_ratio_q25": ab_lo, "ab_ratio_q75": ab_hi, "time": time.time()}
            with RESULTS.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{preset:>9} {step * 1e3:9.2f} {per_step * 1e6:14.1f} {row['ratio_scrape_15s']:14.3%} "
                  f"{row['ratio_scrape_fast']:14.3%} {ab:8.2%} [{ab_lo:6.2%}, {ab_hi:6.2%}]", flush=True)


if __name__ == "__main__":
    main()
