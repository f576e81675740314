"""The manifest as typed models: built once by the pipeline, validated when written and when read.

A bundle's manifest.json is these models dumped to JSON. `Bundle.open` (edgepack.bundle.files) reads it
back through `Manifest.model_validate`, so a manifest with a missing field, a wrong type or an
unknown key is refused with the field's path, not read by string keys and trusted.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 2
Number = float | int


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LatencyFigure(_Strict):
    """Median and 90th percentile of timed runs at one batch size."""

    median_ms: float
    p90_ms: float
    repeats: int
    warmup: int
    device: Optional[str] = None
    padded: Optional[str] = None


Latency = dict[str, LatencyFigure]  # "batch_1", "batch_64", ...


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
    bound: Literal["max", "min"]
    passed: bool


class ArtifactIO(_Strict):
    """What an app developer feeds and reads."""

    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    layout: Optional[str] = None


class SlowerThanFp32(_Strict):
    """An artifact for this host that ran slower than the fp32 ONNX, and the measured reason."""

    batch: int
    artifact_ms: float
    fp32_onnx_ms: float
    batches: list[int]
    reason: str


class FileEntry(_Strict):
    """A file of the bundle with its checksum."""

    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(ge=0)


class ReferenceEntry(FileEntry):
    """The fp32 ONNX every target starts from."""

    format: str
    precision: str
    max_abs_difference_vs_torch: Optional[float] = None


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


class TargetEntry(_Strict):
    """A target's outcome: its artifacts, or the error that stopped it."""

    status: Literal["passed", "failed", "error"]
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

    method: dict[str, Any]
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


class LatencySettings(_Strict):
    """How in-process latency was measured, and on which machine."""

    batch_size: int
    warmup: int
    repeats: int
    threads: int
    machine: dict[str, Any]
    note: str


class LibraryLog(_Strict):
    """Where the libraries' own output went."""

    path: str
    note: str


class Manifest(_Strict):
    """Everything measured in one run, the toolchain, and the resolved recipe."""

    schema_version: Literal[2]
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
    recipe: dict[str, Any]
    recipe_dir: str
    pruning: Optional[dict[str, Any]] = None
    bench: Optional[dict[str, Any]] = None
    library_log: Optional[LibraryLog] = None

    def artifacts(self) -> list[tuple[str, ArtifactEntry]]:
        """(target name, artifact) for every artifact."""
        return [(name, item) for name, target in self.targets.items() for item in target.artifacts]

    def files(self) -> list[FileEntry]:
        """Every file the manifest vouches for: reference, pruned model files, artifacts."""
        pruned = [FileEntry.model_validate(entry) for entry in (self.pruning or {}).get("files", [])]
        return [self.reference, *pruned, *(item for _, item in self.artifacts())]

    def to_json_dict(self) -> dict[str, Any]:
        """The JSON-ready dict written as manifest.json: the fields that were set, as they were given."""
        return self.model_dump(exclude_unset=True)
