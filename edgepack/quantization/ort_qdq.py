"""onnxruntime static QDQ quantization driven by our calibration ranges (shared by ONNX targets)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from edgepack.calibration.methods import PerTensorMse
from edgepack.calibration.ranges import ActivationGrid, calibrate, ort_method
from edgepack.capture import quiet_python_output
from edgepack.errors import ExportError, describe
from edgepack.quantization.embedding_tables import quantize_tables
from edgepack.quantization.saturation import pair_summed_weights


@dataclass(frozen=True)
class QdqSettings:
    """How weights and activations are quantized in a QDQ graph."""

    activation_type: str = "uint8"
    weight_type: str = "int8"
    per_channel: bool = True
    symmetric_activations: bool = False
    keep_input_convs_float: bool = True
    embedding_bits: Optional[int] = 8  # per-row tables (8 or 4 bits); None: onnxruntime's per-tensor default
    op_types: Optional[tuple[str, ...]] = None  # None: every op type onnxruntime can quantize
    # 7-bit weights ([-64, 64]) on every layer whose x86 U8S8 kernel adds product pairs in int16
    # (all but depthwise convolutions): then no pair sum can saturate on any x86 CPU.
    seven_bit_weights: bool = False
    # Op types whose outputs get no QuantizeLinear (their consumers read float): transformers keep the
    # attention mask's -3.4e38 out of every quantized range this way (edgepack.targets.x86.transformer).
    float_outputs_of: tuple[str, ...] = ()
    # Torch modules (qualified names) whose Conv/Gemm/MatMul stays float with its activation (edgepack tune).
    float_modules: tuple[str, ...] = ()


# Below this many multiply-accumulates per output value (in_channels/groups * kh * kw) the u8s8
# GEMM kernels cannot amortise their packing and requantization: a 1-channel 3x3 input conv ran
# 4x slower in int8 than in fp32 here (1.64 vs 0.42 ms at batch 64).
NARROW_REDUCTION = 16


def consumers_of(model) -> dict[str, list]:
    """Tensor name -> the nodes of `model`'s graph that read it."""
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return consumers


def sole_activation(node, consumers: dict[str, list]):
    """The Relu/Clip that is `node`'s only consumer (the quantizer treats the two as one), or None."""
    followers = consumers.get(node.output[0], [])
    return followers[0] if len(followers) == 1 and followers[0].op_type in ("Relu", "Clip") else None


def _with_activation(node, consumers: dict[str, list]) -> list[str]:
    """`node`'s name, and that of its sole Relu/Clip consumer if it has one."""
    activation = sole_activation(node, consumers)
    return [node.name] + ([activation.name] if activation is not None else [])


def module_nodes(model_path: Path, modules: tuple[str, ...]) -> dict[str, list[str]]:
    """For each torch module name, the ONNX nodes that compute it: the Conv/Gemm/MatMul reading the
    initializer `<module>.weight` (the exporter keeps parameter names), and its Relu/Clip."""
    import onnx

    model = onnx.load(str(model_path))
    consumers = consumers_of(model)
    found: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul", "ConvTranspose") or len(node.input) < 2:
            continue
        for module in modules:
            if node.input[1] == f"{module}.weight":
                found[module] = _with_activation(node, consumers)
    return found


def narrow_input_convs(model_path: Path) -> list[str]:
    """Names of the Conv nodes (and a sole following Relu/Clip) that read a graph input directly and
    have a reduction dimension under NARROW_REDUCTION: keeping them fp32 is faster and more accurate."""
    import onnx

    model = onnx.load(str(model_path))
    graph_inputs = {value.name for value in model.graph.input}
    shapes = {init.name: list(init.dims) for init in model.graph.initializer}
    consumers = consumers_of(model)
    names = []
    for node in model.graph.node:
        if node.op_type != "Conv" or node.input[0] not in graph_inputs or node.input[1] not in shapes:
            continue
        weight = shapes[node.input[1]]
        if len(weight) < 3 or int(weight[1]) * math.prod(int(d) for d in weight[2:]) >= NARROW_REDUCTION:
            continue
        names += _with_activation(node, consumers)
    return names


