"""PT2E with both ARM quantizers: conv → ReLU6 gets its own observer on the clamped range (not the conv's
pre-activation range), conv → ReLU is left as the quantizers annotate it, and the arm-tflite export is
strict so that residual ADDs are quantized."""

from __future__ import annotations

import importlib.util
from functools import lru_cache

import numpy as np
import pytest
import torch
from torch import nn

from edgepack.calibration.methods import MinMax
from edgepack.quantization.pt2e import QuantizedGraph, calibrated_pt2e, with_activation_observer
from edgepack.recipe.schema import InputSpec, QuantizationConfig
from edgepack.targets.base import ExportContext
from tests.helpers import read_tflite, relative_rms, sample_set, seeded, tflite_op_names

SHAPE = (3, 16, 16)
RELU6_SCALE = 6 / 255  # an asymmetric int8 observer over exactly [0, 6]
RELU6_COUNT = 3  # stem and one per block, each after a conv


class Relu6AsClamp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(0, 6)


def conv_bn(channels_in: int, channels_out: int, kernel: int, activation) -> list[nn.Module]:
    """Conv → BN (→ activation). Before an activation BN gains are 4..8, so pre-activations span far wider
    than [0, 6]; without one they are 0.5..1, so the residual sums stay narrow and the clamps' ranges count."""
    norm = nn.BatchNorm2d(channels_out)
    low = 4.0 if activation else 0.5
    with torch.no_grad():
        norm.weight.uniform_(low, 2 * low)
        norm.bias.uniform_(-low / 2, low)
    layers = [nn.Conv2d(channels_in, channels_out, kernel, padding=kernel // 2, bias=False), norm]
    return layers + ([activation()] if activation else [])


class ResidualNet(nn.Module):
    """Stem conv-BN-act, two residual blocks (conv-BN-act, conv-BN, add), pooled linear head.

    Two blocks in a row, as in MobileNetV2's stages: the first ADD's output feeds the second ADD, so
    an ADD the quantizer leaves unannotated stays float in the .tflite (a lone ADD between quantized
    ops is folded to int8 by the converter anyway).
    """

    def __init__(self, activation=nn.ReLU6):
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(3, 8, 3, activation))
        self.blocks = nn.ModuleList(nn.Sequential(*conv_bn(8, 8, 3, activation), *conv_bn(8, 8, 1, None))
                                    for _ in range(2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)


IMAGES = np.random.default_rng(0).standard_normal((128, *SHAPE)).astype(np.float32)
CALIBRATION = sample_set({"image": IMAGES[:64]}, role="calibration", batch_size=32)
EVALUATION = torch.from_numpy(IMAGES[64:])


def xnnpack_quantizer():
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    config = get_symmetric_quantization_config(is_per_channel=True)
    return XNNPACKQuantizer().set_global(with_activation_observer(config, MinMax()))


def litert_quantizer():
    from litert_torch.quantize import pt2e_quantizer

    config = pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True)
    return pt2e_quantizer.PT2EQuantizer().set_global(with_activation_observer(config, MinMax()))


QUANTIZERS = {"xnnpack": ("executorch", xnnpack_quantizer), "litert": ("litert_torch", litert_quantizer)}


@pytest.fixture(params=sorted(QUANTIZERS))
def quantizer_name(request) -> str:
    pytest.importorskip(QUANTIZERS[request.param][0])
    pytest.importorskip("torchao")
    return request.param


@lru_cache(maxsize=None)
def quantized(quantizer_name: str, activation=nn.ReLU6, separate_relu6: bool = True) -> QuantizedGraph:
    """The seeded ResidualNet with `activation`, calibrated and converted (cached: each takes seconds)."""
    model = seeded(ResidualNet, activation)
    return calibrated_pt2e(model, (EVALUATION[:4],), CALIBRATION, QUANTIZERS[quantizer_name][1](),
                           fold_quantize=True, separate_relu6=separate_relu6)


def error_against_float(graph: QuantizedGraph, activation=nn.ReLU6) -> float:
    with torch.no_grad():
        reference = seeded(ResidualNet, activation)(EVALUATION).numpy()
        return relative_rms(graph.module(EVALUATION).numpy(), reference)


def clamps(graph: QuantizedGraph) -> list[torch.fx.Node]:
    return [node for node in graph.module.graph.nodes
            if node.target in (torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default,
                               torch.ops.aten.clamp.default)]


@pytest.mark.parametrize("activation", [nn.ReLU6, Relu6AsClamp])
def test_relu6_after_conv_gets_its_own_observer(quantizer_name, activation):
    graph = quantized(quantizer_name, activation)
    assert graph.activation_annotations_fixed == RELU6_COUNT
    assert graph.details()["activation_annotations_fixed"] == RELU6_COUNT
    found = clamps(graph)
    assert len(found) == RELU6_COUNT
    for clamp in found:
        # No quantize/dequantize between conv and clamp: the conv's output is not observed on its own.
        assert clamp.args[0].target == torch.ops.aten.conv2d.default
        (quantize,) = clamp.users
        assert quantize.target == torch.ops.quantized_decomposed.quantize_per_tensor.default
        assert quantize.args[1] == pytest.approx(RELU6_SCALE, rel=1e-3), "quantized on [0, 6]"


def test_unfixed_relu6_shares_the_wide_conv_observer(quantizer_name):
    graph = quantized(quantizer_name, nn.ReLU6, separate_relu6=False)
    assert graph.activation_annotations_fixed == 0
    for clamp in clamps(graph):
        dequantize = clamp.args[0]
        assert dequantize.target == torch.ops.quantized_decomposed.dequantize_per_tensor.default
        assert dequantize.args[1] > 5 * RELU6_SCALE, "the pre-activation range is much wider than [0, 6]"


def test_separate_relu6_ranges_reduce_the_error(quantizer_name):
    before = error_against_float(quantized(quantizer_name, nn.ReLU6, separate_relu6=False))
    after = error_against_float(quantized(quantizer_name, nn.ReLU6))
    # Measured: 0.256 -> 0.202 (XNNPACKQuantizer), 0.252 -> 0.204 (litert-torch).
    assert after < 0.85 * before, (before, after)


def test_relu_models_are_unchanged(quantizer_name):
    fixed, plain = quantized(quantizer_name, nn.ReLU), quantized(quantizer_name, nn.ReLU, separate_relu6=False)
    assert fixed.activation_annotations_fixed == 0
    with torch.no_grad():
        assert torch.equal(fixed.module(EVALUATION), plain.module(EVALUATION))


def test_a_failed_strict_export_falls_back_with_a_note(quantizer_name, monkeypatch):
    export = torch.export.export

    def no_strict(module, *args, strict: bool = False, **kwargs):
        if strict and isinstance(module, ResidualNet):  # the quantizers' pattern matchers export strict too
            raise RuntimeError("dynamo cannot trace this")
        return export(module, *args, strict=strict, **kwargs)

    monkeypatch.setattr(torch.export, "export", no_strict)
    graph = calibrated_pt2e(seeded(ResidualNet), (EVALUATION[:4],), CALIBRATION, QUANTIZERS[quantizer_name][1](),
                            fold_quantize=True, strict=True)
    assert graph.export_mode == "non-strict"
    assert "dynamo cannot trace this" in graph.details()["export_note"]


def test_arm_tflite_quantizes_residual_adds_and_relu6(tmp_path):
    if importlib.util.find_spec("litert_torch") is None or importlib.util.find_spec("ai_edge_litert") is None:
        pytest.skip("litert-torch is not installed")
    from edgepack.targets.arm_tflite.target import TfliteArmTarget

    target = TfliteArmTarget()
    context = ExportContext(float_onnx=tmp_path / "unused.onnx", module=seeded(ResidualNet),
                            inputs=[InputSpec(name="image", dtype="float32", shape=["batch", *SHAPE])],
                            calibration=CALIBRATION, method=MinMax(), quantization=QuantizationConfig(),
                            out_dir=tmp_path, scratch_dir=tmp_path, options=target.parse_options({}))
    (artifact,) = target.export(context)
    assert artifact.details["export_mode"] == "strict"
    assert artifact.details["activation_annotations_fixed"] == RELU6_COUNT
    assert artifact.details["float_arithmetic_ops"] == {"ADD": 0, "MUL": 0}
    fb, model = read_tflite(artifact.path)
    graph = model.subgraphs[0]
    adds = [operator for operator, name in zip(graph.operators, tflite_op_names(fb, model)) if name == "ADD"]
    assert len(adds) == 2, "both residual adds are in the model"
    assert "RELU6" not in tflite_op_names(fb, model), "the clamps are fused into their convolutions"
    for add in adds:
        assert {graph.tensors[index].type for index in add.inputs} == {fb.TensorType.INT8}
