"""A stand-in trainer for exercising sweep machinery without training: `python -m scalekit.sweep.fake_train`.

It takes the same arguments as `scalekit train` (`--config CONFIG.json --workdir DIR`) and writes a `summary.json`
whose loss follows a known law, L = E + A / N^alpha + B / D^beta (Chinchilla's fitted constants), so a sweep of fake
runs can be fitted. It is a test double (named as one): executor tests inject it as the training command, and a user
can dry-run a plan's bookkeeping with `--train-cmd "{python} -m scalekit.sweep.fake_train --config {config}
--workdir {workdir}"`. Environment knobs:

- SCALEKIT_FAKE_SLEEP: seconds to sleep before finishing (to kill or race drivers mid-run).
- SCALEKIT_FAKE_FAIL: a regex; runs whose observe.run_name matches raise an error (exit code 1).
- SCALEKIT_FAKE_LOG: a file to which each start and end is appended as a JSON line (to count executions).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
import time
from pathlib import Path

from scalekit.config import resolve
from scalekit.model.counting import count_params, flops_per_token

E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28


def _log(event: str, name: str) -> None:
    path = os.environ.get("SCALEKIT_FAKE_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"event": event, "name": name, "pid": os.getpid(), "time": time.time()}) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Read the config, maybe sleep or fail, write summary.json with the law's loss."""
    ap = argparse.ArgumentParser(prog="fake_train")
    ap.add_argument("--config", required=True)
    ap.add_argument("--workdir", required=True)
    args = ap.parse_args(argv)
    import ml_collections

    cfg = ml_collections.ConfigDict(json.loads(Path(args.config).read_text()))
    name = cfg.observe.run_name or Path(args.workdir).name
    t0 = time.time()
    _log("start", name)
    time.sleep(float(os.environ.get("SCALEKIT_FAKE_SLEEP", "0")))
    pattern = os.environ.get("SCALEKIT_FAKE_FAIL")
    if pattern and re.search(pattern, name):
        _log("fail", name)
        raise RuntimeError(f"fake failure for {name}")
    vocab = cfg.data.vocab_size if cfg.data.source != "bytes" else 256
    m = resolve(cfg, vocab).model
    n, n_ne = count_params(m, "total"), count_params(m, "non_embedding")
    tokens = cfg.steps * cfg.data.batch_size * cfg.data.seq_len
    noise = 1.0 + 0.002 * ((hash((cfg.seed, n, tokens)) % 1000) / 500.0 - 1.0)
    loss = (E + A / n**ALPHA + B / tokens**BETA) * noise
    curve = [[s, loss * (1 + 0.5 * (1 - s / cfg.steps))] for s in range(max(cfg.steps // 2, 1), cfg.steps + 1,
                                                                         max(cfg.steps // 2, 1))]
    summary = {"final_loss": loss, "eval_loss": loss * 1.01, "eval_curve": curve, "tokens": tokens,
               "flops": flops_per_token(m, cfg.data.seq_len, "palm") * tokens, "flops_6n": 6.0 * n * tokens,
               "n_params": n, "n_params_nonembed": n_ne, "steps": cfg.steps, "wall_time_s": time.time() - t0,
               "entropy_floor": None, "host": socket.gethostname()}
    out = Path(args.workdir) / "summary.json"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary))
    tmp.replace(out)
    _log("end", name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