@dataclass(frozen=True)
class QuantizationOutcome:
    """The nodes deliberately left in float, the embedding tables quantized per row and, for a per-tensor
    calibration method, how many activation tensors chose each candidate range."""

    float_nodes: tuple[str, ...]
    tables: tuple[dict, ...] = ()
    calibration: Optional[dict] = None


def quantize_qdq(float_path: Path, out_path: Path, *, calibration, input_names: list[str], method,
                 settings: QdqSettings, scratch: Path) -> QuantizationOutcome:
    """Pre-process, calibrate and quantize `float_path` into a QDQ model at `out_path`."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    prepared = scratch / "prepared.onnx"
    cache = scratch / "calibration_cache.json"
    # Weight schemes of one target share the prepared graph and the activation ranges: reuse them. A
    # per-tensor method's ranges also depend on the activation grid they are chosen for.
    grid = ActivationGrid.of(settings.activation_type, settings.symmetric_activations) \
        if isinstance(method, PerTensorMse) else None
    key = json.dumps([str(float_path), settings.embedding_bits, method.model_dump(), list(input_names),
                      list(settings.op_types or ()), grid.describe() if grid is not None else None])
    memo = scratch / "prepared.json"
    with quiet_python_output(""):
        cached = json.loads(memo.read_text()) if memo.is_file() else {}
        if cached.get("key") == key:
            tables, float_nodes, summary = cached["tables"], cached["float_nodes"], cached.get("calibration")
        else:
            try:
                quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
            except Exception as exc:
                raise ExportError(f"onnxruntime pre-processing failed: {describe(exc)}") from exc
            tables, float_nodes = [], []
            if settings.embedding_bits is not None:
                tables, float_nodes = quantize_tables(prepared, bits=settings.embedding_bits)
            # only the tensors of the op types quantized: a transformer's additive attention mask (-3.4e38)
            # would otherwise enter a histogram calibrator ("too many bins") though it is never quantized
            summary = calibrate(prepared, calibration, input_names, method, cache, grid=grid,
                                op_types=list(settings.op_types) if settings.op_types else None).summary() or None
            memo.write_text(json.dumps({"key": key, "tables": tables, "float_nodes": float_nodes,
                                        "calibration": summary}))
        float_nodes = list(float_nodes)
        if settings.keep_input_convs_float:
            float_nodes += narrow_input_convs(prepared)
        if settings.float_modules:
            found = module_nodes(prepared, settings.float_modules)
            missing = [module for module in settings.float_modules if module not in found]
            if missing:
                raise ExportError(f"float_modules: no Conv/Gemm/MatMul with weight '<module>.weight' in the ONNX "
                                  f"graph for {', '.join(missing)}")
            float_nodes += [name for module in settings.float_modules for name in found[module]
                            if name not in float_nodes]
        extra_options: dict[str, Any] = {"ActivationSymmetric": settings.symmetric_activations,
                                         "WeightSymmetric": True}
        if settings.float_outputs_of:
            extra_options["OpTypesToExcludeOutputQuantization"] = list(settings.float_outputs_of)
        if settings.seven_bit_weights:
            # An override without "axis" would make onnxruntime quantize that weight per tensor.
            extra_options["TensorQuantOverrides"] = {
                name: [{"reduce_range": True} | ({"axis": axis} if settings.per_channel else {})]
                for name, axis in pair_summed_weights(onnx.load(str(prepared))).items()}
        try:
            quantize_static(
                str(prepared), str(out_path), calibration_data_reader=None, calibration_cache_path=str(cache),
                calibrate_method=ort_method(method), quant_format=QuantFormat.QDQ,
                activation_type=types[settings.activation_type], weight_type=types[settings.weight_type],
                per_channel=settings.per_channel, nodes_to_exclude=float_nodes,
                op_types_to_quantize=list(settings.op_types) if settings.op_types else None,
                extra_options=extra_options,
            )
        except Exception as exc:
            raise ExportError(f"onnxruntime quantization failed: {describe(exc)}") from exc
    return QuantizationOutcome(float_nodes=tuple(float_nodes), tables=tuple(tables), calibration=summary)
