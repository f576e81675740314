"""Tuning building blocks: weight rounding, sequential bias correction, sensitivity, float modules."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgepack.calibration.methods import MinMax
from edgepack.model.onnx_export import export_float_onnx
from edgepack.quantization.ort_qdq import QdqSettings, module_nodes, quantize_qdq
from edgepack.recipe.schema import InputSpec
from edgepack.tuning.bias_correction import correct_biases, correctable_layers, round_weight
from edgepack.tuning.sensitivity import execution_order, layer_sensitivity
from tests.helpers import sample_set, seeded


class Net(nn.Module):
    """Conv+BN+ReLU6 twice (the second conv without bias), then a linear head: the shapes bias correction meets."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6())
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.head = nn.Linear(8, 5)

    def forward(self, image):
        return self.head(self.body(self.stem(image)).mean(dim=(2, 3)))


def _net() -> nn.Module:
    net = seeded(Net)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):  # trained-looking statistics
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
        # a few large weights make 8-bit rounding coarse for the others in their channel
        net.body[0].weight[:, :, 0, 0] *= 40
    return net.eval()


def _images(count: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    return {"image": np.random.default_rng(seed).normal(size=(count, 3, 12, 12)).astype(np.float32)}


def test_round_weight_uses_symmetric_per_channel_levels():
    weight = torch.tensor([[1.0, -0.5, 0.26], [0.02, 0.01, -0.04]])
    rounded = round_weight(weight, bits=8)
    for row, original in zip(rounded, weight):
        scale = original.abs().max() / 127
        assert torch.allclose(row / scale, torch.round(row / scale), atol=1e-4)
        assert torch.isclose(row.abs().max(), original.abs().max())
    per_tensor = round_weight(weight, bits=8, per_channel=False)
    assert torch.all(per_tensor[1] == torch.round(weight[1] / (1.0 / 127)) * (1.0 / 127))


def _output_means_shift(module: nn.Module, reference: nn.Module, images: dict[str, np.ndarray]) -> float:
    """Largest channel-mean difference of the last conv's output, with every layer's weights rounded."""
    means = {}
    for name, model in (("reference", reference), ("candidate", module)):
        copy = type(model)()
        copy.load_state_dict(model.state_dict())
        copy.eval()
        with torch.no_grad():
            if name == "candidate":
                for _, layer in correctable_layers(copy):
                    layer.weight.copy_(round_weight(layer.weight))
            captured = {}
            copy.body[0].register_forward_hook(lambda _m, _i, out: captured.setdefault("out", out))
            copy(torch.from_numpy(images["image"]))
            means[name] = captured["out"].mean(dim=(0, 2, 3))
    return float((means["candidate"] - means["reference"]).abs().max())


class BiasNet(Net):
    """Net with biases everywhere, so its state dict can hold the corrected biases."""

    def __init__(self):
        super().__init__()
        self.body[0].bias = nn.Parameter(torch.zeros(8))


def test_bias_correction_cancels_the_mean_shift_of_rounded_weights():
    net = _net()
    images = _images()
    result = correct_biases(net, images, ["image"], max_samples=64)
    assert result.samples == 64 and {layer.module for layer in result.layers} == {"stem.0", "body.0", "head"}
    # the float weights are kept: targets round them again; only biases moved (one was created)
    for (name, before), (_, after) in zip(correctable_layers(net), correctable_layers(result.module)):
        assert torch.equal(before.weight, after.weight), name
    assert net.body[0].bias is None and result.module.body[0].bias is not None
    uncorrected = BiasNet().eval()
    uncorrected.load_state_dict(net.state_dict(), strict=False)
    corrected = BiasNet().eval()
    corrected.load_state_dict(result.module.state_dict())
    shift_before = _output_means_shift(uncorrected, uncorrected, images)
    shift_after = _output_means_shift(corrected, uncorrected, images)
    assert shift_before > 1e-3
    assert shift_after < 0.1 * shift_before


def test_bias_correction_leaves_the_float_outputs_close():
    net = _net()
    images = _images()
    result = correct_biases(net, images, ["image"])
    with torch.no_grad():
        before = net(torch.from_numpy(images["image"]))
        after = result.module(torch.from_numpy(images["image"]))
    # the corrections are small next to the outputs: the float model barely moves
    assert float((after - before).abs().max()) < 0.1 * float(before.abs().max())


def test_sensitivity_ranks_the_layer_with_outlier_weights_first():
    net = seeded(lambda: nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(),
                                       nn.Linear(32, 4))).eval()
    with torch.no_grad():
        # layer 2 gets one huge weight per row on an input that is always 0: it sets the rounding step,
        # so the 31 weights that matter round to a few levels
        net[0].weight[0] = 0.0
        net[0].bias[0] = 0.0
        net[2].weight[:, 0] = 50.0
    arrays = {"x": np.random.default_rng(1).normal(size=(32, 16)).astype(np.float32)}
    order = execution_order(net, (torch.from_numpy(arrays["x"][:2]),))
    assert order == ["0", "2", "4"]
    ranked = sorted(layer_sensitivity(net, arrays, ["x"]), key=lambda item: item.alone, reverse=True)
    assert ranked[0].module == "2" and ranked[0].position == 1
    assert ranked[0].alone > 3 * ranked[1].alone
    by_name = {item.module: item for item in ranked}
    # leaving the worst layer out removes most of the error, leaving out a harmless one does not
    assert by_name["2"].left_out < 0.5 * by_name["4"].left_out


