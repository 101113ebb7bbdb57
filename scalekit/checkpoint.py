"""Checkpoints that survive preemption: orbax CheckpointManager with async saves, keep-N, exact resume.

A checkpoint at step s holds four items: `params`, `train` (step, optimizer state, RNG), `data` (each process's
grain iterator state, `process_<i>-of-<n>.json`) and `config` (the resolved config). Parameters are their own item
so that `init_from` can start a new run from them alone. Restores take the target shardings, so a checkpoint saved
on one mesh restores onto any other (orbax reshards on load).

Integrity: orbax writes each step into a temporary directory and renames it when complete, so a save killed
mid-write never appears as a step. After a save completes we also write a manifest of each file's size and
content checksum (CRC-32); on restore a step whose files no longer match it (truncated, deleted, or overwritten with
other bytes of the same size) or that fails to read is skipped with a warning naming the file, and the next older
step is tried. A manifest written before checksums were recorded (sizes only) is checked by size only. The
checksums are computed where the manifest is written (when the next save starts, or at `wait`), after orbax has
finalized the step. Nothing is half-restored: a step is used only if every item loads.
Damage is repaired, not only avoided: once an older step has restored, each newer damaged step's directory is moved
aside (renamed `<step>.damaged-<time>`), so the run saves that step again. `load_params` (init_from) validates and
falls back the same way (leaving another run's files as they are) and fails with one line when nothing is usable.

Identity: a checkpoint records its run's identity (`scalekit.runkey`: the run key and the result-changing config
fields). Resuming from a checkpoint of another run is refused with one line naming the fields that differ; a change
of `steps` alone (extending a run) is allowed. Checkpoints without an identity (older ones) restore as before.

This module imports nothing from `scalekit.train`: the restored train state is built with the target's own class.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import warnings
import zlib
from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from scalekit import runkey

MANIFEST = "scalekit_manifest.json"


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was expected."""


# --- the per-process data-iterator item -----------------------------------------------------------------------------

class DataStateHandler(ocp.CheckpointHandler):
    """Saves a snapshot of each process's data-iterator state as process_<i>-of-<n>.json.

    Restoring under a different process count finds no file of its own and returns None; the caller then starts
    the data at the saved step's global batch (every step consumes exactly one global batch).

    The snapshot is taken when `save` is called (not when the async write runs), so the saved data position always
    matches the saved train state.
    """

    def save(self, directory: epath.Path, args: "DataStateArgs") -> None:
        name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        (directory / name).write_text(json.dumps(args.state))

    def restore(self, directory: epath.Path, args: "DataStateArgs | None" = None) -> Any:
        name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        path = directory / name
        if not path.exists():  # written by another number of processes: the loop restarts data at the saved step
            return None
        return json.loads(path.read_text())

    def metadata(self, directory: epath.Path) -> None:
        return None

    def finalize(self, directory: epath.Path) -> None:
        pass

    def close(self) -> None:
        pass

    @classmethod
    def typestr(cls) -> str:
        return f"{cls.__module__}.{cls.__qualname__}"


@ocp.args.register_with_handler(DataStateHandler, for_save=True, for_restore=True)
@dataclasses.dataclass
class DataStateArgs(ocp.args.CheckpointArgs):
    """Save: the iterator state snapshot. Restore: no fields (one class for both: orbax keeps one per handler)."""

    state: Any = None


# --- helpers ---------------------------------------------------------------------------------------------------------

def _item_handlers() -> dict[str, ocp.CheckpointHandler]:
    return {"params": ocp.StandardCheckpointHandler(), "train": ocp.StandardCheckpointHandler(),
            "data": DataStateHandler(), "config": ocp.JsonCheckpointHandler(),
            "identity": ocp.JsonCheckpointHandler()}


