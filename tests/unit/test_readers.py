"""Calibration data readers and sample sets: formats, validation errors, seeded subsets and batching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgepack.calibration.dataset import FEW_SAMPLES, load_sample_set
from edgepack.calibration.readers import read_arrays
from edgepack.errors import DataError
from edgepack.recipe.schema import CalibrationConfig, EvaluationConfig, InputSpec

N = 120
X = InputSpec(name="x", dtype="float32", shape=["batch", 2, 2])


def make_data(n: int = N, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Float32 samples of shape [n, 2, 2] exactly representable in text, and int64 labels."""
    rng = np.random.default_rng(seed)
    x = (rng.integers(-400, 400, size=(n, 2, 2)) / 4.0).astype(np.float32)
    return x, rng.integers(0, 10, size=n).astype(np.int64)


def load(path: Path, *, inputs=(X,), labels: str | None = "label", **options):
    source = EvaluationConfig(path=path, labels=labels or "label", **options)
    return load_sample_set(source, list(inputs), role="evaluation", base_dir=path.parent, labels=labels)


def write_table(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    flat = x.reshape(len(x), -1)
    if path.suffix == ".csv":
        header = ",".join([f"px{i}" for i in range(flat.shape[1])] + ["label"])
        rows = [",".join([repr(float(v)) for v in row] + [str(int(label))]) for row, label in zip(flat, y)]
        path.write_text(header + "\n" + "\n".join(rows) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = {f"px{i}": flat[:, i] for i in range(flat.shape[1])}
        pq.write_table(pa.table({**columns, "label": y}), path)


CALLABLE = '''
import numpy as np
from pathlib import Path

def batches():
    with np.load(Path(__file__).with_name("source.npz")) as data:
        x, y = data["x"], data["label"]
    for start in range(0, len(x), 50):
        yield {"x": x[start:start + 50], "label": y[start:start + 50]}

def not_mappings():
    yield [1, 2, 3]

def broken():
    raise RuntimeError("sensor offline")
    yield
'''


@pytest.mark.parametrize("fmt", ["npz", "npy", "csv", "parquet", "callable"])
def test_every_source_gives_the_same_arrays(tmp_path, fmt):
    x, y = make_data()
    if fmt == "npz":
        np.savez(tmp_path / "d.npz", x=x, label=y)
        sample_set = load(tmp_path / "d.npz")
    elif fmt == "npy":
        np.save(tmp_path / "d.npy", x)
        sample_set = load(tmp_path / "d.npy", labels=None)
    elif fmt in ("csv", "parquet"):
        write_table(tmp_path / f"d.{fmt}", x, y)
        sample_set = load(tmp_path / f"d.{fmt}", columns={"x": "px*"})
    else:
        np.savez(tmp_path / "source.npz", x=x, label=y)
        (tmp_path / "ep_unit_batches.py").write_text(CALLABLE)
        source = EvaluationConfig(callable="ep_unit_batches:batches")
        sample_set = load_sample_set(source, [X], role="evaluation", base_dir=tmp_path, labels="label")
        assert sample_set.source == "ep_unit_batches:batches"
    assert sample_set.num_samples == N
    assert sample_set.arrays["x"].dtype == np.float32
    np.testing.assert_array_equal(sample_set.arrays["x"], x)
    if fmt == "npy":
        assert sample_set.labels is None
    else:
        assert sample_set.labels.dtype == np.int64
        np.testing.assert_array_equal(sample_set.labels, y)
    assert sample_set.warnings == ()


def test_csv_columns_as_explicit_list(tmp_path):
    x, y = make_data()
    write_table(tmp_path / "d.csv", x, y)
    sample_set = load(tmp_path / "d.csv", columns={"x": ["px0", "px1", "px2", "px3"]})
    np.testing.assert_array_equal(sample_set.arrays["x"], x)
    with pytest.raises(DataError, match="columns not in the table: px9"):
        load(tmp_path / "d.csv", columns={"x": ["px0", "px9"]})


def test_csv_column_names_are_kept_verbatim(tmp_path):
    (tmp_path / "d.csv").write_text("px-0,px-1,label\n1.0,2.0,3\n4.0,5.0,6\n")
    vector = InputSpec(name="x", dtype="float32", shape=["batch", 2])
    sample_set = load(tmp_path / "d.csv", inputs=[vector], columns={"x": ["px-0", "px-1"]})
    np.testing.assert_array_equal(sample_set.arrays["x"], [[1.0, 2.0], [4.0, 5.0]])


def test_int_data_is_cast_to_float_input(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.arange(12, dtype=np.int32).reshape(3, 2, 2), label=np.zeros(3, np.int32))
    sample_set = load(tmp_path / "d.npz")
    assert sample_set.arrays["x"].dtype == np.float32
    assert sample_set.labels.dtype == np.int64
    assert sample_set.arrays["x"][2, 1, 1] == 11.0


def test_float_data_for_int_input_rejected(tmp_path):
    ids = InputSpec(name="ids", dtype="int64", shape=["batch", 3])
    np.savez(tmp_path / "d.npz", ids=np.ones((4, 3), np.float32))
    with pytest.raises(DataError, match=r"input 'ids': expected dtype int64, got float32"):
        load(tmp_path / "d.npz", inputs=[ids], labels=None)


def test_int_values_that_do_not_fit_rejected(tmp_path):
    small = InputSpec(name="ids", dtype="int8", shape=["batch", 2])
    np.savez(tmp_path / "d.npz", ids=np.array([[1, 2], [3, 300]], np.int64))
    with pytest.raises(DataError, match=r"input 'ids': values do not fit int8 \(range 1..300\)"):
        load(tmp_path / "d.npz", inputs=[small], labels=None)


def test_wrong_shape_rejected(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((5, 3, 3), np.float32), label=np.zeros(5, np.int64))
    with pytest.raises(DataError) as info:
        load(tmp_path / "d.npz")
    text = str(info.value)
    assert "input 'x'" in text and "expected shape ['N', 2, 2], got [5, 3, 3]" in text
    assert str(tmp_path / "d.npz") in text


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_rejected(tmp_path, bad):
    x, y = make_data(10)
    x[3, 0, 1] = bad
    x[7, 1, 1] = bad
    np.savez(tmp_path / "d.npz", x=x, label=y)
    with pytest.raises(DataError, match=r"input 'x': contains 2 NaN/inf value\(s\)"):
        load(tmp_path / "d.npz")


def test_empty_data_rejected(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((0, 2, 2), np.float32), label=np.zeros(0, np.int64))
    with pytest.raises(DataError, match="no samples"):
        load(tmp_path / "d.npz")


def test_mismatched_sample_counts_rejected(tmp_path):
    x, y = make_data(10)
    np.savez(tmp_path / "d.npz", x=x, label=y[:9])
    with pytest.raises(DataError, match=r"different sample counts: \{'x': 10, 'label': 9\}"):
        load(tmp_path / "d.npz")


def test_missing_input_array_rejected(tmp_path):
    np.savez(tmp_path / "d.npz", image=np.zeros((4, 2, 2), np.float32), label=np.zeros(4, np.int64))
    with pytest.raises(DataError, match=r"no array\(s\) named 'x' \(the data holds: image, label\)"):
        load(tmp_path / "d.npz")


def test_missing_label_array_rejected(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 2, 2), np.float32), y=np.zeros(4, np.int64))
    with pytest.raises(DataError, match=r"no label array named 'label' \(the data holds: x, y\)"):
        load(tmp_path / "d.npz")