@pytest.fixture
def net_onnx(tmp_path):
    spec = InputSpec(name="image", dtype="float32", shape=["batch", 3, 12, 12])
    path = export_float_onnx(_net(), [spec], _images(2), tmp_path / "net.onnx")
    return path


def test_module_nodes_name_the_onnx_nodes_of_a_module(net_onnx):
    found = module_nodes(net_onnx, ("stem.0", "head"))
    model = onnx.load(str(net_onnx))
    ops = {node.name: node.op_type for node in model.graph.node}
    assert [ops[name] for name in found["stem.0"]] == ["Conv", "Clip"]
    assert ops[found["head"][0]] in ("Gemm", "MatMul")


def test_float_modules_stay_float_in_the_qdq_model(net_onnx, tmp_path):
    calibration = sample_set(_images(32), role="calibration")
    out = tmp_path / "q.onnx"
    (tmp_path / "work").mkdir()
    outcome = quantize_qdq(net_onnx, out, calibration=calibration, input_names=["image"], method=MinMax(),
                           settings=QdqSettings(float_modules=("stem.0",), keep_input_convs_float=False),
                           scratch=tmp_path / "work")
    model = onnx.load(str(out))
    weights = {init.name: init for init in model.graph.initializer}
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    float_conv = next(node for node in convs if node.name in outcome.float_nodes)
    assert weights[float_conv.input[1]].data_type == onnx.TensorProto.FLOAT
    producers = {output: node.op_type for node in model.graph.node for output in node.output}
    assert producers.get(float_conv.input[1]) != "DequantizeLinear"
    quantized = [node for node in convs if node is not float_conv]
    assert quantized and all(producers.get(node.input[1]) == "DequantizeLinear" for node in quantized)


def test_an_unknown_float_module_is_an_error(net_onnx, tmp_path):
    from edgepack.errors import ExportError

    (tmp_path / "work").mkdir()
    with pytest.raises(ExportError, match="no Conv/Gemm/MatMul .* for stem.7"):
        quantize_qdq(net_onnx, tmp_path / "q.onnx", calibration=sample_set(_images(8), role="calibration"),
                     input_names=["image"], method=MinMax(), settings=QdqSettings(float_modules=("stem.7",)),
                     scratch=tmp_path / "work")


def test_pt2e_keeps_the_named_module_float():
    pytest.importorskip("executorch")
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    from edgepack.quantization.pt2e import calibrated_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    example = (torch.from_numpy(_images(2)["image"]),)
    calibration = sample_set(_images(16), role="calibration")

    def conv_inputs_from_dequantize(float_modules):
        graph = calibrated_pt2e(_net(), example, calibration, quantizer, fold_quantize=False,
                                float_modules=float_modules).module
        convs = [node for node in graph.graph.nodes if node.op == "call_function" and "conv2d" in str(node.target)]
        return [any("dequantize" in str(getattr(arg, "target", "")) for arg in node.args[:2]) for node in convs]

    assert conv_inputs_from_dequantize(()) == [True, True]
    assert conv_inputs_from_dequantize(("stem.0",)) == [False, True]
