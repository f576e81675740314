"""Building the bundle manifest: everything measured in the run, the toolchain, and the resolved recipe."""

from __future__ import annotations

import datetime as dt
import os
import platform
from importlib import metadata
from typing import TYPE_CHECKING, Any, Optional, Sequence, cast

from edgepack import __version__
from edgepack.bundle.buckets import SequenceBuckets
from edgepack.bundle.entries import Bound
from edgepack.bundle.manifest import (
    SCHEMA_VERSION,
    ArtifactEntry,
    CalibrationEntry,
    DriftCheckEntry,
    EvaluationEntry,
    LatencySettings,
    MachineFacts,
    Manifest,
    PruningSection,
    ReferenceEntry,
    SourceModel,
    TargetEntry,
    split_details,
)
from edgepack.isa import host_isa
from edgepack.recipe.schema import Recipe
from edgepack.text.spec import ATTENTION_MASK

if TYPE_CHECKING:
    from edgepack.calibration.dataset import SampleSet
    from edgepack.pipeline import ArtifactResult, TargetResult

TOOLCHAIN_PACKAGES = ("torch", "torch-pruning", "onnx", "onnxruntime", "onnxscript", "numpy", "safetensors")


def toolchain_versions() -> dict[str, str]:
    """Installed versions of the packages that shaped the artifacts."""
    versions = {"python": platform.python_version(), "edgepack": __version__}
    for package in TOOLCHAIN_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def machine_facts(threads: int) -> MachineFacts:
    """Where the latency figures were measured."""
    return MachineFacts(platform=platform.platform(), machine=platform.machine(), cpu_count=os.cpu_count(),
                        threads=threads, processor=_cpu_model(), isa=list(host_isa().features))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _artifact_entry(result: ArtifactResult, reference_size: int, budget: dict[str, Any],
                    evaluation: SampleSet) -> ArtifactEntry:
    artifact = result.artifact
    io, structure = split_details(artifact.details)
    if "sequence_buckets" in structure and ATTENTION_MASK in evaluation.arrays:
        # the rows the verification routed to each length: the same rule the runner applies (bundle.buckets)
        buckets = SequenceBuckets.model_validate(structure["sequence_buckets"])
        structure["sequence_buckets"] = buckets.with_evaluation(evaluation.arrays[ATTENTION_MASK]).to_json_dict()
    return ArtifactEntry(
        path=result.relative_path, sha256=result.sha256, size_bytes=result.size_bytes,
        size_ratio_vs_fp32_onnx=result.size_bytes / reference_size,
        format=artifact.format, precision=artifact.precision,
        runtime=artifact.runtime, runtime_version=artifact.runtime_version, io=io, structure=structure,
        metrics=dict(result.drift.metrics),
        drift=[DriftCheckEntry(metric=check.metric, value=check.value, limit=check.limit,
                               bound=cast(Bound, check.bound), passed=check.passed) for check in result.drift.checks],
        budget=budget, passed=result.drift.passed, latency=result.latency, validated_on=result.validated_on,
        golden=list(result.golden))


def build_manifest(recipe: Recipe, *, source: SourceModel, reference: ReferenceEntry,
                   targets: Sequence[TargetResult], calibration: SampleSet, evaluation: SampleSet,
                   warnings: Sequence[str], pruning: Optional[PruningSection] = None) -> Manifest:
    """Assemble the manifest from the run's measurements."""
    budget = recipe.budget.model_dump()
    method = recipe.calibration.method
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        name=recipe.name,
        task=recipe.task,
        created_utc=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        passed=all(result.status == "passed" for result in targets),
        source_model=source,
        reference=reference,
        targets={result.name: TargetEntry(status=result.status, error=result.error,
                                          artifacts=[_artifact_entry(item, reference.size_bytes, budget,
                                                                     evaluation)
                                                     for item in result.artifacts])
                 for result in targets},
        # a fresh copy with every field set, so that defaults the recipe left out are written too
        calibration=CalibrationEntry(method=type(method).model_validate(method.model_dump()), source=calibration.source,
                                     samples_available_after_selection=calibration.num_samples,
                                     samples_used=calibration.used_samples(equal_only=method.needs_equal_batches),
                                     batch_size=calibration.batch_size, seed=recipe.calibration.seed,
                                     sha256=calibration.sha256),
        evaluation=EvaluationEntry(source=evaluation.source, samples=evaluation.num_samples,
                                   sha256=evaluation.sha256, labels=recipe.evaluation.labels),
        latency_settings=LatencySettings(**recipe.latency.model_dump(), machine=machine_facts(recipe.latency.threads),
                                         note="median wall time on this machine's CPU, numpy in/out, after warm-up"),
        warnings=list(warnings),
        toolchain=toolchain_versions(),
        recipe=recipe.model_dump(mode="json"),
        recipe_dir=str(recipe.base_dir),
    )
    if pruning is not None:
        manifest.pruning = pruning
    return manifest
