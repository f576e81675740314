"""Low-rank factorization of Linear layers by truncated SVD, the rank chosen by retained energy.

W (out x in) = U S V^T; keeping the k largest singular values that hold `energy` of sum(S^2)
replaces one Linear with two: in -> k (S V^T, no bias) and k -> out (U, with the bias). Done only
where it saves parameters; output heads are left alone.
"""

from __future__ import annotations

import torch
from torch import nn


def _rank_for(singular_values: torch.Tensor, energy: float) -> int:
    share = torch.cumsum(singular_values ** 2, 0) / torch.sum(singular_values ** 2)
    return int(torch.searchsorted(share, torch.tensor(energy, dtype=share.dtype)).item()) + 1


def factorize(module: nn.Module, *, energy: float, min_features: int, keep: set[str],
              max_param_ratio: float = 0.8) -> list[dict]:
    """Replace eligible Linear layers of `module` in place; returns one report per layer considered."""
    reports = []
    for parent_name, parent in list(module.named_modules()):
        for child_name, child in list(parent.named_children()):
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if not isinstance(child, nn.Linear) or name in keep:
                continue
            if min(child.in_features, child.out_features) < min_features:
                continue
            weight = child.weight.detach().double()
            left, values, right_t = torch.linalg.svd(weight, full_matrices=False)
            rank = _rank_for(values, energy)
            before = child.in_features * child.out_features
            after = rank * (child.in_features + child.out_features)
            report = {"layer": name, "in": child.in_features, "out": child.out_features, "rank": rank,
                      "energy": energy, "params_before": before, "params_after": after, "factorized": False}
            if after <= max_param_ratio * before:
                first = nn.Linear(child.in_features, rank, bias=False)
                second = nn.Linear(rank, child.out_features, bias=child.bias is not None)
                with torch.no_grad():
                    first.weight.copy_((values[:rank, None] * right_t[:rank]).float())
                    second.weight.copy_(left[:, :rank].float())
                    if child.bias is not None:
                        second.bias.copy_(child.bias)
                setattr(parent, child_name, nn.Sequential(first, second))
                report["factorized"] = True
            reports.append(report)
    return reports
