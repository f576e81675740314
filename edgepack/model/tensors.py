"""NumPy feeds to torch tensors, and a module's size and cost on them: the one place for each."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch


def as_tensors(batch: Mapping[str, np.ndarray], names: list[str]) -> tuple[torch.Tensor, ...]:
    """A feed dict as a tuple of tensors in input order (copied only when not contiguous)."""
    return tuple(torch.from_numpy(np.ascontiguousarray(batch[name])) for name in names)


def count_macs_and_params(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[int, int]:
    """(multiply-accumulates for `inputs`, parameters), measured by torch-pruning's counter."""
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(module, inputs if len(inputs) > 1 else inputs[0])
    return int(macs), int(params)
