"""The manifest as typed models: built once by the pipeline, validated when read.

A bundle's manifest.json is these models dumped to JSON. `Bundle.open` (edgepack.bundle.files) reads it
back through `Manifest.model_validate`, so a manifest with a missing field, a wrong type or an
unknown key is refused with the field's path. This module, with its building blocks (entries.py) and
the optional stages' sections (sections.py), is the only code that knows the JSON's keys: everything
else reads attributes. `structure` holds each target's own facts (op counts, tables, ...);
the few of them that shared code shows (embedding tables, the x86 `isa` choice, a validation caveat)
are validated here and read through typed accessors.
"""

from __future__ import annotations

from typing import Any, Final, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgepack.bundle.buckets import SequenceBuckets
from edgepack.bundle.entries import (
    Bound,
    FileEntry,
    Latency,
    Number,
    Status,
    Timing,
    _Strict,
)
from edgepack.bundle.sections import BenchFigures, PruningSection
from edgepack.calibration.methods import CalibrationMethod
from edgepack.evaluation.divergence import DivergenceRecord
from edgepack.text.spec import TextSection
from edgepack.tuning.record import TuningRecord

SCHEMA_VERSION: Final = 3
READABLE_SCHEMAS: Final = (2, 3)  # schema 3 added golden files, the device script and activation coverage


class ValidatedOn(_Strict):
    """Where an artifact's drift was measured and what computed its outputs."""

    cpu: str
    machine: str
    isa: list[str]
    runtime: str
    runtime_version: str
    execution_provider: str
    arithmetic: str


class DriftCheckEntry(_Strict):
    """One budget bound against its measurement."""

    metric: str
    value: float
    limit: float
    bound: Bound
    passed: bool


class QuantParams(_Strict):
    """Scale and zero point an app applies at an input or output (ONNX also names the integer type)."""

    scale: float
    zero_point: int
    dtype: Optional[str] = None


class TensorSpec(_Strict):
    """One input or output of an artifact as the app sees it."""

    name: str
    dtype: str
    shape: list[int | str]
    quantization: Optional[QuantParams] = None
    layout: Optional[str] = None


class ArtifactIO(_Strict):
    """What an app developer feeds and reads."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    layout: Optional[str] = None


IO_KEYS = ("inputs", "outputs", "layout")


def split_details(details: dict[str, Any]) -> tuple[ArtifactIO, dict[str, Any]]:
    """A target's artifact details as the manifest stores them: the I/O, and the rest (`structure`)."""
    io = ArtifactIO(inputs=details.get("inputs", []), outputs=details.get("outputs", []),
                    layout=details.get("layout"))
    return io, {key: value for key, value in details.items() if key not in IO_KEYS}


class SlowerThanFp32(_Strict):
    """An artifact for this host that ran slower than the fp32 ONNX, and the measured reason."""

    batch: int
    artifact_ms: float
    fp32_onnx_ms: float
    batches: list[int]
    reason: str


class ReferenceEntry(FileEntry):
    """The fp32 ONNX every target starts from."""

    format: str
    precision: str
    max_abs_difference_vs_torch: Optional[float] = None


class EmbeddingTable(_Strict):
    """One quantized embedding table of an artifact (x86, arm-tflite, arm-xnnpack)."""

    table: str
    rows: int
    dim: int
    bits: int
    scales: str
    bytes_before: int
    bytes_after: int
    max_abs_error: float
    error_bound: float
    lookups: int = 1  # the .pte does not count lookups: one per table


class SaturationProof(_Strict):
    """Whether an x86 artifact's integer pair sums can exceed int16 on a CPU without VNNI."""

    integer_layers: int
    layers_that_can_saturate_without_vnni: list[str]
    worst_pair_sum: int
    int16_limit: int
    proof: str
    data_check: Optional[list[dict[str, Any]]] = None
    data_check_outputs_at_risk: Optional[int] = None


