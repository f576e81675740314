"""Embedding tables in ONNX stored per-row quantized: INT8 (a scale per row) or 4-bit blocks.

onnxruntime's static quantizer would store a table per-tensor uint8, one scale for every row;
rows of recommender tables differ by orders of magnitude, so a scale per row keeps rare ids
precise. The table's Gather is rewritten before static quantization:

    INT8:  Gather(int8 table, ids) -> Cast(float) -> Mul(Unsqueeze(Gather(row scales, ids), -1))
    4-bit: com.microsoft GatherBlockQuantized(packed uint8 table, ids, scales) with one block per
           row (symmetric, zero point 8), an onnxruntime contrib op, then Cast(float).

Row scales are float16 (rounded up), as in FBGEMM's row-wise tables.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MIN_ROWS = 16
# Below this width a scale per row costs more than it saves (a [rows, 1] bias table would grow):
# such tables share one scale.
MIN_PER_ROW_DIM = 8


def _tables(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, onnx.TensorProto]]:
    """Gather nodes that read rows (axis 0) of a float32 2-D initializer."""
    initializers = {init.name: init for init in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type != "Gather" or node.input[0] not in initializers:
            continue
        axis = next((attr.i for attr in node.attribute if attr.name == "axis"), 0)
        table = initializers[node.input[0]]
        if axis == 0 and table.data_type == TensorProto.FLOAT and len(table.dims) == 2 and table.dims[0] >= MIN_ROWS:
            found.append((node, table))
    return found


def _typical(peaks: np.ndarray) -> float:
    """Stand-in peak for all-zero rows (padding): the smallest real one, so the row-scale table keeps
    the range of the real scales instead of jumping to an arbitrary 1.0."""
    positive = peaks[peaks > 0]
    return float(positive.min()) if positive.size else 1.0


def _half_up(scales: np.ndarray) -> np.ndarray:
    """Scales stored as float16 (as FBGEMM's row-wise tables do: 2 bytes a row instead of 4), rounded
    up so that no value of a row leaves the quantized range."""
    half = scales.astype(np.float16)
    low = half.astype(np.float32) < scales
    half[low] = np.nextafter(half[low], np.float16(np.inf))
    return half


def per_row_int8(table: np.ndarray, *, shared_scale: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric INT8 per row: (int8 table, float32 scale per row); an all-zero row gets scale 1.

    With `shared_scale` every row gets the table-wide scale (returned once per row)."""
    peak = np.abs(table).max(axis=1)
    if shared_scale:
        peak = np.full_like(peak, np.abs(table).max())
    scales = _half_up(np.where(peak > 0, peak, _typical(peak)) / 127.0)
    quantized = np.clip(np.rint(table / scales.astype(np.float32)[:, None]), -127, 127).astype(np.int8)
    return quantized, scales


def per_row_int4(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric 4-bit per row, values 0..15 around zero point 8, two per byte (low nibble first)."""
    peak = np.abs(table).max(axis=1)
    scales = _half_up(np.where(peak > 0, peak, _typical(peak)) / 7.0)
    codes = (np.clip(np.rint(table / scales.astype(np.float32)[:, None]), -7, 7) + 8).astype(np.uint8)
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)
    return packed, scales


def dequantize_int8(quantized: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The float table an INT8 per-row table stands for."""
    return quantized.astype(np.float32) * scales.astype(np.float32)[:, None]


def dequantize_int4(packed: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The float table a packed 4-bit per-row table stands for."""
    codes = np.empty((packed.shape[0], packed.shape[1] * 2), dtype=np.int16)
    codes[:, 0::2], codes[:, 1::2] = packed & 0x0F, packed >> 4
    return (codes - 8).astype(np.float32) * scales.astype(np.float32)[:, None]


def _rewrite_int8(model, node, table_array, name):
    shared = table_array.shape[1] < MIN_PER_ROW_DIM
    quantized, scales = per_row_int8(table_array, shared_scale=shared)
    graph = model.graph
    ids, output = node.input[1], node.output[0]
    cast = [helper.make_node("Gather", [f"{name}_int8", ids], [f"{name}_rows_int8"], name=f"{name}_gather_int8",
                             axis=0),
            helper.make_node("Cast", [f"{name}_rows_int8"], [f"{name}_rows_float"], name=f"{name}_cast",
                             to=TensorProto.FLOAT)]
    graph.initializer.append(numpy_helper.from_array(quantized, f"{name}_int8"))
    if shared:
        graph.initializer.append(numpy_helper.from_array(scales[:1].astype(np.float32).reshape(()), f"{name}_scale"))
        new_nodes = cast + [helper.make_node("Mul", [f"{name}_rows_float", f"{name}_scale"], [output],
                                             name=f"{name}_dequantize")]
        return _replace(graph, node, new_nodes, [n.name for n in new_nodes]), dequantize_int8(quantized, scales), \
            quantized.nbytes + 4
    graph.initializer.extend([numpy_helper.from_array(scales, f"{name}_row_scale"),
                              numpy_helper.from_array(np.array([-1], dtype=np.int64), f"{name}_last_axis")])
    scale_gather = f"{name}_gather_row_scale"
    new_nodes = cast + [
        helper.make_node("Gather", [f"{name}_row_scale", ids], [f"{name}_scales_half"], name=scale_gather, axis=0),
        helper.make_node("Cast", [f"{name}_scales_half"], [f"{name}_scales"], name=f"{name}_cast_scales",
                         to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", [f"{name}_scales", f"{name}_last_axis"], [f"{name}_scales_column"],
                         name=f"{name}_unsqueeze"),
        helper.make_node("Mul", [f"{name}_rows_float", f"{name}_scales_column"], [output], name=f"{name}_dequantize"),
    ]
    # The whole dequantization chain stays float: a QDQ pair on the gathered scales would requantize
    # them per-tensor (scales span orders of magnitude) and undo the per-row precision.
    return _replace(graph, node, new_nodes, [n.name for n in new_nodes]), dequantize_int8(quantized, scales), \
        quantized.nbytes + scales.nbytes


def _rewrite_int4(model, node, table_array, name):
    dim = table_array.shape[1]
    packed, scales = per_row_int4(table_array)
    graph = model.graph
    graph.initializer.extend([numpy_helper.from_array(packed, f"{name}_int4"),
                              numpy_helper.from_array(scales[:, None], f"{name}_row_scale")])
    gather = helper.make_node("GatherBlockQuantized", [f"{name}_int4", node.input[1], f"{name}_row_scale"],
                              [f"{name}_rows_half"], name=f"{name}_gather_int4", domain="com.microsoft",
                              bits=4, block_size=dim, gather_axis=0, quantize_axis=1)
    cast = helper.make_node("Cast", [f"{name}_rows_half"], [node.output[0]], name=f"{name}_cast", to=TensorProto.FLOAT)
    if not any(entry.domain == "com.microsoft" for entry in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return _replace(graph, node, [gather, cast], []), dequantize_int4(packed, scales), packed.nbytes + scales.nbytes


def _replace(graph, node, new_nodes, keep_float) -> list[str]:
    position = list(graph.node).index(node)
    graph.node.remove(node)
    for offset, new in enumerate(new_nodes):
        graph.node.insert(position + offset, new)
    return keep_float


def quantize_tables(path: Path, *, bits: int = 8) -> tuple[list[dict], list[str]]:
    """Rewrite every embedding table of the ONNX file at `path` in place.

    Returns a report per table (rows, dim, bytes before and after, measured max reconstruction
    error and its bound, half a quantization step) and the names of nodes that must stay float
    in the later static quantization (the row-scale lookups)."""
    model = onnx.load(str(path))
    reports, keep_float = [], []
    users: dict[str, int] = {}
    for graph_node in model.graph.node:
        for name in graph_node.input:
            users[name] = users.get(name, 0) + 1
    for node, table in _tables(model):
        table_array = numpy_helper.to_array(table)
        dim = table_array.shape[1]
        use_int4 = bits == 4 and dim % 2 == 0 and dim >= 16 and (dim & (dim - 1)) == 0
        rewrite = _rewrite_int4 if use_int4 else _rewrite_int8
        name = table.name.replace("/", "_").replace(".", "_")
        kept, restored, stored_bytes = rewrite(model, node, table_array, name)
        keep_float += kept
        if users.get(table.name, 0) <= 1:
            model.graph.initializer.remove(table)
        reports.append(table_report(table.name, table_array, restored, bits=4 if use_int4 else 8,
                                    stored_bytes=stored_bytes))
    onnx.save(model, str(path))
    return reports, keep_float


def table_report(name: str, table: np.ndarray, restored: np.ndarray, *, bits: int, stored_bytes: int,
                 steps: np.ndarray | None = None) -> dict:
    """What the manifest says of one quantized table: shape, bits, scale layout, bytes before and
    after, and the measured max reconstruction error next to its bound (half the largest step).
    INT8 tables narrower than MIN_PER_ROW_DIM share one scale; the others have one per row.
    `steps` are the scales actually used when another library chose them (else ours are recomputed)."""
    per_row = bits == 4 or table.shape[1] >= MIN_PER_ROW_DIM
    if steps is None:
        peaks = np.abs(table).max(axis=1)
        if not per_row:
            peaks = np.full_like(peaks, peaks.max())
        steps = _half_up(np.where(peaks > 0, peaks, _typical(peaks)) / (7.0 if bits == 4 else 127.0))
    steps = np.asarray(steps, dtype=np.float32)
    return {"table": name, "rows": int(table.shape[0]), "dim": int(table.shape[1]), "bits": bits,
            "bytes_before": int(table.nbytes), "scales": "per row" if per_row else "one per table",
            "bytes_after": int(stored_bytes), "max_abs_error": float(np.abs(restored - table).max()),
            "error_bound": float(steps.max() / 2)}
