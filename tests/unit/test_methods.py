"""Calibration methods: onnxruntime calibrators give MinMax, Percentile and (real) Entropy ranges."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from edgepack.calibration.methods import Entropy, MinMax, Percentile
from edgepack.calibration.ranges import SampleSetReader, calibrate, calibrator_options, ort_method
from edgepack.recipe.schema import InputSpec
from tests.helpers import npz_sample_set, seeded

SPEC = InputSpec(name="x", dtype="float32", shape=["batch", 1, 8, 8])


class TinyNet(nn.Module):
    """Conv + ReLU + Linear: enough tensors for calibration to have something to range."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


@pytest.fixture(scope="module")
def calibration_setup(tmp_path_factory):
    """A seeded float ONNX model and 256 calibration samples (normal data plus a few large outliers)."""
    folder = tmp_path_factory.mktemp("methods")
    net = seeded(TinyNet)
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 1.0, size=(256, 1, 8, 8)).astype(np.float32)
    outliers = rng.choice(x.size, size=20, replace=False)
    x.flat[outliers] = rng.uniform(15.0, 30.0, size=20).astype(np.float32)
    model_path = folder / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.from_numpy(x[:2]),), str(model_path), dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset_version=17)
    return model_path, npz_sample_set(folder / "calib.npz", {"x": x}, [SPEC]), x


@pytest.fixture(scope="module")
def all_ranges(calibration_setup, tmp_path_factory):
    model_path, sample_set, _ = calibration_setup
    folder = tmp_path_factory.mktemp("caches")
    results = {}
    for method in (MinMax(), Percentile(percentile=99.0), Entropy()):
        cache = folder / f"{method.name}.json"
        results[method.name] = (calibrate(model_path, sample_set, ["x"], method, cache).ranges, cache)
    return results


def test_minmax_input_range_is_true_min_and_max(all_ranges, calibration_setup):
    _, _, x = calibration_setup
    ranges, _ = all_ranges["minmax"]
    low, high = ranges["x"]
    assert low == pytest.approx(float(x.min()), abs=0.0)
    assert high == pytest.approx(float(x.max()), abs=0.0)
    assert high > 15.0  # the outliers are included


def test_every_method_ranges_the_same_tensors(all_ranges):
    names = {method: set(ranges) for method, (ranges, _) in all_ranges.items()}
    assert "x" in names["minmax"] and "y" in names["minmax"]
    assert len(names["minmax"]) >= 4  # input, conv, relu, ..., output
    assert names["percentile"] == names["minmax"] == names["entropy"]
    for ranges, _ in all_ranges.values():
        for low, high in ranges.values():
            assert isinstance(low, float) and isinstance(high, float)
            assert low <= high


def test_percentile_input_range_is_strictly_narrower(all_ranges):
    minmax, _ = all_ranges["minmax"]
    percentile, _ = all_ranges["percentile"]
    (mm_low, mm_high), (p_low, p_high) = minmax["x"], percentile["x"]
    assert mm_low <= p_low and p_high <= mm_high
    assert p_high - p_low < mm_high - mm_low
    assert p_high < 15.0  # clipped below the outliers


def test_entropy_is_not_minmax(all_ranges):
    minmax, _ = all_ranges["minmax"]
    entropy, _ = all_ranges["entropy"]
    differing = [name for name in minmax if not np.allclose(minmax[name], entropy[name], rtol=1e-6, atol=1e-7)]
    assert differing, f"entropy ranges equal MinMax for every tensor: {entropy}"
    # Entropy clips within the observed range, never widens it
    for name in minmax:
        assert entropy[name][0] >= minmax[name][0] - 1e-6 and entropy[name][1] <= minmax[name][1] + 1e-6
    assert entropy["x"][1] < minmax["x"][1]


def test_onnxruntime_default_entropy_collapses_to_minmax(calibration_setup, all_ranges, tmp_path):
    """The reason Entropy needs num_bins > num_quantized_bins: at 128/128 it is MinMax in disguise."""
    model_path, sample_set, _ = calibration_setup
    collapsed = Entropy.model_construct(num_bins=128, num_quantized_bins=128)
    ranges = calibrate(model_path, sample_set, ["x"], collapsed, tmp_path / "cache.json").ranges
    minmax, _ = all_ranges["minmax"]
    for name in minmax:
        np.testing.assert_allclose(ranges[name], minmax[name], rtol=1e-6, atol=1e-6)


def test_calibration_cache_is_written(all_ranges):
    from onnxruntime.quantization.calibrate import load_tensors_data

    for method, (ranges, cache) in all_ranges.items():
        assert cache.is_file(), method
        json.loads(cache.read_text())
        cached = load_tensors_data(cache)
        assert set(cached.data) == set(ranges), method
        for name, (low, high) in ranges.items():
            cached_low, cached_high = cached[name].range_value
            assert float(np.ravel(cached_low)[0]) == pytest.approx(low)
            assert float(np.ravel(cached_high)[0]) == pytest.approx(high)


def test_entropy_options_ask_for_more_histogram_bins_than_quantized_bins():
    options = calibrator_options(Entropy())
    assert options["num_bins"] == 2048 and options["num_quantized_bins"] == 128
    assert options["num_bins"] > options["num_quantized_bins"]
    assert calibrator_options(Percentile(percentile=99.5)) == {"percentile": 99.5, "symmetric": False}
    assert calibrator_options(MinMax()) == {}


def test_ort_method_mapping():
    from onnxruntime.quantization import CalibrationMethod

    assert ort_method(MinMax()) == CalibrationMethod.MinMax
    assert ort_method(Percentile()) == CalibrationMethod.Percentile
    assert ort_method(Entropy()) == CalibrationMethod.Entropy


def test_reader_yields_equal_batches_and_rewinds(tmp_path):
    x = np.random.default_rng(1).normal(size=(70, 1, 8, 8)).astype(np.float32)
    sample_set = npz_sample_set(tmp_path / "c.npz", {"x": x}, [SPEC])
    assert len(SampleSetReader(sample_set, ["x"], equal_only=False)) == 3  # MinMax keeps the uneven tail
    reader = SampleSetReader(sample_set, ["x"], equal_only=True)
    assert len(reader) == 2
    sizes = []
    while (batch := reader.get_next()) is not None:
        assert list(batch) == ["x"]
        sizes.append(len(batch["x"]))
    assert sizes == [32, 32]
    reader.rewind()
    np.testing.assert_array_equal(reader.get_next()["x"], x[:32])