def test_float_labels_rejected(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 2, 2), np.float32), label=np.zeros(4, np.float32))
    with pytest.raises(DataError, match="'label' must be a 1-D integer array"):
        load(tmp_path / "d.npz")


def test_unsupported_suffix_rejected(tmp_path):
    (tmp_path / "d.txt").write_text("1 2 3\n")
    with pytest.raises(DataError, match=r"unsupported data format '\.txt'"):
        read_arrays(tmp_path / "d.txt", wanted=["x"])


def test_missing_file_rejected(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        load(tmp_path / "absent.npz")


def test_corrupt_npz_rejected(tmp_path):
    (tmp_path / "d.npz").write_bytes(b"definitely not a zip archive")
    with pytest.raises(DataError, match="cannot read .npz archive"):
        load(tmp_path / "d.npz")


def test_truncated_npz_names_the_file(tmp_path):
    np.savez(tmp_path / "full.npz", image=np.zeros((64, 8), np.float32))
    data = (tmp_path / "full.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut.npz: cannot read .npz archive \(BadZipFile"):
        load(tmp_path / "cut.npz")


def test_callable_errors_become_data_errors(tmp_path):
    (tmp_path / "ep_unit_bad_batches.py").write_text(CALLABLE)
    for name, words in [("not_mappings", "each batch must be a mapping"),
                        ("broken", "RuntimeError: sensor offline"), ("absent", "has no attribute 'absent'")]:
        source = CalibrationConfig(callable=f"ep_unit_bad_batches:{name}")
        with pytest.raises(DataError, match=words):
            load_sample_set(source, [X], role="calibration", base_dir=tmp_path)
    with pytest.raises(DataError, match="cannot import data callable 'ep_unit_no_such_module:fn'"):
        load_sample_set(CalibrationConfig(callable="ep_unit_no_such_module:fn"), [X], role="calibration",
                        base_dir=tmp_path)


def test_seeded_subset_is_reproducible(tmp_path):
    x, y = make_data(500)
    np.savez(tmp_path / "d.npz", x=x, label=y)
    first = load(tmp_path / "d.npz", samples=150, seed=7)
    again = load(tmp_path / "d.npz", samples=150, seed=7)
    other = load(tmp_path / "d.npz", samples=150, seed=8)
    assert first.num_samples == 150
    np.testing.assert_array_equal(first.arrays["x"], again.arrays["x"])
    np.testing.assert_array_equal(first.labels, again.labels)
    assert first.sha256 == again.sha256
    assert not np.array_equal(first.arrays["x"], other.arrays["x"])
    assert first.sha256 != other.sha256
    # the subset is made of real rows, kept in file order, labels still aligned
    rows = [int(np.flatnonzero((x == sample).all(axis=(1, 2)))[0]) for sample in first.arrays["x"]]
    assert rows == sorted(rows)
    np.testing.assert_array_equal(first.labels, y[rows])


def test_samples_larger_than_available_takes_all(tmp_path):
    x, y = make_data(N)
    np.savez(tmp_path / "d.npz", x=x, label=y)
    sample_set = load(tmp_path / "d.npz", samples=10_000, seed=3)
    np.testing.assert_array_equal(sample_set.arrays["x"], x)
    assert sample_set.sha256 == load(tmp_path / "d.npz").sha256


def test_few_samples_warn(tmp_path):
    x, y = make_data(N)
    np.savez(tmp_path / "d.npz", x=x, label=y)
    assert load(tmp_path / "d.npz", samples=FEW_SAMPLES).warnings == ()
    warnings = load(tmp_path / "d.npz", samples=FEW_SAMPLES - 1).warnings
    assert len(warnings) == 1
    assert f"only {FEW_SAMPLES - 1} samples" in warnings[0]


def test_batches_equal_only_drops_uneven_tail(tmp_path):
    x, y = make_data(10)
    np.savez(tmp_path / "d.npz", x=x, label=y)
    sample_set = load(tmp_path / "d.npz", batch_size=4)
    assert [len(b["x"]) for b in sample_set.batches()] == [4, 4, 2]
    assert [len(b["x"]) for b in sample_set.batches(equal_only=True)] == [4, 4]
    assert sample_set.used_samples(equal_only=True) == 8
    assert sample_set.used_samples(equal_only=False) == 10
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in sample_set.batches()]), x)
    # a batch size above the sample count yields one full batch
    big = load(tmp_path / "d.npz", batch_size=64)
    assert [len(b["x"]) for b in big.batches(equal_only=True)] == [10]


def test_csv_missing_label_cell_rejected(tmp_path):
    (tmp_path / "d.csv").write_text("a,b,label\n1.0,2.0,3\n4.0,5.0,\n")
    vector = InputSpec(name="x", dtype="float32", shape=["batch", 2])
    with pytest.raises(DataError, match="label"):
        load(tmp_path / "d.csv", inputs=[vector], columns={"x": ["a", "b"]})


def test_single_column_fills_a_one_wide_input(tmp_path):
    (tmp_path / "d.csv").write_text("age,label\n1.5,0\n2.5,1\n")
    age = InputSpec(name="age", dtype="float32", shape=["batch", 1])
    np.testing.assert_array_equal(load(tmp_path / "d.csv", inputs=[age]).arrays["age"], [[1.5], [2.5]])
