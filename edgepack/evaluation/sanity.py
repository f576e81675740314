"""Warnings about the float model and the data that a drift figure alone would hide.

A broken float model (one layer zeroed) drifts 0.0 from its equally broken INT8 copy, and noise
used as calibration data can pass a loose budget: the verdict is right about drift and says nothing
about whether the model or the calibration make sense. These checks say so, in the terminal and the
manifest's `warnings`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from edgepack.calibration.dataset import SampleSet
from edgepack.evaluation.tasks import kind
from edgepack.model.tensors import as_tensors

MEAN_SHIFT = 0.5  # calibration mean further than this many evaluation std from the evaluation mean
STD_RATIO = 2.0  # calibration std more than this factor above or below the evaluation std


def float_model_warnings(task: str, metrics: dict, evaluation: SampleSet) -> list[str]:
    """A float model that scores at chance level on the evaluation data (the task says what chance is)."""
    return kind(task).chance_warnings(metrics, evaluation)


def calibration_warnings(calibration: SampleSet, evaluation: SampleSet) -> list[str]:
    """Float inputs whose calibration statistics do not look like the evaluation data's."""
    warnings = []
    for name, evaluated in evaluation.arrays.items():
        calibrated = calibration.arrays.get(name)
        if calibrated is None or evaluated.dtype.kind != "f" or calibrated.dtype.kind != "f":
            continue
        mean_e, std_e = float(evaluated.mean()), float(evaluated.std())
        mean_c, std_c = float(calibrated.mean()), float(calibrated.std())
        spread = max(std_e, 1e-12)
        shifted = abs(mean_c - mean_e) > MEAN_SHIFT * spread
        scaled = std_c > STD_RATIO * spread or std_c * STD_RATIO < spread
        if shifted or scaled:
            warnings.append(
                f"calibration data for input '{name}' does not look like the evaluation data (mean {mean_c:.4g} vs "
                f"{mean_e:.4g}, std {std_c:.4g} vs {std_e:.4g}, range [{float(calibrated.min()):.4g}, "
                f"{float(calibrated.max()):.4g}] vs [{float(evaluated.min()):.4g}, {float(evaluated.max()):.4g}]): "
                "activation ranges calibrated on it will not fit real inputs; use samples of the real input "
                "distribution")
    return warnings


RAW_PIXEL_MAX = 255.0  # integral float values up to this, above 1: 8-bit pixels that were never scaled
LARGE_INPUT = 1e3  # float inputs beyond this magnitude are unusual for a trained network's inputs


def input_scale_warnings(data: SampleSet) -> list[str]:
    """Float inputs that look unnormalized: integral values in (1, 255] in an image-like array (raw
    8-bit pixels), or magnitudes beyond LARGE_INPUT. Told apart from an exporter fault on purpose: the
    usual symptom is logits in the thousands, which no fixed tolerance covers."""
    warnings = []
    for name, values in data.arrays.items():
        if values.dtype.kind != "f" or values.size == 0:
            continue
        largest = float(np.abs(values).max())
        integral = bool(np.all(values == np.round(values)))
        if values.ndim >= 3 and integral and 1.0 < largest <= RAW_PIXEL_MAX:
            warnings.append(f"{data.role} data {data.source}: input '{name}' holds whole numbers up to {largest:.0f}, "
                            "like raw 8-bit pixels: if the model was trained on normalized inputs (e.g. /255, "
                            "mean/std), apply the same preprocessing here")
        elif largest > LARGE_INPUT:
            warnings.append(f"{data.role} data {data.source}: input '{name}' reaches {largest:.4g}, far beyond "
                            "usual network inputs: check that it is preprocessed as in training")
    return warnings


OUTSIDE_SHARE = 0.01  # a layer with more than this share of evaluation activations outside its calibrated range
COVERAGE_SAMPLES = 256  # samples of each set used: ranges are a property of the data, not of its size


@dataclass(frozen=True)
class ActivationCoverage:
    """How much of the evaluation data's activations fall outside the ranges seen on calibration data.

    Static quantization clips every activation to its calibrated range: an evaluation activation
    outside it is clipped on the device. A few per mille is normal (the extremes of a finite sample);
    a large share means the calibration set does not cover real inputs.
    """

    share_outside: float  # over every activation of every layer
    worst_layer: str
    worst_share: float
    layers: int
    samples: int

    def as_dict(self) -> dict:
        """For the manifest."""
        return dataclasses.asdict(self)

    def warnings(self) -> list[str]:
        """A warning when some layer's share is above OUTSIDE_SHARE."""
        if self.worst_share <= OUTSIDE_SHARE:
            return []
        return [f"{self.worst_share:.1%} of the evaluation activations of layer '{self.worst_layer}' fall outside "
                f"the range calibrated for it ({self.share_outside:.2%} over all {self.layers} layers): INT8 artifacts "
                "clip them; calibrate on samples of the real input distribution"]


def activation_coverage(module: torch.nn.Module, calibration: SampleSet, evaluation: SampleSet,
                        input_names: list[str]) -> Optional[ActivationCoverage]:
    """Per leaf layer of the float model: the calibration min/max of its output, then the share of
    evaluation outputs outside it. None when the model has no float leaf outputs."""
    leaves = {name: layer for name, layer in module.named_modules() if name and not any(layer.children())}
    ranges: dict[str, list[float]] = {}
    outside: dict[str, list[int]] = {}
    phase = {"calibrating": True}

    def hook(name: str):
        def record(_layer, _inputs, output):
            if not isinstance(output, torch.Tensor) or not output.is_floating_point() or output.numel() == 0:
                return
            values = output.detach()
            if phase["calibrating"]:
                low, high = float(values.min()), float(values.max())
                seen = ranges.setdefault(name, [low, high])
                seen[0], seen[1] = min(seen[0], low), max(seen[1], high)
            elif name in ranges:
                low, high = ranges[name]
                counts = outside.setdefault(name, [0, 0])
                counts[0] += int(((values < low) | (values > high)).sum())
                counts[1] += values.numel()
        return record

    handles = [layer.register_forward_hook(hook(name)) for name, layer in leaves.items()]
    try:
        with torch.no_grad():
            for data, calibrating in ((calibration, True), (evaluation, False)):
                phase["calibrating"] = calibrating
                count = min(COVERAGE_SAMPLES, data.num_samples)
                for start in range(0, count, data.batch_size):
                    stop = min(start + data.batch_size, count)
                    module(*as_tensors({name: data.arrays[name][start:stop] for name in input_names}, input_names))
    finally:
        for handle in handles:
            handle.remove()
    if not outside:
        return None
    shares = {name: clipped / max(total, 1) for name, (clipped, total) in outside.items()}
    worst = max(shares, key=lambda name: shares[name])
    total_clipped = sum(clipped for clipped, _ in outside.values())
    total = sum(total for _, total in outside.values())
    return ActivationCoverage(share_outside=total_clipped / max(total, 1), worst_layer=worst,
                              worst_share=shares[worst], layers=len(shares),
                              samples=min(COVERAGE_SAMPLES, evaluation.num_samples))
