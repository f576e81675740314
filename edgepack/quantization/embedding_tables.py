"""Embedding tables in ONNX stored per-row quantized: INT8 (a scale per row) or 4-bit blocks.

onnxruntime's static quantizer would store a table per-tensor uint8, one scale for every row;
rows of recommender tables differ by orders of magnitude, so a scale per row keeps rare ids
precise. The table's Gather is rewritten before static quantization:

    INT8:  Gather(int8 table, ids) -> Cast(float) -> Mul(Unsqueeze(Gather(row scales, ids), -1))
    4-bit: com.microsoft GatherBlockQuantized(packed uint8 table, ids, scales) with one block per
           row, or for a row width that is not a power of two (384, 768) blocks of the largest
           power of two dividing it (symmetric, zero point 8), an onnxruntime contrib op, then
           Cast(float).

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


def four_bit_width(dim: int) -> bool:
    """Rows that 4-bit storage can take: even (two values a byte) and at least 16 wide. x86's
    GatherBlockQuantized also wants power-of-two blocks (`int4_block`); TFLite and the .pte take any such width."""
    return dim % 2 == 0 and dim >= 16


def int4_block(dim: int) -> int:
    """Block width of x86's 4-bit tables, 0 when there is none: the whole row for a power of two, else the
    largest power of two dividing the width if at least 16 (GatherBlockQuantized takes power-of-two blocks
    only; 384 gives 128)."""
    if not four_bit_width(dim):
        return 0
    block = dim & -dim
    return dim if block == dim else (block if block >= 16 else 0)


def row_scales(bits: int, dim: int) -> bool:
    """Whether a table gets a scale per row: always at 4 bits; at 8 bits from MIN_PER_ROW_DIM wide
    (narrower, a scale per row would cost more than it saves, so the table shares one)."""
    return bits == 4 or dim >= MIN_PER_ROW_DIM


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
    packed, scales = per_block_int4(table, table.shape[1])
    return packed, scales[:, 0]


def per_block_int4(table: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric 4-bit, a scale per `block` values of a row: packed [rows, dim / 2], scales [rows, dim / block]."""
    rows, dim = table.shape
    blocks = table.reshape(rows, dim // block, block)
    peak = np.abs(blocks).max(axis=2)
    scales = _half_up(np.where(peak > 0, peak, _typical(peak)) / 7.0)
    codes = (np.clip(np.rint(blocks / scales.astype(np.float32)[:, :, None]), -7, 7) + 8).astype(np.uint8)
    codes = codes.reshape(rows, dim)
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)
    return packed, scales


