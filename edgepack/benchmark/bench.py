"""`edgepack bench`: every artifact and the float baselines, each timed in its own fresh process."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import multiprocessing
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from edgepack.benchmark.worker import BenchJob, run
from edgepack.bundle.documents import write_bundle_documents
from edgepack.bundle.files import Bundle
from edgepack.bundle.manifest import BenchFigures
from edgepack.bundle.sections import BenchRow, BenchSettingsEntry
from edgepack.bundle.signing import SIGNATURE
from edgepack.calibration.dataset import load_sample_set
from edgepack.errors import EdgepackError, describe
from edgepack.evaluation.latency import make_batch
from edgepack.progress import Progress, SilentProgress
from edgepack.recipe.schema import DataSource, LatencyConfig
from edgepack.text.bundle import bundle_reader

EAGER = "float (PyTorch eager fp32)"
ONNX_FP32 = "float (ONNX Runtime fp32)"
ISOLATION = ("each entry timed in a fresh process (multiprocessing spawn) with glibc malloc set to its steady state "
             "(mmap threshold 64 MB), as in a long-running app")
MEMORY = ("peak_rss_mb: process peak resident memory (VmHWM); model_memory_mb: peak minus resident memory before "
          "loading the model")


@dataclass(frozen=True)
class BenchSettings:
    """How latency is measured; all of it is recorded with the figures."""

    batch_size: int = 64
    warmup: int = 5
    repeats: int = 30
    threads: int = 2

    @classmethod
    def from_latency(cls, latency: LatencyConfig) -> "BenchSettings":
        """The settings of a recipe's `latency` section."""
        return cls(batch_size=latency.batch_size, warmup=latency.warmup, repeats=latency.repeats,
                   threads=latency.threads)


def _feeds(bundle: Bundle, data: Optional[Path]) -> tuple[dict[str, np.ndarray], str]:
    """Benchmark inputs: the given data, else the recipe's evaluation data, else seeded random data."""
    recipe = bundle.recipe
    path = Path(data) if data else recipe.evaluation.path
    if path is not None and path.is_file():
        sample_set = load_sample_set(DataSource.model_validate({"path": path.resolve()}), recipe.inputs,
                                     role="benchmark", base_dir=Path.cwd(),
                                     reader=bundle_reader(bundle.folder, recipe))  # text: the bundle's tokenizer
        return sample_set.arrays, str(path)
    rng = np.random.default_rng(0)
    arrays = {spec.name: rng.random((256, *spec.sample_shape)).astype(spec.dtype) for spec in recipe.inputs}
    return arrays, "seeded random data (evaluation data not found)"


def _jobs(bundle: Bundle, settings: BenchSettings,
          batches: dict[int, dict[str, np.ndarray]]) -> list[tuple[str, str, BenchJob]]:
    """(name, kind label, job) for each thing to time: eager baseline, ORT fp32 baseline, every artifact."""
    manifest = bundle.manifest
    timing = BenchJob(kind="onnx", batches=batches, warmup=settings.warmup, repeats=settings.repeats,
                      threads=settings.threads, path=bundle.folder / manifest.reference.path)
    jobs = []
    if manifest.source_model.kind in ("factory", "pickle", "huggingface"):
        jobs.append((EAGER, "baseline", dataclasses.replace(timing, kind="torch", path=None, recipe=bundle.recipe)))
    jobs.append((ONNX_FP32, "baseline", timing))
    for name, artifact in manifest.artifacts():
        jobs.append((artifact.path, name, dataclasses.replace(timing, kind="artifact", target=name,
                                                              path=bundle.folder / artifact.path)))
    return jobs


def bench_bundle(bundle: Bundle, settings: BenchSettings = BenchSettings(), *, data: Optional[Path] = None,
                 progress: Progress = SilentProgress()) -> BenchFigures:
    """Median latency at batch 1 and `settings.batch_size`, peak memory and size for every entry,
    with speed and size ratios against PyTorch eager fp32 measured in this same run."""
    manifest = bundle.manifest
    arrays, data_source = _feeds(bundle, data)
    batches = {size: make_batch(arrays, size) for size in sorted({1, settings.batch_size})}
    sizes = {artifact.path: artifact.size_bytes for _, artifact in manifest.artifacts()}
    sizes[ONNX_FP32] = manifest.reference.size_bytes
    if manifest.source_model.size_bytes is not None:
        sizes[EAGER] = manifest.source_model.size_bytes
    rows = []
    context = multiprocessing.get_context("spawn")
    for name, group, job in _jobs(bundle, settings, batches):
        with (progress.step(f"bench: {name}"),
              concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool):
            try:
                measured = pool.submit(run, job).result()
            except EdgepackError:
                raise
            except Exception as exc:
                raise EdgepackError(f"bench of {name} failed: {describe(exc)}") from exc
        rows.append(BenchRow(name=name, group=group, size_bytes=sizes.get(name), latency=measured.latency,
                             device=measured.device, steady_allocator=measured.steady_allocator,
                             peak_rss_mb=measured.peak_rss_mb, model_memory_mb=measured.model_memory_mb))
    add_ratios(rows, eager=next((row for row in rows if row.name == EAGER), None))
    return BenchFigures(settings=BenchSettingsEntry(batch_size=settings.batch_size, warmup=settings.warmup,
                                                    repeats=settings.repeats, threads=settings.threads,
                                                    batch_sizes=sorted(batches), data=data_source,
                                                    isolation=ISOLATION, memory=MEMORY),
                        rows=rows)


def add_ratios(rows: list[BenchRow], *, eager: Optional[BenchRow]) -> None:
    """Speed-up and size ratio of every row against the PyTorch eager row of the same run, and speed-up
    against the ONNX Runtime fp32 row (the fair baseline for an ONNX INT8 artifact)."""
    onnx_fp32 = next((row for row in rows if row.name == ONNX_FP32), None)
    for row in rows:
        if onnx_fp32 is not None:
            row.speedup_vs_onnx_fp32 = {key: onnx_fp32.latency[key].median_ms / value.median_ms
                                        for key, value in row.latency.items()}
        if eager is None:
            continue
        row.speedup_vs_eager = {key: eager.latency[key].median_ms / value.median_ms
                                for key, value in row.latency.items()}
        if row.size_bytes and eager.size_bytes:
            row.size_vs_eager = row.size_bytes / eager.size_bytes


def bench_bundle_and_record(bundle_path: Path, settings: BenchSettings, *, data: Optional[Path] = None,
                            progress: Progress = SilentProgress(), json_path: Optional[Path] = None) -> BenchFigures:
    """Benchmark a bundle, write the figures into its manifest and reports, and optionally to a JSON file.
    A signature no longer matches the rewritten manifest: it is removed, with a warning saying how to re-sign."""
    bundle = Bundle.open(Path(bundle_path))
    figures = bench_bundle(bundle, settings, data=data, progress=progress)
    bundle.manifest.bench = figures
    write_bundle_documents(bundle.folder, bundle.manifest)
    signature = bundle.folder / SIGNATURE
    if signature.exists():
        signature.unlink()
        progress.warn(f"the bench figures changed {bundle.folder / 'manifest.json'}, so its signature no longer "
                      f"matched and was removed: re-sign with `edgepack sign {bundle.folder} --key KEY`")
    if json_path is not None:
        Path(json_path).write_text(json.dumps(figures.to_json_dict(), indent=2) + "\n")
    return figures
