"""cuda's fp16 artifact comes from the float model itself, never from a variant made for quantization
(a bias-corrected student computes another function: fine under INT8 rounding, an error in fp16)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgepack.calibration.methods import MinMax
from edgepack.model.onnx_export import export_float_onnx
from edgepack.recipe.schema import InputSpec, QuantizationConfig
from edgepack.targets.base import ExportContext
from edgepack.targets.cuda.target import CudaOptions, CudaTarget
from tests.helpers import sample_set

pytest.importorskip("onnxruntime")


def _biases(path) -> list[np.ndarray]:
    model = onnx.load(str(path))
    return sorted((numpy_helper.to_array(init).astype(np.float32) for init in model.graph.initializer
                   if init.dims == [8]), key=lambda array: float(array.sum()))


def test_fp16_is_built_from_the_unquantized_onnx(tmp_path):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    shifted = torch.nn.Sequential(*[layer for layer in module]).eval()
    inputs = [InputSpec(name="x", dtype="float32", shape=["batch", 4])]
    sample = {"x": np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)}
    original = tmp_path / "original.onnx"
    export_float_onnx(module, inputs, sample, original)
    with torch.no_grad():
        shifted[0].bias += 1.0  # stands in for a bias-corrected variant: another function
    variant = tmp_path / "variant.onnx"
    export_float_onnx(shifted, inputs, sample, variant)
    (tmp_path / "out").mkdir()
    (tmp_path / "work").mkdir()
    calibration = sample_set({"x": np.random.default_rng(1).normal(size=(32, 4)).astype(np.float32)},
                             role="calibration")
    context = ExportContext(float_onnx=variant, module=shifted, inputs=inputs, calibration=calibration,
                            method=MinMax(), quantization=QuantizationConfig.model_validate({}),
                            out_dir=tmp_path / "out", scratch_dir=tmp_path / "work",
                            options=CudaOptions(int8=False), threads=1, unquantized_onnx=original)
    fp16, = CudaTarget().export(context)
    built, expected, other = _biases(fp16.path), _biases(original), _biases(variant)
    assert len(built) == len(expected) == 1
    assert np.allclose(built[0], expected[0], atol=1e-3)
    assert not np.allclose(built[0], other[0], atol=0.5)
