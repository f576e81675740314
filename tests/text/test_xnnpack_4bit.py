"""arm-xnnpack with `weight_bits: 4` on the tiny BERT: int4 groupwise weights and dynamic int8 activations in
XNNPACK-delegated linear layers, against the 8-bit artifact and the float model; where the option is refused."""

from __future__ import annotations

import re

import numpy as np
import pytest
from torch import nn

from edgepack.calibration.methods import MinMax
from edgepack.errors import ConfigError
from edgepack.evaluation.divergence_pte import pte_divergence
from edgepack.model.onnx_export import export_float_onnx
from edgepack.recipe.schema import InputSpec, QuantizationConfig
from edgepack.registry import get_target
from edgepack.targets.base import ExportContext
from tests.helpers import float_outputs, relative_rms, sample_set, seeded
from tests.text.tiny_bert import texts_and_labels

pytest.importorskip("executorch")
LENGTH = 24
INPUTS = [InputSpec(name=name, dtype="int64", shape=["batch", LENGTH]) for name in ("input_ids", "attention_mask")]
NAMES = [spec.name for spec in INPUTS]


def _tokens(folder, count: int, seed: int) -> dict[str, np.ndarray]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    encoded = tokenizer(texts_and_labels(count, seed)[0], max_length=LENGTH, truncation=True, padding="max_length",
                        return_tensors="np")
    return {name: encoded[name].astype(np.int64) for name in NAMES}


def _context(work, module, inputs, calibration: dict[str, np.ndarray], float_onnx, options) -> ExportContext:
    out = work / "out"
    out.mkdir()
    return ExportContext(float_onnx=float_onnx, module=module, inputs=inputs,
                         calibration=sample_set(calibration, role="calibration"), method=MinMax(),
                         quantization=QuantizationConfig(), out_dir=out, scratch_dir=work, options=options)


@pytest.fixture(scope="module")
def bert(tiny_text, tmp_path_factory):
    """(float module, evaluation feeds, float outputs, {(bits, group): artifact}) for the tiny BERT."""
    from edgepack.text.huggingface import load_huggingface

    module = load_huggingface(tiny_text / "model")
    work = tmp_path_factory.mktemp("xnnpack-bert")
    calibration, feeds = _tokens(tiny_text / "model", 96, seed=1), _tokens(tiny_text / "model", 200, seed=2)
    float_onnx = export_float_onnx(module, INPUTS, {name: array[:2] for name, array in feeds.items()},
                                   work / "float.onnx")
    target = get_target("arm-xnnpack")
    artifacts = {}
    for raw in ({}, {"weight_bits": 4}, {"weight_bits": 4, "group_size": 64}):
        folder = work / "-".join(f"{key}{value}" for key, value in raw.items()) if raw else work / "defaults"
        folder.mkdir()
        (artifacts[raw.get("weight_bits", 8), raw.get("group_size")],) = target.export(
            _context(folder, module, INPUTS, calibration, float_onnx, target.parse_options(raw)))
    return module, feeds, float_outputs(module, feeds, NAMES), artifacts


def _linears(module) -> dict[str, nn.Linear]:
    return {name: child for name, child in module.named_modules() if isinstance(child, nn.Linear)}


def test_int4_weights_are_packed_two_a_byte_and_delegated(bert):
    module, _, _, artifacts = bert
    eight, four = artifacts[8, None], artifacts[4, None]
    linears = _linears(module)
    details = four.details
    assert four.precision == "int8-int4w-xnnpack" and four.path.name == "model.int4w.pte"
    assert details["linear_layers"] == {"int4_layers": len(linears), "int8_layers": [], "float_layers": []}
    assert "int4 weights" in details["weight_scheme"] and "group of 32" in details["weight_scheme"]
    assert "int8 weights" in eight.details["weight_scheme"]
    # every linear layer, with its weight dequantization and dynamic activation quantization, inside XNNPACK
    assert details["delegated_ops"]["aten_linear_default"] == len(linears)
    assert details["delegated_ops"]["torchao_dequantize_affine_default"] == 2 * len(linears)
    assert "aten_linear_default" not in details["non_delegated_ops"]
    # outside XNNPACK only the per-row embedding tables' dequantizations
    assert details["non_delegated_ops"]["torchao_dequantize_affine_default"] == len(details["embedding_tables"])
    for name, layer in _linears(four.lowered_from).items():
        weight = layer.weight
        assert weight.qdata.min() >= -8 and weight.qdata.max() <= 7, name
        assert tuple(weight.block_size) == (1, 32), name
    # int8 weights take one byte each, int4 half a byte plus a bfloat16 scale per 32: the file shrinks by that
    weights = sum(layer.weight.numel() for layer in linears.values())
    saving = eight.path.stat().st_size - four.path.stat().st_size
    assert saving >= 0.9 * (weights / 2 - weights / 32 * 2), (saving, weights)


