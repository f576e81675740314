"""Can an INT8 ONNX model's integer arithmetic saturate on an x86 CPU without VNNI?

Without a VNNI/AMX dot product, onnxruntime's U8S8 kernels multiply uint8 activations by int8
weights and add the products in pairs into a saturating int16 (vpmaddubsw) before widening to
int32. Which two products form a pair depends on the kernel's packing, so both checks here are
pairing-agnostic: a pair can reach at most the sum of the two largest products of one output.

- `weight_bound` proves a model safe for every input: with activations in [0, 255], the worst
  pair of an output channel is 255 x (its two largest positive weights) or 255 x (its two most
  negative). 7-bit weights ([-64, 64]: 255 x 128 = 32640) can never exceed the int16 range; full 8-bit weights can.
- `data_check` measures, on real inputs, how many output values have a pair of products beyond
  int16: zero means the non-VNNI result equals the exact one on that data.

Two kinds of layer cannot saturate and are reported as such: layers with uint8 weights (U8U8
widens both operands to int16 and adds pairs in int32, vpmaddwd), and depthwise convolutions
(one input channel per group: MLAS's depthwise kernels widen to 32 bits before adding).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

INT16_MAX, INT16_MIN = 32767, -32768
UINT8_MAX = 255
CHECKED_OPS = ("Conv", "MatMul", "Gemm")


@dataclass(frozen=True)
class IntegerLayer:
    """A Conv/MatMul/Gemm computed by integer kernels: its quantized activation and weight."""

    node: str
    op_type: str
    activation: str  # the uint8 tensor (QuantizeLinear output) the kernel reads
    weight: np.ndarray  # integer weight, [out, ...] for Conv, [K, N] for MatMul/Gemm (after transB)
    weight_dtype: str
    group: int = 1
    strides: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()

    @property
    def exact_on_every_isa(self) -> bool:
        """U8U8 layers and depthwise convolutions: kernels that never add products in int16."""
        return self.weight_dtype == "uint8" or (self.op_type == "Conv" and
                                                is_depthwise(self.weight.shape, self.group))


def is_depthwise(weight_shape, group: int) -> bool:
    """A Conv with one input and one output channel per group (MLAS runs it with int32 products)."""
    return len(weight_shape) >= 3 and group > 1 and weight_shape[1] == 1 and weight_shape[0] == group


@dataclass(frozen=True)
class LayerBound:
    """The worst int16 pair sum a layer's weights allow with any uint8 activation."""

    node: str
    worst_pair: int
    can_saturate: bool


@dataclass(frozen=True)
class LayerSaturation:
    """Measured on data: output values of a layer with a product pair beyond int16."""

    node: str
    outputs_checked: int
    outputs_at_risk: int
    worst_pair: int

    @property
    def fraction(self) -> float:
        """Share of the layer's output values at risk."""
        return self.outputs_at_risk / max(self.outputs_checked, 1)


def pair_summed_weights(model) -> dict[str, int]:
    """Weight initializers of the Conv/MatMul/Gemm nodes that x86 U8S8 kernels compute with int16 pair
    sums (every one but depthwise convolutions), the ones that need 7-bit weights to be portable,
    each with its output-channel axis (for per-channel quantization)."""
    from onnx import helper

    initializers = {init.name: list(init.dims) for init in model.graph.initializer}
    names = {}
    for node in model.graph.node:
        if node.op_type not in CHECKED_OPS or len(node.input) < 2 or node.input[1] not in initializers:
            continue
        attributes = {attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute}
        if node.op_type == "Conv" and is_depthwise(initializers[node.input[1]], int(attributes.get("group", 1))):
            continue
        names[node.input[1]] = 0 if node.op_type == "Conv" or (node.op_type == "Gemm" and attributes.get("transB")) \
            else len(initializers[node.input[1]]) - 1
    return names


