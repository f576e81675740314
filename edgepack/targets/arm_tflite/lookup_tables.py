"""Embedding tables the LiteRT converter quantized on its own, made readable again.

Converting a dynamic-range model (a transformer's linear layers, edgepack.targets.arm_tflite.target),
the converter also stores the token-embedding table of an EMBEDDING_LOOKUP as per-tensor INT8 with
a non-zero zero point, which LiteRT's hybrid EMBEDDING_LOOKUP kernel refuses when the interpreter
allocates tensors ("qparams->zero_point->data[0] == 0 was not true"). This pass restores such a
table to the float32 values it encodes, so `quantize_tflite_tables` stores it per-row INT8 with
zero points 0, the form the kernel reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepack.targets.arm_tflite.tables import write_tflite


def dequantize_asymmetric_lookup_tables(path: Path) -> list[str]:
    """Rewrite INT8 EMBEDDING_LOOKUP tables with a non-zero zero point as float32; return their names."""
    from ai_edge_litert import schema_py_generated as fb

    model = fb.ModelT.InitFromPackedBuf(path.read_bytes(), 0)
    graph = model.subgraphs[0]
    restored = []
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        if max(code.builtinCode, code.deprecatedBuiltinCode) != fb.BuiltinOperator.EMBEDDING_LOOKUP:
            continue
        table = graph.tensors[op.inputs[1]]
        quantization = table.quantization
        if table.type != fb.TensorType.INT8 or quantization is None or quantization.zeroPoint is None or \
                not np.any(np.asarray(quantization.zeroPoint)) or len(quantization.scale) != 1:
            continue
        buffer = model.buffers[table.buffer]
        codes = np.frombuffer(np.asarray(buffer.data, dtype=np.uint8).tobytes(), dtype=np.int8)
        values = (codes.astype(np.float32) - float(quantization.zeroPoint[0])) * np.float32(quantization.scale[0])
        buffer.data = np.frombuffer(values.astype(np.float32).tobytes(), dtype=np.uint8)
        table.type, table.quantization = fb.TensorType.FLOAT32, None
        restored.append((table.name or b"").decode(errors="replace"))
    if restored:
        write_tflite(model, path)
    return restored
