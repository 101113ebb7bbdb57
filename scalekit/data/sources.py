"""Where the tokens come from: byte-level text files and pre-tokenized token files, as windows over one flat array.

A corpus is a flat integer array (bytes: uint8 of the concatenated files; tokens: the memory-mapped file), split into a
train region and an eval region (the tail `heldout_fraction`, or a separate eval file for tokens). Records are windows
of seq_len + 1 tokens. An epoch of the train region is N = (n - 1) // seq_len windows at stride seq_len (every token is
a target once), moved by a per-epoch random shift and visited in a per-epoch shuffled order; eval uses the same windows
with no shift, in order. Specs are small frozen dataclasses (hashable, cheap to pickle to grain workers); the arrays are
opened lazily and cached per process, and memory maps are never read whole.

The synthetic Markov language lives in synthetic.py; grain plumbing in pipeline.py.
"""

from __future__ import annotations

import functools
import glob
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scalekit.data.errors import DataError
from scalekit.data.synthetic import stream_key

__all__ = ["DataError", "CorpusSpec", "Region", "WindowBatcher", "bytes_spec", "tokens_spec", "open_corpus",
           "check_tokens", "split_regions", "windows_per_epoch", "make_batch"]

DEFAULT_CORPUS_MAX_BYTES = 32 * 2**20  # the standard-library default corpus is truncated here
MAX_READ_BYTES = 2 * 2**30  # several user files are read into memory up to this; one file is memory-mapped instead
_SCAN_CHUNK = 2**24  # tokens per chunk when scanning a token file for its range
_GLOB_CHARS = set("*?[")


# --- specs: what to open ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CorpusSpec:
    """A flat corpus on disk: `files` concatenated (bytes) or one token file (tokens), truncated to `max_items`."""

    kind: str  # "bytes" | "tokens"
    files: tuple[str, ...]
    sizes: tuple[int, ...]  # bytes per file, at resolve time
    max_items: int | None = None
    token_dtype: str = "uint8"  # tokens: dtype of a raw .bin file

    @property
    def num_items(self) -> int:
        """Tokens (or bytes) in the corpus, from the file sizes alone (no read)."""
        if self.kind == "bytes":
            total = sum(self.sizes)
            return total if self.max_items is None else min(total, self.max_items)
        return len(open_corpus(self))


