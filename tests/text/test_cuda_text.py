"""cuda on a tiny BERT: the fp16 artifact carries onnxruntime's fused attention and matches the float model
within fp16 tolerance; the INT8 QDQ artifact stores its embedding table as int8 behind a DequantizeLinear;
`fuse_attention` falls back (auto) or fails (true) when the module is not the float model's function."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import onnx
import onnxruntime
import pytest
import yaml
from click.testing import CliRunner
from onnx import numpy_helper

from edgepack.bundle.files import Bundle
from edgepack.calibration.methods import MinMax
from edgepack.cli.main import main
from edgepack.errors import EXIT_OK, ExportError
from edgepack.model.onnx_export import export_float_onnx
from edgepack.recipe.schema import InputSpec, QuantizationConfig
from edgepack.targets.base import ExportContext
from edgepack.targets.cuda.target import CudaOptions, CudaTarget
from edgepack.text.huggingface import load_huggingface
from tests.helpers import relative_rms, sample_set
from tests.text.conftest import text_recipe

pytestmark = pytest.mark.e2e
LENGTH = 24


def _feeds(count: int, seed: int) -> dict[str, np.ndarray]:
    """Token ids of the tiny vocabulary with padded tails of varied length."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, 120, size=(count, LENGTH)).astype(np.int64)
    mask = (np.arange(LENGTH)[None, :] < rng.integers(6, LENGTH + 1, size=(count, 1))).astype(np.int64)
    return {"input_ids": ids * mask, "attention_mask": mask}


@pytest.fixture(scope="module")
def packed(tiny_text, tmp_path_factory):
    """`edgepack pack` for cuda alone, default options."""
    out = tmp_path_factory.mktemp("cuda_text") / "bundle"
    recipe = tiny_text / "recipe_cuda.yaml"
    recipe.write_text(yaml.safe_dump(text_recipe(tiny_text, out, ["cuda"])))
    result = CliRunner().invoke(main, ["pack", str(recipe), "--no-bench"])
    assert result.exit_code == EXIT_OK, result.output
    bundle = Bundle.open(out)
    return bundle, {item.precision: item for item in bundle.manifest.targets["cuda"].artifacts}


def test_fp16_has_fused_attention_and_matches_float_within_fp16_tolerance(packed):
    bundle, artifacts = packed
    artifact = artifacts["fp16"]
    path = bundle.folder / artifact.path
    model = onnx.load(str(path))
    contrib = Counter(node.op_type for node in model.graph.node if node.domain == "com.microsoft")
    assert contrib["Attention"] == 2 and contrib["BiasGelu"] == 2 and contrib["SkipLayerNormalization"] >= 2
    assert not any(node.op_type == "Softmax" for node in model.graph.node), "attention left unfused"
    weights = [numpy_helper.to_array(init) for init in model.graph.initializer if len(init.dims) == 2]
    assert {array.dtype.name for array in weights if array.dtype.kind == "f"} == {"float16"}
    fused = artifact.structure["fused_attention"]
    assert fused["used"] and fused["fp32_check_against_unquantized_onnx"]["relative"] < 1e-3
    assert fused["cpu_kernels"]["ops"]["Attention"] in ("fp16", "fp32 behind inserted Casts")
    assert artifact.structure["intended_providers"] == ["CUDAExecutionProvider"]
    feeds = _feeds(64, seed=3)
    reference = onnxruntime.InferenceSession(str(bundle.folder / "reference" / "model.fp32.onnx")).run(None, feeds)[0]
    got = CudaTarget().runner(path, threads=2)(feeds)[0]
    error = relative_rms(got, reference)
    assert 0 < error <= 1e-2, error  # fp16 weights change the outputs, within fp16 rounding
    assert {check.metric: check.value for check in artifact.drift}["top1_agreement"] >= 0.99


def test_int8_stores_the_embedding_table_int8_behind_a_dequantize_before_gather(packed):
    bundle, artifacts = packed
    artifact = artifacts["int8-qdq-symmetric"]
    model = onnx.load(str(bundle.folder / artifact.path))
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    readers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node.op_type)
    table_dq = [node for node in model.graph.node if node.op_type == "DequantizeLinear"
                and readers.get(node.output[0]) == ["Gather"]]
    assert len(table_dq) == 1
    quantized, scale, zero_point = (constants[name] for name in table_dq[0].input)
    assert quantized.dtype == np.int8 and quantized.shape == (120, 32)
    assert scale.shape == (32,) and (scale > 0).all() and not zero_point.any()
    float_tables = [name for name, array in constants.items()
                    if array.dtype == np.float32 and array.ndim == 2 and array.shape[0] >= 16 and "Gather" in
                    readers.get(name, [])]
    assert not float_tables
    table, = artifact.embedding_tables
    assert (table.rows, table.dim, table.bits) == (120, 32, 8) and table.max_abs_error <= table.error_bound
    drift = {check.metric: check for check in artifact.drift}
    assert drift["top1_agreement"].value >= 0.95 and drift["accuracy_drop"].passed


@pytest.fixture(scope="module")
def variant_context(tiny_text, tmp_path_factory):
    """A cuda export context whose module is another function than its unquantized ONNX (shifted logits)."""
    import torch

    work = tmp_path_factory.mktemp("cuda_variant")
    module = load_huggingface(tiny_text / "model")
    inputs = [InputSpec(name=name, dtype="int64", shape=["batch", LENGTH]) for name in ("input_ids", "attention_mask")]
    feeds = _feeds(32, seed=4)
    original = work / "original.onnx"
    export_float_onnx(module, inputs, {name: array[:2] for name, array in feeds.items()}, original)
    with torch.no_grad():
        module.model.classifier.bias += torch.tensor([1.0, -1.0])  # a bias before a LayerNorm would cancel
    (work / "out").mkdir()
    (work / "scratch").mkdir()
    return ExportContext(float_onnx=original, module=module, inputs=inputs,
                         calibration=sample_set(feeds, role="calibration"), method=MinMax(),
                         quantization=QuantizationConfig.model_validate({}), out_dir=work / "out",
                         scratch_dir=work / "scratch", options=CudaOptions(int8=False), threads=1,
                         unquantized_onnx=original)


def test_fusion_of_another_function_falls_back_or_fails(variant_context):
    fp16, = CudaTarget().export(variant_context)
    fusion = fp16.details["fused_attention"]
    assert not fusion["used"] and "another function" in fusion["reason"]
    assert not any(node.domain == "com.microsoft" for node in onnx.load(str(fp16.path)).graph.node)
    strict = dataclasses.replace(variant_context, options=CudaOptions(int8=False, fuse_attention=True))
    with pytest.raises(ExportError, match="fuse_attention: the fused fp32 graph differs"):
        CudaTarget().export(strict)
