"""PT2E quantizers turn the scalar operand of add/mul into a float constant; index arithmetic must stay integer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgepack.quantization.integer_constants import restore_integer_constants


class ShiftedLookup(nn.Module):
    """Rows 1..k of a table, indexed by `arange(k) + 1` (as transformers build mask positions)."""

    def forward(self, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return table[torch.arange(ids.shape[0]) + 1]


def _scalars_as_float_constants(graph_module) -> None:
    """What XNNPACKQuantizer.transform_for_annotation does to `x + 1`: a float32 tensor constant operand."""
    for node in list(graph_module.graph.nodes):
        if node.target == torch.ops.aten.add.Tensor and not isinstance(node.args[1], torch.fx.Node):
            graph_module.register_buffer("_scalar_0", torch.tensor(float(node.args[1])))
            with graph_module.graph.inserting_before(node):
                constant = graph_module.graph.get_attr("_scalar_0")
            constant.meta["val"] = torch.tensor(float(node.args[1]))
            node.args = (node.args[0], constant)
    graph_module.recompile()


def test_float_constant_in_index_arithmetic_is_made_integer_again():
    table, ids = torch.arange(10, dtype=torch.float32) * 2, torch.zeros(4, dtype=torch.int64)
    graph_module = torch.export.export(ShiftedLookup(), (table, ids)).module()
    _scalars_as_float_constants(graph_module)
    with pytest.raises(IndexError, match="tensors used as indices"):
        graph_module(table, ids)
    assert restore_integer_constants(graph_module) == 1
    assert torch.equal(graph_module(table, ids), table[1:5])
    assert restore_integer_constants(graph_module) == 0  # nothing left to restore