def integer_layers(model) -> list[IntegerLayer]:
    """Conv/MatMul/Gemm nodes of a QDQ model fed by a uint8 QuantizeLinear and an integer weight initializer."""
    from onnx import helper, numpy_helper

    producers = {output: node for node in model.graph.node for output in node.output}
    initializers = {init.name: init for init in model.graph.initializer}
    layers = []
    for node in model.graph.node:
        if node.op_type not in CHECKED_OPS or len(node.input) < 2:
            continue
        activation_dq, weight_dq = producers.get(node.input[0]), producers.get(node.input[1])
        if activation_dq is None or weight_dq is None or \
                {activation_dq.op_type, weight_dq.op_type} != {"DequantizeLinear"}:
            continue
        quantize = producers.get(activation_dq.input[0])
        if quantize is None or quantize.op_type != "QuantizeLinear" or weight_dq.input[0] not in initializers:
            continue
        if len(quantize.input) < 3 or quantize.input[2] not in initializers or \
                numpy_helper.to_array(initializers[quantize.input[2]]).dtype != np.uint8:
            continue
        weight = numpy_helper.to_array(initializers[weight_dq.input[0]])
        if weight.dtype not in (np.int8, np.uint8):
            continue
        attributes = {attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute}
        if node.op_type == "Gemm" and attributes.get("transB"):
            weight = weight.T
        layers.append(IntegerLayer(node=node.name, op_type=node.op_type, activation=quantize.output[0],
                                   weight=weight, weight_dtype=str(weight.dtype),
                                   group=int(attributes.get("group", 1)),
                                   strides=tuple(attributes.get("strides", ())),
                                   pads=tuple(attributes.get("pads", ())),
                                   dilations=tuple(attributes.get("dilations", ()))))
    return layers


def _columns(layer: IntegerLayer) -> np.ndarray:
    """The weight as [K, N]: one column of reduction values per output channel (per group for Conv)."""
    if layer.op_type == "Conv":
        return layer.weight.reshape(layer.weight.shape[0], -1).T.astype(np.int64)
    return layer.weight.reshape(layer.weight.shape[0], -1).astype(np.int64)


def _top2_sum(values: np.ndarray, axis: int) -> np.ndarray:
    """Sum of the two largest entries along `axis` (the single entry when there is only one)."""
    if values.shape[axis] == 1:
        return values.max(axis=axis)
    top = np.partition(values, values.shape[axis] - 2, axis=axis)
    return np.take(top, -1, axis=axis) + np.take(top, -2, axis=axis)


def weight_bound(layers: Iterable[IntegerLayer]) -> list[LayerBound]:
    """For each layer, the largest |pair sum| any uint8 activation can produce with its weights."""
    bounds = []
    for layer in layers:
        if layer.exact_on_every_isa:
            bounds.append(LayerBound(node=layer.node, worst_pair=0, can_saturate=False))
            continue
        columns = _columns(layer)
        positive = UINT8_MAX * _top2_sum(np.maximum(columns, 0), axis=0)
        negative = UINT8_MAX * _top2_sum(np.maximum(-columns, 0), axis=0)
        worst_positive, worst_negative = int(positive.max()), int(negative.max())
        bounds.append(LayerBound(node=layer.node, worst_pair=max(worst_positive, worst_negative),
                                 can_saturate=worst_positive > INT16_MAX or worst_negative > -INT16_MIN))
    return bounds


def _patches(layer: IntegerLayer, activation: np.ndarray) -> np.ndarray:
    """Conv input as [rows, groups, K]: each output position's receptive field, per group."""
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(activation.astype(np.float32))
    spatial = tensor.dim() - 2
    if spatial == 1:
        tensor = tensor.unsqueeze(2)
    if spatial not in (1, 2):
        raise ValueError(f"{layer.node}: {spatial}-D convolution is not checked")
    kernel = tuple(layer.weight.shape[2:]) if spatial == 2 else (1, layer.weight.shape[2])
    pads = layer.pads or (0,) * (2 * spatial)
    if spatial == 1:
        pads, strides, dilations = (0, pads[0], 0, pads[1]), (1, *(layer.strides or (1,))), \
            (1, *(layer.dilations or (1,)))
    else:
        strides, dilations = layer.strides or (1, 1), layer.dilations or (1, 1)
    # F.unfold pads symmetrically; ONNX pads are (begin..., end...): pad explicitly first.
    tensor = F.pad(tensor, (pads[1], pads[3], pads[0], pads[2]))
    patches = F.unfold(tensor, kernel, dilation=dilations, stride=strides)  # [B, C*kh*kw, L]
    batch, _, positions = patches.shape
    patches = patches.reshape(batch, layer.group, -1, positions).permute(0, 3, 1, 2)
    return patches.reshape(batch * positions, layer.group, -1).numpy().astype(np.int64)