def dequantize_int8(quantized: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The float table an INT8 per-row table stands for."""
    return quantized.astype(np.float32) * scales.astype(np.float32)[:, None]


def dequantize_int4(packed: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The float table a packed 4-bit table stands for: scales [rows] per row, or [rows, blocks] per block."""
    codes = np.empty((packed.shape[0], packed.shape[1] * 2), dtype=np.int16)
    codes[:, 0::2], codes[:, 1::2] = packed & 0x0F, packed >> 4
    steps = scales.astype(np.float32).reshape(len(scales), -1)
    return (codes - 8).astype(np.float32) * np.repeat(steps, codes.shape[1] // steps.shape[1], axis=1)


def _int8_tables(graph, table_array: np.ndarray, name: str) -> tuple[np.ndarray, int, bool]:
    """Add the INT8 table (and its row scales, or one shared scale) as initializers once; return the
    dequantized table, the bytes stored and whether the scale is shared."""
    shared = not row_scales(8, table_array.shape[1])
    quantized, scales = per_row_int8(table_array, shared_scale=shared)
    graph.initializer.append(numpy_helper.from_array(quantized, f"{name}_int8"))
    if shared:
        graph.initializer.append(numpy_helper.from_array(scales[:1].astype(np.float32).reshape(()), f"{name}_scale"))
        return dequantize_int8(quantized, scales), quantized.nbytes + 4, True
    graph.initializer.extend([numpy_helper.from_array(scales, f"{name}_row_scale"),
                              numpy_helper.from_array(np.array([-1], dtype=np.int64), f"{name}_last_axis")])
    return dequantize_int8(quantized, scales), quantized.nbytes + scales.nbytes, False


def _int8_lookup(node, name: str, use: str, shared: bool) -> list[onnx.NodeProto]:
    """Nodes that replace one Gather of the table: int8 rows -> float -> times the row's scale."""
    ids, output, tag = node.input[1], node.output[0], f"{name}{use}"
    nodes = [helper.make_node("Gather", [f"{name}_int8", ids], [f"{tag}_rows_int8"], name=f"{tag}_gather_int8", axis=0),
             helper.make_node("Cast", [f"{tag}_rows_int8"], [f"{tag}_rows_float"], name=f"{tag}_cast",
                              to=TensorProto.FLOAT)]
    if shared:
        return nodes + [helper.make_node("Mul", [f"{tag}_rows_float", f"{name}_scale"], [output],
                                         name=f"{tag}_dequantize")]
    # The whole dequantization chain stays float: a QDQ pair on the gathered scales would requantize
    # them per-tensor (scales span orders of magnitude) and undo the per-row precision.
    return nodes + [
        helper.make_node("Gather", [f"{name}_row_scale", ids], [f"{tag}_scales_half"], name=f"{tag}_gather_row_scale",
                         axis=0),
        helper.make_node("Cast", [f"{tag}_scales_half"], [f"{tag}_scales"], name=f"{tag}_cast_scales",
                         to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", [f"{tag}_scales", f"{name}_last_axis"], [f"{tag}_scales_column"],
                         name=f"{tag}_unsqueeze"),
        helper.make_node("Mul", [f"{tag}_rows_float", f"{tag}_scales_column"], [output], name=f"{tag}_dequantize"),
    ]


def _int4_tables(model, table_array: np.ndarray, name: str, block: int) -> tuple[np.ndarray, int, np.ndarray]:
    """Add the packed 4-bit table and its block scales as initializers once; (dequantized, bytes, scales)."""
    packed, scales = per_block_int4(table_array, block)
    model.graph.initializer.extend([numpy_helper.from_array(packed, f"{name}_int4"),
                                    numpy_helper.from_array(scales, f"{name}_row_scale")])
    if not any(entry.domain == "com.microsoft" for entry in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return dequantize_int4(packed, scales), packed.nbytes + scales.nbytes, scales


def _int4_lookup(node, name: str, use: str, block: int) -> list[onnx.NodeProto]:
    """GatherBlockQuantized (blocks of `block` values along a row) then Cast to float, replacing one Gather."""
    tag = f"{name}{use}"
    gather = helper.make_node("GatherBlockQuantized", [f"{name}_int4", node.input[1], f"{name}_row_scale"],
                              [f"{tag}_rows_half"], name=f"{tag}_gather_int4", domain="com.microsoft",
                              bits=4, block_size=block, gather_axis=0, quantize_axis=1)
    return [gather, helper.make_node("Cast", [f"{tag}_rows_half"], [node.output[0]], name=f"{tag}_cast",
                                     to=TensorProto.FLOAT)]


def _replace(graph, node, new_nodes) -> None:
    position = list(graph.node).index(node)
    graph.node.remove(node)
    for offset, new in enumerate(new_nodes):
        graph.node.insert(position + offset, new)


def quantize_tables(path: Path, *, bits: int = 8) -> tuple[list[dict], list[str]]:
    """Rewrite every embedding table of the ONNX file at `path` in place.

    A table read by several Gathers (an item table shared by the candidate and the history) is
    stored once; every Gather gets its own lookup nodes. Returns a report per table (rows, dim,
    bytes before and after, measured max reconstruction error and its bound, half a quantization
    step) and the names of nodes that must stay float in the later static quantization (the
    row-scale lookups)."""
    model = onnx.load(str(path))
    readers: dict[str, int] = {}
    for graph_node in model.graph.node:
        for name in graph_node.input:
            readers[name] = readers.get(name, 0) + 1
    by_table: dict[str, tuple[onnx.TensorProto, list[onnx.NodeProto]]] = {}
    for node, table in _tables(model):
        by_table.setdefault(table.name, (table, []))[1].append(node)
    reports, keep_float = [], []
    for table, nodes in by_table.values():
        table_array = numpy_helper.to_array(table)
        dim = table_array.shape[1]
        block = int4_block(dim) if bits == 4 else 0
        use_int4 = block > 0
        name = table.name.replace("/", "_").replace(".", "_")
        steps = None
        if use_int4:
            restored, stored_bytes, steps = _int4_tables(model, table_array, name, block)
        else:
            restored, stored_bytes, shared = _int8_tables(model.graph, table_array, name)
        for index, node in enumerate(nodes):
            use = "" if len(nodes) == 1 else f"_use{index}"
            new_nodes = _int4_lookup(node, name, use, block) if use_int4 else _int8_lookup(node, name, use, shared)
            _replace(model.graph, node, new_nodes)
            if not use_int4:
                keep_float += [new.name for new in new_nodes]
        if readers.get(table.name, 0) <= len(nodes):  # read by nothing but the rewritten Gathers
            model.graph.initializer.remove(table)
        report = table_report(table.name, table_array, restored, bits=4 if use_int4 else 8, stored_bytes=stored_bytes,
                              steps=steps)
        if use_int4 and block < dim:
            report["scales"] = f"per block of {block} values"
        reports.append(report | {"lookups": len(nodes)})
    onnx.save(model, str(path))
    return reports, keep_float


def table_report(name: str, table: np.ndarray, restored: np.ndarray, *, bits: int, stored_bytes: int,
                 steps: np.ndarray | None = None) -> dict:
    """What the manifest says of one quantized table: shape, bits, scale layout, bytes before and
    after, and the measured max reconstruction error next to its bound (half the largest step).
    INT8 tables narrower than MIN_PER_ROW_DIM share one scale; the others have one per row.
    `steps` are the scales actually used when another library chose them (else ours are recomputed)."""
    per_row = row_scales(bits, table.shape[1])
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