def _problem(e: BaseException) -> str:
    """One line for an exception from orbax/tensorstore (they raise many types, with long messages)."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def identity_mismatch(saved: dict[str, Any], current: dict[str, Any], directory: str, step: int) -> str | None:
    """None when a checkpoint's identity allows resuming this run, else the one-line reason."""
    if saved.get("run_key") == current.get("run_key"):
        return None
    fields = runkey.differing_fields(saved.get("config", {}), current.get("config", {}),
                                     ignore=runkey.RESUMABLE_CHANGES)
    if not fields:
        return None
    old, new = runkey.flatten(saved.get("config", {})), runkey.flatten(current.get("config", {}))
    shown = ", ".join(f"{f} ({old.get(f, '<unset>')!r} -> {new.get(f, '<unset>')!r})" for f in fields[:6])
    more = f" and {len(fields) - 6} more" if len(fields) > 6 else ""
    return (f"checkpoint step {step} in {directory} belongs to another run (key {str(saved.get('run_key'))[:12]}, "
            f"this run {str(current.get('run_key'))[:12]}): it differs in {shown}{more}; only steps may change "
            "on resume: use a new workdir (or checkpoint.dir), or restore the old settings")


def restore_target(abstract: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying the target shardings: what orbax restores (and reshards) into."""
    def one(x: Any, s: Any) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
    return jax.tree.map(one, abstract, shardings)


HASH = "crc32"  # the manifest's content checksum (zlib.crc32, 8 hex digits): detects damage, at ~5x blake2b's speed
_CHUNK = 1 << 20


def _crc32(path: Path) -> str:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


def _hashlib(name: str) -> Any:
    def digest(path: Path) -> str:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, name).hexdigest()
    return digest


# checksums a manifest entry may carry (any one is verified); new manifests record HASH
_CHECKSUMS = {"crc32": _crc32, "blake2b": _hashlib("blake2b"), "sha256": _hashlib("sha256")}


def file_hash(path: Path, algorithm: str = HASH) -> str:
    """A file's checksum under `algorithm` (a key of the manifest entries), as hex, read in chunks."""
    return _CHECKSUMS[algorithm](path)


def _sizes(step_dir: Path) -> dict[str, int]:
    """Sizes of a step's files, but the manifest's own (and a `.tmp` of it left by a process killed writing it)."""
    return {str(p.relative_to(step_dir)): p.stat().st_size
            for p in sorted(step_dir.rglob("*")) if p.is_file() and not p.name.startswith(MANIFEST)}


def _manifest(step_dir: Path) -> dict[str, dict[str, Any]]:
    """{relative path: {"bytes": size, "crc32": hex}} of every file of a step (but the manifest itself)."""
    return {name: {"bytes": size, HASH: file_hash(step_dir / name)} for name, size in _sizes(step_dir).items()}


def verify_step_dir(step_dir: Path) -> str | None:
    """None if the step's files match its manifest (or it has none yet), else what is wrong (naming the file).

    Manifest entries are {"bytes": n, "crc32": hex} (sizes and contents checked; a "blake2b" or "sha256" digest is
    checked the same way) or a bare size (manifests written before checksums were recorded: sizes checked only).
    """
    path = step_dir / MANIFEST
    if not path.exists():
        return None
    try:
        expected = json.loads(path.read_text())
        if not isinstance(expected, dict):
            raise ValueError("not a JSON object")
    except (json.JSONDecodeError, OSError, ValueError) as e:
        return f"manifest unreadable ({e})"
    actual = _sizes(step_dir)
    for name, entry in expected.items():
        size = entry.get("bytes") if isinstance(entry, dict) else entry
        if name not in actual:
            return f"file {name} is missing"
        if actual[name] != size:
            return f"file {name} has {actual[name]} bytes, expected {size} (truncated or overwritten)"
        algorithm = next((a for a in _CHECKSUMS if isinstance(entry, dict) and a in entry), None)
        if algorithm is not None:
            try:
                got = file_hash(step_dir / name, algorithm)
            except OSError as e:
                return f"file {name} unreadable ({e})"
            if got != entry[algorithm]:
                return (f"file {name} has {algorithm} {got[:16]}, expected {str(entry[algorithm])[:16]} (content "
                        "changed: overwritten or corrupted)")
    return None


def _is_local(directory: str) -> bool:
    return "://" not in directory


def move_aside(step_dir: epath.Path) -> epath.Path:
    """Rename a damaged step's directory to `<step>.damaged-<time>` (kept for inspection, no longer a step)."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    dest = step_dir.parent / f"{step_dir.name}.damaged-{stamp}"
    n = 1
    while dest.exists():
        dest, n = step_dir.parent / f"{step_dir.name}.damaged-{stamp}-{n}", n + 1
    step_dir.rename(dest)
    return dest


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # noqa: PLC0415
        multihost_utils.sync_global_devices(name)


# --- the checkpointer ------------------------------------------------------------------------------------------------

class Checkpointer:
    """Saves and restores a run's checkpoints under `cfg.checkpoint.dir` (default `<workdir>/checkpoints`).

    `identity`: {"run_key": ..., "config": ...} of this run (`scalekit.runkey`), saved with every step and checked
    on restore; None saves none and checks nothing.
    """

    def __init__(self, cfg: ml_collections.ConfigDict, workdir: str | os.PathLike,
                 identity: dict[str, Any] | None = None):
        c = cfg.checkpoint
        self.directory = c.dir or str(Path(workdir) / "checkpoints")
        self.every = int(c.every)
        self.config_dict = json.loads(cfg.to_json_best_effort())
        self.identity = identity
        options = ocp.CheckpointManagerOptions(
            max_to_keep=int(c.keep), keep_period=int(c.keep_period) or None, create=True,
            enable_async_checkpointing=bool(c.async_save), cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(epath.Path(self.directory), options=options,
                                             item_handlers=_item_handlers())

    def should_save(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def save(self, step: int, state: Any, data_state: Any, force: bool = False) -> None:
        """Start an (async) save of everything needed to resume at `step` (`state`: the train state)."""
        self._write_manifests()
        if step in self.manager.all_steps():
            return
        items = dict(params=ocp.args.StandardSave(state.params),
                     train=ocp.args.StandardSave({"step": state.step, "opt_state": state.opt_state,
                                                  "rng": state.rng}),
                     data=DataStateArgs(data_state),
                     config=ocp.args.JsonSave(self.config_dict))
        if self.identity is not None:
            items["identity"] = ocp.args.JsonSave(self.identity)
        self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def wait(self) -> None:
        """Block until pending saves are on disk, then record their manifests."""
        self.manager.wait_until_finished()
        self._write_manifests()

    def _write_manifests(self) -> None:
        if jax.process_index() != 0 or not _is_local(self.directory):
            return
        for step in self.manager.all_steps():
            step_dir = Path(self.directory) / str(step)
            if step_dir.is_dir() and not (step_dir / MANIFEST).exists() and self._finalized(step):
                tmp = step_dir / (MANIFEST + ".tmp")
                tmp.write_text(json.dumps(_manifest(step_dir)))
                tmp.replace(step_dir / MANIFEST)

    def _finalized(self, step: int) -> bool:
        pending = getattr(self.manager, "is_saving_in_progress", lambda: False)()
        return not pending or step != self.manager.latest_step()

    def restore_latest(self, target: Any) -> tuple[Any, Any] | None:
        """The newest step that verifies and loads completely into `target`, or None when there are none.

        `target` is the train state as ShapeDtypeStructs with the shardings to restore onto (`restore_target`).
        Newer damaged steps are moved aside once an older one has restored (so they are saved again). Raises
        CheckpointError when checkpoints exist but none is usable (never starts over silently), or when the newest
        readable one belongs to another run (see `identity_mismatch`).
        """
        steps = sorted(self.manager.all_steps(), reverse=True)
        problems: list[tuple[int, str]] = []
        for step in steps:
            problem = verify_step_dir(Path(self.directory) / str(step)) if _is_local(self.directory) else None
            if problem is None:
                problem = self._check_identity(step)
            if problem is None:
                try:
                    restored = self._restore(step, target)
                except Exception as e:  # orbax/tensorstore raise many types for damaged files
                    problem = _problem(e)
                else:
                    self._move_aside([s for s, _ in problems])
                    return restored
            problems.append((step, problem))
            warnings.warn(f"checkpoint step {step} in {self.directory} is unusable ({problem}); "
                          "falling back to the previous one", RuntimeWarning, stacklevel=2)
        if problems:
            raise CheckpointError(f"no usable checkpoint in {self.directory} ("
                                  + "; ".join(f"step {s}: {p}" for s, p in problems)
                                  + "); move the directory aside to start from scratch")
        return None

    def _check_identity(self, step: int) -> str | None:
        """None if the step may be resumed by this run; raises CheckpointError for another run's checkpoint."""
        if self.identity is None or not (epath.Path(self.directory) / str(step) / "identity").exists():
            return None  # nothing to compare (an older checkpoint, or a caller without an identity)
        try:
            saved = self.manager.restore(step, args=ocp.args.Composite(identity=ocp.args.JsonRestore()))["identity"]
        except Exception as e:  # noqa: BLE001 - a damaged identity item is a damaged step
            return f"identity unreadable ({_problem(e)})"
        reason = identity_mismatch(dict(saved or {}), self.identity, self.directory, step)
        if reason is not None:
            raise CheckpointError(reason)
        return None

    def _move_aside(self, steps: list[int]) -> None:
        """Rename the damaged steps' directories (process 0) and make the manager forget them (every process)."""
        if not steps:
            return
        if jax.process_index() == 0:
            for step in steps:
                step_dir = epath.Path(self.directory) / str(step)
                try:
                    dest = move_aside(step_dir)
                except OSError as e:
                    warnings.warn(f"could not move damaged checkpoint step {step} aside ({e}); the run will not "
                                  "save that step again", RuntimeWarning, stacklevel=3)
                    continue
                warnings.warn(f"moved damaged checkpoint step {step} aside to {dest}; it will be saved again",
                              RuntimeWarning, stacklevel=3)
        _sync("scalekit_checkpoint_move_aside")
        self.manager.reload()

    def _restore(self, step: int, target: Any) -> tuple[Any, Any]:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(target.params),
            train=ocp.args.StandardRestore({"step": target.step, "opt_state": target.opt_state, "rng": target.rng}),
            data=DataStateArgs()))
        train = restored["train"]
        state = dataclasses.replace(target, step=train["step"], params=restored["params"],
                                    opt_state=train["opt_state"], rng=train["rng"])
        return state, restored["data"]

    def close(self) -> None:
        self.wait()
        self.manager.close()


