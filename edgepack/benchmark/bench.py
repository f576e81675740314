"""`edgepack bench`: every artifact and the float baselines, each timed in its own fresh process."""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from edgepack.benchmark.worker import run
from edgepack.bundle.build import artifact_entries
from edgepack.bundle.documents import write_bundle_documents
from edgepack.bundle.files import read_manifest
from edgepack.calibration.dataset import load_sample_set
from edgepack.errors import EdgepackError
from edgepack.evaluation.latency import make_batch
from edgepack.progress import Progress, SilentProgress
from edgepack.recipe.schema import DataSource, InputSpec

EAGER = "float (PyTorch eager fp32)"


@dataclass(frozen=True)
class BenchSettings:
    """How latency is measured; all of it is recorded with the figures."""

    batch_size: int = 64
    warmup: int = 5
    repeats: int = 30
    threads: int = 2

    @classmethod
    def from_latency(cls, latency) -> "BenchSettings":
        """The settings of a recipe's `latency` section."""
        return cls(batch_size=latency.batch_size, warmup=latency.warmup, repeats=latency.repeats,
                   threads=latency.threads)


def _feeds(manifest: dict, data: Optional[Path]) -> tuple[dict[str, np.ndarray], str]:
    """Benchmark inputs: the given data, else the recipe's evaluation data, else seeded random data."""
    recipe = manifest["recipe"]
    inputs = [InputSpec(**spec) for spec in recipe["inputs"]]
    path = Path(data) if data else Path(recipe["evaluation"]["path"]) if recipe["evaluation"].get("path") else None
    if path is not None and path.is_file():
        sample_set = load_sample_set(DataSource(path=path.resolve()), inputs, role="benchmark", base_dir=Path.cwd())
        return sample_set.arrays, str(path)
    rng = np.random.default_rng(0)
    arrays = {spec.name: rng.random((256, *spec.sample_shape)).astype(spec.dtype) for spec in inputs}
    return arrays, "seeded random data (evaluation data not found)"


def _jobs(bundle: Path, manifest: dict) -> list[tuple[str, str, dict]]:
    """(name, kind label, job) for each thing to time: eager baseline, ORT fp32 baseline, every artifact."""
    jobs = []
    source = manifest["source_model"]
    if source.get("kind") in ("factory", "pickle"):
        jobs.append((EAGER, "baseline",
                     {"kind": "torch", "recipe": manifest["recipe"], "base_dir": manifest["recipe_dir"]}))
    jobs.append((ONNX_FP32, "baseline",
                 {"kind": "onnx", "path": str(bundle / manifest["reference"]["path"])}))
    for name, artifact in artifact_entries(manifest):
        jobs.append((artifact["path"], name,
                     {"kind": "artifact", "target": name, "path": str(bundle / artifact["path"])}))
    return jobs


def bench_bundle(bundle: Path, settings: BenchSettings = BenchSettings(), *, data: Optional[Path] = None,
                 manifest: Optional[dict] = None, progress: Progress = SilentProgress()) -> dict:
    """Median latency at batch 1 and `settings.batch_size`, peak memory and size for every entry,
    with speed and size ratios against PyTorch eager fp32 measured in this same run."""
    bundle = Path(bundle)
    manifest = manifest if manifest is not None else read_manifest(bundle)
    arrays, data_source = _feeds(manifest, data)
    batches = {size: make_batch(arrays, size) for size in sorted({1, settings.batch_size})}
    sizes = {artifact["path"]: artifact["size_bytes"] for _, artifact in artifact_entries(manifest)}
    sizes[ONNX_FP32] = manifest["reference"]["size_bytes"]
    if "size_bytes" in manifest["source_model"]:
        sizes[EAGER] = manifest["source_model"]["size_bytes"]
    rows = []
    context = multiprocessing.get_context("spawn")
    for name, group, job in _jobs(bundle, manifest):
        job.update(batches=batches, warmup=settings.warmup, repeats=settings.repeats, threads=settings.threads)
        with (progress.step(f"bench: {name}"),
              concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool):
            try:
                measured = pool.submit(run, job).result()
            except EdgepackError:
                raise
            except Exception as exc:
                raise EdgepackError(f"bench of {name} failed: {type(exc).__name__}: {exc}") from exc
        rows.append({"name": name, "group": group, "size_bytes": sizes.get(name), **measured})
    add_ratios(rows, eager=next((row for row in rows if row["name"] == EAGER), None))
    return {"settings": {**settings.__dict__, "batch_sizes": sorted(batches), "data": data_source,
                         "isolation": "each entry timed in a fresh process (multiprocessing spawn) with glibc "
                                      "malloc set to its steady state (mmap threshold 64 MB), as in a long-running app",
                         "memory": "peak_rss_mb: process peak resident memory (VmHWM); model_memory_mb: peak minus "
                                   "resident memory before loading the model"},
            "rows": rows}


ONNX_FP32 = "float (ONNX Runtime fp32)"


def add_ratios(rows: list[dict], *, eager: Optional[dict]) -> None:
    """Speed-up and size ratio of every row against the PyTorch eager row of the same run, and speed-up
    against the ONNX Runtime fp32 row (the fair baseline for an ONNX INT8 artifact)."""
    onnx_fp32 = next((row for row in rows if row["name"] == ONNX_FP32), None)
    for row in rows:
        if onnx_fp32 is not None:
            row["speedup_vs_onnx_fp32"] = {key: onnx_fp32["latency"][key]["median_ms"] / value["median_ms"]
                                           for key, value in row["latency"].items()}
        if eager is None:
            continue
        row["speedup_vs_eager"] = {key: eager["latency"][key]["median_ms"] / value["median_ms"]
                                   for key, value in row["latency"].items()}
        if row.get("size_bytes") and eager.get("size_bytes"):
            row["size_vs_eager"] = row["size_bytes"] / eager["size_bytes"]


def bench_bundle_and_record(bundle: Path, settings: BenchSettings, *, data: Optional[Path] = None,
                            progress: Progress = SilentProgress(), json_path: Optional[Path] = None) -> dict:
    """Benchmark a bundle, write the figures into its manifest and reports, and optionally to a JSON file."""
    manifest = read_manifest(Path(bundle))
    figures = bench_bundle(bundle, settings, data=data, manifest=manifest, progress=progress)
    manifest["bench"] = figures
    write_bundle_documents(Path(bundle), manifest)
    if json_path is not None:
        Path(json_path).write_text(json.dumps(figures, indent=2) + "\n")
    return figures
