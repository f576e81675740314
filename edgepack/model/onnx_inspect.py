"""Facts about an ONNX file that an app developer or a test needs: I/O, quantization, op counts."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Mapping

import onnx
from onnx import numpy_helper

ELEMENT_TYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
                 onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "uint8",
                 onnx.TensorProto.INT64: "int64", onnx.TensorProto.INT32: "int32"}


def _value_info(value) -> dict:
    tensor = value.type.tensor_type
    shape = [dim.dim_param or dim.dim_value for dim in tensor.shape.dim]
    return {"name": value.name, "dtype": ELEMENT_TYPES.get(tensor.elem_type, str(tensor.elem_type)), "shape": shape}


def describe_onnx(path: Path) -> dict:
    """Inputs, outputs (with the quantization parameters applied to them), op counts, initializer types."""
    model = onnx.load(str(path))
    graph = model.graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    quantize_of = {node.input[0]: node for node in graph.node if node.op_type == "QuantizeLinear"}
    dequantize_to = {node.output[0]: node for node in graph.node if node.op_type == "DequantizeLinear"}
    producers = {out: node for node in graph.node for out in node.output}

    def qparams(node):
        scale = constants.get(node.input[1])
        zero_point = constants.get(node.input[2]) if len(node.input) > 2 else None
        if scale is None or scale.size != 1:
            return None
        return {"scale": float(scale.reshape(-1)[0]),
                "zero_point": int(zero_point.reshape(-1)[0]) if zero_point is not None else 0,
                "dtype": str(zero_point.dtype) if zero_point is not None else "uint8"}

    inputs = []
    for value in graph.input:
        info = _value_info(value)
        if value.name in quantize_of:
            info["quantization"] = qparams(quantize_of[value.name])
        inputs.append(info)
    outputs = []
    for value in graph.output:
        info = _value_info(value)
        producer = producers.get(value.name)
        if producer is not None and producer.op_type == "DequantizeLinear" and value.name in dequantize_to:
            info["quantization"] = qparams(producer)
        outputs.append(info)
    initializer_bytes: Counter[str] = Counter()
    for name, array in constants.items():
        initializer_bytes[str(array.dtype)] += array.nbytes
    return {
        "opset": max((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), default=0),
        "inputs": inputs,
        "outputs": outputs,
        "op_counts": dict(sorted(Counter(node.op_type for node in graph.node).items())),
        "initializer_bytes_by_dtype": dict(sorted(initializer_bytes.items())),
    }


def onnx_summary(structure: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Report rows of an ONNX artifact from what `describe_onnx` recorded: opset, Q/DQ nodes, weights by dtype."""
    ops = structure.get("op_counts", {})
    weights = ", ".join(f"{dtype} {size / 1e3:.1f} kB"
                        for dtype, size in structure.get("initializer_bytes_by_dtype", {}).items())
    return [("opset", str(structure.get("opset", "—"))),
            ("QuantizeLinear / DequantizeLinear", f"{ops.get('QuantizeLinear', 0)} / {ops.get('DequantizeLinear', 0)}"),
            ("weights by dtype", weights or "—")]
