"""The arm targets' table and boundary passes on tiny models built in code: float I/O around an int8
.tflite (flatbuffer.add_float_io), per-row INT8/INT4 tables for TFLite's EMBEDDING_LOOKUP
(arm_tflite.tables), per-row tables of the .pte's eager module (arm_xnnpack.tables). The .tflite files
are written with LiteRT's flatbuffer schema and run in its interpreter; no converter is involved."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgepack.quantization.embedding_tables import dequantize_int4, dequantize_int8, per_row_int4, per_row_int8
from edgepack.targets.arm_tflite.runner import dequantize, quantize
from tests.helpers import read_tflite, seeded, spread_table, tflite_op_names

STEP = 0.1  # scale of the int8 tensors below, zero point 0


@pytest.fixture
def fb():
    """LiteRT's flatbuffer schema; the test is skipped without the arm extra."""
    return pytest.importorskip("ai_edge_litert.schema_py_generated", reason="needs the arm extra (ai-edge-litert)")


def write_model(fb, path: Path, tensors: list[tuple], ops: list[tuple], inputs: list[int], outputs: list[int],
                constants: dict[int, np.ndarray]) -> Path:
    """A one-subgraph .tflite with a serving signature: `tensors` as (name, shape, type, scale or None), `ops`
    as (builtin operator, input indices, output indices), `constants` (tensor index -> data) in own buffers."""
    from edgepack.targets.arm_tflite.tables import write_tflite

    model = fb.ModelT()
    model.version, model.buffers, model.operatorCodes = 3, [fb.BufferT()], []
    graph = fb.SubGraphT()
    graph.tensors, graph.inputs, graph.outputs, graph.operators = [], inputs, outputs, []
    for index, (name, shape, dtype, scale) in enumerate(tensors):
        tensor = fb.TensorT()
        tensor.name, tensor.shape, tensor.type, tensor.buffer = name.encode(), list(shape), dtype, len(model.buffers)
        if scale is not None:
            tensor.quantization = fb.QuantizationParametersT()
            tensor.quantization.scale, tensor.quantization.zeroPoint = [scale], [0]
        buffer = fb.BufferT()
        if index in constants:
            buffer.data = np.frombuffer(np.ascontiguousarray(constants[index]).tobytes(), np.uint8)
        model.buffers.append(buffer)
        graph.tensors.append(tensor)
    codes: dict[int, int] = {}
    for builtin, op_inputs, op_outputs in ops:
        if builtin not in codes:
            code = fb.OperatorCodeT()
            code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, builtin, 1
            codes[builtin] = len(model.operatorCodes)
            model.operatorCodes.append(code)
        op = fb.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = codes[builtin], op_inputs, op_outputs
        graph.operators.append(op)
    signature = fb.SignatureDefT()
    signature.signatureKey, signature.subgraphIndex = b"serving_default", 0

    def entries(indices):
        found = []
        for index in indices:
            entry = fb.TensorMapT()
            entry.name, entry.tensorIndex = tensors[index][0].encode(), index
            found.append(entry)
        return found

    signature.inputs, signature.outputs = entries(inputs), entries(outputs)
    model.subgraphs, model.signatureDefs = [graph], [signature]
    write_tflite(model, path)
    return path


def run(path: Path, **feeds) -> dict[str, np.ndarray]:
    """The serving signature of the .tflite at `path` on `feeds` (LiteRT interpreter)."""
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=str(path)).get_signature_runner()(**feeds)