class IsaChoice(_Strict):
    """The x86 `isa` option: which weights were stored, why, what the artifact needs, the proof."""

    option: str
    weights: str
    description: str
    requires_isa: list[str]
    reason: str
    candidates: list[dict[str, Any]] = []
    measured_on: Optional[str] = None
    saturation: SaturationProof


class _SharedFacts(BaseModel):
    """The facts in `structure` that shared code reads; any other key is the target's own."""

    model_config = ConfigDict(extra="allow")
    embedding_tables: list[EmbeddingTable] = []
    isa: Optional[IsaChoice] = None
    validation: Optional[str] = None
    sequence_buckets: Optional[SequenceBuckets] = None


class ArtifactEntry(FileEntry):
    """One artifact: file, runtime, I/O, target-specific structure, drift, latency, validation host."""

    size_ratio_vs_fp32_onnx: float
    format: str
    precision: str
    runtime: str
    runtime_version: str
    io: ArtifactIO
    structure: dict[str, Any]  # target-specific facts (op counts, tables, isa choice, ...)
    metrics: dict[str, Optional[Number]]
    drift: list[DriftCheckEntry]
    budget: dict[str, Any]
    passed: bool
    latency: Latency
    validated_on: ValidatedOn
    slower_than_fp32: Optional[SlowerThanFp32] = None
    golden: list[FileEntry] = []  # golden inputs/outputs for verify_on_device.py, beside the artifact

    @field_validator("structure")
    @classmethod
    def _shared_facts_are_well_formed(cls, structure: dict[str, Any]) -> dict[str, Any]:
        _SharedFacts.model_validate(structure)
        return structure

    @property
    def embedding_tables(self) -> list[EmbeddingTable]:
        """The artifact's quantized embedding tables (none for targets that keep tables float)."""
        return _SharedFacts.model_validate(self.structure).embedding_tables

    @property
    def isa(self) -> Optional[IsaChoice]:
        """The x86 `isa` choice, for artifacts that made one."""
        return _SharedFacts.model_validate(self.structure).isa

    @property
    def validation_note(self) -> Optional[str]:
        """A caveat on how the artifact was validated (e.g. a CUDA artifact validated on CPU)."""
        return _SharedFacts.model_validate(self.structure).validation

    @property
    def sequence_buckets(self) -> Optional[SequenceBuckets]:
        """The bucketed model set of a text artifact exported at several sequence lengths (arm-tflite)."""
        return _SharedFacts.model_validate(self.structure).sequence_buckets

    def companion_files(self) -> list[FileEntry]:
        """Files of the artifact besides its main file (the shorter models of a bucketed set)."""
        buckets = self.sequence_buckets
        return buckets.companion_files(self.path) if buckets is not None else []


class TargetEntry(_Strict):
    """A target's outcome: its artifacts, or the error that stopped it."""

    status: Status
    error: Optional[str] = None
    artifacts: list[ArtifactEntry] = []


class SourceModel(_Strict):
    """The float model: what it is, its quality and latency, its size."""

    kind: str
    description: str
    runtime: str
    metrics: dict[str, Optional[Number]]
    latency: Latency
    reference_onnx_latency: Latency
    params: Optional[int] = None
    macs: Optional[int] = None
    size_bytes: Optional[int] = None
    rewrites_for_export: list[str] = []


class CalibrationEntry(_Strict):
    """The calibration data and method used."""

    method: CalibrationMethod
    source: str
    samples_available_after_selection: int
    samples_used: int
    batch_size: int
    seed: int
    sha256: str


class EvaluationEntry(_Strict):
    """The held-out data drift was measured on."""

    source: str
    samples: int
    sha256: str
    labels: Optional[str] = None


class MachineFacts(_Strict):
    """The machine latency was measured on."""

    platform: str
    machine: str
    cpu_count: Optional[int]
    threads: int
    processor: str
    isa: list[str]


