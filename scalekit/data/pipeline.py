"""Batches for training and evaluation: grain pipelines, sharded per process, with savable iterator state.

Every source defines records (record r of a split is a pure function of the config, the seed and r). Global batch b
is records [b*B, (b+1)*B); process p of P reads only records [b*B + p*B/P, b*B + (p+1)*B/P), so the processes' local
batches concatenated in process order are the global batch whatever P is. In grain terms: an index dataset of records
-> .batch(B/P) -> [p::P] -> .map(batcher) -> .to_iter_dataset(prefetch) [-> .mp_prefetch(workers)]. Element k of
process p's pipeline is its slice of global batch k (the state without workers is {"next_index": k}); a saved state
restores into a pipeline made with the same arguments, and `start_batch=k` resumes at step k under any process count.

Train iterates indefinitely (bytes/tokens: epochs of the train region, reshuffled each epoch by grain's shuffle);
eval cycles through fixed records in a fixed order, so each new eval iterator yields the same batches.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from dataclasses import dataclass
from typing import Any

import grain
import ml_collections
import numpy as np

from scalekit.data import sources, synthetic
from scalekit.data.errors import DataError

_SPLITS = ("train", "eval")
SYNTHETIC_ROWS = 128  # synthetic sequences generated per vectorised call (several local batches at once)


@dataclass(frozen=True)
class DataInfo:
    """What the model and the reports need to know about the data."""

    vocab_size: int
    entropy_floor: float | None  # nats/token a perfect model reaches (synthetic: the entropy rate); None = unknown
    description: str
    sequence_floor: float | None = None  # synthetic: exact expected per-token loss over a seq_len window (>= floor)


# --- sources ---------------------------------------------------------------------------------------------------------

def _language(d: ml_collections.ConfigDict) -> synthetic.MarkovLanguage:
    return synthetic.markov_language(int(d.vocab_size), int(d.markov_order), float(d.concentration),
                                     int(d.language_seed))


def _token_specs(d: ml_collections.ConfigDict) -> tuple[sources.CorpusSpec, sources.CorpusSpec | None]:
    spec = sources.tokens_spec(d.path, d.token_dtype, "data.path")
    eval_spec = sources.tokens_spec(d.eval_path, d.token_dtype, "data.eval_path") if d.eval_path else None
    return spec, eval_spec


def _regions(d: ml_collections.ConfigDict) -> tuple[sources.Region, sources.Region]:
    if d.source == "bytes":
        return sources.split_regions(sources.bytes_spec(d.path), d.heldout_fraction, d.seq_len)
    spec, eval_spec = _token_specs(d)
    return sources.split_regions(spec, d.heldout_fraction, d.seq_len, eval_spec)


def _tasks_module() -> Any:
    """scalekit.data.tasks (owned by the task-data engineer): data_info(data_cfg) and make_batches(...) like ours."""
    if importlib.util.find_spec("scalekit.data.tasks") is None:
        raise DataError("data.source='task' needs scalekit/data/tasks.py, which is not available")
    return importlib.import_module("scalekit.data.tasks")


def data_info(data_cfg: ml_collections.ConfigDict) -> DataInfo:
    """Vocabulary, entropy floor and a description of the configured data; cheap (no corpus read for bytes)."""
    d = data_cfg
    if d.source == "synthetic":
        lang = _language(d)
        return DataInfo(lang.vocab_size, lang.entropy_rate, synthetic.describe(lang, d.seq_len),
                        lang.sequence_loss(d.seq_len))
    if d.source == "bytes":
        spec = sources.bytes_spec(d.path)
        train, evl = sources.split_regions(spec, d.heldout_fraction, d.seq_len)
        where = d.path or f"the Python standard library (*.py, first {sources.DEFAULT_CORPUS_MAX_BYTES >> 20} MiB)"
        return DataInfo(256, None, f"bytes of {len(spec.files)} file(s) from {where}: {train.size} train and "
                                   f"{evl.size} eval bytes (held-out tail {d.heldout_fraction:g})")
    if d.source == "tokens":
        spec, eval_spec = _token_specs(d)
        train, evl = sources.split_regions(spec, d.heldout_fraction, d.seq_len, eval_spec)
        vocab = sources.check_tokens(spec, int(d.vocab_size), "data.path")
        if eval_spec is not None:
            vocab = max(vocab, sources.check_tokens(eval_spec, int(d.vocab_size), "data.eval_path"))
        held = f"eval file {d.eval_path}" if eval_spec else f"held-out tail {d.heldout_fraction:g}"
        fmt = ".npy" if d.path.endswith(".npy") else f"raw {d.token_dtype}"
        return DataInfo(vocab, None, f"tokens from {d.path} ({fmt}, vocab {vocab}): {train.size} train and "
                                     f"{evl.size} eval tokens ({held})")
    if d.source == "task":
        return _tasks_module().data_info(d)
    raise DataError(f"data.source={d.source!r} is not one of 'synthetic', 'bytes', 'tokens', 'task'")


class SyntheticBatcher:
    """grain map: int64 [B_local] record indices -> the local batch dict, generated from the Markov language.

    Generation costs one vectorised numpy step per position whatever the number of rows, so the batcher generates
    `block` consecutive local batches of this process at once and serves the next ones from a small cache; a batch
    depends only on its records, so the cache never changes what is produced. Picklable (the cache is dropped).
    """

    def __init__(self, data_cfg: ml_collections.ConfigDict, key: int, global_batch: int, block: int = 1):
        d = data_cfg
        self.language = (int(d.vocab_size), int(d.markov_order), float(d.concentration), int(d.language_seed))
        self.key, self.seq_len, self.global_batch, self.block = key, int(d.seq_len), global_batch, max(block, 1)
        self._cache: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_cache", "_lock")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _cache={}, _lock=threading.Lock())

    def __call__(self, records: np.ndarray) -> dict[str, np.ndarray]:
        """Generate (or fetch) seq_len + 1 tokens per record."""
        lang = synthetic.markov_language(*self.language)
        records = np.asarray(records, dtype=np.int64)
        n, B, G = len(records), self.global_batch, self.block
        step, offset = divmod(int(records[0]), B)
        if G == 1 or not np.array_equal(records, records[0] + np.arange(n)) or offset + n > B:
            return sources.make_batch(lang.generate(self.key, records, self.seq_len + 1))
        first = step - step % G
        with self._lock:
            block = self._cache.get(first)
            if block is None:
                ids = ((first + np.arange(G))[:, None] * B + offset + np.arange(n)).reshape(-1)
                block = lang.generate(self.key, ids, self.seq_len + 1).reshape(G, n, -1)
                self._cache = {first: block}
        return sources.make_batch(block[step - first])


def _with_index(index: int, element: int) -> np.ndarray:
    """(record index, element): window batchers need the record's epoch as well as its window."""
    return np.array([index, element], dtype=np.int64)


