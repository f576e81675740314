"""First-divergence localization for an ONNX artifact that failed its budget: where its error starts.

The float ONNX the artifact was quantized from and the artifact itself run side by side in onnxruntime
on a few evaluation samples, with the output of every Conv/Gemm/MatMul (after its Relu/Clip) exposed
as an extra graph output. In the artifact that output is read where its QuantizeLinear stores it, so
the runtime's fused integer kernels run as they do in deployment, and dequantized in numpy. The
layers of the two graphs are paired by their order: quantization keeps every compute node in place.

Each layer's error is the relative L2 distance to the float tensor. The first divergence is the
first layer whose error rises, over the layer before it, by at least half the largest such rise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgepack.bundle.entries import _Strict
from edgepack.evaluation.runners import ort_session
from edgepack.quantization.ort_qdq import consumers_of, sole_activation

COMPUTE = ("Conv", "ConvTranspose", "Gemm", "MatMul")


class LayerError(_Strict):
    """One compute layer: its torch module (from the weight's name), its node in the artifact, its error."""

    module: str
    node: str
    relative_error: float


class DivergenceRecord(_Strict):
    """Per-layer error of an artifact against its float graph, and the first layer where it jumps."""

    artifact: str
    samples: int
    layers: list[LayerError]
    first: Optional[int] = None  # index into layers
    note: str = ""
    compared: str = ""  # exactly what ran against what, and where each layer was read

    @property
    def first_layer(self) -> Optional[LayerError]:
        """The layer named as the first divergence."""
        return self.layers[self.first] if self.first is not None else None


def _after_activation(node, consumers: dict[str, list]) -> str:
    activation = sole_activation(node, consumers)
    return (activation if activation is not None else node).output[0]


Probe = tuple[onnx.NodeProto, str, Optional[onnx.NodeProto]]


def _probe_points(model: onnx.ModelProto, *, quantized: bool) -> list[Probe]:
    """(compute node, tensor to read, QuantizeLinear node name or None) for every compute node, in order."""
    consumers = consumers_of(model)
    points: list[Probe] = []
    for node in model.graph.node:
        if node.op_type not in COMPUTE:
            continue
        tensor = _after_activation(node, consumers)
        if quantized and tensor == node.output[0]:
            tensor = _activation_behind_qdq(tensor, consumers) or tensor
        quantize = None
        if quantized:
            followers = consumers.get(tensor, [])
            if len(followers) == 1 and followers[0].op_type == "QuantizeLinear":
                quantize = followers[0]
                tensor = quantize.output[0]
        points.append((node, tensor, quantize))
    return points


def _activation_behind_qdq(tensor: str, consumers: dict[str, list]) -> Optional[str]:
    """The output of the Relu/Clip behind `tensor -> QuantizeLinear -> DequantizeLinear`, or None.

    Symmetric activations (cuda's TensorRT-style QDQ) keep the activation as its own node, quantized on
    both sides; the float graph's layer is read after its activation, so the artifact's must be too."""
    for op_types in (("QuantizeLinear",), ("DequantizeLinear",), ("Relu", "Clip")):
        followers = consumers.get(tensor, [])
        if len(followers) != 1 or followers[0].op_type not in op_types:
            return None
        tensor = followers[0].output[0]
    return tensor


def _expose(model: onnx.ModelProto, tensors: dict[str, Any]) -> bytes:
    """The model with `tensors` (name -> element type) added as graph outputs, serialized."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    existing = {output.name for output in copy.graph.output}
    for name, elem_type in tensors.items():
        if name not in existing:
            copy.graph.output.append(helper.make_tensor_value_info(name, elem_type, None))
    return copy.SerializeToString()


def _initializer(model: onnx.ModelProto, name: str) -> Optional[np.ndarray]:
    return next((numpy_helper.to_array(init) for init in model.graph.initializer if init.name == name), None)


def _module_of(node, weights: set[str]) -> str:
    weight = node.input[1] if len(node.input) > 1 else ""
    return weight[:-len(".weight")] if weight.endswith(".weight") and weight in weights else node.name


def first_jump(errors: list[float]) -> Optional[int]:
    """Index of the first layer whose error rises over the previous layer's by at least half the largest rise."""
    rises = [error - (errors[index - 1] if index else 0.0) for index, error in enumerate(errors)]
    if not rises or max(rises) <= 0:
        return None
    return next(index for index, rise in enumerate(rises) if rise >= 0.5 * max(rises))


def _run(model_bytes: bytes, feeds: dict[str, np.ndarray], threads: int, fake_quant: bool) -> dict[str, np.ndarray]:
    session = ort_session(model_bytes, threads=threads, fake_quant=fake_quant)
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(None, {item.name: feeds[item.name] for item in session.get_inputs()})))