def signature_dtypes(path: Path) -> dict[str, str]:
    """numpy dtype names of the signature's inputs and outputs, by name."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner()
    details = runner.get_input_details() | runner.get_output_details()
    return {name: np.dtype(detail["dtype"]).name for name, detail in details.items()}


def relu_and_lookup(fb, path: Path, table: np.ndarray) -> Path:
    """Two branches: int8 x -> RELU -> int8 y, and int32 ids -> EMBEDDING_LOOKUP(float table) -> float rows."""
    tensors = [("x", [1, 4], fb.TensorType.INT8, STEP), ("y", [1, 4], fb.TensorType.INT8, STEP),
               ("ids", [3], fb.TensorType.INT32, None), ("table", list(table.shape), fb.TensorType.FLOAT32, None),
               ("rows", [3, table.shape[1]], fb.TensorType.FLOAT32, None)]
    ops = [(fb.BuiltinOperator.RELU, [0], [1]), (fb.BuiltinOperator.EMBEDDING_LOOKUP, [2, 3], [4])]
    return write_model(fb, path, tensors, ops, inputs=[0, 2], outputs=[1, 4], constants={3: table})


def lookups(fb, path: Path, tables: list[np.ndarray], readers: list[int], relu_reads: tuple[int, ...] = ()) -> Path:
    """One int32 ids input [3]; `readers[i]` EMBEDDING_LOOKUPs of `tables[i]`, each to its own output
    rows_i_j; a RELU output relu_i of each table in `relu_reads`."""
    tensors: list[tuple] = [("ids", [3], fb.TensorType.INT32, None)]
    ops, outputs, constants = [], [], {}
    for number, table in enumerate(tables):
        constants[len(tensors)] = table
        table_index = len(tensors)
        tensors.append((f"table{number}", list(table.shape), fb.TensorType.FLOAT32, None))
        for reader in range(readers[number]):
            outputs.append(len(tensors))
            ops.append((fb.BuiltinOperator.EMBEDDING_LOOKUP, [0, table_index], [len(tensors)]))
            tensors.append((f"rows_{number}_{reader}", [3, table.shape[1]], fb.TensorType.FLOAT32, None))
        if number in relu_reads:
            outputs.append(len(tensors))
            ops.append((fb.BuiltinOperator.RELU, [table_index], [len(tensors)]))
            tensors.append((f"relu_{number}", list(table.shape), fb.TensorType.FLOAT32, None))
    return write_model(fb, path, tensors, ops, inputs=[0], outputs=outputs, constants=constants)


IDS = np.array([0, 5, 7], np.int32)  # valid in every table below (the smallest has 8 rows)


# float I/O around an int8 model


def test_float_io_puts_quantize_and_dequantize_around_the_int8_tensors_only(fb, tmp_path):
    from edgepack.targets.arm_tflite.flatbuffer import add_float_io

    table = spread_table(20, 8)
    path = relu_and_lookup(fb, tmp_path / "m.tflite", table)
    assert signature_dtypes(path) == {"x": "int8", "y": "int8", "ids": "int32", "rows": "float32"}
    add_float_io(path)
    _, model = read_tflite(path)
    assert tflite_op_names(fb, model) == ["QUANTIZE", "RELU", "EMBEDDING_LOOKUP", "DEQUANTIZE"]
    # the signature keeps its names, now on float tensors; the int8 ones inside are renamed
    assert signature_dtypes(path) == {"x": "float32", "y": "float32", "ids": "int32", "rows": "float32"}
    names = {tensor.name.decode() for tensor in model.subgraphs[0].tensors}
    assert {"x", "x_int8", "y", "y_int8"} <= names
    x = np.array([[-1.0, 0.26, 0.5, 1.3]], np.float32)
    out = run(path, x=x, ids=IDS)
    np.testing.assert_allclose(out["y"], np.maximum(np.round(x / STEP), 0) * STEP, atol=1e-6)  # quantized, relu'd
    np.testing.assert_array_equal(out["rows"], table[IDS])


def test_float_io_twice_adds_nothing(fb, tmp_path):
    from edgepack.targets.arm_tflite.flatbuffer import add_float_io

    path = relu_and_lookup(fb, tmp_path / "m.tflite", spread_table(20, 8))
    add_float_io(path)
    once = tflite_op_names(fb, read_tflite(path)[1])
    add_float_io(path)
    assert tflite_op_names(fb, read_tflite(path)[1]) == once


# per-row tables for EMBEDDING_LOOKUP


def test_tables_become_per_row_int8_and_lookups_return_the_dequantized_rows(fb, tmp_path):
    from edgepack.targets.arm_tflite.tables import PER_ROW_VERSION, quantize_tflite_tables

    table = spread_table(20, 8)
    path = lookups(fb, tmp_path / "m.tflite", [table], readers=[1])
    size = path.stat().st_size
    (report,) = quantize_tflite_tables(path, bits=8, parameters={"bias": np.zeros(8), "item.weight": table})
    assert report["table"] == "item.weight", "named after the parameter holding the same values"
    assert (report["rows"], report["dim"], report["bits"], report["scales"], report["lookups"]) == (
        20, 8, 8, "per row", 1)
    assert 0 < report["max_abs_error"] <= report["error_bound"]
    _, model = read_tflite(path)
    graph = model.subgraphs[0]
    stored = graph.tensors[1]
    assert stored.type == fb.TensorType.INT8 and stored.quantization.quantizedDimension == 0
    assert len(stored.quantization.scale) == 20 and not any(stored.quantization.zeroPoint)
    assert model.operatorCodes[graph.operators[0].opcodeIndex].version == PER_ROW_VERSION
    assert len(model.buffers[stored.buffer].data) == table.size, "one byte a value"
    assert path.stat().st_size < size
    # bit-exact: TFLite's hybrid lookup dequantizes exactly the rows edgepack quantized
    expected = dequantize_int8(*per_row_int8(table))[IDS]
    np.testing.assert_array_equal(run(path, ids=IDS)["rows_0_0"], expected)


@pytest.mark.parametrize("bits", [8, 4])
def test_reported_table_bytes_cover_everything_the_file_stores_for_it(fb, tmp_path, bits):
    from edgepack.targets.arm_tflite.tables import quantize_tflite_tables

    path = lookups(fb, tmp_path / "m.tflite", [spread_table(64, 16)], readers=[1])
    (report,) = quantize_tflite_tables(path, bits=bits)
    model = read_tflite(path)[1]
    stored = model.subgraphs[0].tensors[1]
    quantization = stored.quantization
    stored_bytes = (len(model.buffers[stored.buffer].data) + 4 * len(quantization.scale)
                    + 8 * len(quantization.zeroPoint))  # the schema's scale:[float], zero_point:[long]
    assert report["bytes_after"] >= stored_bytes, (report["bytes_after"], stored_bytes)


def test_four_bit_tables_where_the_width_allows_else_int8(fb, tmp_path):
    from edgepack.targets.arm_tflite.tables import quantize_tflite_tables

    wide, odd = spread_table(20, 16), spread_table(24, 9, seed=1)
    path = lookups(fb, tmp_path / "m.tflite", [wide, odd], readers=[1, 1])
    reports = quantize_tflite_tables(path, bits=4)
    assert [(report["rows"], report["bits"]) for report in reports] == [(20, 4), (24, 8)]
    assert reports[0]["bytes_after"] * 3 < reports[0]["bytes_before"]  # int64 zero points cost 8 bytes a row
    graph = read_tflite(path)[1].subgraphs[0]
    assert [graph.tensors[index].type for index in (1, 3)] == [fb.TensorType.INT4, fb.TensorType.INT8]
    out = run(path, ids=IDS)
    np.testing.assert_array_equal(out["rows_0_0"], dequantize_int4(*per_row_int4(wide))[IDS])
    np.testing.assert_array_equal(out["rows_1_0"], dequantize_int8(*per_row_int8(odd))[IDS])


def test_narrow_tables_share_one_scale(fb, tmp_path):
    from edgepack.targets.arm_tflite.tables import quantize_tflite_tables

    narrow = spread_table(20, 4)
    path = lookups(fb, tmp_path / "m.tflite", [narrow], readers=[1])
    (report,) = quantize_tflite_tables(path)
    assert report["scales"] == "one per table"
    model = read_tflite(path)[1]
    graph = model.subgraphs[0]
    assert len(graph.tensors[1].quantization.scale) == 1
    assert model.operatorCodes[graph.operators[0].opcodeIndex].version == 1, "a per-tensor table needs no v4"
    expected = dequantize_int8(*per_row_int8(narrow, shared_scale=True))[IDS]
    np.testing.assert_array_equal(run(path, ids=IDS)["rows_0_0"], expected)


def test_a_shared_table_is_stored_once_and_tables_read_otherwise_stay_float(fb, tmp_path):
    from edgepack.targets.arm_tflite.tables import quantize_tflite_tables

    shared, small, also_relu = spread_table(20, 8), spread_table(8, 8, seed=1), spread_table(20, 8, seed=2)
    path = lookups(fb, tmp_path / "m.tflite", [shared, small, also_relu], readers=[2, 1, 1], relu_reads=(2,))
    (report,) = quantize_tflite_tables(path)
    assert report["table"] == "table0" and report["lookups"] == 2, "no parameters given: the tensor's name"
    graph = read_tflite(path)[1].subgraphs[0]
    types = {tensor.name.decode(): tensor.type for tensor in graph.tensors if tensor.name.startswith(b"table")}
    # 8 rows are not worth a table pass; a table a RELU also reads must stay float for it
    assert types == {"table0": fb.TensorType.INT8, "table1": fb.TensorType.FLOAT32, "table2": fb.TensorType.FLOAT32}
    out = run(path, ids=IDS)
    np.testing.assert_array_equal(out["rows_0_0"], out["rows_0_1"])
    np.testing.assert_array_equal(out["rows_2_0"], also_relu[IDS])


def test_a_model_without_tables_is_left_as_it_is(fb, tmp_path):
    from edgepack.targets.arm_tflite.tables import quantize_tflite_tables

    path = write_model(fb, tmp_path / "m.tflite", [("x", [1, 4], fb.TensorType.INT8, STEP),
                                                   ("y", [1, 4], fb.TensorType.INT8, STEP)],
                       [(fb.BuiltinOperator.RELU, [0], [1])], inputs=[0], outputs=[1], constants={})
    before = path.read_bytes()
    assert quantize_tflite_tables(path) == []
    assert path.read_bytes() == before


# the runner's int8 I/O conversions


def test_runner_quantize_rounds_to_the_nearest_step_and_saturates():
    values = np.array([-20.0, -0.26, 0.0, 0.04, 0.06, 3.1, 20.0], np.float32)
    codes = quantize(values, 0.1, 3, np.int8)
    assert codes.dtype == np.int8 and codes.tolist() == [-128, 0, 3, 3, 4, 34, 127]
    back = dequantize(codes, 0.1, 3)
    inside = np.abs(values) < 10
    assert back.dtype == np.float32 and np.abs(back - values)[inside].max() <= 0.05 + 1e-6
    assert back[0] == pytest.approx(-13.1) and back[-1] == pytest.approx(12.4)  # clipped to the int8 range


# per-row tables of the .pte's eager module


class Tables(nn.Module):
    """Tables of every kind the .pte pass meets: wide (padding row), odd width, too narrow, too few rows."""

    def __init__(self):
        super().__init__()
        self.wide = nn.Embedding(40, 16, padding_idx=0)
        self.odd = nn.Embedding(30, 9)
        self.narrow = nn.Embedding(30, 4)
        self.few = nn.Embedding(8, 16)

    def forward(self, ids):
        return torch.cat([self.wide(ids), self.odd(ids % 30), self.narrow(ids % 30), self.few(ids % 8)], 1)


@pytest.mark.parametrize("bits, wide_bits", [(8, 8), (4, 4)])
def test_pte_tables_are_quantized_per_row_in_a_copy(bits, wide_bits):
    pytest.importorskip("torchao", reason="needs the arm extra (torchao)")
    from edgepack.targets.arm_xnnpack.tables import quantize_embeddings

    model = seeded(Tables)
    original = {name: value.clone() for name, value in model.state_dict().items()}
    quantized, reports = quantize_embeddings(model, bits=bits)
    assert [(r["table"], r["bits"], r["scales"]) for r in reports] == [
        ("wide.weight", wide_bits, "per row"), ("odd.weight", 8, "per row")], "odd widths stay INT8"
    # the model itself is untouched; the copy's padding_idx is cleared so the kernel fusion matches
    assert model.wide.padding_idx == 0 and all(torch.equal(value, original[name])
                                               for name, value in model.state_dict().items())
    assert quantized.wide.padding_idx is None and quantized is not model
    assert type(quantized.narrow.weight) is nn.Parameter and type(quantized.few.weight) is nn.Parameter
    ids = torch.arange(40)
    with torch.no_grad():
        difference = (quantized(ids) - model(ids)).abs()
    bounds = {report["table"]: report["error_bound"] for report in reports}
    assert float(difference[:, :16].max()) <= bounds["wide.weight"] * 1.001
    assert float(difference[:, 16:25].max()) <= bounds["odd.weight"] * 1.001
    assert float(difference[:, 25:].max()) == 0.0, "narrow and small tables stay float"
    assert float(difference[:, :16].max()) > 0


def test_a_module_without_tables_is_returned_as_it_is():
    pytest.importorskip("torchao", reason="needs the arm extra (torchao)")
    from edgepack.targets.arm_xnnpack.tables import quantize_embeddings

    model = seeded(nn.Linear, 4, 2)
    assert quantize_embeddings(model) == (model, [])
