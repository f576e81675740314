"""The Target interface: what a deployment target needs, how it exports, how its artifacts run."""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Optional

from pydantic import BaseModel, ConfigDict, ValidationError

from edgepack.bundle.manifest import ArtifactEntry
from edgepack.calibration.dataset import SampleSet
from edgepack.calibration.methods import CalibrationMethod
from edgepack.errors import ConfigError, MissingDependencyError
from edgepack.evaluation.runners import Runner
from edgepack.recipe.schema import InputSpec, QuantizationConfig, Recipe

if TYPE_CHECKING:
    import torch


Summary = list[tuple[str, str]]  # (label, value) rows of the report's compression section


def basic_summary(artifact: ArtifactEntry) -> Summary:
    """What any artifact says of itself, whatever its target: format, precision and I/O element types."""
    io_types = sorted({tensor.dtype for tensor in [*artifact.io.inputs, *artifact.io.outputs]})
    return [("format", f"{artifact.format}, {artifact.precision}"), ("I/O dtypes", ", ".join(io_types) or "—")]


class NoOptions(BaseModel):
    """A target without options of its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Artifact:
    """One file a target produced, with what an app developer needs to call it."""

    target: str
    path: Path
    format: str
    precision: str
    runtime: str
    runtime_version: str
    details: dict[str, Any] = field(default_factory=dict)
    # In memory only, never written to the bundle: the quantized torch module the artifact was lowered from
    # (arm-xnnpack), so first-divergence localization re-lowers that graph instead of quantizing again.
    lowered_from: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class ExportContext:
    """Everything a target may use to build its artifacts."""

    float_onnx: Path
    module: Optional["torch.nn.Module"]  # None when the recipe's model is an ONNX file
    inputs: list[InputSpec]
    calibration: SampleSet
    method: CalibrationMethod
    quantization: QuantizationConfig
    out_dir: Path
    scratch_dir: Path
    options: BaseModel = NoOptions()
    threads: int = 2  # for measurements a target makes while choosing how to build
    float_modules: tuple[str, ...] = ()  # torch modules kept float (recipe `tuned`): Conv/Linear + activation
    # The float model's own fp32 ONNX when `float_onnx` is a variant made for quantization (bias-corrected:
    # not the same function); artifacts that are not quantized (fp16) are built from it. None: float_onnx.
    unquantized_onnx: Optional[Path] = None
    # Likewise the float PyTorch module when `module` is such a variant (SmoothQuant scales stop attention
    # fusion); None: module.
    unquantized_module: Optional["torch.nn.Module"] = None


class Target(ABC):
    """A deployment target: one module in `targets/`, registered by name."""

    name: ClassVar[str]
    description: ClassVar[str]
    extra: ClassVar[str]
    required_modules: ClassVar[tuple[str, ...]]
    calibration_methods: ClassVar[frozenset[str]]
    Options: ClassVar[type[BaseModel]] = NoOptions
    # True when this host is a deployment device of the target (its latency here is real, not emulated).
    runs_on_host: ClassVar[bool] = False

    def check_available(self) -> None:
        """Raise MissingDependencyError naming the extra when a required package is missing."""
        for module in self.required_modules:
            if importlib.util.find_spec(module) is None:
                raise MissingDependencyError(f"target '{self.name}'", module, self.extra)

    def check_recipe(self, recipe: Recipe) -> None:
        """Reject recipe settings this target cannot honour, before any heavy work."""
        method = recipe.calibration.method.name
        if method not in self.calibration_methods:
            raise ConfigError(f"calibration.method: target '{self.name}' does not support calibration method "
                              f"'{method}' (supported: {', '.join(sorted(self.calibration_methods))})")

    def parse_options(self, raw: dict) -> BaseModel:
        """Validate this target's section of the recipe's `target_options`."""
        try:
            return self.Options.model_validate(raw or {})
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
            raise ConfigError(f"target_options.{self.name}: {problems} "
                              f"(valid keys: {', '.join(self.Options.model_fields) or 'none'})") from exc

    def summarize(self, artifact: ArtifactEntry) -> Summary:
        """The report's compression facts of one of this target's artifacts, read from the `structure` its
        export recorded (Q/DQ nodes for ONNX, float tensors for TFLite, delegation for a .pte, ...)."""
        return basic_summary(artifact)

    @abstractmethod
    def export(self, context: ExportContext) -> list[Artifact]:
        """Build this target's artifacts into `context.out_dir`."""

    @abstractmethod
    def runner(self, path: Path, *, threads: int) -> Runner:
        """A runner for an artifact this target produced."""