def onnx_divergence(float_onnx: Path, artifact: Path, feeds: dict[str, np.ndarray], *, threads: int,
                    fake_quant: bool = False, label: str = "") -> DivergenceRecord:
    """Per-layer error of `artifact` against `float_onnx` on `feeds`, with the first divergence named."""
    reference = onnx.load(str(float_onnx))
    quantized = onnx.load(str(artifact))
    float_points = _probe_points(reference, quantized=False)
    artifact_points = _probe_points(quantized, quantized=True)
    samples = len(next(iter(feeds.values())))
    if len(float_points) != len(artifact_points) or not float_points:
        return DivergenceRecord(artifact=label or artifact.name, samples=samples, layers=[],
                                note=f"not localized: the artifact has {len(artifact_points)} compute layers, the "
                                     f"float graph {len(float_points)}, so they cannot be paired")
    float_out = _run(_expose(reference, {tensor: onnx.TensorProto.FLOAT for _, tensor, _ in float_points}),
                     feeds, threads, False)
    types = {}
    for _, tensor, quantize in artifact_points:
        zero_point = _initializer(quantized, quantize.input[2]) if quantize is not None and len(quantize.input) > 2 \
            else None
        types[tensor] = (helper.np_dtype_to_tensor_dtype(zero_point.dtype) if zero_point is not None
                         else onnx.TensorProto.FLOAT)
    artifact_out = _run(_expose(quantized, types), feeds, threads, fake_quant)
    weights = {init.name for init in reference.graph.initializer}
    layers: list[LayerError] = []
    for (float_node, float_tensor, _), (node, tensor, quantize) in zip(float_points, artifact_points):
        values = artifact_out[tensor].astype(np.float64)
        if quantize is not None:
            scale = _initializer(quantized, quantize.input[1])
            zero = _initializer(quantized, quantize.input[2]) if len(quantize.input) > 2 else None
            if scale is None:
                return DivergenceRecord(artifact=label or artifact.name, samples=samples, layers=layers,
                                        note=f"stopped at {node.name}: its quantization scale is not a constant")
            values = (values - (zero.astype(np.float64) if zero is not None else 0.0)) * scale.astype(np.float64)
        expected = float_out[float_tensor].astype(np.float64)
        if values.shape != expected.shape:
            return DivergenceRecord(artifact=label or artifact.name, samples=samples, layers=layers,
                                    note=f"stopped at {node.name}: shapes differ ({list(values.shape)} vs "
                                         f"{list(expected.shape)})")
        error = float(np.linalg.norm(values - expected) / max(float(np.linalg.norm(expected)), 1e-12))
        layers.append(LayerError(module=_module_of(float_node, weights), node=node.name, relative_error=error))
    first = first_jump([layer.relative_error for layer in layers])
    arithmetic = "fake-quant (Q/DQ unfused, float between them)" if fake_quant else "integer kernels as deployed"
    return DivergenceRecord(artifact=label or artifact.name, samples=samples, layers=layers, first=first,
                            compared=f"onnxruntime, {arithmetic}, each layer read where its QuantizeLinear stores "
                                     "it vs the float ONNX graph it was quantized from; each Conv/Gemm/MatMul "
                                     "output after its Relu/Clip")