def resolve_checkpoint_dir(path: str) -> tuple[str, int | None]:
    """Accept a run workdir, a checkpoints directory, or one step's directory; return (checkpoints dir, step)."""
    p = epath.Path(path)
    if not p.exists():
        raise CheckpointError(f"init_from={path!r} does not exist")
    if (p / "checkpoints").is_dir():
        return str(p / "checkpoints"), None
    if (p / "params").is_dir() and p.name.isdigit():
        return str(p.parent), int(p.name)
    return str(p), None


def load_params(path: str, target: Any) -> Any:
    """Parameters (only) from another run's checkpoint, resharded into `target` (for fine-tuning).

    `target`: the parameters as ShapeDtypeStructs with shardings. The shapes must match the saved ones. Steps are
    validated like `Checkpointer.restore_latest` and the newest usable one is taken (a step named in `path` is the
    only one tried); the other run's files are never changed. Raises a one-line CheckpointError when none is usable.
    """
    directory, step = resolve_checkpoint_dir(path)
    manager = ocp.CheckpointManager(epath.Path(directory), item_handlers={"params": ocp.StandardCheckpointHandler()},
                                    options=ocp.CheckpointManagerOptions(read_only=True))
    try:
        steps = sorted(manager.all_steps(), reverse=True) if step is None else [step]
        if not steps:
            raise CheckpointError(f"init_from={path!r}: no checkpoint steps in {directory}")
        problems: list[str] = []
        for s in steps:
            problem = verify_step_dir(Path(directory) / str(s)) if _is_local(directory) else None
            if problem is None:
                try:
                    restored = manager.restore(s, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))
                except Exception as e:  # noqa: BLE001 - damaged files and shape mismatches alike
                    problem = _problem(e)
                else:
                    if problems:
                        warnings.warn(f"init_from={path!r}: used step {s}; newer steps are unusable ("
                                      + "; ".join(problems) + ")", RuntimeWarning, stacklevel=2)
                    return restored["params"]
            problems.append(f"step {s}: {problem}")
        hint = (" The model fields and the data vocabulary must match the pre-trained run."
                if any("shape" in p.lower() for p in problems) else "")
        raise CheckpointError(f"init_from={path!r}: no usable checkpoint in {directory} (" + "; ".join(problems)
                              + ")." + hint)
    finally:
        manager.close()
