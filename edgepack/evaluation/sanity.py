"""Warnings about the float model and the data that a drift figure alone would hide.

A broken float model (one layer zeroed) drifts 0.0 from its equally broken INT8 copy, and noise
used as calibration data can pass a loose budget: the verdict is right about drift and says nothing
about whether the model or the calibration make sense. These checks say so, in the terminal and the
manifest's `warnings`.
"""

from __future__ import annotations

from edgepack.calibration.dataset import SampleSet
from edgepack.evaluation.tasks import kind

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
