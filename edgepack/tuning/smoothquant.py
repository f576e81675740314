"""SmoothQuant-style scale migration on the torch side, before any target quantizes the model.

A few input channels of a Linear with activations far larger than the rest (outliers) force a
per-tensor activation scale that leaves the other channels a handful of integer levels. Migration
divides channel j of the activation by s_j and multiplies column j of the weight by s_j, so the
product is unchanged: s_j = max|X_j|^alpha / max|W_j|^(1 - alpha), measured on calibration data.
The activation's 1/s is folded into the layer that produces it: a LayerNorm's or BatchNorm's
weight and bias, or the output rows (and bias) of a Linear or Conv, so no op is added.

That is exact only when nothing but per-channel, positively homogeneous steps (ReLU, dropout,
pooling, reshapes, attention's token mixing) lie between the producer and its consumers, and the
producer's output feeds nothing else. Structure is read from one forward pass (which leaf module
produced the very tensor a Linear consumes); each migration is then checked by applying random
scales and comparing the model's outputs, and skipped, with its reason, when they change. A
post-LayerNorm encoder (BERT) is the common skip: its LayerNorm output also feeds the residual add.
The transformed model is compared with the original once more before it is returned.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np
import torch

from edgepack.errors import ExportError
from edgepack.model.tensors import as_tensors

OUTLIER_RATIO = 8.0  # a consumer's largest channel abs-max over its median one: above this, try smoothing
EXACT_TOLERANCE = 1e-4  # relative L2 change of the model's outputs still counted as float error
DEFAULT_ALPHAS = (0.5, 0.8)  # the paper's default; 0.8 passed on the MiniLM example with inserted scales
SHARED = "called more than once"
CHUNK = 32
CANDIDATES_TRIED = 3  # nearest earlier producers tried for an input computed outside modules
PASSTHROUGH = (torch.nn.ReLU, torch.nn.LeakyReLU, torch.nn.Dropout, torch.nn.Identity, torch.nn.MaxPool1d,
               torch.nn.MaxPool2d, torch.nn.AvgPool1d, torch.nn.AvgPool2d, torch.nn.AdaptiveAvgPool1d,
               torch.nn.AdaptiveAvgPool2d, torch.nn.AdaptiveMaxPool2d, torch.nn.Flatten)
CLAMPS = (torch.nn.ReLU6, torch.nn.Hardtanh, torch.nn.Hardsigmoid, torch.nn.Hardswish)

Producer = Union[torch.nn.LayerNorm, torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.BatchNorm1d,
                 torch.nn.BatchNorm2d]
PRODUCER_TYPES = (torch.nn.LayerNorm, torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.BatchNorm1d,
                  torch.nn.BatchNorm2d)


class _Facts:
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready facts, ratios to 3 decimals."""
        return {key: round(value, 3) if isinstance(value, float) else value
                for key, value in dataclasses.asdict(self).items()}  # type: ignore[call-overload]


@dataclass(frozen=True)
class SmoothedLayer(_Facts):
    """One consumer whose input channels were flattened: its producer and max/median channel ratios."""

    module: str
    producer: str
    ratio_before: float
    ratio_after: float


@dataclass(frozen=True)
class SkippedLayer(_Facts):
    """A Linear or 1x1 Conv left as it was, and why migration would not be exact there."""

    module: str
    reason: str
    ratio: float


@dataclass(frozen=True)
class Smoothing:
    """The smoothed copy of a model, what was smoothed and skipped, and the outputs' measured change."""

    module: torch.nn.Module
    alpha: float
    smoothed: tuple[SmoothedLayer, ...]
    skipped: tuple[SkippedLayer, ...]
    samples: int
    output_change: float  # relative L2 between the smoothed and the original model's outputs

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record for a manifest or a tuning report."""
        return {"alpha": self.alpha, "samples": self.samples, "output_change": float(f"{self.output_change:.3g}"),
                "smoothed": [item.to_dict() for item in self.smoothed],
                "skipped": [item.to_dict() for item in self.skipped]}


@dataclass
class _Group:
    """A producer and the consumers of its output channels, smoothed with one shared scale."""

    producer: str
    consumers: list[str]


@dataclass
class SmoothingPlan:
    """Which migrations are exact on this model, and the per-channel activation abs-max of every consumer."""

    groups: list[_Group]
    skipped: dict[str, str]
    activation_max: dict[str, torch.Tensor]
    samples: int

    def ratio(self, consumer: str) -> float:
        """Largest channel abs-max of the consumer's input over the median one."""
        return _ratio(self.activation_max[consumer])


