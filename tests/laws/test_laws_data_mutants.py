"""scalekit.laws.data: validation and completion of the columns, column lookup in frames, table loading, and every
error message.

Written to kill the mutants `make mutate` found alive. Expected columns are computed by hand (D = C / (6 N),
C = 6 N D); messages are written out from the code's documented wording.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from scalekit.laws.data import ScalingData, as_data, load_table
from scalekit.laws.errors import DroppedPointsWarning, InvalidDataError


def test_from_arrays_completes_d_or_c_with_the_convention():
    d = ScalingData.from_arrays(N=[10, 20], C=[600, 2400], loss=[3, 2])
    np.testing.assert_array_equal(d["D"], [10.0, 20.0])
    assert d.notes == ["D = C / (6 N) (tokens absent)"]
    e = ScalingData.from_arrays(N=[10, 20], D=[1, 2], loss=[3, 2], flops_per_param_token=8)
    np.testing.assert_array_equal(e["C"], [80.0, 320.0])
    assert e.notes == ["C = 8 N D (FLOPs absent)"]
    f = ScalingData.from_arrays(N=[10.0], D=[1.0], C=[7.0], loss=[1.0])
    assert f.notes == [] and f["C"][0] == 7.0
    g = ScalingData.from_arrays(N=[[1, 2], [3, 4]], loss=[1, 2, 3, 4], run=["a", "b", "c", "d"])
    assert g["N"].shape == (4,) and g["N"].dtype == np.float64 and list(g["run"]) == ["a", "b", "c", "d"]
    assert len(g) == 4 and g.has("run") and not g.has("D")
    assert ScalingData({}).__len__() == 0


def test_from_arrays_errors():
    with pytest.raises(InvalidDataError) as e:
        ScalingData.from_arrays(N=["a"], loss=[1])
    assert str(e.value).startswith("column 'N' is not numeric: ")
    with pytest.raises(InvalidDataError, match=r"^no data columns given$"):
        ScalingData.from_arrays(run=["a"])
    with pytest.raises(InvalidDataError) as e:
        ScalingData.from_arrays(N=[1, 2], loss=[1])
    assert str(e.value) == "columns have different lengths: {'N': 2, 'loss': 1}"
    with pytest.raises(InvalidDataError) as e:
        ScalingData.from_arrays(N=[1, 0, 2, -1], loss=[1, 2, np.nan, 4])
    assert str(e.value) == ("invalid values: N: 2 row(s) NaN, infinite or <= 0 (first at row 1); loss: 1 row(s) NaN, "
                            "infinite or <= 0 (first at row 2). Fix the data or pass drop_invalid=True to drop those "
                            "rows with a warning.")


def test_drop_invalid_warns_and_keeps_the_rest():
    with pytest.warns(DroppedPointsWarning) as record:
        d = ScalingData.from_arrays(N=[1, 0, 2, 3], D=[1, 1, np.inf, 1], loss=[1, 2, 3, 4], drop_invalid=True)
    assert str(record[0].message) == ("dropped 2 of 4 rows with invalid values: N: 1 row(s) NaN, infinite or <= 0 "
                                      "(first at row 1); D: 1 row(s) NaN, infinite or <= 0 (first at row 2)")
    np.testing.assert_array_equal(d["N"], [1.0, 3.0])
    np.testing.assert_array_equal(d["C"], [6.0, 18.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ScalingData.from_arrays(N=[1.0], loss=[1.0], drop_invalid=True)     # nothing to drop: no warning


def test_getitem_subset_and_drop_highest_loss():
    d = ScalingData.from_arrays(N=[1, 2, 3, 4, 5], loss=[5, 1, 4, 2, 4])
    with pytest.raises(InvalidDataError) as e:
        d["D"]
    assert str(e.value) == "column 'D' is missing; available: N, loss"
    assert d.inputs(["N"]).keys() == {"N"}
    s = d.subset(np.array([True, False, True, False, False]))
    np.testing.assert_array_equal(s["N"], [1, 3]) and np.testing.assert_array_equal(s.loss, [5, 4])
    assert d.drop_highest_loss(0) is d
    dropped = d.drop_highest_loss(2)      # the 5 and the later of the two 4s go (stable order), order kept
    np.testing.assert_array_equal(dropped["N"], [2, 3, 4])
    assert dropped.notes == ["dropped the 2 highest-loss points"] and d.notes == []


def test_from_frame_finds_columns_by_known_names():
    df = pd.DataFrame({"Model Size": [10, 20], "TOKENS": [1, 2], "eval_loss": [3.0, 2.5], "run_id": ["a", "b"],
                       "n": [7, 7]})
    d = ScalingData.from_frame(df)
    np.testing.assert_array_equal(d["N"], [10, 20]) and np.testing.assert_array_equal(d["D"], [1, 2])
    np.testing.assert_array_equal(d["C"], [60, 240])
    assert list(d["run"]) == ["a", "b"]
    assert d.notes == ["columns: N='Model Size', D='TOKENS', loss='eval_loss', run='run_id'",
                       "C = 6 N D (FLOPs absent)"]
    one_letter = pd.DataFrame({"n": [1.0], "d": [2.0], "loss": [1.0]})    # lower-case n, d are not N, D
    assert not ScalingData.from_frame(one_letter).has("N")
    explicit = ScalingData.from_frame(df, {"N": "n"})
    np.testing.assert_array_equal(explicit["N"], [7, 7])
    with pytest.raises(InvalidDataError) as e:
        ScalingData.from_frame(df, {"N": "nope"})
    assert str(e.value) == ("column 'nope' (for N) not in the data; columns are: Model Size, TOKENS, eval_loss, "
                            "run_id, n")


def test_from_frame_missing_and_non_numeric_values():
    df = pd.DataFrame({"N": [1.0, None, 3.0], "loss": [1.0, 2.0, 3.0]})
    with pytest.raises(InvalidDataError) as e:
        ScalingData.from_frame(df)
    assert str(e.value) == ("column 'N' (N) has 1 missing value(s); pass drop_invalid=True to drop those rows with a "
                            "warning")
    with pytest.warns(DroppedPointsWarning):
        d = ScalingData.from_frame(df, drop_invalid=True)
    np.testing.assert_array_equal(d["N"], [1.0, 3.0])
    bad = pd.DataFrame({"N": ["x", "y", "z", "w"], "loss": [1.0, 2.0, 3.0, 4.0]})
    with pytest.raises(InvalidDataError) as e:
        ScalingData.from_frame(bad)
    assert str(e.value) == "column 'N' is not numeric (first values: ['x', 'y', 'z'])"


def test_load_table_by_extension(tmp_path):
    rows = [{"N": 1, "loss": 2.0}, {"N": 3, "loss": 4.0}]
    (tmp_path / "a.csv").write_text("N,loss\n1,2.0\n3,4.0\n")
    (tmp_path / "a.tsv").write_text("N\tloss\n1\t2.0\n3\t4.0\n")
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "a.ndjson").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "lines.json").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "array.json").write_text(json.dumps(rows, indent=2))     # not JSON lines: read as one document
    for name in ("a.csv", "a.tsv", "a.jsonl", "a.ndjson", "lines.json", "array.json"):
        df = load_table(tmp_path / name)
        assert list(df["N"]) == [1, 3] and list(df["loss"]) == [2.0, 4.0], name
    with pytest.raises(FileNotFoundError) as e:
        load_table(tmp_path / "none.csv")
    assert str(e.value) == f"no such file: {tmp_path / 'none.csv'}"


def test_as_data_accepts_data_frames_and_mappings():
    d = ScalingData.from_arrays(N=[1.0], loss=[1.0])
    assert as_data(d) is d
    np.testing.assert_array_equal(as_data({"N": [2.0], "loss": [1.0]})["N"], [2.0])
    np.testing.assert_array_equal(as_data(pd.DataFrame({"x": [5.0], "loss": [1.0]}), N="x")["N"], [5.0])
    with pytest.raises(TypeError, match=r"^cannot use list as scaling data$"):
        as_data([1, 2])