@functools.lru_cache(maxsize=1)
def stdlib_files() -> tuple[Path, ...]:
    """The Python standard library's own *.py sources, sorted by relative path (site-packages excluded); cached."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in root.rglob("*.py") if "site-packages" not in p.relative_to(root).parts and p.is_file()]
    return tuple(sorted(files, key=lambda p: p.relative_to(root).as_posix()))


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") or part == "__pycache__" for part in path.relative_to(root).parts)


def resolve_text_files(path: str) -> list[Path]:
    """Files of a `bytes` corpus: "" = the stdlib; a file; a directory (every file below, sorted, hidden ones
    skipped); or a glob (recursive ** allowed)."""
    if not path:
        return list(stdlib_files())
    p = Path(path).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted((f for f in p.rglob("*") if f.is_file() and not _hidden(f, p)),
                       key=lambda f: f.relative_to(p).as_posix())
        if not files:
            raise DataError(f"data.path={path!r} is a directory with no (non-hidden) files in it")
        return files
    if _GLOB_CHARS & set(path):
        files = sorted(Path(f) for f in glob.glob(os.path.expanduser(path), recursive=True) if os.path.isfile(f))
        if not files:
            raise DataError(f"data.path={path!r}: the glob matched no files")
        return files
    raise DataError(f"data.path={path!r} does not exist (give a file, a directory or a glob; '' = the Python stdlib)")


def bytes_spec(path: str) -> CorpusSpec:
    """Resolve a `bytes` corpus from `data.path` (cheap: a directory listing and stat, no read)."""
    files = resolve_text_files(path)
    sizes = tuple(f.stat().st_size for f in files)
    cap = DEFAULT_CORPUS_MAX_BYTES if not path else None
    if cap is None and len(files) > 1 and sum(sizes) > MAX_READ_BYTES:
        raise DataError(f"data.path={path!r}: {len(files)} files, {sum(sizes) / 2**30:.1f} GiB, exceed the "
                        f"{MAX_READ_BYTES / 2**30:.0f} GiB read into memory; concatenate them into one file "
                        "(memory-mapped, any size)")
    return CorpusSpec("bytes", tuple(str(f) for f in files), sizes, cap)


def tokens_spec(path: str, token_dtype: str, field: str = "data.path") -> CorpusSpec:
    """Resolve a `tokens` file (.npy or raw .bin of `token_dtype`); checks existence and size, not contents."""
    p = Path(path).expanduser()
    if not path or not p.is_file():
        raise DataError(f"{field}={path!r}: token file not found (a .npy, or a raw .bin of data.token_dtype)")
    size = p.stat().st_size
    if p.suffix != ".npy":
        itemsize = np.dtype(token_dtype).itemsize
        if size == 0:
            raise DataError(f"{field}={path!r} is empty")
        if size % itemsize:
            raise DataError(f"{field}={path!r} has {size} bytes, not a multiple of {itemsize} (the size of "
                            f"data.token_dtype={token_dtype!r}); is the dtype right?")
    return CorpusSpec("tokens", (str(p),), (size,), None, token_dtype)


# --- opening (lazy, cached per process) ------------------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def open_corpus(spec: CorpusSpec) -> np.ndarray:
    """The corpus as a flat read-only array: a np.memmap for one file, else the files read and concatenated."""
    if spec.kind == "tokens":
        path = spec.files[0]
        if path.endswith(".npy"):
            try:
                arr = np.load(path, mmap_mode="r")
            except ValueError as e:
                raise DataError(f"{path!r} is not a readable .npy array: {e}") from e
            if arr.dtype.kind not in "iu":
                raise DataError(f"{path!r} holds {arr.dtype}, not integer tokens")
            arr = arr.reshape(-1)
        else:
            arr = np.memmap(path, dtype=np.dtype(spec.token_dtype), mode="r")
        if len(arr) == 0:
            raise DataError(f"token file {path!r} is empty")
        return arr
    total = spec.num_items
    if len(spec.files) == 1 and spec.max_items is None:
        if total == 0:
            raise DataError(f"{spec.files[0]!r} is empty")
        return np.memmap(spec.files[0], dtype=np.uint8, mode="r", shape=(total,))
    buf = bytearray()
    for f in spec.files:
        with open(f, "rb") as fh:
            buf += fh.read(total - len(buf))
        if len(buf) >= total:
            break
    arr = np.frombuffer(buf, dtype=np.uint8)
    arr.setflags(write=False)
    return arr


@functools.lru_cache(maxsize=8)
def token_range(spec: CorpusSpec) -> tuple[int, int]:
    """(min, max) token of a token file, scanned in chunks of the memory map (never read whole)."""
    arr = open_corpus(spec)
    lo, hi = None, None
    for start in range(0, len(arr), _SCAN_CHUNK):
        chunk = np.asarray(arr[start:start + _SCAN_CHUNK])
        cmin, cmax = int(chunk.min()), int(chunk.max())
        lo = cmin if lo is None else min(lo, cmin)
        hi = cmax if hi is None else max(hi, cmax)
    return lo, hi


def check_tokens(spec: CorpusSpec, vocab_size: int, field: str) -> int:
    """Check a token file against `vocab_size` (0 = max token + 1); return the vocabulary it implies."""
    lo, hi = token_range(spec)
    if lo < 0:
        raise DataError(f"{field}={spec.files[0]!r} holds a negative token ({lo})")
    if vocab_size and hi >= vocab_size:
        raise DataError(f"{field}={spec.files[0]!r} holds token {hi} >= data.vocab_size={vocab_size}; set "
                        "data.vocab_size to the tokenizer's vocabulary, or 0 to use max token + 1")
    return vocab_size or hi + 1


# --- regions and windows ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Region:
    """A half-open range [start, stop) of a corpus that one split draws its windows from."""

    spec: CorpusSpec
    start: int
    stop: int

    @property
    def size(self) -> int:
        """Tokens in the region."""
        return self.stop - self.start


def split_regions(spec: CorpusSpec, heldout_fraction: float, seq_len: int,
                  eval_spec: CorpusSpec | None = None) -> tuple[Region, Region]:
    """(train, eval) regions: eval is `eval_spec` whole, or the last `heldout_fraction` of `spec`; both checked."""
    n = spec.num_items
    what = "tokens" if spec.kind == "tokens" else "bytes"
    if n < seq_len + 1:
        where = spec.files[0] if len(spec.files) == 1 else f"{len(spec.files)} files"
        raise DataError(f"the corpus ({where}) has {n} {what}, shorter than data.seq_len + 1 = {seq_len + 1}; "
                        "lower data.seq_len or use more data")
    if eval_spec is not None:
        train, evl = Region(spec, 0, n), Region(eval_spec, 0, eval_spec.num_items)
    else:
        n_eval = int(round(n * heldout_fraction))
        train, evl = Region(spec, 0, n - n_eval), Region(spec, n - n_eval, n)
    for name, r in (("train", train), ("eval", evl)):
        if r.size < seq_len + 1:
            raise DataError(f"the {name} split has {r.size} {what}, fewer than data.seq_len + 1 = {seq_len + 1} "
                            f"(corpus {n}, data.heldout_fraction={heldout_fraction}); adjust data.heldout_fraction "
                            "or data.seq_len, or use more data")
    return train, evl


def windows_per_epoch(region: Region, seq_len: int) -> int:
    """N: windows of seq_len + 1 tokens at stride seq_len in the region (each token a target once per epoch)."""
    return (region.size - 1) // seq_len


@dataclass(frozen=True)
class WindowBatcher:
    """grain map: an int64 [B, 2] array of (record index, window index in epoch) -> the local batch dict.

    Train (`shift_key` set): epoch e = record // N starts its windows at a random shift in [0, size - 1 - N*seq_len],
    so epochs see different cuts of the text. Eval (`shift_key` None): no shift. Picklable; opens the corpus lazily.
    """

    region: Region
    seq_len: int
    shift_key: int | None = None

    def __call__(self, recs: np.ndarray) -> dict[str, np.ndarray]:
        """Gather the windows (fancy indexing reads only the pages needed from a memmap)."""
        recs = np.asarray(recs, dtype=np.int64).reshape(-1, 2)
        L = self.seq_len
        n_win = windows_per_epoch(self.region, L)
        starts = self.region.start + (recs[:, 1] % n_win) * L
        if self.shift_key is not None:
            slack = self.region.size - 1 - n_win * L
            if slack > 0:
                starts = starts + np.array([stream_key(self.shift_key, e) % (slack + 1)
                                            for e in (recs[:, 0] // n_win).tolist()], dtype=np.int64)
        data = open_corpus(self.region.spec)
        window = np.asarray(data[starts[:, None] + np.arange(L + 1)]).astype(np.int32)
        return make_batch(window)


def make_batch(window: np.ndarray) -> dict[str, np.ndarray]:
    """int32 [B, L+1] windows -> {"inputs", "targets": int32 [B, L], "weights": float32 [B, L] of ones}."""
    return {"inputs": np.ascontiguousarray(window[:, :-1]), "targets": np.ascontiguousarray(window[:, 1:]),
            "weights": np.ones((window.shape[0], window.shape[1] - 1), np.float32)}
