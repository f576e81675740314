"""Per-tensor MSE calibration: each activation tensor keeps the candidate range (minmax or a percentile of its
histogram) with the least expected squared quantization error on the target's activation grid."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgepack.calibration.methods import MinMax, PerTensorMse
from edgepack.calibration.ranges import ActivationGrid, calibrate, mse_choice
from edgepack.errors import CalibrationError
from edgepack.quantization.ort_qdq import QdqSettings, quantize_qdq
from tests.helpers import sample_set, seeded

SIZE = 96  # 256 samples of 96x96: 2.4M values per channel, so one outlier is rarer than 1e-6
OUTLIER = 100.0


class TwoPaths(nn.Module):
    """Channel 0 (rare huge outliers) and channel 1 (well behaved) of the input through their own conv."""

    def __init__(self):
        super().__init__()
        self.wild = nn.Conv2d(1, 4, 3)
        self.tame = nn.Conv2d(1, 4, 3)
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        wild = torch.relu(self.wild(x[:, :1]))
        tame = torch.relu(self.tame(x[:, 1:]))
        return self.head(torch.cat([wild, tame], 1))


def _images(count: int, *, outliers: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.stack([rng.normal(0.0, 1.0, size=(count, SIZE, SIZE)),
                  rng.uniform(-1.0, 1.0, size=(count, SIZE, SIZE))], axis=1).astype(np.float32)
    for spot in rng.choice(count * SIZE * SIZE, size=outliers, replace=False):
        x[(spot // (SIZE * SIZE), 0, *divmod(spot % (SIZE * SIZE), SIZE))] = OUTLIER
    return x


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mse")
    net = seeded(TwoPaths)
    path = folder / "net.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(2, 2, SIZE, SIZE),), str(path), dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset_version=17)
    model = onnx.load(str(path))
    slices = [node.output[0] for node in model.graph.node if node.op_type == "Slice"]
    assert len(slices) == 2
    calibration = sample_set({"x": _images(256, outliers=1, seed=0)}, role="calibration", batch_size=64)
    return net, path, calibration, slices[0], slices[1], folder


def test_outlier_tensor_is_clipped_and_tame_tensor_keeps_about_its_range(setup):
    _, path, calibration, wild, tame, folder = setup
    grid = ActivationGrid.of("uint8", symmetric=False)
    mse = calibrate(path, calibration, ["x"], PerTensorMse(), folder / "mse.json", grid=grid)
    minmax = calibrate(path, calibration, ["x"], MinMax(), folder / "minmax.json")
    assert minmax.ranges[wild][1] == pytest.approx(OUTLIER)
    assert mse.choices[wild] < 100.0 and mse.ranges[wild][1] < 6.0  # clipped far below the outlier
    low, high = mse.ranges[tame]
    assert mse.choices[tame] >= 99.99
    assert high - low >= 0.99 * (minmax.ranges[tame][1] - minmax.ranges[tame][0])
    summary = mse.summary()
    assert summary["grid"] == "uint8 asymmetric [0, 255]" and summary["tensors"] == len(mse.ranges)
    assert sum(summary["chosen"].values()) == len(mse.ranges) and summary["chosen"]["minmax"] >= 1


def test_qdq_artifact_is_closer_to_float_than_minmax(setup):
    import onnxruntime

    net, path, calibration, _, _, folder = setup
    held_out = _images(16, outliers=0, seed=1)
    with torch.no_grad():
        reference = net(torch.from_numpy(held_out)).numpy()
    errors, outcomes = {}, {}
    for method in (MinMax(), PerTensorMse()):
        scratch = folder / f"scratch-{method.name}"
        scratch.mkdir()
        out = folder / f"{method.name}.onnx"
        outcomes[method.name] = quantize_qdq(path, out, calibration=calibration, input_names=["x"], method=method,
                                             settings=QdqSettings(keep_input_convs_float=False), scratch=scratch)
        options = onnxruntime.SessionOptions()
        # fake-quant (Q/DQ unfused): the QDQ arithmetic itself, without the int16 pair sums of AVX2 kernels
        options.add_session_config_entry("session.disable_quant_qdq", "1")
        session = onnxruntime.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
        errors[method.name] = float(np.mean((session.run(None, {"x": held_out})[0] - reference) ** 2))
    assert errors["mse"] < 0.1 * errors["minmax"], errors
    assert outcomes["minmax"].calibration is None
    assert outcomes["mse"].calibration["grid"] == "uint8 asymmetric [0, 255]"


def test_the_grid_decides_the_error():
    """A ReLU output (no negative values): on a symmetric int8 grid half the levels are wasted, so clipping
    pays off sooner than on asymmetric uint8; the two grids' errors differ."""
    rng = np.random.default_rng(0)
    values = np.abs(rng.normal(0.0, 1.0, 200_000)).astype(np.float32)
    threshold = float(values.max())
    hist, edges = np.histogram(values, 2048, range=(-threshold, threshold))
    uint8 = mse_choice(hist, edges.astype(np.float32), 0.0, threshold, ActivationGrid.of("uint8", False))
    int8 = mse_choice(hist, edges.astype(np.float32), 0.0, threshold, ActivationGrid.of("int8", True))
    assert int8[2][0] > uint8[2][0]  # minmax: a coarser step on the symmetric grid
    assert int8[0] <= uint8[0]


def test_fake_quantize_matches_onnxruntime_scale_and_zero_point():
    from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType

    values = np.linspace(-3.0, 7.0, 1001)
    for activation, symmetric, qtype in (("uint8", False, onnx.TensorProto.UINT8),
                                         ("int8", True, onnx.TensorProto.INT8)):
        grid = ActivationGrid.of(activation, symmetric)
        qmin, qmax = get_qmin_qmax_for_qType(qtype, symmetric=symmetric)
        assert (grid.qmin, grid.qmax) == (int(qmin), int(qmax))
        zero, scale = compute_scale_zp(np.float32(-2.0), np.float32(5.0), qmin, qmax, symmetric=symmetric)
        levels = np.clip(np.round(values / float(scale)) + int(zero), int(qmin), int(qmax))
        expected = (levels - int(zero)) * float(scale)
        np.testing.assert_allclose(grid.fake_quantize(values, -2.0, 5.0), expected, rtol=1e-5, atol=1e-6)


def test_the_grid_is_required():
    with pytest.raises(CalibrationError, match="activation grid"):
        calibrate("unused.onnx", None, ["x"], PerTensorMse(), "unused.json")  # type: ignore[arg-type]