def _shuffle_seed(*parts: int) -> int:
    return synthetic.stream_key(*parts) % 2**32


def record_batches(data_cfg: ml_collections.ConfigDict, split: str, seed: int,
                   block: int = 1) -> tuple[grain.MapDataset, Any]:
    """(records, batcher): the split's infinite record dataset and the map that turns a batch of them into arrays.

    `block`: synthetic only, how many of this process's consecutive local batches to generate at once.
    """
    d = data_cfg
    if d.source == "synthetic":
        key = synthetic.stream_key(d.language_seed, synthetic.SPLIT_IDS[split], seed)
        _language(d)  # build (and check) the language once here rather than in the first batch
        batcher = SyntheticBatcher(d, key, int(d.batch_size), block)
        return grain.MapDataset.range(sys.maxsize), batcher
    if d.source in ("bytes", "tokens"):
        train, evl = _regions(d)
        if d.source == "tokens":
            sources.check_tokens(train.spec, int(d.vocab_size), "data.path")
            if evl.spec is not train.spec:
                sources.check_tokens(evl.spec, int(d.vocab_size), "data.eval_path")
        region = train if split == "train" else evl
        windows = grain.MapDataset.range(sources.windows_per_epoch(region, d.seq_len))
        if split == "train":
            windows = windows.shuffle(_shuffle_seed(seed, 1))  # grain reseeds the shuffle per epoch (seed + epoch)
            shift_key = synthetic.stream_key(seed, 2)
        else:
            shift_key = None
        records = windows.repeat(None).map_with_index(_with_index)
        return records, sources.WindowBatcher(region, int(d.seq_len), shift_key)
    raise DataError(f"data.source={d.source!r} has no record pipeline here")


def shard(records: grain.MapDataset, batch_size: int, process_index: int, process_count: int) -> grain.MapDataset:
    """Element k = process `process_index`'s contiguous slice of global batch k (records [k*B, (k+1)*B))."""
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count})")
    if batch_size % process_count:
        raise DataError(f"data.batch_size={batch_size} is not divisible by the process count {process_count}; "
                        "make the global batch a multiple of it")
    return records.batch(batch_size // process_count, drop_remainder=True)[process_index::process_count]


def to_iterator(local_batches: grain.MapDataset, data_cfg: ml_collections.ConfigDict) -> grain.DatasetIterator:
    """Prefetching grain iterator over local batches (threads: data.prefetch; processes: data.worker_count)."""
    prefetch, workers = int(data_cfg.prefetch), int(data_cfg.worker_count)
    if workers > 0:
        from absl import flags  # grain's worker processes read absl flags
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        ds = local_batches.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                         per_worker_buffer_size=max(prefetch, 1)))
    else:
        ds = local_batches.to_iter_dataset(grain.ReadOptions(num_threads=1 if prefetch else 0,
                                                             prefetch_buffer_size=prefetch))
    return iter(ds)


def make_batches(data_cfg: ml_collections.ConfigDict, split: str, seed: int, process_index: int = 0,
                 process_count: int = 1, *, start_batch: int = 0) -> grain.DatasetIterator:
    """Iterator of this process's local batches {"inputs", "targets", "weights"} [batch_size // process_count, seq_len].

    Deterministic given (data_cfg, split, seed); infinite (train: epochs reshuffled; eval: the same fixed batches on
    every call). Has get_state()/set_state() (JSON-serialisable dicts, valid for a pipeline made with the same
    arguments). `start_batch=k` starts at global batch k: the way to resume under a different process count.
    """
    if split not in _SPLITS:
        raise ValueError(f"split={split!r} must be one of {_SPLITS}")
    if data_cfg.source == "task":
        extra = {"start_batch": start_batch} if start_batch else {}
        return _tasks_module().make_batches(data_cfg, split, seed, process_index, process_count, **extra)
    local_size = int(data_cfg.batch_size) // max(process_count, 1)
    block = 1 if data_cfg.worker_count else max(1, SYNTHETIC_ROWS // max(local_size, 1))
    records, batcher = record_batches(data_cfg, split, seed, block)
    local = shard(records, int(data_cfg.batch_size), process_index, process_count)
    if start_batch:
        local = local[int(start_batch):]
    return to_iterator(local.map(batcher), data_cfg)
