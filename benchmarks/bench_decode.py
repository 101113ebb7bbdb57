"""Decoding throughput: generated tokens/s with and without the KV cache, and model FLOP/s against the matmul peak.

    python benchmarks/bench_decode.py                              # CPU-sized models, float32
    python benchmarks/bench_decode.py --models s --batch 64 --prompt 16 --new 112
    python benchmarks/bench_decode.py --models 125m --batch 64 --prompt 128 --new 512 --dtype bfloat16   # one GPU

Useful FLOPs are the cached decoder's work (`scalekit.infer.accounting.generation_flops`: 2 x matmul parameters per
token + attention over the cache, the trainer's units), the same for both paths, so the uncached path's FLOP/s shows
how much of its work is repeated. Every row decodes exactly `--new` tokens (no end token). The peak is the best of
several 2048^3 matmuls in the same dtype, measured just before each model. Prints a table and appends JSON lines to
benchmarks/results/decode.jsonl.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "configs"))

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from scalekit.config import resolve  # noqa: E402
from scalekit.infer.accounting import generation_flops  # noqa: E402
from scalekit.infer.decode import Decoder  # noqa: E402
from scalekit.infer.sampling import SamplingConfig  # noqa: E402
from scalekit.model import counting  # noqa: E402
from scalekit.model.functional import define, init_params  # noqa: E402
from scalekit.parallel.mesh import make_mesh  # noqa: E402
from scalekit.train.mfu import measure_matmul_flops  # noqa: E402
from train import get_config  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "decode.jsonl"


def _time(fn, reps: int) -> float:
    """Best wall time of `reps` calls after one warm-up (compile) call."""
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_one(preset: str, dtype: str, batch: int, prompt: int, new: int, vocab: int, reps: int,
              uncached: bool) -> list[dict]:
    """Cached (and uncached) greedy decoding of one model on one device; one result row per path."""
    cfg = get_config(preset)
    cfg.model.dtype = dtype
    m = resolve(cfg, vocab).model
    model_def = define(m)
    device = jax.devices()[0]
    dec = Decoder(model_def, make_mesh(ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": 1}), [device]))
    params = dec.place(jax.jit(lambda: init_params(m, 0))())
    prompts = np.random.default_rng(0).integers(3, vocab, (batch, prompt)).astype(np.int32)
    lens = np.full(batch, prompt, np.int32)
    sampling = SamplingConfig(max_new_tokens=new, temperature=0.0)
    useful = batch * generation_flops(m, prompt, new)
    peak = measure_matmul_flops(dtype, device=device)
    rows = []
    for path in ("cached", "uncached") if uncached else ("cached",):
        def run() -> None:
            out = dec.generate(params, prompts, lens, jax.random.key(0), sampling, cached=path == "cached")
            assert out.tokens.shape == (batch, new)
        secs = _time(run, reps)
        rows.append({"bench": "decode", "model": preset, "path": path, "dtype": dtype, "batch": batch,
                     "prompt": prompt, "new_tokens": new, "n_params": counting.count_params(m, "total"),
                     "seconds": secs, "tokens_per_s": batch * new / secs, "useful_flops": useful,
                     "flops_per_s": useful / secs, "peak_flops": peak, "mfu": useful / secs / peak,
                     "device": device.device_kind, "platform": device.platform, "host": socket.gethostname(),
                     "time": time.time()})
    if uncached:
        rows[0]["speedup_vs_uncached"] = rows[1]["seconds"] / rows[0]["seconds"]
    return rows


def main(argv: list[str] | None = None) -> int:
    """Benchmark each model, print a table, append JSON lines."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["tiny", "s", "m"])
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--new", type=int, default=112)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-uncached", action="store_true", help="skip the (slow) uncached baseline")
    args = ap.parse_args(argv)
    rows = []
    for preset in args.models:
        rows += bench_one(preset, args.dtype, args.batch, args.prompt, args.new, args.vocab, args.reps,
                          not args.no_uncached)
    head = f"{'model':<8} {'path':<9} {'params':>10} {'tokens/s':>10} {'GFLOP/s':>9} {'peak GF/s':>9} " \
           f"{'MFU':>7} {'speedup':>8}"
    print(f"greedy decoding: batch {args.batch}, prompt {args.prompt}, {args.new} new tokens, {args.dtype}, "
          f"{jax.devices()[0].device_kind}")
    print(head)
    print("-" * len(head))
    for r in rows:
        speed = f"{r['speedup_vs_uncached']:.1f}x" if "speedup_vs_uncached" in r else ""
        print(f"{r['model']:<8} {r['path']:<9} {r['n_params']:>10,} {r['tokens_per_s']:>10.0f} "
              f"{r['flops_per_s'] / 1e9:>9.2f} {r['peak_flops'] / 1e9:>9.1f} {r['mfu']:>7.2%} {speed:>8}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print(f"appended {len(rows)} rows to {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