def _ratio(peaks: torch.Tensor) -> float:
    return float(peaks.max() / torch.clamp(peaks.median(), min=1e-12))


def _consumer(layer: torch.nn.Module) -> bool:
    if isinstance(layer, torch.nn.Linear):
        return True
    return isinstance(layer, (torch.nn.Conv1d, torch.nn.Conv2d)) and layer.groups == 1 and \
        all(size == 1 for size in layer.kernel_size)


def _in_channels(layer: Any) -> int:
    return int(layer.weight.shape[1])


def _out_channels(layer: Any) -> Optional[int]:
    if isinstance(layer, torch.nn.LayerNorm):
        shape = layer.normalized_shape
        return int(shape[0]) if len(shape) == 1 and layer.weight is not None and layer.bias is not None else None
    if isinstance(layer, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
        return layer.num_features if layer.affine else None
    return int(layer.weight.shape[0])


def _channel_peaks(tensor: torch.Tensor, layer: torch.nn.Module) -> torch.Tensor:
    """Abs-max of each input channel (last dim for Linear, dim 1 for Conv) over every other dimension."""
    values = tensor.detach().abs()
    if isinstance(layer, torch.nn.Linear):
        return values.reshape(-1, values.shape[-1]).amax(dim=0)
    return values.transpose(0, 1).reshape(values.shape[1], -1).amax(dim=1)


def _weight_peaks(layer: Any) -> torch.Tensor:
    weight = layer.weight.detach().abs()
    return weight.transpose(0, 1).reshape(weight.shape[1], -1).amax(dim=1)


def _scale_consumer(layer: Any, scale: torch.Tensor) -> None:
    shape = (1, -1, *([1] * (layer.weight.dim() - 2)))
    layer.weight.mul_(scale.reshape(shape).to(layer.weight.dtype))


def _divide_producer(layer: Any, scale: torch.Tensor) -> None:
    shape = (-1, *([1] * (layer.weight.dim() - 1)))
    layer.weight.div_(scale.reshape(shape).to(layer.weight.dtype))
    if layer.bias is not None:
        layer.bias.div_(scale.to(layer.bias.dtype))


def _forward_all(module: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, ...]], handles: list) -> None:
    """No-grad forward passes over `batches`; the hooks behind `handles` are removed afterwards."""
    with contextlib.ExitStack() as stack, torch.no_grad():
        for handle in handles:
            stack.enter_context(handle)
        for args in batches:
            module(*args)


