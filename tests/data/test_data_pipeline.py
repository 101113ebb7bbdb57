"""The grain pipeline on every source: determinism, seeds, splits, per-process shards, iterator state."""

import json

import numpy as np
import pytest

from scalekit.config import default_config
from scalekit.data import DataError, make_batches


@pytest.fixture(params=["synthetic", "bytes", "tokens"])
def cfg(request, tmp_path):
    """A small data config per source (bytes: random files in a temp dir; tokens: a .bin of random tokens)."""
    d = default_config().data
    d.source, d.seq_len, d.batch_size = request.param, 16, 8
    rng = np.random.default_rng(0)
    if request.param == "bytes":
        for i in range(3):
            (tmp_path / f"f{i}.txt").write_bytes(rng.integers(0, 256, 700, dtype=np.uint8).tobytes())
        d.path = str(tmp_path)
    elif request.param == "tokens":
        rng.integers(0, 1000, 3000, dtype=np.uint16).tofile(tmp_path / "t.bin")
        d.path, d.vocab_size = str(tmp_path / "t.bin"), 1000
    return d


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_batch_format(cfg):
    b = next(make_batches(cfg, "train", 0))
    assert set(b) == {"inputs", "targets", "weights"}
    for k, dt in (("inputs", np.int32), ("targets", np.int32), ("weights", np.float32)):
        assert b[k].shape == (8, 16) and b[k].dtype == dt
    assert np.all(b["weights"] == 1.0)
    assert b["inputs"].min() >= 0 and b["inputs"].max() < (256 if cfg.source == "bytes" else cfg.vocab_size)
    np.testing.assert_array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])  # targets are inputs shifted by one


def test_deterministic_given_seed(cfg):
    assert_same(take(make_batches(cfg, "train", 3), 4), take(make_batches(cfg, "train", 3), 4))
    cfg.prefetch = 0
    assert_same(take(make_batches(cfg, "train", 3), 4), take(make_batches(cfg, "train", 3), 2) + take(
        make_batches(cfg, "train", 3, start_batch=2), 2))


def test_different_seeds_differ(cfg):
    a = np.concatenate([b["inputs"] for b in take(make_batches(cfg, "train", 0), 3)])
    b = np.concatenate([b["inputs"] for b in take(make_batches(cfg, "train", 1), 3)])
    assert not np.array_equal(a, b)


def test_eval_is_fixed_and_disjoint_from_train(cfg):
    e1, e2 = take(make_batches(cfg, "eval", 0), 3), take(make_batches(cfg, "eval", 0), 3)
    assert_same(e1, e2)
    train_rows = {r.tobytes() for b in take(make_batches(cfg, "train", 0), 6) for r in b["inputs"]}
    eval_rows = {r.tobytes() for b in e1 for r in b["inputs"]}
    assert not train_rows & eval_rows


@pytest.mark.parametrize("processes", [2, 4])
def test_process_shards_concatenate_to_global_batch(cfg, processes):
    glob = take(make_batches(cfg, "train", 5), 3)
    shards = [take(make_batches(cfg, "train", 5, p, processes), 3) for p in range(processes)]
    for step in range(3):
        for k in ("inputs", "targets", "weights"):
            assert shards[0][step][k].shape[0] == 8 // processes
            np.testing.assert_array_equal(np.concatenate([s[step][k] for s in shards]), glob[step][k])


def test_state_round_trips_mid_stream(cfg):
    it = make_batches(cfg, "train", 2)
    take(it, 3)
    state = it.get_state()
    expected = take(it, 4)
    for restored_state in (state, json.loads(json.dumps(state))):
        fresh = make_batches(cfg, "train", 2)
        fresh.set_state(restored_state)
        assert_same(take(fresh, 4), expected)
    assert state == {"next_index": 3}  # the global step: resumable under another process count (start_batch)


def test_batch_not_divisible_by_processes(cfg):
    with pytest.raises(DataError, match="divisible"):
        make_batches(cfg, "train", 0, 0, 3)


def test_worker_processes_give_the_same_batches_and_state():
    d = default_config().data
    d.seq_len, d.batch_size, d.vocab_size = 8, 4, 8
    expected = take(make_batches(d, "train", 0), 6)
    d.worker_count = 1
    it = make_batches(d, "train", 0)
    try:
        got = take(it, 3)
        state = json.loads(json.dumps(it.get_state()))
        got += take(it, 3)
    finally:
        it.close()
    assert_same(got, expected)
    it = make_batches(d, "train", 0)
    try:
        it.set_state(state)
        assert_same(take(it, 3), expected[3:])
    finally:
        it.close()


def test_state_saved_through_orbax_with_grains_handler(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    import grain

    d = default_config().data
    it = make_batches(d, "train", 0)
    take(it, 5)
    mgr = ocp.CheckpointManager(tmp_path, item_names=("data",),
                                item_handlers={"data": grain.checkpoint.CheckpointHandler()})
    mgr.save(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mgr.wait_until_finished()
    expected = take(it, 2)
    fresh = make_batches(d, "train", 0)
    mgr.restore(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    assert_same(take(fresh, 2), expected)
    mgr.close()
