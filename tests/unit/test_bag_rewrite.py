"""nn.EmbeddingBag rewritten as lookup + masked reduction: the same function, plain ops."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgepack.model.bag_rewrite import PaddedBag, rewrite_embedding_bags


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("padding_idx", [None, 0])
def test_padded_bag_matches_embedding_bag(mode, padding_idx):
    torch.manual_seed(0)
    bag = nn.EmbeddingBag(30, 8, mode=mode, padding_idx=padding_idx)
    ids = torch.randint(0, 30, (64, 5))
    ids[:10, 2:] = 0          # short bags
    ids[10:12] = 0            # empty bags when 0 is padding
    rewritten = PaddedBag(bag)
    assert isinstance(rewritten, nn.Embedding) and torch.equal(rewritten.weight, bag.weight)
    with torch.no_grad():
        assert torch.allclose(rewritten(ids), bag(ids), atol=1e-6)
        # 1-D ids with offsets keep PyTorch's own embedding_bag
        flat, offsets = ids[:4].reshape(-1), torch.arange(0, 20, 5)
        assert torch.allclose(rewritten(flat, offsets), bag(flat, offsets), atol=1e-6)


def test_rewrite_replaces_nested_bags_in_a_copy_and_exports_without_loops(tmp_path):
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.towers = nn.ModuleDict({"tags": nn.EmbeddingBag(20, 4, mode="mean", padding_idx=0)})
            self.out = nn.Linear(4, 1)

        def forward(self, tags):
            return self.out(self.towers["tags"](tags)).squeeze(1)

    model = Model().eval()
    rewritten, notes = rewrite_embedding_bags(model)
    assert type(model.towers["tags"]) is nn.EmbeddingBag  # the original is untouched
    assert isinstance(rewritten.towers["tags"], PaddedBag)
    assert len(notes) == 1 and "towers.tags" in notes[0] and "mode=mean" in notes[0]
    assert set(rewritten.state_dict()) == set(model.state_dict())  # weights load under the same names
    ids = torch.randint(0, 20, (16, 3))
    torch.onnx.export(rewritten, (ids,), tmp_path / "bag.onnx", dynamo=True)
    import onnx

    ops = {node.op_type for node in onnx.load(str(tmp_path / "bag.onnx")).graph.node}
    assert "Loop" not in ops and "Gather" in ops
    plain = nn.Linear(2, 2)
    assert rewrite_embedding_bags(plain) == (plain, [])
