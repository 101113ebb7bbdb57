"""scalekit.checkpoint without the training loop: the manifest, its verification, moving damaged steps aside,
identity checks, init_from path resolution, and a Checkpointer round trip on a tiny pytree.

Written to kill the mutants `make mutate` found alive: each expectation is worked out here from the documented
behaviour (file sizes from the bytes written, CRC-32 from zlib and the digests from hashlib on the same bytes),
never read back from checkpoint.py's own output.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import zlib
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from etils import epath

from scalekit import checkpoint as ck
from scalekit.checkpoint import MANIFEST, Checkpointer, CheckpointError


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.fixture
def step_dir(tmp_path: Path) -> Path:
    d = tmp_path / "checkpoints" / "10"
    write(d / "params" / "a.bin", b"abcdef")                # 6 bytes
    write(d / "train" / "deep" / "b.bin", b"0123456789")    # 10 bytes, two levels down
    write(d / "c.json", b"{}")                               # 2 bytes
    return d


# --- checksums and the manifest ---------------------------------------------------------------------------------

def test_file_hash_is_crc32_hex_by_default_and_the_named_digests_otherwise(tmp_path):
    data = bytes(range(256)) * 9000                  # > 2 MiB: read in more than one chunk
    p = tmp_path / "f"
    p.write_bytes(data)
    assert ck.HASH == "crc32"
    assert ck.file_hash(p) == f"{zlib.crc32(data):08x}"
    assert ck.file_hash(p, "crc32") == f"{zlib.crc32(data):08x}"
    assert ck.file_hash(p, "blake2b") == hashlib.blake2b(data).hexdigest()
    assert ck.file_hash(p, "sha256") == hashlib.sha256(data).hexdigest()
    small = tmp_path / "small"
    small.write_bytes(b"\x00")                       # crc32 of one zero byte: 0xd202ef8d, 8 digits
    assert ck.file_hash(small) == "d202ef8d"
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert ck.file_hash(empty) == "00000000"         # zero-padded to 8 hex digits


def test_manifest_lists_every_file_but_its_own_with_size_and_crc(step_dir):
    write(step_dir / MANIFEST, b"old")
    write(step_dir / (MANIFEST + ".tmp"), b"partial")
    m = ck._manifest(step_dir)
    assert m == {
        "c.json": {"bytes": 2, "crc32": f"{zlib.crc32(b'{}'):08x}"},
        "params/a.bin": {"bytes": 6, "crc32": f"{zlib.crc32(b'abcdef'):08x}"},
        "train/deep/b.bin": {"bytes": 10, "crc32": f"{zlib.crc32(b'0123456789'):08x}"},
    }
    assert list(ck._sizes(step_dir)) == sorted(m)      # sorted relative paths, directories left out


# --- verify_step_dir ------------------------------------------------------------------------------------------

def put_manifest(step_dir: Path, doc: Any) -> None:
    (step_dir / MANIFEST).write_text(json.dumps(doc))


def test_a_step_without_manifest_verifies(step_dir):
    assert ck.verify_step_dir(step_dir) is None


def test_a_matching_manifest_verifies_in_every_format(step_dir):
    put_manifest(step_dir, ck._manifest(step_dir))
    assert ck.verify_step_dir(step_dir) is None
    put_manifest(step_dir, {"params/a.bin": 6, "c.json": 2})                       # old: sizes only
    assert ck.verify_step_dir(step_dir) is None
    put_manifest(step_dir, {"params/a.bin": {"bytes": 6, "sha256": hashlib.sha256(b"abcdef").hexdigest()},
                            "c.json": {"bytes": 2, "blake2b": hashlib.blake2b(b"{}").hexdigest()}})
    assert ck.verify_step_dir(step_dir) is None
    put_manifest(step_dir, {})                                                     # nothing to check
    assert ck.verify_step_dir(step_dir) is None


@pytest.mark.parametrize("text, what", [("{not json", "manifest unreadable"), ("[1, 2]", "not a JSON object"),
                                        ('"a string"', "not a JSON object")])
def test_an_unreadable_manifest_is_a_problem(step_dir, text, what):
    (step_dir / MANIFEST).write_text(text)
    problem = ck.verify_step_dir(step_dir)
    assert problem is not None and problem.startswith("manifest unreadable (") and what in problem


def test_a_missing_file_is_named(step_dir):
    put_manifest(step_dir, {"params/a.bin": 6, "params/gone.bin": 3})
    assert ck.verify_step_dir(step_dir) == "file params/gone.bin is missing"


def test_a_size_change_is_named_with_both_sizes(step_dir):
    put_manifest(step_dir, {"c.json": {"bytes": 2, "crc32": f"{zlib.crc32(b'{}'):08x}"}, "params/a.bin": {"bytes": 7}})
    assert ck.verify_step_dir(step_dir) == ("file params/a.bin has 6 bytes, expected 7 (truncated or "
                                            "overwritten)")
    put_manifest(step_dir, {"train/deep/b.bin": 11})
    assert ck.verify_step_dir(step_dir) == ("file train/deep/b.bin has 10 bytes, expected 11 (truncated or "
                                            "overwritten)")


@pytest.mark.parametrize("algorithm", ["crc32", "blake2b", "sha256"])
def test_same_size_other_bytes_fail_the_checksum(step_dir, algorithm):
    good = {"crc32": f"{zlib.crc32(b'abcdef'):08x}", "blake2b": hashlib.blake2b(b"abcdef").hexdigest(),
            "sha256": hashlib.sha256(b"abcdef").hexdigest()}[algorithm]
    put_manifest(step_dir, {"params/a.bin": {"bytes": 6, algorithm: good}})
    assert ck.verify_step_dir(step_dir) is None
    write(step_dir / "params" / "a.bin", b"abcdeX")
    got = ck.file_hash(step_dir / "params" / "a.bin", algorithm)
    assert got != good
    assert ck.verify_step_dir(step_dir) == (f"file params/a.bin has {algorithm} {got[:16]}, expected {good[:16]} "
                                            "(content changed: overwritten or corrupted)")


def test_every_entry_is_checked_not_only_the_first(step_dir):
    entries = ck._manifest(step_dir)
    entries["train/deep/b.bin"]["crc32"] = "deadbeef"
    put_manifest(step_dir, entries)
    problem = ck.verify_step_dir(step_dir)
    assert problem is not None and problem.startswith("file train/deep/b.bin has crc32 ")


def test_an_unreadable_file_is_a_problem(step_dir, monkeypatch):
    # a read error while hashing (a permission denied, an I/O error); raised by hand, since root reads any mode
    put_manifest(step_dir, {"c.json": {"bytes": 2, "crc32": "0"}})

    def unreadable(path, algorithm):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(ck, "file_hash", unreadable)
    assert ck.verify_step_dir(step_dir).startswith("file c.json unreadable ([Errno 13] Permission denied")


# --- small helpers -------------------------------------------------------------------------------------------

def test_problem_is_one_line_with_the_type_and_at_most_300_chars():
    assert ck._problem(ValueError("  first line\nsecond line  ")) == "ValueError: first line"
    assert ck._problem(KeyError()) == "KeyError: "
    long = ck._problem(RuntimeError("x" * 1000))
    assert long == ("RuntimeError: " + "x" * 1000)[:300] and len(long) == 300


def test_is_local():
    assert ck._is_local("/tmp/ckpt") and ck._is_local("relative/dir")
    assert not ck._is_local("gs://bucket/ckpt") and not ck._is_local("s3://b/c")


def test_move_aside_renames_with_a_stamp_and_never_overwrites(tmp_path):
    d = tmp_path / "20"
    d.mkdir()
    (d / "x").write_text("1")
    first = ck.move_aside(epath.Path(d))
    assert not d.exists() and (Path(first) / "x").read_text() == "1"
    assert re.fullmatch(r"20\.damaged-\d{8}T\d{6}", first.name) and first.parent == epath.Path(tmp_path)
    d.mkdir()
    second = ck.move_aside(epath.Path(d))               # same second: a suffix, the first one kept
    if second.name.startswith(first.name):
        assert second.name == first.name + "-1"
        d.mkdir()
        third = ck.move_aside(epath.Path(d))
        if third.name.startswith(first.name):
            assert third.name == first.name + "-2"
    assert Path(first).is_dir() and Path(second).is_dir()


def test_restore_target_carries_shape_dtype_and_sharding():
    s = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    tree = {"a": jnp.zeros((2, 3), jnp.float32), "b": jnp.zeros((), jnp.int32)}
    out = ck.restore_target(tree, {"a": s, "b": s})
    assert out["a"] == jax.ShapeDtypeStruct((2, 3), jnp.float32, sharding=s)
    assert out["b"].shape == () and out["b"].dtype == jnp.int32 and out["b"].sharding == s


# --- identity --------------------------------------------------------------------------------------------------

def ident(key: str, **config) -> dict[str, Any]:
    return {"run_key": key, "config": config}


def test_identity_same_key_or_only_steps_changed_allows_resume():
    assert ck.identity_mismatch(ident("k1", lr=1), ident("k1", lr=2), "/d", 5) is None   # the key decides
    assert ck.identity_mismatch(ident("k1", lr=1, steps=10), ident("k2", lr=1, steps=20), "/d", 5) is None
    assert ck.identity_mismatch({}, {}, "/d", 5) is None


def test_identity_mismatch_names_the_fields_both_values_and_keys():
    saved = ident("a" * 20, model={"d": 64}, lr=0.1, steps=10)
    current = ident("b" * 20, model={"d": 128}, lr=0.1, steps=99, seed=3)
    msg = ck.identity_mismatch(saved, current, "/ck", 7)
    assert msg == ("checkpoint step 7 in /ck belongs to another run (key " + "a" * 12 + ", this run " + "b" * 12
                   + "): it differs in model.d (64 -> 128), seed ('<unset>' -> 3); only steps may change on "
                   "resume: use a new workdir (or checkpoint.dir), or restore the old settings")


def test_identity_mismatch_shows_six_fields_then_a_count():
    saved = ident("x", **{f"f{i}": i for i in range(9)})
    current = ident("y", **{f"f{i}": i + 100 for i in range(9)})
    msg = ck.identity_mismatch(saved, current, "/ck", 1)
    shown = ", ".join(f"f{i} ({i} -> {i + 100})" for i in range(6))
    assert f"it differs in {shown} and 3 more; only steps" in msg
    assert "f6" not in msg
    seven = ck.identity_mismatch(ident("x", **{f"f{i}": 0 for i in range(7)}),
                                 ident("y", **{f"f{i}": 1 for i in range(7)}), "/ck", 1)
    assert "f5 (0 -> 1) and 1 more;" in seven
    six = ck.identity_mismatch(ident("x", **{f"f{i}": 0 for i in range(6)}),
                               ident("y", **{f"f{i}": 1 for i in range(6)}), "/ck", 1)
    assert "f5 (0 -> 1); only steps" in six and "more" not in six


# --- init_from path resolution ----------------------------------------------------------------------------------

def test_resolve_checkpoint_dir_accepts_a_workdir_a_checkpoints_dir_or_a_step(tmp_path):
    with pytest.raises(CheckpointError, match=r"^init_from='.*nowhere' does not exist$"):
        ck.resolve_checkpoint_dir(str(tmp_path / "nowhere"))
    run = tmp_path / "run"
    (run / "checkpoints" / "40" / "params").mkdir(parents=True)
    assert ck.resolve_checkpoint_dir(str(run)) == (str(run / "checkpoints"), None)
    assert ck.resolve_checkpoint_dir(str(run / "checkpoints")) == (str(run / "checkpoints"), None)
    assert ck.resolve_checkpoint_dir(str(run / "checkpoints" / "40")) == (str(run / "checkpoints"), 40)
    odd = tmp_path / "notastep"
    (odd / "params").mkdir(parents=True)                 # has params/ but its name is not a step number
    assert ck.resolve_checkpoint_dir(str(odd)) == (str(odd), None)


def test_load_params_errors_are_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    target = {"w": jax.ShapeDtypeStruct((2,), jnp.float32)}
    with pytest.raises(CheckpointError, match=r"^init_from='.*empty': no checkpoint steps in .*empty$"):
        ck.load_params(str(empty), target)


# --- a Checkpointer round trip on a tiny state -------------------------------------------------------------------

@jax.tree_util.register_dataclass
@dataclasses.dataclass
class State:
    step: Any
    params: Any
    opt_state: Any
    rng: Any


def tiny_cfg(directory: str = "", every: int = 2, keep: int = 5) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.name = "mutants"
    cfg.checkpoint = ml_collections.ConfigDict(dict(every=every, keep=keep, keep_period=0, dir=directory,
                                                    async_save=False))
    return cfg


def state_at(step: int) -> State:
    return State(step=jnp.asarray(step, jnp.int32),
                 params={"w": jnp.arange(4, dtype=jnp.float32) + step, "b": jnp.full((2,), step, jnp.float32)},
                 opt_state={"mu": jnp.ones((4,), jnp.float32) * step * 0.5},
                 rng=jnp.asarray([step, step + 1], jnp.uint32))


def target_of(state: State) -> State:
    s = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state)


def assert_state(state: State, step: int) -> None:
    want = state_at(step)
    for got, exp in zip(jax.tree.leaves(state), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(exp))
    assert int(state.step) == step


def test_checkpointer_saves_restores_the_newest_and_falls_back_past_damage(tmp_path):
    identity = ident("run-a", lr=0.1, steps=10)
    ckpt = Checkpointer(tiny_cfg(), tmp_path, identity=identity)
    assert ckpt.directory == str(tmp_path / "checkpoints") and ckpt.every == 2
    assert [ckpt.should_save(s) for s in (0, 1, 2, 3, 4)] == [True, False, True, False, True]
    assert ckpt.restore_latest(target_of(state_at(0))) is None          # nothing saved yet: a fresh start
    for step in (2, 4):
        ckpt.save(step, state_at(step), {"pos": step * 10})
    ckpt.save(4, state_at(99), {"pos": -1})                            # a saved step is not saved again
    ckpt.wait()
    for step in (2, 4):
        d = tmp_path / "checkpoints" / str(step)
        manifest = json.loads((d / MANIFEST).read_text())
        assert manifest == ck._manifest(d) and manifest                  # written at wait, matching the files
        assert (d / "identity").is_dir() and (d / "config").is_dir()
    restored, data = ckpt.restore_latest(target_of(state_at(0)))
    assert_state(restored, 4)
    assert data == {"pos": 40}

    # damage step 4 (same size, other bytes): step 2 restores, step 4 is moved aside with a warning each
    victim = max((p for p in (tmp_path / "checkpoints" / "4").rglob("*") if p.is_file() and p.name != MANIFEST
                  and p.stat().st_size > 0), key=lambda p: p.stat().st_size)
    victim.write_bytes(bytes(b ^ 0xFF for b in victim.read_bytes()))
    with pytest.warns(RuntimeWarning) as record:
        restored, data = ckpt.restore_latest(target_of(state_at(0)))
    assert_state(restored, 2)
    assert data == {"pos": 20}
    texts = [str(w.message) for w in record]
    assert any(t.startswith(f"checkpoint step 4 in {ckpt.directory} is unusable (file ") and "crc32" in t
               and t.endswith("; falling back to the previous one") for t in texts)
    assert any(t.startswith("moved damaged checkpoint step 4 aside to ") and t.endswith(
        "; it will be saved again") for t in texts)
    assert sorted(ckpt.manager.all_steps()) == [2]
    assert [p.name.split(".")[0] for p in (tmp_path / "checkpoints").iterdir() if "damaged" in p.name] == ["4"]
    ckpt.close()

    # another run's checkpoint is refused; the same run (steps changed only) resumes
    other = Checkpointer(tiny_cfg(), tmp_path, identity=ident("run-b", lr=0.2, steps=10))
    with pytest.raises(CheckpointError) as err:
        other.restore_latest(target_of(state_at(0)))
    assert str(err.value) == (f"checkpoint step 2 in {other.directory} belongs to another run (key run-a, this run "
                              "run-b): it differs in lr (0.1 -> 0.2); only steps may change on resume: use a new "
                              "workdir (or checkpoint.dir), or restore the old settings")
    other.close()
    longer = Checkpointer(tiny_cfg(), tmp_path, identity=ident("run-a2", lr=0.1, steps=50))
    assert_state(longer.restore_latest(target_of(state_at(0)))[0], 2)
    longer.close()

    # init_from: parameters only, from the workdir, the checkpoints dir or the step dir
    ptarget = target_of(state_at(0)).params
    for where in (tmp_path, tmp_path / "checkpoints", tmp_path / "checkpoints" / "2"):
        params = ck.load_params(str(where), ptarget)
        np.testing.assert_array_equal(np.asarray(params["w"]), np.arange(4, dtype=np.float32) + 2)


def test_every_step_damaged_is_an_error_listing_each(tmp_path):
    ckpt = Checkpointer(tiny_cfg(every=1), tmp_path)
    for step in (1, 2):
        ckpt.save(step, state_at(step), None)
    ckpt.wait()
    for step in (1, 2):
        put_manifest(tmp_path / "checkpoints" / str(step), {"params/nothing": 1})
    with pytest.warns(RuntimeWarning, match="is unusable"):
        with pytest.raises(CheckpointError) as err:
            ckpt.restore_latest(target_of(state_at(0)))
    assert str(err.value) == (f"no usable checkpoint in {ckpt.directory} (step 2: file params/nothing is missing; "
                              "step 1: file params/nothing is missing); move the directory aside to start from "
                              "scratch")
    with pytest.raises(CheckpointError) as err:
        ck.load_params(str(tmp_path), target_of(state_at(0)).params)
    assert str(err.value) == (f"init_from={str(tmp_path)!r}: no usable checkpoint in {ckpt.directory} (step 2: "
                              "file params/nothing is missing; step 1: file params/nothing is missing).")
    ckpt.close()


def test_load_params_shape_mismatch_hints_at_the_model_fields(tmp_path):
    ckpt = Checkpointer(tiny_cfg(every=1, directory=str(tmp_path / "ck")), tmp_path / "ignored")
    assert ckpt.directory == str(tmp_path / "ck")
    ckpt.save(1, state_at(1), None)
    ckpt.close()
    wrong = {"w": jax.ShapeDtypeStruct((5,), jnp.float32), "b": jax.ShapeDtypeStruct((2,), jnp.float32)}
    with pytest.raises(CheckpointError, match=r"The model fields and the data vocabulary must match the "
                                              r"pre-trained run\.$"):
        ck.load_params(str(tmp_path / "ck"), wrong)


def test_sync_is_a_collective_only_across_processes(monkeypatch):
    from jax.experimental import multihost_utils

    calls = []
    monkeypatch.setattr(multihost_utils, "sync_global_devices", lambda name: calls.append(name))
    ck._sync("one")
    assert calls == []                                   # one process: nothing to wait for
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    ck._sync("two")
    assert calls == ["two"]


def test_a_step_that_cannot_be_moved_aside_is_a_warning_not_an_error(tmp_path, monkeypatch):
    ckpt = Checkpointer(tiny_cfg(every=1), tmp_path)
    for step in (1, 2):
        ckpt.save(step, state_at(step), None)
    ckpt.wait()
    put_manifest(tmp_path / "checkpoints" / "2", {"params/nothing": 1})

    def refuse(step_dir):
        raise OSError("read-only file system")

    monkeypatch.setattr(ck, "move_aside", refuse)
    barriers = []
    monkeypatch.setattr(ck, "_sync", barriers.append)
    with pytest.warns(RuntimeWarning) as record:
        restored, _ = ckpt.restore_latest(target_of(state_at(0)))
    assert_state(restored, 1)
    assert ("could not move damaged checkpoint step 2 aside (read-only file system); the run will not save that "
            "step again") in [str(w.message) for w in record]
    assert (tmp_path / "checkpoints" / "2").is_dir()
    assert barriers == ["scalekit_checkpoint_move_aside"]       # every process waits at the same named barrier
    ckpt.close()


def test_should_save_every_step_and_never(tmp_path):
    every_step = Checkpointer(tiny_cfg(every=1), tmp_path / "a")
    assert [every_step.should_save(s) for s in (1, 2, 3)] == [True, True, True]
    every_step.close()
    never = Checkpointer(tiny_cfg(every=0), tmp_path / "b")     # every = 0: saved only at the end of the run
    assert [never.should_save(s) for s in (0, 1, 5)] == [False, False, False]
    never.close()
