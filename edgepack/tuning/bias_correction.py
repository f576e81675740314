"""Sequential bias correction on the torch side, before any target quantizes the model.

Rounding the weights of a layer to 8 bits shifts the mean of its outputs, channel by channel, and
the shift adds up through the network. Bias correction measures that shift on calibration data and
subtracts it from the layer's bias, so the quantized layer's outputs have the float model's mean.

It is sequential: each layer's input comes from the already quantized and corrected prefix, so the
correction also absorbs the shift that earlier layers left behind. That is done in one forward pass
over the whole correction set at once: a hook on each Conv/Linear replaces its weights by their
rounded values, compares the channel means of its outputs with those the float model produced at
the same layer, moves the bias by the difference and hands the corrected output on. The returned
model keeps its float weights (every target rounds them again, the same way) and carries the new biases.

The rounding simulated is the one the targets use for weights: symmetric, per output channel (or
per tensor), to `bits` bits. A Conv followed by BatchNorm is rounded before folding; per channel
this gives the same integers as rounding the folded weights, because folding scales each channel.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import numpy as np
import torch

from edgepack.model.tensors import as_tensors

CORRECTED_TYPES = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)


@dataclass(frozen=True)
class CorrectedLayer:
    """One layer's correction: the largest channel shift removed, against its output's spread."""

    module: str
    max_shift: float
    output_std: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready facts for the manifest."""
        return {"module": self.module, "max_shift": round(self.max_shift, 6), "output_std": round(self.output_std, 6)}


@dataclass(frozen=True)
class BiasCorrection:
    """The corrected model and what was corrected, on how many samples."""

    module: torch.nn.Module
    layers: tuple[CorrectedLayer, ...]
    samples: int
    skipped: tuple[str, ...]  # layers called more than once per forward: left as they were


def round_weight(weight: torch.Tensor, *, bits: int = 8, per_channel: bool = True) -> torch.Tensor:
    """`weight` rounded to symmetric `bits`-bit integers (per output channel, or per tensor) and scaled back."""
    levels = 2 ** (bits - 1) - 1
    if per_channel:
        peak = weight.detach().abs().reshape(weight.shape[0], -1).amax(dim=1)
        peak = peak.reshape(-1, *([1] * (weight.dim() - 1)))
    else:
        peak = weight.detach().abs().amax()
    scale = torch.clamp(peak, min=1e-12) / levels
    return torch.clamp(torch.round(weight / scale), -levels, levels) * scale


def _channel_means(output: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
    """Mean of each output channel over every other dimension (channels are dim 1 for convs, last for Linear)."""
    if isinstance(module, torch.nn.Linear):
        return output.reshape(-1, output.shape[-1]).mean(dim=0)
    return output.transpose(0, 1).reshape(output.shape[1], -1).mean(dim=1)


def _broadcast(values: torch.Tensor, output: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
    if isinstance(module, torch.nn.Linear):
        return values
    return values.reshape(1, -1, *([1] * (output.dim() - 2)))


Layer = Union[torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear]


def correctable_layers(module: torch.nn.Module) -> list[tuple[str, Layer]]:
    """The Conv/Linear layers a weight quantizer rounds, by qualified name, in definition order."""
    return [(name, layer) for name, layer in module.named_modules() if isinstance(layer, CORRECTED_TYPES)]


def _float_means(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Channel means of every Conv/Linear output of the float model, and the layers called more than once."""
    means: dict[str, torch.Tensor] = {}
    repeated: set[str] = set()

    def record(name: str, layer_module, output) -> None:
        if name in means:
            repeated.add(name)
        means[name] = _channel_means(output, layer_module)

    forward_with_hooks(module, args, {name: record for name, _ in correctable_layers(module)})
    return means, repeated


Hook = Callable[[str, Any, torch.Tensor], Optional[torch.Tensor]]


def forward_with_hooks(module: torch.nn.Module, args: tuple[torch.Tensor, ...], hooks: dict[str, Hook]) -> None:
    """One no-grad forward pass with `hooks[name](name, layer, output)` on the named submodules; a hook
    that returns a tensor replaces the layer's output. The hooks are removed afterwards."""
    layers = dict(module.named_modules())
    handles = [layers[name].register_forward_hook(lambda layer, _inputs, output, name=name, hook=hook:
                                                  hook(name, layer, output))
               for name, hook in hooks.items()]
    try:
        with torch.no_grad():
            module(*args)
    finally:
        for handle in handles:
            handle.remove()


def correct_biases(module: torch.nn.Module, arrays: dict[str, np.ndarray], input_names: list[str], *,
                   bits: int = 8, per_channel: bool = True, max_samples: int = 128) -> BiasCorrection:
    """A copy of `module` whose Conv/Linear biases cancel the output shift their rounded weights cause.

    Uses the first `max_samples` rows of `arrays` (calibration data) as one batch."""
    count = min(max_samples, len(next(iter(arrays.values()))))
    args = as_tensors({name: arrays[name][:count] for name in input_names}, input_names)
    reference = module.eval()
    float_means, repeated = _float_means(reference, args)
    corrected = copy.deepcopy(reference).eval()
    originals = {}
    layers: list[CorrectedLayer] = []

    def shift(name: str, layer_module, output) -> torch.Tensor:
        difference = float_means[name] - _channel_means(output, layer_module)
        layer_module.bias.add_(difference)
        layers.append(CorrectedLayer(module=name, max_shift=float(difference.abs().max()),
                                     output_std=float(output.std())))
        return output + _broadcast(difference, output, layer_module)

    hooks: dict[str, Hook] = {}
    for name, layer in correctable_layers(corrected):
        originals[name] = layer.weight.detach().clone()
        with torch.no_grad():
            layer.weight.copy_(round_weight(layer.weight, bits=bits, per_channel=per_channel))
        if name in repeated or name not in float_means:
            continue
        if layer.bias is None:
            layer.bias = torch.nn.Parameter(torch.zeros(layer.weight.shape[0], dtype=layer.weight.dtype))
        hooks[name] = shift
    try:
        forward_with_hooks(corrected, args, hooks)
    finally:
        with torch.no_grad():
            for name, layer in correctable_layers(corrected):
                layer.weight.copy_(originals[name])
    return BiasCorrection(module=corrected, layers=tuple(layers), samples=count, skipped=tuple(sorted(repeated)))
