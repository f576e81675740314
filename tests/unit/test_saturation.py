"""The int16 pair-sum checks: proof from the weights, and the measurement on data.

Tiny QDQ models are built by hand so the integer weights and activations are known exactly."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepack.quantization.saturation import data_check, integer_layers, pair_summed_weights, summarize, weight_bound


def _qdq_model(weight: np.ndarray, *, op: str = "MatMul", group: int = 1, input_shape=(None, 8)) -> onnx.ModelProto:
    """x (float) -> Q(uint8, scale 1/255, zp 0) -> DQ -> op with DQ(weight) -> y."""
    inits = [numpy_helper.from_array(np.array(1 / 255, np.float32), "x_scale"),
             numpy_helper.from_array(np.array(0, np.uint8), "x_zp"),
             numpy_helper.from_array(weight, "w_q"),
             numpy_helper.from_array(np.array(0.01, np.float32), "w_scale"),
             numpy_helper.from_array(np.array(0, weight.dtype), "w_zp")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["x_q"], name="q"),
             helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"], name="dq"),
             helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w_dq"], name="wdq")]
    if op == "Conv":
        nodes.append(helper.make_node("Conv", ["x_dq", "w_dq"], ["y"], name="layer", group=group, pads=[1, 1, 1, 1]))
        y_shape = None
    else:
        nodes.append(helper.make_node("MatMul", ["x_dq", "w_dq"], ["y"], name="layer"))
        y_shape = [None, weight.shape[1]]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_full_8bit_weights_can_saturate_7bit_cannot():
    full = np.full((8, 4), 127, np.int8)
    seven = np.full((8, 4), 63, np.int8)
    negative = np.full((8, 4), -64, np.int8)
    assert weight_bound(integer_layers(_qdq_model(full)))[0].can_saturate
    assert not weight_bound(integer_layers(_qdq_model(seven)))[0].can_saturate
    assert not weight_bound(integer_layers(_qdq_model(negative)))[0].can_saturate  # 255 * 128 = 32640
    assert weight_bound(integer_layers(_qdq_model(np.full((8, 4), -65, np.int8))))[0].can_saturate


def test_one_large_weight_per_channel_cannot_saturate():
    weight = np.zeros((8, 4), np.int8)
    weight[0] = 127  # a pair is at most 255 * 127 + 255 * 0
    assert not weight_bound(integer_layers(_qdq_model(weight)))[0].can_saturate


def test_uint8_weights_and_depthwise_convs_are_exact():
    assert not weight_bound(integer_layers(_qdq_model(np.full((8, 4), 255, np.uint8))))[0].can_saturate
    depthwise = np.full((4, 1, 3, 3), 127, np.int8)
    model = _qdq_model(depthwise, op="Conv", group=4, input_shape=(None, 4, 5, 5))
    assert integer_layers(model)[0].exact_on_every_isa
    dense = _qdq_model(np.full((4, 4, 3, 3), 127, np.int8), op="Conv", input_shape=(None, 4, 5, 5))
    assert weight_bound(integer_layers(dense))[0].can_saturate


def _float_convs() -> onnx.ModelProto:
    inits = [numpy_helper.from_array(np.ones((4, 4, 3, 3), np.float32), "dense_w"),
             numpy_helper.from_array(np.ones((4, 1, 3, 3), np.float32), "depthwise_w"),
             numpy_helper.from_array(np.ones((4, 2), np.float32), "fc_w")]
    nodes = [helper.make_node("Conv", ["x", "dense_w"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "depthwise_w"], ["b"], group=4, pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["b"], ["c"]),
             helper.make_node("Flatten", ["c"], ["d"]),
             helper.make_node("MatMul", ["d", "fc_w"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_seven_bit_weights_go_to_every_pair_summed_layer_but_not_depthwise():
    assert pair_summed_weights(_float_convs()) == {"dense_w": 0, "fc_w": 1}


def test_data_check_fails_a_full_8bit_model_on_saturating_data(tmp_path):
    path = tmp_path / "vnni.onnx"
    onnx.save(_qdq_model(np.full((8, 4), 127, np.int8)), str(path))
    saturating = {"x": np.ones((16, 8), np.float32)}  # every activation quantizes to 255
    measured = data_check(path, [saturating])
    assert measured[0].outputs_at_risk == measured[0].outputs_checked == 16 * 4
    assert measured[0].worst_pair == 2 * 255 * 127
    summary = summarize(weight_bound(integer_layers(onnx.load(str(path)))), measured)
    assert summary["layers_that_can_saturate_without_vnni"] == ["layer"]
    assert summary["data_check_outputs_at_risk"] == 64


def test_data_check_passes_the_same_weights_on_small_activations(tmp_path):
    path = tmp_path / "vnni.onnx"
    onnx.save(_qdq_model(np.full((8, 4), 127, np.int8)), str(path))
    small = {"x": np.full((16, 8), 0.3, np.float32)}  # 0.3 * 255 ~ 77: 2 * 77 * 127 < 32767
    assert data_check(path, [small])[0].outputs_at_risk == 0


def test_data_check_on_a_dense_conv_counts_only_risky_positions(tmp_path):
    weight = np.zeros((2, 1, 3, 3), np.int8)
    weight[0, 0, 1, 1] = 127
    weight[0, 0, 1, 2] = 127  # output channel 0 pairs two 127s; channel 1 is all zero
    path = tmp_path / "conv.onnx"
    onnx.save(_qdq_model(weight, op="Conv", input_shape=(None, 1, 4, 4)), str(path))
    measured = data_check(path, [{"x": np.ones((2, 1, 4, 4), np.float32)}])[0]
    # channel 0 at risk wherever both taps read the image (not the right-hand padding column): 4 x 3 per sample
    assert measured.outputs_checked == 2 * 2 * 16
    assert measured.outputs_at_risk == 2 * 12


@pytest.mark.parametrize("shape", [(4, 4), (16, 4)])
def test_bound_matches_brute_force_over_pairs(shape):
    rng = np.random.default_rng(0)
    weight = rng.integers(-128, 128, size=shape).astype(np.int8)
    bound = weight_bound(integer_layers(_qdq_model(weight)))[0]
    worst = 0
    for column in weight.T.astype(np.int64):
        for i in range(len(column)):
            for j in range(len(column)):
                if i != j:
                    pair = 255 * (max(column[i], 0) + max(column[j], 0))
                    negative = 255 * (max(-column[i], 0) + max(-column[j], 0))
                    worst = max(worst, pair, negative)
    assert bound.worst_pair == worst
