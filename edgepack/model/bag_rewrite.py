"""nn.EmbeddingBag rewritten as an embedding lookup plus a masked reduction, before any export.

A bag of ids per row (a padded [batch, n] tensor) is what multi-hot recommender features look like,
and nn.EmbeddingBag is how PyTorch models them; but no deployment path here handles it well: the
ONNX exporter emits a Loop over rows (60x slower than the rewritten graph at batch 64, and the fp16 converter
breaks the loop body), litert-torch has no lowering for aten._embedding_bag, and ExecuTorch's
runtime has no kernel for it. The same function as gather + masked sum / mean / max exports to
plain ops everywhere, and its table is an ordinary embedding table that every target quantizes
per row. Bags given as a 1-D tensor with offsets, or with per-sample weights, keep PyTorch's own
embedding_bag (they are left for the exporter).
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class PaddedBag(nn.Embedding):
    """nn.EmbeddingBag(mode, padding_idx) over a padded [batch, n] id tensor as nn.Embedding + reduction.

    A subclass of nn.Embedding holding the same `weight`, so pruning and per-row table quantization
    treat it as the table it is. The bag's padding id is kept apart from nn.Embedding's padding_idx
    (which only affects gradients and may be cleared by quantization passes)."""

    def __init__(self, bag: nn.EmbeddingBag):
        super().__init__(bag.num_embeddings, bag.embedding_dim, _weight=bag.weight.detach().clone(),
                         max_norm=bag.max_norm, norm_type=bag.norm_type, scale_grad_by_freq=bag.scale_grad_by_freq,
                         sparse=bag.sparse)
        self.mode = bag.mode
        self.bag_padding_idx: Optional[int] = bag.padding_idx
        self.include_last_offset = bag.include_last_offset

    def forward(self, ids: torch.Tensor, offsets: Optional[torch.Tensor] = None,
                per_sample_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        if ids.dim() != 2 or offsets is not None or per_sample_weights is not None:
            return F.embedding_bag(ids, self.weight, offsets, self.max_norm, self.norm_type,
                                   self.scale_grad_by_freq, self.mode, self.sparse, per_sample_weights,
                                   self.include_last_offset, self.bag_padding_idx)
        rows = F.embedding(ids, self.weight, None, self.max_norm, self.norm_type)
        if self.bag_padding_idx is None:
            mask = torch.ones_like(ids, dtype=rows.dtype)
        else:
            mask = (ids != self.bag_padding_idx).to(rows.dtype)
        if self.mode == "max":
            # an empty bag (all padding) gives zeros, as nn.EmbeddingBag does
            filled = rows.masked_fill(mask.unsqueeze(-1) == 0, float("-inf")).amax(dim=1)
            return torch.where(mask.sum(dim=1, keepdim=True) > 0, filled, torch.zeros_like(filled))
        total = (rows * mask.unsqueeze(-1)).sum(dim=1)
        if self.mode == "sum":
            return total
        return total / mask.sum(dim=1, keepdim=True).clamp(min=1.0)


def rewrite_embedding_bags(module: nn.Module) -> tuple[nn.Module, list[str]]:
    """A copy of `module` with every nn.EmbeddingBag replaced by a PaddedBag, and one note per bag;
    `module` itself (not a copy) and no notes when it has none."""
    names = [name for name, child in module.named_modules() if type(child) is nn.EmbeddingBag]
    if not names:
        return module, []
    copied = copy.deepcopy(module)
    notes = []
    for name in names:
        parent_name, _, attribute = name.rpartition(".")
        parent = copied.get_submodule(parent_name) if parent_name else copied
        bag = getattr(parent, attribute)
        setattr(parent, attribute, PaddedBag(bag))
        notes.append(f"{name}: nn.EmbeddingBag(mode={bag.mode}, padding_idx={bag.padding_idx}) rewritten as an "
                     f"embedding lookup + masked {bag.mode} for export (same function for padded [batch, n] bags)")
    return copied.eval(), notes
