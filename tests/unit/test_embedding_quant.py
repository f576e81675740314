"""Per-row embedding table quantization: round-trip bounds and the rewritten ONNX graph in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from edgepack.evaluation.runners import OrtRunner
from edgepack.model.onnx_export import export_float_onnx
from edgepack.quantization.embedding_tables import (
    dequantize_int4,
    dequantize_int8,
    int4_block,
    per_block_int4,
    per_row_int4,
    per_row_int8,
    quantize_tables,
)
from edgepack.recipe.schema import InputSpec
from tests.helpers import embedding_onnx, seeded, spread_table


@pytest.mark.parametrize("bits", [8, 4])
def test_per_row_round_trip_is_within_half_a_step_of_each_row(bits):
    table = spread_table(64, 32)
    quantized, scales = (per_row_int8 if bits == 8 else per_row_int4)(table)
    restored = (dequantize_int8 if bits == 8 else dequantize_int4)(quantized, scales)
    step = scales.astype(np.float32)
    assert scales.dtype == np.float16
    ideal = np.abs(table).max(axis=1) / (127 if bits == 8 else 7)
    assert np.all(step >= ideal) and np.all(step <= ideal * 1.002), "float16 scales rounded up, barely"
    error = np.abs(restored - table).max(axis=1)
    assert np.all(error <= step / 2 * (1 + 1e-6))
    assert error.max() > 0


def test_zero_rows_survive():
    table = spread_table(64, 32)
    table[3] = 0
    assert np.array_equal(dequantize_int8(*per_row_int8(table))[3], np.zeros(32, np.float32))


@pytest.mark.parametrize("bits, shrink", [(8, 3.0), (4, 5.0)])  # dim 16: scales cost 25% of int8 rows
def test_tables_are_rewritten_and_still_compute_the_model(tmp_path, bits, shrink):
    path, feeds = embedding_onnx(tmp_path)
    expected = OrtRunner(path, threads=1)(feeds)[0]
    reports, keep_float = quantize_tables(path, bits=bits)
    assert sorted(report["rows"] for report in reports) == [40, 50]
    for report in reports:
        assert report["bits"] == bits and report["bytes_after"] * shrink < report["bytes_before"]
        assert report["max_abs_error"] <= report["error_bound"] + 1e-6
    model = onnx.load(str(path))
    float_tables = [init.name for init in model.graph.initializer
                    if init.data_type == onnx.TensorProto.FLOAT and len(init.dims) == 2 and init.dims[1] > 1
                    and init.dims[0] >= 40]
    assert float_tables == []
    ops = [node.op_type for node in model.graph.node]
    assert ("GatherBlockQuantized" in ops) == (bits == 4)
    assert len(keep_float) == (12 if bits == 8 else 0)  # the dequantization chain of both tables
    got = OrtRunner(path, threads=1)(feeds)[0]
    assert np.abs(got - expected).max() < (0.02 if bits == 8 else 0.3)


class SharedTable(torch.nn.Module):
    """One item table read twice (candidate and last-seen item), as recommenders often do."""

    def __init__(self):
        super().__init__()
        self.item = torch.nn.Embedding(60, 32)
        self.out = torch.nn.Linear(64, 1)

    def forward(self, candidate, history):
        return self.out(torch.cat([self.item(candidate), self.item(history)], 1)).squeeze(1)


@pytest.mark.parametrize("bits", [8, 4])
def test_a_table_read_by_two_gathers_is_stored_once(tmp_path, bits):
    model = seeded(SharedTable)
    gen = torch.Generator().manual_seed(1)
    feeds = {"candidate": torch.randint(0, 60, (16,), generator=gen).numpy(),
             "history": torch.randint(0, 60, (16,), generator=gen).numpy()}
    inputs = [InputSpec(name=name, dtype="int64", shape=["batch"]) for name in feeds]
    path = export_float_onnx(model, inputs, feeds, tmp_path / "shared.onnx")
    expected = OrtRunner(path, threads=1)(feeds)[0]
    gathers = sum(node.op_type == "Gather" for node in onnx.load(str(path)).graph.node)
    reports, _ = quantize_tables(path, bits=bits)
    assert len(reports) == 1 and reports[0]["lookups"] == 2 == gathers
    rewritten = onnx.load(str(path))
    onnx.checker.check_model(rewritten)
    names = [init.name for init in rewritten.graph.initializer]
    assert len(names) == len(set(names)) and not any(init.dims == [60, 32] and init.data_type == onnx.TensorProto.FLOAT
                                                    for init in rewritten.graph.initializer)
    got = OrtRunner(path, threads=1)(feeds)[0]
    assert np.abs(got - expected).max() < (0.02 if bits == 8 else 0.3)


class WideTokens(torch.nn.Module):
    """A token table 384 wide (MiniLM's): not a power of two, so x86 stores it in 4-bit blocks of 128."""

    def __init__(self):
        super().__init__()
        self.tokens = torch.nn.Embedding(300, 384)
        self.out = torch.nn.Linear(384, 2)

    def forward(self, ids):
        return self.out(self.tokens(ids).mean(1))


def test_a_row_width_that_is_no_power_of_two_gets_4_bit_blocks(tmp_path):
    assert (int4_block(384), int4_block(256), int4_block(48), int4_block(40), int4_block(8)) == (128, 256, 16, 0, 0)
    model = seeded(WideTokens)
    feeds = {"ids": torch.randint(0, 300, (8, 12), generator=torch.Generator().manual_seed(2)).numpy()}
    path = tmp_path / "wide.onnx"
    torch.onnx.export(model, (torch.from_numpy(feeds["ids"]),), str(path), input_names=["ids"], dynamo=False)
    expected = OrtRunner(path, threads=1)(feeds)[0]
    (report,), _ = quantize_tables(path, bits=4)
    assert report["bits"] == 4 and report["scales"] == "per block of 128 values"
    assert report["bytes_after"] == 300 * 192 + 300 * 3 * 2  # two values a byte, three fp16 scales a row
    assert report["max_abs_error"] <= report["error_bound"] + 1e-6
    gathers = [node for node in onnx.load(str(path)).graph.node if node.op_type == "GatherBlockQuantized"]
    assert [attr.i for attr in gathers[0].attribute if attr.name == "block_size"] == [128]
    per_row = dequantize_int4(*per_row_int4(model.tokens.weight.detach().numpy()))
    blocked = dequantize_int4(*per_block_int4(model.tokens.weight.detach().numpy(), 128))
    weight = model.tokens.weight.detach().numpy()
    assert np.abs(blocked - weight).mean() <= np.abs(per_row - weight).mean()  # finer scales never hurt
    with torch.no_grad():  # onnxruntime reads the blocks as the dequantized table says (rows come out fp16)
        model.tokens.weight.copy_(torch.from_numpy(blocked))
        want = model(torch.from_numpy(feeds["ids"])).numpy()
    got = OrtRunner(path, threads=1)(feeds)[0]
    assert np.abs(got - want).max() < 5e-4 and np.abs(got - expected).max() < 0.1
