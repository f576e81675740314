"""onnxruntime static QDQ quantization (edgepack.quantization.ort_qdq) on tiny seeded models: which nodes get
QDQ, how weights are stored, which nodes stay float and why, and that the result still computes the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgepack.calibration.methods import MinMax
from edgepack.errors import ExportError
from edgepack.evaluation.runners import OrtRunner
from edgepack.model.onnx_export import export_float_onnx
from edgepack.quantization.ort_qdq import QdqSettings, narrow_input_convs, quantize_qdq
from edgepack.recipe.schema import InputSpec
from tests.helpers import embedding_onnx, is_per_channel, onnx_constants, relative_rms, sample_set, seeded

pytest.importorskip("onnxruntime", reason="needs the x86 extra (onnxruntime)")

# Output error of the int8 models below (relative_rms), measured at 0.04-0.08 on the CNN and 0.19 on the random
# two-table MLP; unrelated outputs (rows reversed) give 1.4.
CNN_TOLERANCE, EMBEDDING_TOLERANCE = 0.15, 0.3


class TinyCnn(nn.Module):
    """A 1-channel input conv (too narrow a reduction to pay in int8), a 4-channel conv and a linear head."""

    def __init__(self):
        super().__init__()
        self.stem, self.conv = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 8, 3, padding=1)
        self.head = nn.Linear(512, 5)

    def forward(self, image):
        return self.head(torch.relu(self.conv(torch.relu(self.stem(image)))).flatten(1))


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """(float ONNX path, calibration set, evaluation feeds, float outputs) of the seeded TinyCnn."""
    rng = np.random.default_rng(0)
    # brightness varies between images, so the outputs do too (not only by the class biases)
    images = (rng.random((160, 1, 8, 8)) * rng.uniform(0, 2, (160, 1, 1, 1))).astype(np.float32)
    spec = [InputSpec(name="image", dtype="float32", shape=["batch", 1, 8, 8])]
    path = export_float_onnx(seeded(TinyCnn), spec, {"image": images[:2]}, tmp_path_factory.mktemp("cnn") / "f.onnx")
    feeds = {"image": images[128:]}
    return path, sample_set({"image": images[:128]}, role="calibration"), feeds, OrtRunner(path, threads=1)(feeds)[0]


def quantized(source, tmp_path: Path, **settings):
    """Quantize the float model of `source` with QdqSettings(**settings): (outcome, model, path)."""
    path, calibration, _, _ = source
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    out = tmp_path / "q.onnx"
    names = [value.name for value in onnx.load(str(path)).graph.input]
    outcome = quantize_qdq(path, out, calibration=calibration, input_names=names, method=MinMax(),
                           settings=QdqSettings(**settings), scratch=scratch)
    return outcome, onnx.load(str(out)), out


def weight_dequantizers(model) -> list:
    """DequantizeLinear nodes of constant weights (2-D or more)."""
    constants = onnx_constants(model)
    return [node for node in model.graph.node if node.op_type == "DequantizeLinear"
            and node.input[0] in constants and constants[node.input[0]].ndim >= 2]


def float_computed(model, names) -> list[str]:
    """Those of the nodes named that read no DequantizeLinear output: they compute on float tensors."""
    produced_by_dq = {out for node in model.graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    nodes = {node.name: node for node in model.graph.node}
    return [name for name in names if not produced_by_dq & set(nodes[name].input)]


def test_default_settings_quantize_every_layer_but_the_narrow_input_conv(cnn, tmp_path):
    outcome, model, path = quantized(cnn, tmp_path)
    constants = onnx_constants(model)
    stem = next(node for node in model.graph.node if node.op_type == "Conv" and node.input[0] == "image")
    assert narrow_input_convs(cnn[0]) == [stem.name, outcome.float_nodes[1]], "the 1-channel conv and its Relu"
    assert list(outcome.float_nodes) == narrow_input_convs(cnn[0])
    assert float_computed(model, outcome.float_nodes) == list(outcome.float_nodes), "excluded nodes stay float"
    assert constants[stem.input[1]].dtype.name == "float32"
    assert not [node for node in model.graph.node if node.op_type == "QuantizeLinear" and "image" in node.input]
    weights = weight_dequantizers(model)
    assert len(weights) == 2 and all(constants[node.input[0]].dtype.name == "int8" for node in weights)
    assert all(is_per_channel(node, constants) for node in weights)
    zero_points = [constants[node.input[2]] for node in model.graph.node if node.op_type == "QuantizeLinear"]
    assert zero_points and {z.dtype.name for z in zero_points} == {"uint8"}, "uint8 activations"
    _, _, feeds, expected = cnn
    assert relative_rms(OrtRunner(path, threads=1)(feeds)[0], expected) < CNN_TOLERANCE


def test_without_keep_input_convs_float_the_input_is_quantized_too(cnn, tmp_path):
    outcome, model, _ = quantized(cnn, tmp_path, keep_input_convs_float=False)
    assert outcome.float_nodes == ()
    assert [node for node in model.graph.node if node.op_type == "QuantizeLinear" and "image" in node.input]
    assert len(weight_dequantizers(model)) == 3


def test_symmetric_int8_activations_have_zero_points_of_zero(cnn, tmp_path):
    _, model, _ = quantized(cnn, tmp_path, activation_type="int8", symmetric_activations=True,
                               keep_input_convs_float=False)
    constants = onnx_constants(model)
    zero_points = [constants[node.input[2]] for node in model.graph.node if node.op_type == "QuantizeLinear"]
    assert zero_points and all(z.dtype.name == "int8" and not z.any() for z in zero_points)


def test_seven_bit_weights_keep_their_per_channel_scales(cnn, tmp_path):
    _, model, path = quantized(cnn, tmp_path, seven_bit_weights=True, keep_input_convs_float=False)
    constants = onnx_constants(model)
    weights = weight_dequantizers(model)
    assert len(weights) == 3
    for node in weights:
        values = constants[node.input[0]].astype(int)
        assert values.min() >= -64 and values.max() <= 64, node.name
        assert is_per_channel(node, constants), f"{node.name}: a reduce_range override lost the channel axis"
    _, _, feeds, expected = cnn
    assert relative_rms(OrtRunner(path, threads=1)(feeds)[0], expected) < CNN_TOLERANCE


def test_per_tensor_weights_and_a_restricted_op_list(cnn, tmp_path):
    _, model, _ = quantized(cnn, tmp_path, per_channel=False, op_types=("Conv",), keep_input_convs_float=False)
    constants = onnx_constants(model)
    weights = weight_dequantizers(model)
    assert len(weights) == 2 and all(constants[node.input[1]].size == 1 for node in weights), "Conv only, one scale"
    gemm = next(node for node in model.graph.node if node.op_type == "Gemm")
    assert constants[gemm.input[1]].dtype.name == "float32", "Gemm is not in op_types: its weight stays float"


def test_tables_are_rewritten_per_row_and_their_dequantization_stays_float(tmp_path):
    path, feeds = embedding_onnx(tmp_path, count=128)
    expected = OrtRunner(path, threads=1)(feeds)[0]
    source = (path, sample_set(feeds, role="calibration"), feeds, expected)
    outcome, model, out = quantized(source, tmp_path, embedding_bits=8)
    assert sorted(table["rows"] for table in outcome.tables) == [40, 50]
    assert len(outcome.float_nodes) == 12, "six dequantization nodes per table"
    assert float_computed(model, outcome.float_nodes) == list(outcome.float_nodes)
    constants = onnx_constants(model)
    gathers = [node for node in model.graph.node if node.op_type == "Gather" and node.input[0] in constants]
    assert sorted(constants[node.input[0]].dtype.name for node in gathers) == ["float16", "float16", "int8", "int8"]
    assert relative_rms(OrtRunner(out, threads=1)(feeds)[0], expected) < EMBEDDING_TOLERANCE


def test_without_embedding_bits_tables_get_onnxruntimes_per_tensor_quantization(tmp_path):
    path, feeds = embedding_onnx(tmp_path, count=128)
    source = (path, sample_set(feeds, role="calibration"), feeds, None)
    outcome, model, _ = quantized(source, tmp_path, embedding_bits=None)
    assert outcome.tables == () and outcome.float_nodes == ()
    constants = onnx_constants(model)
    producers = {out: node for node in model.graph.node for out in node.output}
    tables = [producers[node.input[0]] for node in model.graph.node if node.op_type == "Gather"]
    assert len(tables) == 2 and all(node.op_type == "DequantizeLinear" for node in tables)
    assert all(constants[node.input[1]].size == 1 for node in tables), "one scale per table"


def test_a_model_onnxruntime_cannot_read_is_an_export_error(cnn, tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    with pytest.raises(ExportError, match="onnxruntime pre-processing failed"):
        quantize_qdq(broken, tmp_path / "q.onnx", calibration=cnn[1], input_names=["image"], method=MinMax(),
                     settings=QdqSettings(), scratch=tmp_path)
