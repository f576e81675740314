"""Turn a `tuned` recipe entry into what a target builds from: the module (bias-corrected or not), its
checked fp32 ONNX, the calibration method and the modules kept float. Shared by `pack` and the search."""

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


@dataclass
class TunedBuild:
    """The inputs of one target's export under a tuned configuration."""

    module: Any  # torch.nn.Module, or None for an ONNX model
    float_onnx: Path
    method: CalibrationMethod
    float_modules: tuple[str, ...] = ()
    correction: Optional[BiasCorrection] = None
    notes: list[str] = field(default_factory=list)


class VariantCache:
    """Bias-corrected copies of the student, each exported to fp32 ONNX once and checked against torch."""

    def __init__(self, module, float_onnx: Path, recipe: Recipe, calibration: SampleSet, folder: Path):
        self.module, self.float_onnx, self.recipe, self.calibration = module, float_onnx, recipe, calibration
        self.folder = folder
        self._corrected: Optional[tuple[BiasCorrection, Path]] = None

    def corrected(self) -> tuple[BiasCorrection, Path]:
        """The bias-corrected student and its fp32 ONNX (computed on first use)."""
        if self._corrected is None:
            correction = correct_biases(self.module, self.calibration.arrays, self.recipe.input_names,
                                        per_channel=self.recipe.quantization.per_channel,
                                        max_samples=self.recipe.tune.correction_samples)
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / "model.bias_corrected.fp32.onnx"
            sample = {name: array[:2] for name, array in self.calibration.arrays.items()}
            export_float_onnx(correction.module, self.recipe.inputs, sample, path)
            check_against_torch(correction.module, path, self.recipe.inputs, sample,
                                threads=self.recipe.latency.threads)
            self._corrected = (correction, path)
        return self._corrected

    def correction_layers(self) -> list[dict[str, Any]]:
        """The corrections made, if bias correction ran."""
        return [layer.to_dict() for layer in self._corrected[0].layers] if self._corrected is not None else []

    def build(self, tuned: Optional[TunedTarget], default_method: CalibrationMethod) -> TunedBuild:
        """What to export for `tuned` (None: the recipe as written)."""
        if tuned is None:
            return TunedBuild(module=self.module, float_onnx=self.float_onnx, method=default_method)
        if self.module is None and (tuned.bias_correction or tuned.float_modules):
            raise ConfigError("tuned: bias_correction and float_modules need a PyTorch model (factory), not ONNX")
        build = TunedBuild(module=self.module, float_onnx=self.float_onnx, method=tuned.method or default_method,
                           float_modules=tuple(tuned.float_modules))
        if tuned.bias_correction:
            build.correction, build.float_onnx = self.corrected()
            build.module = build.correction.module
        return build


def fragment_entry(tuned: TunedTarget) -> dict[str, Any]:
    """A `tuned` entry as the recipe fragment writes it: only what differs from the recipe as written."""
    entry: dict[str, Any] = {"method": tuned.method.model_dump()} if tuned.method is not None else {}
    if tuned.bias_correction:
        entry["bias_correction"] = True
    if tuned.float_modules:
        entry["float_modules"] = list(tuned.float_modules)
    return entry
