"""First-divergence localization of the ARM artifacts: a .tflite read tensor by tensor in LiteRT, and the PT2E graph
a .pte is lowered from (kept by the target), re-lowered to XNNPACK with its layers tapped; each against the float
module, with one layer corrupted in the artifact or in its quantization."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch
from torch import nn

from edgepack.calibration.methods import MinMax
from edgepack.evaluation.divergence_pte import pte_divergence
from edgepack.evaluation.divergence_tflite import tflite_divergence
from edgepack.model.onnx_export import export_float_onnx
from edgepack.recipe.schema import InputSpec, QuantizationConfig
from edgepack.registry import get_target
from edgepack.targets.base import ExportContext
from tests.helpers import read_tflite, sample_set, seeded, tflite_op_names

MODULES = ["0", "3", "5", "8"]  # conv (+ BatchNorm 1 + ReLU 2), conv + ReLU6, conv + ReLU, linear
CORRUPTED = 2  # the third layer, module "5"
SPEC = InputSpec(name="image", dtype="float32", shape=["batch", 3, 10, 10])


def _build() -> nn.Module:
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                        nn.ReLU6(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 10 * 10, 4))
    net[1].running_mean.uniform_(-0.5, 0.5)  # a BatchNorm the converters really have to fold
    net[1].running_var.uniform_(0.5, 2.0)
    return net


def _images(count: int, seed: int = 0) -> dict[str, np.ndarray]:
    return {"image": np.random.default_rng(seed).normal(size=(count, 3, 10, 10)).astype(np.float32)}


def _export(target_name: str, work) -> tuple[nn.Module, ExportContext, object]:
    """The seeded CNN through the real target's export: (float module, the export context, the artifact)."""
    module = seeded(_build)
    target = get_target(target_name)
    for folder in ("out", "scratch"):
        (work / folder).mkdir()
    context = ExportContext(float_onnx=export_float_onnx(module, [SPEC], _images(2), work / "float.onnx"),
                            module=module, inputs=[SPEC], calibration=sample_set(_images(32), role="calibration"),
                            method=MinMax(), quantization=QuantizationConfig(), out_dir=work / "out",
                            scratch_dir=work / "scratch", options=target.Options())
    (artifact,) = target.export(context)
    return module, context, artifact


def _gap(note: str) -> float:
    return float(re.search(r"max \|difference\| (\S+)", note).group(1))


@pytest.fixture(scope="module")
def tflite(tmp_path_factory):
    pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_litert")
    module, _, artifact = _export("arm-tflite", tmp_path_factory.mktemp("tflite"))
    return module, artifact.path


def test_tflite_layers_are_paired_in_order_after_folded_activations(tflite):
    module, path = tflite
    feeds = _images(8, seed=1)
    record = tflite_divergence(module, path, feeds, ["image"], threads=1)
    assert [layer.module for layer in record.layers] == MODULES
    assert [layer.node.split("#")[0] for layer in record.layers] == ["CONV_2D"] * 3 + ["FULLY_CONNECTED"]
    assert all(0 < layer.relative_error < 0.2 for layer in record.layers[:3])
    assert record.samples == 8 and "LiteRT builtin kernels" in record.compared
    assert _gap(record.note) < 0.05  # the builtin-kernel run reproduces the verified XNNPACK run


def _scale_filter_of(path, index: int, factor: float) -> None:
    """Multiply the filter scales (and the int32 bias scales that must match them) of the index-th conv/FC."""
    from edgepack.targets.arm_tflite.tables import write_tflite

    fb, model = read_tflite(path)
    graph = model.subgraphs[0]
    ops = [op for op, name in zip(graph.operators, tflite_op_names(fb, model))
           if name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")]
    for position in (1, 2):
        quantization = graph.tensors[ops[index].inputs[position]].quantization
        quantization.scale = [float(scale) * factor for scale in quantization.scale]
    write_tflite(model, path)


def test_tflite_first_jump_is_the_corrupted_layer(tflite, tmp_path):
    module, original = tflite
    path = tmp_path / "corrupted.tflite"
    path.write_bytes(original.read_bytes())
    _scale_filter_of(path, CORRUPTED, 3.0)
    record = tflite_divergence(module, path, _images(8, seed=1), ["image"], threads=1)
    assert record.first == CORRUPTED and record.first_layer.module == MODULES[CORRUPTED]
    errors = [layer.relative_error for layer in record.layers]
    assert errors[CORRUPTED] > 5 * errors[CORRUPTED - 1]


def test_a_model_it_cannot_pair_gets_a_note(tflite):
    _, path = tflite
    other = seeded(lambda: nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)))
    record = tflite_divergence(other, path, _images(2), ["image"], threads=1)
    assert record.layers == [] and record.first is None
    assert "cannot be paired" in record.note


@pytest.fixture(scope="module")
def pte(tmp_path_factory):
    pytest.importorskip("executorch")
    module, _, artifact = _export("arm-xnnpack", tmp_path_factory.mktemp("pte"))
    return module, artifact.lowered_from, artifact.path


def test_pte_taps_reproduce_the_artifact_and_name_every_layer(pte):
    from edgepack.targets.arm_xnnpack.target import PteRunner

    module, quantized, path = pte
    feeds = _images(8, seed=1)
    record = pte_divergence(module, quantized, feeds, ["image"],
                            verified_outputs=PteRunner(path, threads=1)(feeds))
    assert [layer.module for layer in record.layers] == MODULES
    assert all(0 < layer.relative_error < 0.2 for layer in record.layers[:3])
    assert _gap(record.note) == 0.0, "the kept graph, tapped, computes exactly what the .pte computes"
    assert "XnnpackPartitioner" in record.compared


def test_pte_first_jump_is_the_corrupted_layer(pte):
    module, quantized, _ = pte
    corrupted = copy.deepcopy(quantized)
    scales = [node.args[1] for node in corrupted.graph.nodes if "dequantize_per_channel" in str(node.target)]
    with torch.no_grad():
        getattr(corrupted, scales[CORRUPTED].target).mul_(3.0)
    record = pte_divergence(module, corrupted, _images(8, seed=1), ["image"])
    assert record.first == CORRUPTED and record.first_layer.module == MODULES[CORRUPTED]
    errors = [layer.relative_error for layer in record.layers]
    assert errors[CORRUPTED] > 5 * errors[CORRUPTED - 1]
