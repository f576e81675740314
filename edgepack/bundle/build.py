"""The bundle manifest: everything measured in the run, the toolchain, and the resolved recipe."""

from __future__ import annotations

import datetime as dt
import os
import platform
from importlib import metadata
from typing import Iterator

from edgepack import __version__
from edgepack.bundle.manifest import SCHEMA_VERSION
from edgepack.isa import host_isa
from edgepack.recipe.schema import Recipe

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


def machine_facts(threads: int) -> dict:
    """Where the latency figures were measured."""
    return {"platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "threads": threads, "processor": _cpu_model(), "isa": list(host_isa().features)}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _artifact_entry(result, reference_size: int, budget: dict) -> dict:
    artifact = result.artifact
    return {
        "path": result.relative_path, "sha256": result.sha256, "size_bytes": result.size_bytes,
        "size_ratio_vs_fp32_onnx": result.size_bytes / reference_size,
        "format": artifact.format, "precision": artifact.precision,
        "runtime": artifact.runtime, "runtime_version": artifact.runtime_version,
        "io": {"inputs": artifact.details.get("inputs", []), "outputs": artifact.details.get("outputs", []),
               "layout": artifact.details.get("layout")},
        "structure": {key: value for key, value in artifact.details.items()
                      if key not in ("inputs", "outputs", "layout")},
        "metrics": result.drift.metrics, "drift": result.drift.to_dict()["checks"],
        "budget": budget, "passed": result.drift.passed, "latency": result.latency,
        "validated_on": result.validated_on,
    }


def build_manifest(recipe: Recipe, *, source: dict, reference: dict, targets, calibration, evaluation,
                   warnings) -> dict:
    """Assemble the manifest from the run's measurements."""
    budget = recipe.budget.model_dump()
    return {
        "schema_version": SCHEMA_VERSION,
        "name": recipe.name,
        "task": recipe.task,
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "passed": all(result.status == "passed" for result in targets),
        "source_model": source,
        "reference": reference,
        "targets": {
            result.name: {"status": result.status, "error": result.error,
                          "artifacts": [_artifact_entry(item, reference["size_bytes"], budget)
                                        for item in result.artifacts]}
            for result in targets
        },
        "calibration": {"method": recipe.calibration.method.model_dump(), "source": calibration.source,
                        "samples_available_after_selection": calibration.num_samples,
                        "samples_used": calibration.used_samples(
                            equal_only=recipe.calibration.method.needs_equal_batches),
                        "batch_size": calibration.batch_size, "seed": recipe.calibration.seed,
                        "sha256": calibration.sha256},
        "evaluation": {"source": evaluation.source, "samples": evaluation.num_samples, "sha256": evaluation.sha256,
                       "labels": recipe.evaluation.labels},
        "latency_settings": {**recipe.latency.model_dump(), "machine": machine_facts(recipe.latency.threads),
                             "note": "median wall time on this machine's CPU, numpy in/out, after warm-up"},
        "warnings": list(warnings),
        "toolchain": toolchain_versions(),
        "recipe": recipe.model_dump(mode="json"),
        "recipe_dir": str(recipe.base_dir),
    }


def artifact_entries(manifest: dict) -> list[tuple[str, dict]]:
    """(target name, artifact entry) for every artifact the manifest lists."""
    return [(name, item) for name, target in manifest["targets"].items() for item in target.get("artifacts", [])]


def validation_notes(manifest: dict) -> list[str]:
    """The distinct caveats targets attached to how their artifacts were validated (e.g. CPU for CUDA)."""
    return sorted({item["structure"].get("validation") for _, item in artifact_entries(manifest)} - {None})


def iter_files(manifest: dict) -> Iterator[dict]:
    """Manifest entries that describe files: the reference model and every artifact."""
    yield manifest["reference"]
    yield from manifest.get("pruning", {}).get("files", [])
    yield from (item for _, item in artifact_entries(manifest))
