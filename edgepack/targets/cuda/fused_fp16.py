"""cuda's fp16 artifact of a transformer encoder with fused attention.

TorchScript export of the PyTorch module, onnxruntime's BERT optimizer (Attention,
SkipLayerNormalization, BiasGelu, EmbedLayerNormalization: com.microsoft contrib ops the CUDA
execution provider runs as fused fp16 kernels), then fp16 conversion of that graph. The dynamo
export, which every other artifact starts from, fuses no Attention (its mask and scaling patterns
do not match the optimizer's).

Before conversion the fused fp32 graph is checked against the unquantized fp32 ONNX: the module a
target receives may be a tuned variant, and a fused graph of another function (bias-corrected) must
not become the fp16 artifact. The CPU provider runs the fused fp16 file itself; onnxruntime inserts
Casts so that ops without a CPU fp16 kernel run in fp32 on the fp16-rounded weights (recorded per op
type: CUDA's fp16 arithmetic is not emulated, as for the unfused fp16 graph).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgepack.capture import quiet_python_output
from edgepack.errors import ExportError, describe
from edgepack.evaluation.drift import collect_outputs
from edgepack.evaluation.runners import OrtRunner
from edgepack.quantization.transformer_int8 import fused_float_onnx
from edgepack.targets.base import ExportContext

ATTENTION_OPS = ("Attention", "MultiHeadAttention")
CHECK_SAMPLES = 32
# fp32 against fp32: summation order and the mask fill value (-10000 fused, finfo.min exported) differ, nothing else
FP32_TOLERANCE = 1e-3  # relative to the largest reference output


class FusionUnavailable(ExportError):
    """The fused fp16 graph cannot be built for this model (the reason is the message)."""


def _check_samples(context: ExportContext) -> dict[str, np.ndarray]:
    return {name: array[:CHECK_SAMPLES] for name, array in context.calibration.arrays.items()
            if name in {spec.name for spec in context.inputs}}


def _fp32_check(fused: Path, reference: Path, context: ExportContext) -> dict[str, Any]:
    """Fused fp32 graph against the unquantized fp32 ONNX on calibration samples; raise when they differ."""
    import dataclasses

    samples = dataclasses.replace(context.calibration, labels=None, extras={}, arrays=_check_samples(context))
    expected = collect_outputs(OrtRunner(reference, threads=context.threads), samples)
    got = collect_outputs(OrtRunner(fused, threads=context.threads), samples)
    difference = float(np.abs(got - expected).max())
    scale = max(float(np.abs(expected).max()), 1e-12)
    check = {"samples": int(len(expected)), "max_abs_difference": difference, "relative": difference / scale,
             "tolerance": FP32_TOLERANCE}
    if difference / scale > FP32_TOLERANCE:
        raise FusionUnavailable(f"the fused fp32 graph differs from the unquantized fp32 ONNX by {difference:.3g} "
                                f"({difference / scale:.2g} of the largest output; tolerance {FP32_TOLERANCE:g}): the "
                                "module handed to the target is another function (a tuned variant)")
    return check


def cpu_kernels(path: Path, op_types: set[str]) -> dict[str, Any]:
    """How the CPU provider runs the fp16 graph: the Casts it inserts, and for each op type in `op_types`
    whether it runs in fp16 or in fp32 behind such Casts."""
    import tempfile

    import onnxruntime as ort

    before = sum(node.op_type == "Cast" for node in onnx.load(str(path)).graph.node)
    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.optimized_model_filepath = str(Path(folder) / "session.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(options.optimized_model_filepath).graph
    producers = {output: node for node in graph.node for output in node.output}
    inserted = sum(node.op_type == "Cast" for node in graph.node) - before
    kernels: dict[str, str] = {}
    for node in graph.node:
        if node.op_type not in op_types:
            continue
        widened = any(name in producers and producers[name].op_type == "Cast" and
                      any(attr.name == "to" and attr.i == onnx.TensorProto.FLOAT for attr in producers[name].attribute)
                      for name in node.input)
        kernels[node.op_type] = "fp32 behind inserted Casts" if widened else "fp16"
    return {"casts_inserted_by_onnxruntime": inserted, "ops": dict(sorted(kernels.items()))}


def build_fused_fp16(context: ExportContext, path: Path, *, keep_io_types: bool) -> dict[str, Any]:
    """Write the fused fp16 graph to `path`; return what the artifact's details say of it.

    Raises FusionUnavailable when this model cannot get one (no PyTorch transformer, nothing fused, another
    function)."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    module = context.unquantized_module or context.module
    heads, hidden = int(getattr(module, "num_heads", 0) or 0), int(getattr(module, "hidden_size", 0) or 0)
    if module is None or not heads or not hidden:
        raise FusionUnavailable("needs a PyTorch transformer with a known head count and hidden size "
                                "(model.huggingface)")
    fused32 = context.scratch_dir / "model.fused.fp32.onnx"
    example = {name: array[:2] for name, array in _check_samples(context).items()}
    try:
        fused = fused_float_onnx(module, context.inputs, example, fused32, num_heads=heads, hidden_size=hidden)
    except ExportError as exc:
        raise FusionUnavailable(str(exc)) from exc
    if not any(fused.get(op) for op in ATTENTION_OPS):
        variant = context.unquantized_module is None and context.unquantized_onnx not in (None, context.float_onnx)
        raise FusionUnavailable(f"onnxruntime's BERT optimizer fused no attention (fused: {fused or 'nothing'})"
                                + ("; the module handed to the target is a tuned variant (SmoothQuant scales or "
                                   "bias correction) and no unquantized module came with it" if variant else ""))
    check = _fp32_check(fused32, context.unquantized_onnx or context.float_onnx, context)
    try:
        with quiet_python_output("onnxruntime"):
            model = OnnxModel(onnx.load(str(fused32)))
            model.convert_float_to_float16(keep_io_types=keep_io_types)
            model.save_model_to_file(str(path))
    except Exception as exc:  # the converter raises many types
        raise FusionUnavailable(f"fp16 conversion of the fused graph failed: {describe(exc)}") from exc
    contrib = Counter(node.op_type for node in onnx.load(str(path)).graph.node if node.domain == "com.microsoft")
    return {"fused_ops": dict(sorted(contrib.items())),
            "built_from": "TorchScript export of the PyTorch module, onnxruntime.transformers optimizer "
                          "(model_type bert), onnxruntime.transformers fp16 conversion",
            "fp32_check_against_unquantized_onnx": check, "cpu_kernels": cpu_kernels(path, set(contrib))}
