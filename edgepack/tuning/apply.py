"""Turn a `tuned` recipe entry into what a target builds from: the module (smoothed, bias-corrected or
neither), its checked fp32 ONNX, the calibration method and the modules kept float. Shared by `pack`
and the search."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from edgepack.calibration.dataset import SampleSet
from edgepack.calibration.methods import CalibrationMethod
from edgepack.errors import ConfigError
from edgepack.model.onnx_export import check_against_torch, export_float_onnx
from edgepack.recipe.schema import Recipe, TunedTarget
from edgepack.tuning.bias_correction import BiasCorrection, correct_biases
from edgepack.tuning.smoothquant import (
    ScaledInput,
    Smoothing,
    SmoothingPlan,
    outlier_alphas,
    plan_smoothing,
    smooth_quant,
)


@dataclass
class TunedBuild:
    """The inputs of one target's export under a tuned configuration."""

    module: Any  # torch.nn.Module, or None for an ONNX model
    float_onnx: Path
    method: CalibrationMethod
    float_modules: tuple[str, ...] = ()
    correction: Optional[BiasCorrection] = None
    smoothing: Optional[Smoothing] = None
    notes: list[str] = field(default_factory=list)


class VariantCache:
    """Smoothed and bias-corrected copies of the student, each exported to fp32 ONNX once and checked against
    torch. Smoothing comes first: bias correction then corrects the smoothed weights."""

    def __init__(self, module, float_onnx: Path, recipe: Recipe, calibration: SampleSet, folder: Path):
        self.module, self.float_onnx, self.recipe, self.calibration = module, float_onnx, recipe, calibration
        self.folder = folder
        self._corrected: dict[Optional[tuple[float, bool]], tuple[BiasCorrection, Path]] = {}
        self._smoothed: dict[tuple[float, bool], tuple[Smoothing, Path]] = {}
        self._plan: Optional[SmoothingPlan] = None

    def _export_checked(self, module, name: str) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / name
        sample = {key: array[:2] for key, array in self.calibration.arrays.items()}
        export_float_onnx(module, self.recipe.inputs, sample, path)
        check_against_torch(module, path, self.recipe.inputs, sample, threads=self.recipe.latency.threads)
        return path

    def smoothing_plan(self) -> SmoothingPlan:
        """Which SmoothQuant migrations are exact on the student, with its activation ranges (computed once)."""
        if self._plan is None:
            self._plan = plan_smoothing(self.module, self.calibration.arrays, self.recipe.input_names,
                                        max_samples=self.recipe.tune.correction_samples)
        return self._plan

    def smoothing_alphas(self, *, insert_scales: bool = False) -> list[float]:
        """SmoothQuant alphas worth a tuning candidate (`tuned.smooth_quant`, with `smooth_quant_mul` =
        `insert_scales`): [] when no layer that can be smoothed that way has activation outliers."""
        if self.module is None:
            return []
        return outlier_alphas(self.smoothing_plan(), insert_scales=insert_scales)

    def smoothed(self, alpha: float, insert_scales: bool = False) -> tuple[Smoothing, Path]:
        """The student smoothed with `alpha` and its fp32 ONNX (computed on first use)."""
        key = (alpha, insert_scales)
        if key not in self._smoothed:
            smoothing = smooth_quant(self.module, self.calibration.arrays, self.recipe.input_names, alpha=alpha,
                                     plan=self.smoothing_plan(), insert_scales=insert_scales)
            name = f"model.smooth{alpha:g}{'.mul' if insert_scales else ''}.fp32.onnx"
            self._smoothed[key] = (smoothing, self._export_checked(smoothing.module, name))
        return self._smoothed[key]

    def corrected(self, smooth_quant_alpha: Optional[float] = None,
                  insert_scales: bool = False) -> tuple[BiasCorrection, Path]:
        """The bias-corrected student (smoothed first when `smooth_quant_alpha` is set) and its fp32 ONNX."""
        key = None if smooth_quant_alpha is None else (smooth_quant_alpha, insert_scales)
        if key not in self._corrected:
            base = self.module if key is None else self.smoothed(*key)[0].module
            correction = correct_biases(base, self.calibration.arrays, self.recipe.input_names,
                                        per_channel=self.recipe.quantization.per_channel,
                                        max_samples=self.recipe.tune.correction_samples)
            suffix = "" if key is None else f".smooth{key[0]:g}{'.mul' if key[1] else ''}"
            self._corrected[key] = (correction, self._export_checked(
                correction.module, f"model{suffix}.bias_corrected.fp32.onnx"))
        return self._corrected[key]

    def correction_layers(self) -> list[dict[str, Any]]:
        """The corrections made by the first bias correction that ran, if any ran."""
        first = next(iter(self._corrected.values()), None)
        return [layer.to_dict() for layer in first[0].layers] if first is not None else []

    def build(self, tuned: Optional[TunedTarget], default_method: CalibrationMethod) -> TunedBuild:
        """What to export for `tuned` (None: the recipe as written)."""
        if tuned is None:
            return TunedBuild(module=self.module, float_onnx=self.float_onnx, method=default_method)
        if self.module is None and (tuned.bias_correction or tuned.float_modules or tuned.smooth_quant is not None):
            raise ConfigError("tuned: smooth_quant, bias_correction and float_modules need a PyTorch model "
                              "(factory or huggingface), not ONNX")
        build = TunedBuild(module=self.module, float_onnx=self.float_onnx, method=tuned.method or default_method,
                           float_modules=tuple(tuned.float_modules))
        if tuned.smooth_quant is not None:
            build.smoothing, build.float_onnx = self.smoothed(tuned.smooth_quant, tuned.smooth_quant_mul)
            build.module = build.smoothing.module
            build.notes.append(f"SmoothQuant alpha {tuned.smooth_quant:g}: {len(build.smoothing.smoothed)} layer(s) "
                               f"smoothed, {len(build.smoothing.skipped)} skipped (migration not exact there)")
        elif tuned.smooth_quant_mul:
            raise ConfigError("tuned: smooth_quant_mul needs smooth_quant (an alpha)")
        if tuned.bias_correction:
            build.correction, build.float_onnx = self.corrected(tuned.smooth_quant, tuned.smooth_quant_mul)
            build.module = build.correction.module
        build.float_modules = wrapped_names(build.module, build.float_modules)
        return build


def wrapped_names(module, names: tuple[str, ...]) -> tuple[str, ...]:
    """`names` of Conv/Linear modules as they are called in `module`, where explicit SmoothQuant scales
    wrap a layer (`fc` becomes `fc.layer`, whose weight the exporters name `fc.layer.weight`)."""
    layers = dict(module.named_modules()) if module is not None else {}
    return tuple(f"{name}.layer" if isinstance(layers.get(name), ScaledInput) else name for name in names)


def fragment_entry(tuned: TunedTarget) -> dict[str, Any]:
    """A `tuned` entry as the recipe fragment writes it: only what differs from the recipe as written."""
    entry: dict[str, Any] = {"method": tuned.method.model_dump()} if tuned.method is not None else {}
    if tuned.smooth_quant is not None:
        entry["smooth_quant"] = tuned.smooth_quant
    if tuned.smooth_quant_mul:
        entry["smooth_quant_mul"] = True
    if tuned.bias_correction:
        entry["bias_correction"] = True
    if tuned.float_modules:
        entry["float_modules"] = list(tuned.float_modules)
    return entry
