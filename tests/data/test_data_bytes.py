"""The `bytes` source: files, directories and globs, the stdlib default, the held-out tail, epochs, errors."""

import os
import sysconfig

import numpy as np
import pytest

from scalekit.config import default_config
from scalekit.data import DataError, data_info, make_batches
from scalekit.data import sources


def _cfg(path, seq_len=16, batch_size=4):
    d = default_config().data
    d.source, d.path, d.seq_len, d.batch_size, d.prefetch = "bytes", str(path), seq_len, batch_size, 0
    return d


@pytest.fixture
def corpus_dir(tmp_path):
    """Three files of random bytes plus a hidden file (skipped); returns (dir, concatenated corpus)."""
    rng = np.random.default_rng(1)
    parts = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in (500, 900, 600)]
    (tmp_path / "sub").mkdir()
    for name, data in zip(("a.txt", "b.txt", "sub/c.txt"), parts):
        (tmp_path / name).write_bytes(data)
    (tmp_path / ".hidden").write_bytes(b"x" * 100)
    return tmp_path, b"".join(parts)


def _rows(batches):
    return [bytes(np.concatenate([r, t[-1:]]).astype(np.uint8)) for b in batches
            for r, t in zip(b["inputs"], b["targets"])]


def test_windows_come_from_their_split(corpus_dir):
    path, corpus = corpus_dir
    d = _cfg(path)
    n_eval = round(len(corpus) * d.heldout_fraction)
    train_text, eval_text = corpus[:-n_eval], corpus[-n_eval:]
    it = make_batches(d, "train", 0)
    for w in _rows(next(it) for _ in range(20)):
        assert len(w) == 17 and w in train_text
    ev = _rows(next(make_batches(d, "eval", 0)) for _ in range(1))
    assert ev[0] == eval_text[:17] and ev[1] == eval_text[16:33]  # eval: consecutive windows, in order
    assert all(w in eval_text for w in ev)
    assert data_info(d).vocab_size == 256 and data_info(d).entropy_floor is None


def test_one_epoch_targets_every_byte_once(corpus_dir):
    path, corpus = corpus_dir
    d = _cfg(path, seq_len=16, batch_size=1)
    n_train = len(corpus) - round(len(corpus) * d.heldout_fraction)
    train_text = corpus[:n_train]
    n_win = (n_train - 1) // 16
    starts = [train_text.find(w) for w in _rows(next(make_batches(d, "train", 4)) for _ in range(1))]
    it = make_batches(d, "train", 4)
    epochs = [[train_text.find(w) for w in _rows(next(it) for _ in range(n_win))] for _ in range(3)]
    for ep in epochs:  # a shifted, shuffled tiling of the train region at stride seq_len
        shift = min(ep)
        assert sorted(ep) == [shift + 16 * j for j in range(n_win)]
    assert epochs[0][0] == starts[0]
    assert epochs[0] != epochs[1]  # reshuffled each epoch


def test_file_and_glob(corpus_dir):
    path, corpus = corpus_dir
    one = make_batches(_cfg(path / "b.txt"), "train", 0)
    assert all(w in corpus[500:1400] for w in _rows([next(one)]))
    assert isinstance(sources.open_corpus(sources.bytes_spec(str(path / "b.txt"))), np.memmap)
    spec = sources.bytes_spec(str(path / "**" / "*.txt"))
    assert [s.rsplit("/", 1)[-1] for s in spec.files] == ["a.txt", "b.txt", "c.txt"]
    assert spec.num_items == len(corpus)


def test_stdlib_default():
    d = _cfg("", seq_len=64, batch_size=2)
    info = data_info(d)
    assert info.vocab_size == 256 and "standard library" in info.description
    spec = sources.bytes_spec("")
    root = sysconfig.get_paths()["stdlib"]
    rel = [os.path.relpath(f, root) for f in spec.files]
    assert len(rel) > 100 and rel == sorted(rel, key=lambda r: r.replace(os.sep, "/"))
    assert all(r.endswith(".py") and "site-packages" not in r for r in rel)
    assert 0 < spec.num_items <= sources.DEFAULT_CORPUS_MAX_BYTES
    b = next(make_batches(d, "train", 0))
    text = bytes(b["inputs"][0].astype(np.uint8))
    assert b["inputs"].shape == (2, 64) and text.isascii()


def test_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        data_info(_cfg(tmp_path / "nope"))
    with pytest.raises(DataError, match="matched no files"):
        data_info(_cfg(tmp_path / "*.nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no \\(non-hidden\\) files"):
        data_info(_cfg(tmp_path / "empty"))
    (tmp_path / "short.txt").write_bytes(b"0123456789")
    for call in (lambda d: data_info(d), lambda d: make_batches(d, "train", 0)):
        with pytest.raises(DataError, match="shorter than data.seq_len"):
            call(_cfg(tmp_path / "short.txt"))
    (tmp_path / "small.txt").write_bytes(b"x" * 100)  # train fits; a 5% tail (5 bytes) does not
    with pytest.raises(DataError, match="eval split"):
        make_batches(_cfg(tmp_path / "small.txt"), "eval", 0)