def _layer_saturation(layer: IntegerLayer, activation: np.ndarray, chunk: int = 2048) -> LayerSaturation:
    if layer.op_type == "Conv":
        rows = _patches(layer, activation)
        columns = _columns(layer)  # [K, out]
        per_group = columns.shape[1] // layer.group
        weights = columns.reshape(columns.shape[0], layer.group, per_group)  # [K, groups, out/group]
    else:
        rows = activation.reshape(-1, 1, activation.shape[-1]).astype(np.int64)
        weights = _columns(layer)[:, None, :]
    at_risk, checked, worst = 0, 0, 0
    for start in range(0, len(rows), chunk):
        block = rows[start:start + chunk]  # [R, G, K]
        products = block[:, :, :, None] * weights.transpose(1, 0, 2)[None]  # [R, G, K, N/G]
        positive = _top2_sum(np.maximum(products, 0), axis=2)
        negative = _top2_sum(np.maximum(-products, 0), axis=2)
        risky = (positive > INT16_MAX) | (negative > -INT16_MIN)
        at_risk += int(risky.sum())
        checked += int(risky.size)
        worst = max(worst, int(positive.max(initial=0)), int(negative.max(initial=0)))
    return LayerSaturation(node=layer.node, outputs_checked=checked, outputs_at_risk=at_risk, worst_pair=worst)


def data_check(model_path: Path, batches: Iterable[dict[str, np.ndarray]], *,
               max_samples: int = 32, threads: int = 2) -> list[LayerSaturation]:
    """Run the model as fake-quant (exact arithmetic) on up to `max_samples` inputs, read every integer
    layer's uint8 activation and count the outputs whose product pairs could leave int16.

    With exact inputs, the first layer that could saturate is found exactly; when none can, a
    non-VNNI CPU computes the same integers as a VNNI one on this data."""
    import onnx

    from edgepack.evaluation.runners import ort_session

    model = onnx.load(str(model_path))
    layers = [layer for layer in integer_layers(model) if not layer.exact_on_every_isa]
    if not layers:
        return []
    existing = {output.name for output in model.graph.output}
    for name in sorted({layer.activation for layer in layers} - existing):
        model.graph.output.append(onnx.ValueInfoProto(name=name))
    session = ort_session(model.SerializeToString(), threads=threads, fake_quant=True)
    wanted = [layer.activation for layer in layers]
    collected: dict[str, list[np.ndarray]] = {name: [] for name in wanted}
    taken = 0
    for batch in batches:
        if taken >= max_samples:
            break
        count = min(len(next(iter(batch.values()))), max_samples - taken)
        feeds = {node.name: batch[node.name][:count] for node in session.get_inputs()}
        for name, value in zip(wanted, session.run(wanted, feeds)):
            collected[name].append(value)
        taken += count
    return [_layer_saturation(layer, np.concatenate(collected[layer.activation])) for layer in layers]


def summarize(bounds: list[LayerBound], measured: Optional[list[LayerSaturation]] = None) -> dict:
    """The manifest's `saturation` entry: the proof (or its absence) and, if measured, the data check."""
    risky = [bound.node for bound in bounds if bound.can_saturate]
    summary = {
        "integer_layers": len(bounds),
        "layers_that_can_saturate_without_vnni": risky,
        "worst_pair_sum": max((bound.worst_pair for bound in bounds), default=0),
        "int16_limit": INT16_MAX,
        "proof": ("no int16 pair sum can saturate for any uint8 input: exact on every x86 ISA" if not risky else
                  f"{len(risky)} of {len(bounds)} integer layers can exceed int16 pair sums on CPUs without VNNI"),
    }
    if measured is not None:
        summary["data_check"] = [{"node": item.node, "outputs_checked": item.outputs_checked,
                                  "outputs_at_risk": item.outputs_at_risk, "worst_pair_sum": item.worst_pair}
                                 for item in measured if item.outputs_at_risk]
        summary["data_check_outputs_at_risk"] = sum(item.outputs_at_risk for item in measured)
    return summary
