"""The `tokens` source: raw .bin and .npy files, memory-mapped; vocabulary, held-out tail or eval file; errors."""

import numpy as np
import pytest

from scalekit.config import default_config
from scalekit.data import DataError, data_info, make_batches
from scalekit.data import sources


def _cfg(path, **kw):
    d = default_config().data
    d.source, d.path, d.seq_len, d.batch_size, d.prefetch, d.vocab_size = "tokens", str(path), 8, 4, 0, 0
    for k, v in kw.items():
        d[k] = v
    return d


@pytest.fixture
def ramp(tmp_path):
    """A uint32 .bin whose token at position i is i: a window's first input is its start offset."""
    path = tmp_path / "ramp.bin"
    np.arange(1000, dtype=np.uint32).tofile(path)
    return path


def test_bin_windows_splits_and_vocab(ramp):
    d = _cfg(ramp, token_dtype="uint32")
    info = data_info(d)
    assert info.vocab_size == 1000 and info.entropy_floor is None  # max token + 1
    assert isinstance(sources.open_corpus(sources.tokens_spec(str(ramp), "uint32")), np.memmap)
    n_train = 1000 - 50
    it = make_batches(d, "train", 0)
    starts = []
    for _ in range(30):
        b = next(it)
        np.testing.assert_array_equal(b["inputs"], b["inputs"][:, :1] + np.arange(8))  # contiguous windows
        np.testing.assert_array_equal(b["targets"], b["inputs"] + 1)
        starts += b["inputs"][:, 0].tolist()
    assert max(starts) + 8 < n_train  # the last target of every train window is in the train region
    n_win = (n_train - 1) // 8
    first = starts[:n_win]
    assert sorted(first) == [min(first) + 8 * j for j in range(n_win)]  # an epoch tiles the region
    ev = next(make_batches(d, "eval", 0))["inputs"][:, 0]
    np.testing.assert_array_equal(ev, n_train + 8 * np.arange(4))


def test_npy_and_eval_file(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "train.npy", rng.integers(0, 500, 4000, dtype=np.uint16))
    np.save(tmp_path / "eval.npy", rng.integers(500, 600, 300, dtype=np.int32))
    d = _cfg(tmp_path / "train.npy", eval_path=str(tmp_path / "eval.npy"))
    assert isinstance(sources.open_corpus(sources.tokens_spec(d.path, d.token_dtype)), np.memmap)
    assert data_info(d).vocab_size == 600  # max over both files + 1
    tr = np.concatenate([next(make_batches(d, "train", 0))["inputs"]])
    ev = next(make_batches(d, "eval", 0))["inputs"]
    assert tr.max() < 500 and ev.min() >= 500
    d.vocab_size = 1024
    assert data_info(d).vocab_size == 1024


def test_errors(tmp_path, ramp):
    with pytest.raises(DataError, match="not found"):
        data_info(_cfg(tmp_path / "missing.bin"))
    with pytest.raises(DataError, match="data.eval_path"):
        data_info(_cfg(ramp, token_dtype="uint32", eval_path=str(tmp_path / "missing.bin")))
    (tmp_path / "odd.bin").write_bytes(b"\x00" * 7)
    with pytest.raises(DataError, match="not a multiple of 2"):
        data_info(_cfg(tmp_path / "odd.bin", token_dtype="uint16"))
    with pytest.raises(DataError, match="token 999 >= data.vocab_size=500"):
        data_info(_cfg(ramp, token_dtype="uint32", vocab_size=500))
    with pytest.raises(DataError, match="token 999 >= data.vocab_size=500"):
        make_batches(_cfg(ramp, token_dtype="uint32", vocab_size=500), "train", 0)
    np.arange(5, dtype=np.uint16).tofile(tmp_path / "short.bin")
    with pytest.raises(DataError, match="shorter than data.seq_len"):
        data_info(_cfg(tmp_path / "short.bin"))
    np.save(tmp_path / "neg.npy", np.array([3, -1] * 200, dtype=np.int32))
    with pytest.raises(DataError, match="negative"):
        data_info(_cfg(tmp_path / "neg.npy"))
