"""Embedding tables rewritten to INT8 behind a per-channel DequantizeLinear (edgepack.quantization.gather_dq)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepack.quantization.gather_dq import dequantize_gathered_tables, per_channel_int8

pytest.importorskip("onnxruntime")


def _model(path, word: np.ndarray, tied: np.ndarray, small: np.ndarray) -> None:
    """Gathers over a word table (read twice), a tied table also read by a MatMul, and a 2-row table."""
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 3])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Gather", ["word", "ids"], ["a"], axis=0),
             helper.make_node("Gather", ["word", "ids"], ["b"], axis=0),
             helper.make_node("Gather", ["tied", "ids"], ["c"], axis=0),
             helper.make_node("MatMul", ["c", "tied"], ["d"]),
             helper.make_node("Gather", ["small", "zero_ids"], ["e"], axis=0),
             helper.make_node("Sum", ["a", "b", "e"], ["f"]),
             helper.make_node("ReduceSum", ["d"], ["g"], keepdims=0),
             helper.make_node("ReduceSum", ["f"], ["h"], keepdims=0),
             helper.make_node("Add", ["g", "h"], ["out"])]
    initializers = [numpy_helper.from_array(word, "word"), numpy_helper.from_array(tied, "tied"),
                    numpy_helper.from_array(small, "small"),
                    numpy_helper.from_array(np.zeros((1, 3), dtype=np.int64), "zero_ids")]
    model = helper.make_model(helper.make_graph(nodes, "g", [ids], [out], initializers),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))


def test_tables_read_only_by_gathers_become_int8_with_a_dq_per_channel(tmp_path):
    import onnxruntime

    rng = np.random.default_rng(0)
    word = (rng.normal(size=(40, 8)) * np.linspace(0.01, 2.0, 8)).astype(np.float32)  # columns of unlike range
    word[:, 3] = 0.0  # an all-zero channel still gets a positive scale
    tied, small = rng.normal(size=(20, 20)).astype(np.float32), rng.normal(size=(2, 8)).astype(np.float32)
    path = tmp_path / "model.onnx"
    _model(path, word, tied, small)
    feeds = {"ids": rng.integers(0, 20, size=(5, 3)).astype(np.int64)}
    before = onnxruntime.InferenceSession(str(path)).run(None, feeds)[0]

    reports = dequantize_gathered_tables(path)

    assert [(item["table"], item["lookups"], item["rows"], item["dim"]) for item in reports] == [("word", 2, 40, 8)]
    assert reports[0]["max_abs_error"] <= reports[0]["error_bound"] + 1e-7
    assert reports[0]["bytes_after"] < reports[0]["bytes_before"] / 3
    model = onnx.load(str(path))
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    assert "word" not in constants and constants["tied"].dtype == np.float32 and "small" in constants
    dq, = [node for node in model.graph.node if node.op_type == "DequantizeLinear"]
    quantized, scale, zero_point = (constants[name] for name in dq.input)
    assert quantized.dtype == np.int8 and quantized.shape == (40, 8) and np.abs(quantized).max() <= 127
    assert scale.shape == (8,) and (scale > 0).all() and zero_point.dtype == np.int8 and not zero_point.any()
    assert [attr.i for attr in dq.attribute if attr.name == "axis"] == [1]
    readers = [node for node in model.graph.node if dq.output[0] in node.input]
    assert [node.op_type for node in readers] == ["Gather", "Gather"]
    after = onnxruntime.InferenceSession(str(path)).run(None, feeds)[0]
    # 6 lookups of 8 values each, each within half a step of its channel
    assert np.abs(after - before).max() <= 2 * 3 * 8 * reports[0]["error_bound"]
    assert not np.array_equal(after, before)


def test_per_channel_int8_scales_each_column_by_its_own_peak():
    table = np.array([[1.0, -0.005], [-0.25, 0.02]] * 8, dtype=np.float32)
    quantized, scales = per_channel_int8(table)
    assert np.allclose(scales, [1.0 / 127, 0.02 / 127])
    assert quantized[0].tolist() == [127, -32] and quantized[1].tolist() == [-32, 127]
