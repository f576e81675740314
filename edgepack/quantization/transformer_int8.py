"""INT8 for transformer encoders in ONNX: the attention mask problem and onnxruntime's fused path.

A Hugging Face encoder turns its attention mask into an additive bias of finfo(float32).min
(-3.4e38) on padded positions. Full static QDQ quantizes that tensor too: its scale becomes ~1e36
and every attention score rounds to the same value (an accuracy collapse). Two ways around it are
built here: static QDQ of MatMul/Gemm only with float outputs (edgepack.quantization.ort_qdq,
`float_outputs_of`), and a TorchScript export fused by onnxruntime's BERT optimizer (Attention,
SkipLayerNormalization, BiasGelu) then quantized dynamically (activation ranges per call, per-channel
weights), where the mask never meets a quantizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from edgepack.capture import quiet_python_output
from edgepack.errors import ExportError, describe
from edgepack.model.tensors import as_tensors

HUGE = 1e30  # no trained weight or activation is this large; a mask fill value is
DYNAMIC_OPS = ("MatMulInteger", "QAttention", "DynamicQuantizeMatMul", "QEmbedLayerNormalization")
UINT8_MAX, INT16_MAX = 255, 32767


def additive_mask_constant(path: Path) -> Optional[float]:
    """The largest-magnitude float constant of at least 1e30 in the ONNX graph (an attention mask's fill
    value), or None; None also when there is no such file (a target context built for a module alone)."""
    import onnx
    from onnx import numpy_helper

    if not path.is_file():
        return None
    model = onnx.load(str(path))
    tensors = [*model.graph.initializer,
               *(attribute.t for node in model.graph.node if node.op_type == "Constant"
                 for attribute in node.attribute if attribute.name == "value")]
    found = None
    for tensor in tensors:
        if tensor.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
            continue
        values = numpy_helper.to_array(tensor)
        if values.size and values.size <= 1 << 20:
            extreme = float(values.flat[int(np.abs(values).argmax())])
            if abs(extreme) >= HUGE and (found is None or abs(extreme) > abs(found)):
                found = extreme
    return found


def fused_float_onnx(module, inputs, example: dict[str, np.ndarray], path: Path, *, num_heads: int,
                     hidden_size: int) -> dict[str, int]:
    """TorchScript (legacy) export with a dynamic batch, then onnxruntime's BERT fusion; the fused op counts.

    The legacy exporter's graph is the one the fusion patterns match (the dynamo export fused no Attention)."""
    import torch
    from onnxruntime.transformers.optimizer import optimize_model

    names = [spec.name for spec in inputs]
    traced = path.with_suffix(".traced.onnx")
    try:
        with quiet_python_output("torch"), torch.no_grad():
            torch.onnx.export(module.eval(), as_tensors(example, names), str(traced), dynamo=False,
                              input_names=names, output_names=["output"], opset_version=17,
                              dynamic_axes={name: {0: "batch"} for name in [*names, "output"]})
        with quiet_python_output("onnxruntime"):
            optimized = optimize_model(str(traced), model_type="bert", num_heads=num_heads,
                                       hidden_size=hidden_size, opt_level=1)
            optimized.save_model_to_file(str(path))
    except Exception as exc:  # exporters and the optimizer raise many types
        raise ExportError(f"TorchScript export + onnxruntime BERT fusion failed: {describe(exc)}") from exc
    return {op: count for op, count in optimized.get_fused_operator_statistics().items() if count}


def dynamic_int8(fused_path: Path, out_path: Path) -> None:
    """Dynamic INT8: per-channel int8 weights in [-64, 64] (reduce_range, so no U8S8 int16 pair sum can
    saturate on any x86 CPU), uint8 activations quantized per call."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        with quiet_python_output("onnxruntime"):
            quantize_dynamic(str(fused_path), str(out_path), per_channel=True, reduce_range=True,
                             weight_type=QuantType.QInt8,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    except Exception as exc:
        raise ExportError(f"onnxruntime dynamic quantization failed: {describe(exc)}") from exc


def dynamic_saturation(path: Path) -> dict[str, Any]:
    """The `saturation` proof of a dynamically quantized model: for each int8 weight of an integer
    matmul, the largest pair sum a uint8 activation can make (255 x the two largest |w| of a column)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    initializers = {init.name: init for init in model.graph.initializer}
    layers, risky, worst = 0, [], 0
    for node in model.graph.node:
        if node.op_type not in ("MatMulInteger", "QAttention", "DynamicQuantizeMatMul"):
            continue
        weight = initializers.get(node.input[1])
        if weight is None or weight.data_type != onnx.TensorProto.INT8:
            continue
        values = np.abs(numpy_helper.to_array(weight).astype(np.int64)).reshape(-1, weight.dims[-1])
        top2 = np.sort(values, axis=0)[-2:].sum(axis=0) if len(values) > 1 else values[0]
        pair = int(UINT8_MAX * top2.max())
        layers += 1
        worst = max(worst, pair)
        if pair > INT16_MAX:
            risky.append(node.name)
    proof = ("no int16 pair sum can saturate for any uint8 input: exact on every x86 ISA" if not risky else
             f"{len(risky)} of {layers} integer layers can exceed int16 pair sums on CPUs without VNNI")
    return {"integer_layers": layers, "layers_that_can_saturate_without_vnni": risky, "worst_pair_sum": worst,
            "int16_limit": INT16_MAX, "proof": proof}
