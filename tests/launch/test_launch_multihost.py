"""Two real processes train together and save a multi-host checkpoint; one process with 8 devices restores it.

jax.distributed over 127.0.0.1, 4 CPU devices per process, a mesh over all 8; orbax writes from both processes.
The single process resumes from the two-process checkpoint at step 3 and must log the same losses for steps 4..6
as the two-process run did: same global batches, same parameters, same optimizer state.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

ARGS = ["-m", "scalekit", "train", "--config", "configs/train.py:tiny", "--config.steps=6",
        "--config.checkpoint.every=3", "--config.checkpoint.async_save=False", "--config.optimizer.warmup_steps=1",
        "--config.peak_flops=1e12", "--config.progress=False", "--config.eval_every=0", "--config.eval_batches=1"]


def _losses(workdir: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


def test_two_process_checkpoint_restores_on_one_process_with_same_losses(group, clean_env, free_port,
                                                                            tmp_path: Path) -> None:
    two = tmp_path / "two"
    envs = [clean_env(4, SCALEKIT_COORDINATOR_ADDRESS=f"127.0.0.1:{free_port}", SCALEKIT_NUM_PROCESSES="2",
                      SCALEKIT_PROCESS_ID=str(i)) for i in range(2)]
    results = group.run([sys.executable, *ARGS, "--workdir", str(two)], envs, timeout=240)
    for i, (rc, out) in enumerate(results):
        assert rc == 0, out[-4000:]
        assert f"process {i} of 2 (source env, coordinator 127.0.0.1:{free_port}" in out
    assert "on mesh {'data': 8" in results[0][1]
    summary = json.loads((two / "summary.json").read_text())
    assert summary["process_count"] == 2
    saved = {p.name for p in (two / "checkpoints" / "3").rglob("*")}
    assert {"ocdbt.process_0", "ocdbt.process_1"} <= saved, "both processes write their shards"
    two_losses = _losses(two)
    assert sorted(two_losses) == [1, 2, 3, 4, 5, 6]

    # The same run, stopped after its step-3 checkpoint, continued by one process that has all 8 devices.
    one = tmp_path / "one"
    shutil.copytree(two, one)
    shutil.rmtree(one / "checkpoints" / "6")
    (one / "summary.json").unlink()
    kept = [x for x in (one / "metrics.jsonl").read_text().splitlines() if json.loads(x)["step"] <= 3]
    (one / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    (rc, out), = group.run([sys.executable, *ARGS, "--workdir", str(one)], [clean_env(8)], timeout=180)
    assert rc == 0, out[-4000:]
    assert "resumed from checkpoint at step 3" in out and "on mesh {'data': 8" in out, out[-4000:]
    one_losses = _losses(one)
    assert sorted(one_losses) == [1, 2, 3, 4, 5, 6]
    steps = [4, 5, 6]
    np.testing.assert_allclose([one_losses[s] for s in steps], [two_losses[s] for s in steps], rtol=1e-5)
    assert json.loads((one / "summary.json").read_text())["process_count"] == 1
