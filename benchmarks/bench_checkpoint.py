"""Cost of checkpointing: mean step time with async saves every K steps vs no saves, and restore time.

    python benchmarks/bench_checkpoint.py                 # the ~20M model (bench19m), saves every 10 and every step
    python benchmarks/bench_checkpoint.py --preset s --steps 30

Runs the real training loop (scalekit.train.loop.train) with the same seed and data in one process: first without
checkpoints (the baseline), then with `checkpoint.every` = each K asked for, each in a fresh workdir. The mean step
time comes from the steady-state steps' `step_time_s` in metrics.jsonl (the compile step excluded) and includes the
time the loop blocks on saves. Restore time: wall time of restoring the last checkpoint into the same shardings.
Prints a table and appends JSON lines to benchmarks/results/checkpoint.jsonl.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "configs"))

from scalekit.checkpoint import Checkpointer, restore_target  # noqa: E402
from scalekit.model.functional import define  # noqa: E402
from scalekit.parallel.mesh import make_mesh  # noqa: E402
from scalekit.train.loop import prepare, train  # noqa: E402
from scalekit.train.optim import make_optimizer  # noqa: E402
from scalekit.train.state import abstract_state, state_shardings  # noqa: E402
from train import get_config  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "checkpoint.jsonl"


def mean_step_time(workdir: Path) -> float:
    times = [json.loads(line)["step_time_s"] for line in (workdir / "metrics.jsonl").read_text().splitlines()
             if '"kind": "train"' in line]
    return statistics.mean(times[2:])  # skip the first steps (compile, warm-up)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="bench19m")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--every", default="10,1", help="comma-separated save intervals to compare")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    args = parser.parse_args()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)

    def config(every: int):
        cfg = get_config(args.preset)
        cfg.steps, cfg.eval_every, cfg.eval_batches = args.steps, 0, 1
        cfg.data.source, cfg.data.batch_size, cfg.data.seq_len = "bytes", args.batch, args.seq
        cfg.mesh.data, cfg.peak_flops, cfg.progress = 1, 1e11, False
        cfg.checkpoint.every, cfg.checkpoint.keep = every, 2
        return cfg

    with tempfile.TemporaryDirectory() as tmp:
        base_dir = Path(tmp) / "none"
        train(config(0), base_dir)  # still saves once at the end (outside the timed steps' mean)
        baseline = mean_step_time(base_dir)
        rows = []
        for every in (int(x) for x in args.every.split(",")):
            run_dir = Path(tmp) / f"every{every}"
            train(config(every), run_dir)
            step = mean_step_time(run_dir)
            cfg, _ = prepare(config(every))
            mesh = make_mesh(cfg.mesh)
            model_def = define(cfg.model)
            tx = make_optimizer(cfg.optimizer, cfg.steps)
            target = restore_target(abstract_state(model_def, tx), state_shardings(model_def, tx, mesh))
            ckpt = Checkpointer(cfg, run_dir)
            start = time.perf_counter()
            ckpt.restore_latest(target)
            restore_s = time.perf_counter() - start
            ckpt.close()
            n_bytes = sum(p.stat().st_size for p in (run_dir / "checkpoints").rglob("*") if p.is_file())
            row = {"preset": args.preset, "every": every, "baseline_step_s": baseline, "step_s": step,
                   "overhead": step / baseline - 1.0, "restore_s": restore_s, "checkpoint_bytes": n_bytes,
                   "time": time.time()}
            rows.append(row)
            with RESULTS.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{args.preset}: save every {every:>3} steps: step {step * 1e3:7.1f} ms vs {baseline * 1e3:7.1f} ms "
                  f"without saves ({row['overhead']:+.1%}); restore {restore_s:.2f} s; "
                  f"{n_bytes / 2**20:.0f} MiB on disk", flush=True)


if __name__ == "__main__":
    main()
