"""Embedding tables of a .tflite stored per-row INT8 or 4-bit, read by TFLite's hybrid EMBEDDING_LOOKUP.

litert-torch's PT2E quantizer does not annotate embeddings, so the converted model keeps every
table float32 and looks rows up with EMBEDDING_LOOKUP (float table, int32 ids, float output).
The TFLite kernel also takes an INT8 or INT4 table with a scale per row (per-axis quantization on
dimension 0, zero points 0) and dequantizes only the rows it gathers; the op is then version 4
(version 1 with a single per-tensor scale). This pass rewrites the flatbuffer in place: same
values as the x86 artifact's tables (`per_row_int8` / `per_row_int4`, scales stored float32 as
TFLite requires), everything downstream unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from edgepack.quantization.embedding_tables import (
    MIN_ROWS,
    dequantize_int4,
    dequantize_int8,
    four_bit_width,
    per_row_int4,
    per_row_int8,
    row_scales,
    table_report,
)

PER_ROW_VERSION = 4  # EMBEDDING_LOOKUP with INT4 or per-channel tables (TFLite's op_version.cc)


ZERO_POINT_BYTES = 8  # the schema stores zero_point as [long]: one int64 per scale, all zero here


def _lookups(model, fb):
    """(operator code entries, table tensor, lookups) per float32 constant table that is read by
    EMBEDDING_LOOKUP ops only (an item table shared by two lookups is one table) and owns its buffer."""
    graph = model.subgraphs[0]
    readers: dict[int, list] = {}
    buffer_users: dict[int, int] = {}
    for op in graph.operators:
        for position, index in enumerate(op.inputs):
            readers.setdefault(int(index), []).append((op, position))
    for tensor in graph.tensors:
        buffer_users[tensor.buffer] = buffer_users.get(tensor.buffer, 0) + 1

    def is_lookup(op) -> bool:
        code = model.operatorCodes[op.opcodeIndex]
        return max(code.builtinCode, code.deprecatedBuiltinCode) == fb.BuiltinOperator.EMBEDDING_LOOKUP

    found = []
    for index, uses in readers.items():
        if index < 0 or not all(is_lookup(op) and position == 1 for op, position in uses):
            continue
        table = graph.tensors[index]
        data = model.buffers[table.buffer].data
        if (table.type == fb.TensorType.FLOAT32 and data is not None and len(table.shape) == 2
                and table.shape[0] >= MIN_ROWS and buffer_users[table.buffer] == 1):
            found.append(({op.opcodeIndex for op, _ in uses}, table, len(uses)))
    return found


def _name(table: np.ndarray, parameters: Mapping[str, np.ndarray], fallback: str) -> str:
    """The model parameter the table was converted from (same shape, same values), else the tensor's name."""
    for name, value in parameters.items():
        if value.shape == table.shape and np.array_equal(value, table):
            return name
    return fallback


def quantize_tflite_tables(path: Path, *, bits: int = 8,
                           parameters: Optional[Mapping[str, np.ndarray]] = None) -> list[dict]:
    """Rewrite every float embedding table of the .tflite at `path`; return a report per table.

    `bits` 4 stores tables of even width >= 16 as INT4 (two values a byte, low nibble first), the
    others INT8. `parameters` (name -> array, e.g. the model's state dict) name the tables in the report.
    """
    from ai_edge_litert import schema_py_generated as fb

    model = fb.ModelT.InitFromPackedBuf(path.read_bytes(), 0)
    reports = []
    for codes, tensor, lookups in _lookups(model, fb):
        buffer = model.buffers[tensor.buffer]
        rows, dim = (int(d) for d in tensor.shape)
        table = np.frombuffer(np.asarray(buffer.data, dtype=np.uint8).tobytes(), dtype=np.float32).reshape(rows, dim)
        quantization = fb.QuantizationParametersT()
        if bits == 4 and four_bit_width(dim):
            packed, scales = per_row_int4(table)
            restored = dequantize_int4(packed, scales)
            data = packed ^ np.uint8(0x88)  # our codes are offset by 8; TFLite's INT4 is two's complement
            tensor.type, used_bits = fb.TensorType.INT4, 4
        else:
            data, scales = per_row_int8(table, shared_scale=not row_scales(8, dim))
            restored = dequantize_int8(data, scales)
            tensor.type, used_bits = fb.TensorType.INT8, 8
        per_row = row_scales(used_bits, dim)
        stored_scales = scales.astype(np.float32) if per_row else scales[:1].astype(np.float32)
        quantization.scale = stored_scales.tolist()
        quantization.zeroPoint = [0] * len(stored_scales)
        quantization.quantizedDimension = 0
        tensor.quantization = quantization
        buffer.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), dtype=np.uint8)
        if per_row:
            for code in codes:
                model.operatorCodes[code].version = max(model.operatorCodes[code].version, PER_ROW_VERSION)
        fallback = (tensor.name or b"").decode(errors="replace")
        stored_bytes = data.nbytes + stored_scales.nbytes + ZERO_POINT_BYTES * len(stored_scales)
        reports.append(table_report(_name(table, parameters or {}, fallback), table, restored, bits=used_bits,
                                    stored_bytes=stored_bytes) | {"lookups": lookups})
    if reports:
        write_tflite(model, path)
    return reports


def write_tflite(model, path: Path) -> None:
    """Serialise a flatbuffer object model (schema_py_generated.ModelT) back to a .tflite file."""
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