class LatencySettings(Timing):
    """How in-process latency was measured, and on which machine."""

    machine: MachineFacts
    note: str
    max_seconds: Optional[float] = None  # time bound of one batch size's timed runs (schema 3)


class LibraryLog(_Strict):
    """Where the libraries' own output went."""

    path: str
    note: str


class ActivationCoverageEntry(_Strict):
    """Share of evaluation activations of the float model outside the ranges seen on calibration data."""

    share_outside: float
    worst_layer: str
    worst_share: float
    layers: int
    samples: int


class Manifest(_Strict):
    """Everything measured in one run, the toolchain, and the resolved recipe."""

    schema_version: Literal[2, 3]
    name: str
    task: str
    created_utc: str
    passed: bool
    source_model: SourceModel
    reference: ReferenceEntry
    targets: dict[str, TargetEntry]
    calibration: CalibrationEntry
    evaluation: EvaluationEntry
    latency_settings: LatencySettings
    warnings: list[str]
    toolchain: dict[str, str]
    recipe: dict[str, Any]  # as written; `Bundle.open` parses it once into a Recipe
    recipe_dir: str
    pruning: Optional[PruningSection] = None
    bench: Optional[BenchFigures] = None
    library_log: Optional[LibraryLog] = None
    activation_coverage: Optional[ActivationCoverageEntry] = None
    device_script: Optional[FileEntry] = None  # verify_on_device.py: numpy + one runtime, no edgepack
    text: Optional[TextSection] = None  # tokenizer files, spec and golden tokenized examples (text models)
    tuned: dict[str, dict[str, Any]] = Field(default_factory=dict)  # per-target configuration applied (recipe/tune)
    tuning: dict[str, TuningRecord] = Field(default_factory=dict)  # the searches of `tune.auto`, per target
    divergence: dict[str, DivergenceRecord] = Field(default_factory=dict)  # failing ONNX artifacts, by path

    def artifacts(self) -> list[tuple[str, ArtifactEntry]]:
        """(target name, artifact) for every artifact."""
        return [(name, item) for name, target in self.targets.items() for item in target.artifacts]

    def files(self) -> list[FileEntry]:
        """Every file the manifest vouches for: reference, pruned model files, artifacts with their companion
        files, golden files, script."""
        pruned = self.pruning.files if self.pruning is not None else []
        artifacts = [item for _, item in self.artifacts()]
        companions = [entry for item in artifacts for entry in item.companion_files()]
        golden = [entry for item in artifacts for entry in item.golden]
        script = [self.device_script] if self.device_script is not None else []
        text = self.text.files if self.text is not None else []
        return [self.reference, *pruned, *artifacts, *companions, *golden, *script, *text]

    def validation_notes(self) -> list[str]:
        """The distinct caveats targets attached to how their artifacts were validated (e.g. CPU for CUDA)."""
        return sorted({note for _, item in self.artifacts() if (note := item.validation_note) is not None})

    @property
    def budget_disabled(self) -> bool:
        """The recipe said `budget: none`: drift was measured and reported, not checked."""
        return bool(self.recipe.get("budget", {}).get("disabled"))


def previous_schema_files(raw: Any, versions: tuple[int, ...]) -> Optional[list[FileEntry]]:
    """The files listed by a manifest of an earlier schema in `versions` (same file-list keys: reference,
    pruning.files, targets.*.artifacts), or None when `raw` is not one."""
    if not isinstance(raw, dict) or raw.get("schema_version") not in versions or \
            not isinstance(raw.get("reference"), dict) or not isinstance(raw.get("targets"), dict):
        return None
    entries = [raw["reference"], *(raw.get("pruning") or {}).get("files", []),
               *(item for target in raw["targets"].values() for item in target.get("artifacts", []))]
    try:
        return [FileEntry(path=entry["path"], sha256=entry["sha256"], size_bytes=entry["size_bytes"])
                for entry in entries]
    except (KeyError, TypeError, ValueError):
        return None
