"""Per-layer sensitivity to weight rounding, measured in torch on held-out calibration samples.

Two views of a Conv/Linear layer, both against the float model's outputs:
- alone: only this layer's weights rounded (how much error the layer brings by itself), for every layer;
- left out: every other layer rounded, this one float (how much keeping it float would recover), for
  the `left_out_count` layers with the largest error alone (one forward pass each: a 50-layer CNN
  would otherwise need a hundred passes).

The error is the relative L2 distance of the model outputs, which needs no labels. Weights are
rounded as the targets round them (edgepack.tuning.bias_correction.round_weight); activations stay
float, so this ranks layers, it does not predict an artifact's accuracy.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import numpy as np
import torch

from edgepack.model.tensors import as_tensors
from edgepack.tuning.bias_correction import correctable_layers, forward_with_hooks, round_weight


@dataclass(frozen=True)
class LayerSensitivity:
    """One layer's errors, its position in execution order and its names in each target."""

    module: str
    position: int
    alone: float
    left_out: Optional[float]  # measured for the layers with the largest error alone only
    target_names: dict[str, list[str]] = field(default_factory=dict)  # target -> node/tensor names

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready facts for the manifest and the report."""
        return {"module": self.module, "position": self.position, "alone": round(self.alone, 6),
                "left_out": None if self.left_out is None else round(self.left_out, 6),
                "target_names": self.target_names}


def execution_order(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> list[str]:
    """Conv/Linear module names in the order the forward pass first calls them."""
    order: list[str] = []

    def record(name: str, _layer, _output) -> None:
        if name not in order:
            order.append(name)

    forward_with_hooks(module, args, {name: record for name, _ in correctable_layers(module)})
    return order


@contextlib.contextmanager
def rounded(module: torch.nn.Module, names: set[str], *, bits: int, per_channel: bool) -> Iterator[None]:
    """Temporarily round the weights of the named layers."""
    layers = dict(correctable_layers(module))
    saved = {name: layers[name].weight.detach().clone() for name in names}
    try:
        with torch.no_grad():
            for name in names:
                layers[name].weight.copy_(round_weight(layers[name].weight, bits=bits, per_channel=per_channel))
        yield
    finally:
        with torch.no_grad():
            for name, weight in saved.items():
                layers[name].weight.copy_(weight)


def _relative_error(reference: torch.Tensor, output: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(output - reference) / torch.clamp(torch.linalg.vector_norm(reference),
                                                                            min=1e-12))


def _first_output(result: Any) -> torch.Tensor:
    return result[0] if isinstance(result, (tuple, list)) else result


def layer_sensitivity(module: torch.nn.Module, arrays: dict[str, np.ndarray], input_names: list[str], *,
                      bits: int = 8, per_channel: bool = True, left_out_count: int = 8) -> list[LayerSensitivity]:
    """The sensitivities of every Conv/Linear layer called once per forward pass, in execution order."""
    module = module.eval()
    args = as_tensors(arrays, input_names)
    order = execution_order(module, args)
    with torch.no_grad():
        reference = _first_output(module(*args))
        alone = {}
        for name in order:
            with rounded(module, {name}, bits=bits, per_channel=per_channel):
                alone[name] = _relative_error(reference, _first_output(module(*args)))
        left_out = {}
        for name in sorted(order, key=lambda item: alone[item], reverse=True)[:left_out_count]:
            with rounded(module, set(order) - {name}, bits=bits, per_channel=per_channel):
                left_out[name] = _relative_error(reference, _first_output(module(*args)))
    return [LayerSensitivity(module=name, position=position, alone=alone[name], left_out=left_out.get(name))
            for position, name in enumerate(order)]