def _structure(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[list[str], dict[str, Any],
                                                                                dict[str, int]]:
    """One forward pass over leaf modules: their order, where each consumer's input tensor came from
    (a producer name, a reason to skip, or None when computed outside modules), and call counts."""
    leaves = {name: layer for name, layer in module.named_modules() if name and not any(layer.children())}
    order: list[str] = []
    calls: dict[str, int] = {}
    made_by: dict[int, tuple[str, torch.Tensor]] = {}  # id -> (module, tensor kept alive so ids stay unique)
    inputs: dict[str, torch.Tensor] = {}
    passthrough_input: dict[str, torch.Tensor] = {}

    def hook(name: str, layer: torch.nn.Module, args_in: tuple, output: Any) -> None:
        calls[name] = calls.get(name, 0) + 1
        order.append(name)
        first = args_in[0] if args_in and isinstance(args_in[0], torch.Tensor) else None
        if first is not None and (_consumer(layer) or isinstance(layer, PASSTHROUGH)):
            (inputs if _consumer(layer) else passthrough_input)[name] = first
        if isinstance(output, torch.Tensor) and id(output) not in made_by:
            made_by[id(output)] = (name, output)

    _forward_all(module, [args], [layer.register_forward_hook(
        lambda layer, args_in, output, name=name: hook(name, layer, args_in, output))
        for name, layer in leaves.items()])
    sources: dict[str, Any] = {}
    for name, tensor in inputs.items():
        source, hops = made_by.get(id(tensor)), 0
        while source is not None and isinstance(leaves[source[0]], PASSTHROUGH) and hops < 16:
            upstream = passthrough_input.get(source[0])
            source, hops = (made_by.get(id(upstream)) if upstream is not None else None), hops + 1
        sources[name] = source[0] if source is not None else None
    return order, sources, calls


def _activation_peaks(module: torch.nn.Module, arrays: dict[str, np.ndarray], input_names: list[str],
                      consumers: dict[str, torch.nn.Module], count: int) -> dict[str, torch.Tensor]:
    peaks: dict[str, torch.Tensor] = {}

    def record(name: str, args_in: tuple) -> None:
        current = _channel_peaks(args_in[0], consumers[name])
        peaks[name] = torch.maximum(peaks[name], current) if name in peaks else current

    batches = (as_tensors({key: arrays[key][start:min(start + CHUNK, count)] for key in input_names}, input_names)
               for start in range(0, count, CHUNK))
    _forward_all(module, batches, [layer.register_forward_pre_hook(
        lambda _layer, args_in, name=name: record(name, args_in)) for name, layer in consumers.items()])
    return peaks


def _outputs(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> torch.Tensor:
    with torch.no_grad():
        result = module(*args)
    return (result[0] if isinstance(result, (tuple, list)) else result).detach().double()


def _change(reference: torch.Tensor, outputs: torch.Tensor) -> float:
    return float(torch.linalg.norm(outputs - reference) / torch.clamp(torch.linalg.norm(reference), min=1e-30))


class _Trial:
    """Applies random scales to one producer/consumers group of a working copy, measures, and restores.

    The change is the largest over the model's output and every leaf module's output but the producer's
    and pass-through ones (which scale by design): a model whose output barely depends on a path (one
    that saturates) still shows an inexact migration inside."""

    def __init__(self, module: torch.nn.Module, args: tuple[torch.Tensor, ...]):
        self.module, self.args = module, args
        self.layers = dict(module.named_modules())
        self.leaves = [name for name, layer in self.layers.items() if name and not any(layer.children())
                       and not isinstance(layer, PASSTHROUGH)]
        self.reference = self._run()
        self.generator = torch.Generator().manual_seed(0)

    def _run(self) -> dict[str, torch.Tensor]:
        recorded: dict[str, torch.Tensor] = {}

        def record(name: str, output: Any) -> None:
            if isinstance(output, torch.Tensor):
                recorded[name] = output.detach().double()

        with contextlib.ExitStack() as stack:
            for name in self.leaves:
                stack.enter_context(self.layers[name].register_forward_hook(
                    lambda _layer, _args, output, name=name: record(name, output)))
            recorded[""] = _outputs(self.module, self.args)
        return recorded

    def change(self, group: _Group) -> float:
        producer = self.layers[group.producer]
        channels = _out_channels(producer) or 0
        scale = torch.exp(torch.empty(channels).uniform_(-1.4, 1.4, generator=self.generator))
        saved = {name: [param.detach().clone() for param in self.layers[name].parameters(recurse=False)]
                 for name in [group.producer, *group.consumers]}
        try:
            with torch.no_grad():
                _divide_producer(producer, scale)
                for name in group.consumers:
                    _scale_consumer(self.layers[name], scale)
            outputs = self._run()
            return max(_change(self.reference[name], outputs[name]) for name in self.reference
                       if name != group.producer and name in outputs)
        finally:
            with torch.no_grad():
                for name, params in saved.items():
                    for param, value in zip(self.layers[name].parameters(recurse=False), params):
                        param.copy_(value)


def plan_smoothing(module: torch.nn.Module, arrays: dict[str, np.ndarray], input_names: list[str], *,
                   max_samples: int = 128, check_samples: int = 4) -> SmoothingPlan:
    """Find the exact producer/consumer migrations of `module` and measure its consumers' input channels
    on the first `max_samples` calibration rows (the first `check_samples` check exactness)."""
    count = min(max_samples, len(next(iter(arrays.values()))))
    check = as_tensors({name: arrays[name][:min(check_samples, count)] for name in input_names}, input_names)
    reference = module.eval()
    order, sources, calls = _structure(reference, check)
    layers = dict(reference.named_modules())
    consumers = {name: layers[name] for name in sources}
    peaks = _activation_peaks(reference, arrays, input_names, consumers, count)
    trial = _Trial(copy.deepcopy(reference).eval(), check)
    skipped: dict[str, str] = {}
    direct: dict[str, list[str]] = {}
    indirect: list[str] = []
    for name in sorted(sources, key=order.index):
        source = sources[name]
        if calls[name] > 1:
            skipped[name] = f"{SHARED} per forward pass (shared weights)"
        elif source is None:
            indirect.append(name)
        elif not isinstance(layers[source], PRODUCER_TYPES):
            kind = type(layers[source]).__name__
            why = "clamps at fixed bounds" if isinstance(layers[source], CLAMPS) else "is not positively homogeneous"
            skipped[name] = f"input comes from {source} ({kind}), which {why}: a per-channel scale does not pass"
        elif calls[source] > 1 or _out_channels(layers[source]) != _in_channels(layers[name]):
            skipped[name] = f"producer {source} is called more than once, has no affine weights or other channels"
        else:
            direct.setdefault(source, []).append(name)
    groups: list[_Group] = []
    for producer, names in direct.items():
        group = _Group(producer, names)
        change = trial.change(group)
        if change <= EXACT_TOLERANCE:
            groups.append(group)
        else:
            for name in names:
                skipped[name] = (f"producer {producer}'s output also feeds another path (e.g. a residual add): "
                                 f"scaling it changes the outputs by {change:.2g} (relative L2)")
    for name in indirect:
        position = order.index(name)
        claimed = {group.producer for group in groups}
        earlier = [candidate for candidate in reversed(order[:position])
                   if isinstance(layers[candidate], PRODUCER_TYPES) and calls[candidate] == 1
                   and candidate not in claimed and _out_channels(layers[candidate]) == _in_channels(layers[name])]
        tried = []
        for candidate in dict.fromkeys(earlier[:CANDIDATES_TRIED]):
            change = trial.change(_Group(candidate, [name]))
            if change <= EXACT_TOLERANCE:
                groups.append(_Group(candidate, [name]))
                break
            tried.append(f"{candidate} ({change:.2g})")
        else:
            skipped[name] = ("input computed outside modules, and no earlier LayerNorm/Linear/Conv migrates to it "
                             f"exactly (tried, relative output change: {', '.join(tried) or 'none'})")
    return SmoothingPlan(groups=groups, skipped=skipped, activation_max=peaks, samples=count)


class ScaledInput(torch.nn.Module):
    """A Linear or 1x1 Conv whose input is first multiplied by a per-channel constant: SmoothQuant where no
    producer can absorb 1/s exactly. It exports as one elementwise Mul before the layer."""

    inverse_scale: torch.Tensor

    def __init__(self, layer: Any, inverse_scale: torch.Tensor):
        super().__init__()
        self.layer = layer
        shape = (-1,) if isinstance(layer, torch.nn.Linear) else (1, -1, *([1] * (layer.weight.dim() - 2)))
        self.register_buffer("inverse_scale", inverse_scale.reshape(shape).to(layer.weight.dtype))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """The wrapped layer on the scaled input."""
        return self.layer(inputs * self.inverse_scale)


def _migration_scale(activation: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """s = a^alpha / w^(1 - alpha) per channel; 1 where a channel never fires or has no weight."""
    usable = (activation > 1e-8) & (weight > 1e-8)
    return torch.where(usable, activation.clamp(min=1e-8) ** alpha / weight.clamp(min=1e-8) ** (1 - alpha),
                       torch.ones_like(activation))


INSERTED = "inserted Mul"


def smooth_quant(module: torch.nn.Module, arrays: dict[str, np.ndarray], input_names: list[str], *,
                 alpha: float = 0.5, max_samples: int = 128, plan: Optional[SmoothingPlan] = None,
                 insert_scales: bool = False) -> Smoothing:
    """A copy of `module` with activation outliers migrated into the weights (s = a^alpha / w^(1-alpha)).

    1/s is folded into the producer where that is exact; with `insert_scales`, every other layer (not
    called twice) is smoothed too, through a ScaledInput (an explicit Mul). Raises ExportError if the
    copy's outputs differ from the original's beyond float error."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], not {alpha}")
    plan = plan or plan_smoothing(module, arrays, input_names, max_samples=max_samples)
    smoothed_module = copy.deepcopy(module).eval()
    layers = dict(smoothed_module.named_modules())
    smoothed: list[SmoothedLayer] = []
    with torch.no_grad():
        for group in plan.groups:
            activation = torch.stack([plan.activation_max[name] for name in group.consumers]).amax(dim=0)
            weight = torch.stack([_weight_peaks(layers[name]) for name in group.consumers]).amax(dim=0)
            scale = _migration_scale(activation, weight, alpha)
            _divide_producer(layers[group.producer], scale)
            for name in group.consumers:
                _scale_consumer(layers[name], scale)
                smoothed.append(SmoothedLayer(name, group.producer, plan.ratio(name),
                                              _ratio(plan.activation_max[name] / scale)))
        inserted = [name for name in plan.skipped if insert_scales and name in plan.activation_max
                    and not plan.skipped[name].startswith(SHARED)]
        for name in inserted:
            scale = _migration_scale(plan.activation_max[name], _weight_peaks(layers[name]), alpha)
            _scale_consumer(layers[name], scale)
            parent, _, child = name.rpartition(".")
            setattr(layers[parent], child, ScaledInput(layers[name], 1.0 / scale))
            smoothed.append(SmoothedLayer(name, INSERTED, plan.ratio(name), _ratio(plan.activation_max[name] / scale)))
    check = as_tensors({name: arrays[name][:min(8, plan.samples)] for name in input_names}, input_names)
    change = _change(_outputs(module.eval(), check), _outputs(smoothed_module, check))
    if change > EXACT_TOLERANCE:
        raise ExportError(f"SmoothQuant changed the float model's outputs by {change:.3g} (relative L2, tolerance "
                          f"{EXACT_TOLERANCE}): a migration was not exact")
    skipped = tuple(SkippedLayer(name, reason, plan.ratio(name)) for name, reason in plan.skipped.items()
                    if name not in inserted)
    return Smoothing(module=smoothed_module, alpha=alpha, smoothed=tuple(smoothed), skipped=skipped,
                     samples=plan.samples, output_change=change)


def outlier_alphas(plan: SmoothingPlan, *, threshold: float = OUTLIER_RATIO,
                   insert_scales: bool = False) -> list[float]:
    """The alphas worth trying under `plan`: [] unless a layer that can be smoothed (exactly by folding, or
    also through inserted scales) has activation outliers (its input's largest channel abs-max over the
    median one above `threshold`)."""
    folded = [name for group in plan.groups for name in group.consumers]
    inserted = [name for name, reason in plan.skipped.items()
                if name in plan.activation_max and not reason.startswith(SHARED)] if insert_scales else []
    return list(DEFAULT_ALPHAS) if any(plan.ratio(name) > threshold for name in folded + inserted) else []


def smoothing_alphas(module: torch.nn.Module, arrays: dict[str, np.ndarray], input_names: list[str], *,
                     threshold: float = OUTLIER_RATIO, max_samples: int = 64,
                     insert_scales: bool = False) -> list[float]:
    """The SmoothQuant alphas worth trying on `module` with these calibration arrays ([] when no layer that
    can be smoothed has activation outliers); `insert_scales` as in smooth_quant."""
    plan = plan_smoothing(module, arrays, input_names, max_samples=max_samples)
    return outlier_alphas(plan, threshold=threshold, insert_scales=insert_scales)
