"""NumPy feeds to torch tensors: the one place that does it."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch


def as_tensors(batch: Mapping[str, np.ndarray], names: list[str]) -> tuple[torch.Tensor, ...]:
    """A feed dict as a tuple of tensors in input order (copied only when not contiguous)."""
    return tuple(torch.from_numpy(np.ascontiguousarray(batch[name])) for name in names)
