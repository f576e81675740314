"""First-divergence localization: per-layer errors of a QDQ artifact, and the layer where they jump."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from torch import nn

from edgepack.calibration.methods import MinMax
from edgepack.evaluation.divergence import first_jump, onnx_divergence
from edgepack.model.onnx_export import export_float_onnx
from edgepack.quantization.ort_qdq import QdqSettings, quantize_qdq
from edgepack.recipe.schema import InputSpec
from tests.helpers import sample_set, seeded


def _net() -> nn.Module:
    return seeded(lambda: nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                                        nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                                        nn.Linear(8 * 10 * 10, 4))).eval()


def _images(count: int, seed: int = 0) -> dict[str, np.ndarray]:
    return {"image": np.random.default_rng(seed).normal(size=(count, 3, 10, 10)).astype(np.float32)}


def _quantized(tmp_path, settings: QdqSettings):
    spec = InputSpec(name="image", dtype="float32", shape=["batch", 3, 10, 10])
    float_path = export_float_onnx(_net(), [spec], _images(2), tmp_path / "float.onnx")
    artifact = tmp_path / "int8.onnx"
    (tmp_path / "work").mkdir()
    quantize_qdq(float_path, artifact, calibration=sample_set(_images(32), role="calibration"),
                 input_names=["image"], method=MinMax(), settings=settings, scratch=tmp_path / "work")
    return float_path, artifact


@pytest.fixture
def graphs(tmp_path):
    return _quantized(tmp_path, QdqSettings(keep_input_convs_float=False))


def test_symmetric_qdq_layers_are_read_after_their_activation(tmp_path):
    """cuda's TensorRT-style graph quantizes a conv's output before its Relu (a node of its own): the
    layer is read after the Relu, as in the float graph, not before it (an error near 1 on every layer)."""
    settings = QdqSettings(activation_type="int8", weight_type="int8", symmetric_activations=True,
                           keep_input_convs_float=False)
    float_path, artifact = _quantized(tmp_path, settings)
    model = onnx.load(str(artifact))
    assert [node.op_type for node in model.graph.node].count("Relu") == 3  # the activations stayed nodes
    record = onnx_divergence(float_path, artifact, _images(8, seed=1), threads=1, fake_quant=True)
    assert [layer.module for layer in record.layers] == ["0", "2", "4", "7"]
    assert all(0 < layer.relative_error < 0.2 for layer in record.layers), record.layers


def test_every_layer_is_paired_and_named_after_its_module(graphs):
    float_path, artifact = graphs
    record = onnx_divergence(float_path, artifact, _images(8, seed=1), threads=1)
    assert [layer.module for layer in record.layers] == ["0", "2", "4", "7"]
    assert record.samples == 8 and record.note == ""
    assert all(0 < layer.relative_error < 0.2 for layer in record.layers)


def _scale_weight_of(artifact, index: int, factor: float):
    """Multiply the weight scale of the index-th Conv/Gemm/MatMul of a QDQ model (a corrupted layer)."""
    model = onnx.load(str(artifact))
    producers = {output: node for node in model.graph.node for output in node.output}
    compute = [node for node in model.graph.node if node.op_type in ("Conv", "Gemm", "MatMul")]
    dequantize = producers[compute[index].input[1]]
    scales = {init.name: init for init in model.graph.initializer}
    scale = scales[dequantize.input[1]]
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * factor, scale.name))
    onnx.save(model, str(artifact))


def test_the_first_jump_is_the_corrupted_layer(graphs):
    float_path, artifact = graphs
    _scale_weight_of(artifact, 2, 3.0)
    record = onnx_divergence(float_path, artifact, _images(8, seed=1), threads=1)
    assert record.first == 2 and record.first_layer.module == "4"
    errors = [layer.relative_error for layer in record.layers]
    assert errors[2] > 3 * errors[1]


def test_first_jump_rule():
    assert first_jump([0.01, 0.02, 0.30, 0.35, 0.9]) == 2  # rises .01 .01 .28 .05 .55: first >= .275 is index 2
    assert first_jump([0.1, 0.1, 0.1]) == 0
    assert first_jump([]) is None
