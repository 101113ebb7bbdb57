"""Training throughput: tokens/s, model FLOP/s and MFU against the matmul peak measured in the same run.

    python benchmarks/bench_train.py                    # two CPU-sized models, float32 and bfloat16
    python benchmarks/bench_train.py --models bench19m --dtypes float32 --steps 20
    python benchmarks/bench_train.py --models 1b --batch 8 --seq 2048 --dtypes bfloat16   # one GPU

Model FLOPs use the PaLM convention (6 x matmul parameters incl. the output layer + 12 L H d_head T per token;
scalekit.model.counting). Peak: best of several 2048^3 (4096^3 on accelerators) matmuls in the same dtype, measured
just before each model so machine drift between runs cancels. Prints a table and appends JSON lines to
benchmarks/results/train.jsonl.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "configs"))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from scalekit.config import resolve  # noqa: E402
from scalekit.model import counting  # noqa: E402
from scalekit.model.functional import define  # noqa: E402
from scalekit.parallel.mesh import make_mesh  # noqa: E402
from scalekit.train.mfu import measure_matmul_flops  # noqa: E402
from scalekit.train.optim import make_optimizer  # noqa: E402
from scalekit.train.state import init_state, state_shardings  # noqa: E402
from scalekit.train.step import jit_steps, make_eval_step, make_train_step  # noqa: E402
from train import get_config  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "train.jsonl"


def bench_one(preset: str, dtype: str, batch: int, seq: int, steps: int, vocab: int, **model_overrides) -> dict:
    cfg = get_config(preset)
    cfg.model.dtype = dtype
    cfg.model.update(model_overrides)
    cfg.data.batch_size, cfg.data.seq_len = batch, seq
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 1, 1, 1
    cfg.steps = steps + 5
    cfg.optimizer.warmup_steps = 1
    cfg = resolve(cfg, vocab)
    device = jax.devices()[0]
    mesh = make_mesh(cfg.mesh, [device])
    model_def = define(cfg.model)
    tx = make_optimizer(cfg.optimizer, cfg.steps)
    shardings = state_shardings(model_def, tx, mesh)
    state = init_state(model_def, tx, 0, shardings)
    train, _ = jit_steps(make_train_step(model_def, tx, cfg.model.z_loss), make_eval_step(model_def), shardings, mesh)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, vocab, (batch, seq + 1)).astype(np.int32)
    batch_arrays = jax.device_put({"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
                                   "weights": np.ones((batch, seq), np.float32)}, device)
    for _ in range(3):  # compile + warm up
        state, metrics = train(state, batch_arrays)
    jax.block_until_ready(metrics)
    peak = measure_matmul_flops(dtype, 4096 if device.platform != "cpu" else 2048)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = train(state, batch_arrays)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    step_time = statistics.median(times)
    flops_per_step = counting.flops_per_token(cfg.model, seq, "palm") * batch * seq
    breakdown = _breakdown(model_def, state.params, batch_arrays, steps)
    return {"preset": preset, "dtype": dtype, "device": device.device_kind, "platform": device.platform,
            "params": counting.count_params(cfg.model, "total"), "batch": batch, "seq": seq, "vocab": vocab,
            "step_time_s": step_time, "tokens_per_s": batch * seq / step_time,
            "model_flops_per_s": flops_per_step / step_time, "peak_flops_per_s": peak,
            "mfu": flops_per_step / step_time / peak, "loss": float(metrics["loss"]),
            "forward_s": breakdown["forward"], "backward_s": breakdown["grad"] - breakdown["forward"],
            "optimizer_s": step_time - breakdown["grad"], "time": time.time()}


def _breakdown(model_def, params, batch, reps: int) -> dict:
    """Median time of the forward loss and of forward + backward alone: the step minus these is the optimizer."""
    from scalekit.model.functional import apply
    from scalekit.model.transformer import cross_entropy

    def loss(p):
        logits = apply(model_def, p, batch["inputs"])
        return cross_entropy(logits, batch["targets"], batch["weights"])[0]

    out = {}
    for name, fn in (("forward", jax.jit(loss)), ("grad", jax.jit(jax.grad(loss)))):
        jax.block_until_ready(fn(params))
        ts = []
        for _ in range(max(reps // 2, 3)):
            start = time.perf_counter()
            jax.block_until_ready(fn(params))
            ts.append(time.perf_counter() - start)
        out[name] = statistics.median(ts)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="s,bench19m", help="comma-separated presets from configs/train.py")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=256, help="vocabulary (256 = byte-level text)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration (median reported)")
    args = parser.parse_args()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for preset in args.models.split(","):
        for dtype in args.dtypes.split(","):
            row = bench_one(preset, dtype, args.batch, args.seq, args.steps, args.vocab)
            rows.append(row)
            with RESULTS.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{preset:>9} {dtype:>8} params {row['params'] / 1e6:7.2f}M  step {row['step_time_s'] * 1e3:8.1f} ms"
                  f"  {row['tokens_per_s']:9.0f} tok/s  {row['model_flops_per_s'] / 1e9:8.1f} GFLOP/s"
                  f"  peak {row['peak_flops_per_s'] / 1e9:7.1f} GFLOP/s  MFU {row['mfu']:6.1%}"
                  f"  [fwd {row['forward_s'] * 1e3:.0f} / bwd {row['backward_s'] * 1e3:.0f} / "
                  f"opt {row['optimizer_s'] * 1e3:.0f} ms]", flush=True)


if __name__ == "__main__":
    main()