def test_int4_outputs_stay_close_to_float(bert):
    _, feeds, reference, artifacts = bert
    target = get_target("arm-xnnpack")
    errors = {}
    for key in ((8, None), (4, None)):
        (got,) = target.runner(artifacts[key].path, threads=2)(feeds)
        errors[key] = relative_rms(got, reference)
        assert float((got.argmax(1) == reference.argmax(1)).mean()) >= 0.95, key
    assert errors[4, None] < 0.1, errors
    assert errors[4, None] > errors[8, None], "4-bit weights round more than 8-bit ones"


def test_layers_the_group_does_not_divide_keep_int8_weights(bert):
    module, feeds, reference, artifacts = bert
    artifact = artifacts[4, 64]
    linears = _linears(module)
    narrow = sorted(name for name, layer in linears.items() if layer.in_features % 64)
    layers = artifact.details["linear_layers"]
    assert layers["int8_layers"] == narrow and layers["int4_layers"] == len(linears) - len(narrow) > 0
    assert artifact.details["delegated_ops"]["aten_linear_default"] == len(linears)
    (got,) = get_target("arm-xnnpack").runner(artifact.path, threads=2)(feeds)
    assert float((got.argmax(1) == reference.argmax(1)).mean()) >= 0.95


def test_localization_reuses_the_4bit_graph(bert):
    module, feeds, _, artifacts = bert
    artifact = artifacts[4, None]
    sample = {name: array[:8] for name, array in feeds.items()}
    record = pte_divergence(module, artifact.lowered_from, sample, NAMES,
                            verified_outputs=get_target("arm-xnnpack").runner(artifact.path, threads=1)(sample))
    assert len(record.layers) == len(_linears(module))
    assert float(re.search(r"max \|difference\| (\S+)", record.note).group(1)) == 0.0, record.note


def test_group_size_needs_4bit_weights_and_a_multiple_of_32():
    target = get_target("arm-xnnpack")
    with pytest.raises(ConfigError, match=r"group_size: applies to weight_bits 4 only"):
        target.parse_options({"group_size": 64})
    with pytest.raises(ConfigError, match=r"group_size: .*multiple of 32"):
        target.parse_options({"weight_bits": 4, "group_size": 48})
    with pytest.raises(ConfigError, match=r"weight_bits"):
        target.parse_options({"weight_bits": 2})


def test_4bit_weights_are_refused_for_a_model_without_attention_mask(tmp_path):
    target = get_target("arm-xnnpack")
    module = seeded(lambda: nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4)))
    inputs = [InputSpec(name="features", dtype="float32", shape=["batch", 64])]
    data = {"features": np.random.default_rng(0).normal(size=(32, 64)).astype(np.float32)}
    float_onnx = export_float_onnx(module, inputs, data, tmp_path / "float.onnx")
    context = _context(tmp_path, module, inputs, data, float_onnx, target.parse_options({"weight_bits": 4}))
    with pytest.raises(ConfigError, match=r"weight_bits: 4 applies to transformers .* only"):
        target.export(context)
    assert not any(context.out_dir.iterdir())


def test_float_modules_stay_float_and_a_group_dividing_no_layer_is_refused():
    from edgepack.targets.arm_xnnpack.linear4 import quantize_linears_4bit

    module = seeded(lambda: nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4), nn.Linear(4, 2)))
    quantized, layers = quantize_linears_4bit(module, group_size=32, float_modules=("2",))
    assert layers == {"int4_layers": 1, "int8_layers": ["3"], "float_layers": ["2"]}
    assert type(quantized[2].weight) is nn.Parameter and type(quantized[0].weight) is not nn.Parameter
    assert type(module[0].weight) is nn.Parameter, "the float model is left as it was"
    with pytest.raises(ConfigError, match=r"group_size: 64 divides the input width of none"):
        quantize_linears_4bit(module, group_size=64, float_modules=("0",))
