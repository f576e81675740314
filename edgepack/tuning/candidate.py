"""One tuning candidate as a self-contained job: built by its target, run in its runtime, scored on the holdout.

A job carries no live object that only the searching process has. The data go by path: the fit and
holdout splits and the float model's outputs on the holdout are written once into the search's scratch
folder (`SearchFiles`), and a worker reads them back. The torch module to export goes as bytes pickled
by edgepack itself (never a user file), unpickled in the worker after the recipe's model factory module
is imported there, so the module's classes resolve in a fresh process. The same job runs in the
searching process (one worker), in a spawned process of a local pool, or as a Ray task
(edgepack.tuning.pool); on a Ray cluster of several machines the scratch folder must therefore be on a
filesystem they all share (set TMPDIR to such a path).

Latency is measured only when nothing else runs: inline by a job that runs alone (`measure_latency`), or
afterwards by the searching process, one artifact at a time (`latency_of`), from the artifact path
the job returns.
"""

from __future__ import annotations

import io
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from pydantic import BaseModel

from edgepack.calibration.dataset import SampleSet
from edgepack.calibration.methods import CalibrationMethod
from edgepack.errors import EdgepackError, describe
from edgepack.evaluation import tasks
from edgepack.evaluation.drift import check_budget, collect_outputs
from edgepack.evaluation.latency import make_batch, measure
from edgepack.recipe.budget import BOUND_SPECS
from edgepack.recipe.schema import Recipe, TunedTarget
from edgepack.targets.base import ExportContext, Target
from edgepack.tuning.apply import fragment_entry
from edgepack.tuning.record import TrialRecord

LATENCY_REPEATS, LATENCY_SECONDS = 5, 5.0  # per candidate: a ranking figure, bounded in time
_META_FIELDS = ("role", "source", "batch_size", "sha256")


@dataclass(frozen=True)
class SearchFiles:
    """Where a search's shared data lie on disk: what every candidate job reads."""

    fit: Path
    holdout: Path
    reference: Path

    @classmethod
    def write(cls, folder: Path, fit: SampleSet, holdout: SampleSet, reference: np.ndarray) -> "SearchFiles":
        """Write the two splits and the float outputs on the holdout into `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        files = cls(fit=folder / "fit.npz", holdout=folder / "holdout.npz", reference=folder / "reference.npy")
        save_samples(fit, files.fit)
        save_samples(holdout, files.holdout)
        np.save(files.reference, reference, allow_pickle=False)
        return files


def save_samples(samples: SampleSet, path: Path) -> None:
    """A SampleSet as one .npz of plain arrays (no pickled objects)."""
    arrays: dict[str, Any] = {f"array/{name}": array for name, array in samples.arrays.items()}
    arrays.update({f"extra/{name}": array for name, array in samples.extras.items()})
    if samples.labels is not None:
        arrays["labels"] = samples.labels
    arrays.update({f"meta/{name}": np.array(str(getattr(samples, name))) for name in _META_FIELDS})
    arrays["meta/warnings"] = np.array(list(samples.warnings), dtype=str)
    with path.open("wb") as handle:
        np.savez(handle, **arrays)


def load_samples(path: Path) -> SampleSet:
    """The SampleSet `save_samples` wrote."""
    with np.load(path, allow_pickle=False) as stored:
        def group(prefix: str) -> dict[str, np.ndarray]:
            return {key[len(prefix):]: stored[key] for key in stored.files if key.startswith(prefix)}

        meta = {name: str(stored[f"meta/{name}"]) for name in _META_FIELDS}
        return SampleSet(role=meta["role"], source=meta["source"], arrays=group("array/"),
                         labels=stored["labels"] if "labels" in stored.files else None,
                         batch_size=int(meta["batch_size"]), sha256=meta["sha256"],
                         warnings=tuple(str(item) for item in stored["meta/warnings"]), extras=group("extra/"))


def pickle_module(module) -> bytes:
    """The torch module as bytes for a job (pickled by edgepack, unpickled only by its own workers)."""
    return pickle.dumps(module, protocol=pickle.HIGHEST_PROTOCOL)


@dataclass(frozen=True)
class CandidateJob:
    """Everything one candidate needs, picklable: build with `target`, score on the holdout."""

    target: Target
    options: BaseModel
    recipe: Recipe
    tuned: TunedTarget
    label: str
    module: bytes  # pickle_module() of the module to export (bias-corrected when the candidate asks)
    float_onnx: Path
    method: CalibrationMethod
    float_modules: tuple[str, ...]
    unquantized_onnx: Path  # the student's own fp32 ONNX, for artifacts that are not quantized (fp16)
    files: SearchFiles
    folder: Path  # out/ and work/ of this candidate
    threads: int
    setup_seconds: float = 0.0  # preparing its inputs in the searching process (bias correction)


@dataclass(frozen=True)
class CandidateResult:
    """A scored trial, and the artifact whose latency ranks it (None when it failed)."""

    trial: TrialRecord
    latency_artifact: Optional[Path]


def failed(tuned: TunedTarget, label: str, error: str) -> CandidateResult:
    """The result of a candidate that could not be built or run."""
    return CandidateResult(TrialRecord(label=label, config=fragment_entry(tuned), passed=False, error=error),
                           latency_artifact=None)


def checkable_budget(recipe: Recipe, metrics: dict) -> tuple[dict, list[str]]:
    """The budget bounds whose metric the holdout measures, and the names of those it cannot (no labels)."""
    limits = recipe.budget.limits()
    checked = {key: value for key, value in limits.items() if BOUND_SPECS[key].metric in metrics}
    return checked, sorted(set(limits) - set(checked))


def evaluate(job: CandidateJob, *, measure_latency: bool) -> CandidateResult:
    """Build, run and score one candidate; a candidate the toolchain cannot build is a result, not a crash."""
    started = time.perf_counter() - job.setup_seconds
    try:
        result = _build_and_run(job, measure_latency)
    except EdgepackError as exc:
        result = failed(job.tuned, job.label, str(exc))
    except Exception as exc:
        result = failed(job.tuned, job.label, describe(exc))
    result.trial.seconds = round(time.perf_counter() - started, 2)
    return result


def run_in_worker(job: CandidateJob) -> CandidateResult:
    """A job in a pool process or Ray task: its thread share, the model's classes importable, no latency."""
    import torch

    torch.set_num_threads(job.threads)
    _import_model_classes(job.recipe)
    return evaluate(job, measure_latency=False)


def latency_of(target: Target, artifact: Path, holdout: SampleSet, recipe: Recipe) -> float:
    """Median latency (ms) of `artifact` at the recipe's batch size and threads."""
    runner = target.runner(artifact, threads=recipe.latency.threads)
    return _measure(runner, holdout, recipe)


def _measure(runner, holdout: SampleSet, recipe: Recipe) -> float:
    batch = make_batch(holdout.arrays, recipe.latency.batch_size)
    return measure(runner, batch, warmup=1, repeats=LATENCY_REPEATS, max_seconds=LATENCY_SECONDS).median_ms


def _import_model_classes(recipe: Recipe) -> None:
    """Import the recipe's model factory module, so that unpickling the module finds its classes."""
    if recipe.model.factory is not None:
        from edgepack.calibration.readers import import_object

        import_object(recipe.model.factory, base_dir=recipe.base_dir, what="model factory")


def _build_and_run(job: CandidateJob, measure_latency: bool) -> CandidateResult:
    recipe, target = job.recipe, job.target
    fit, holdout = load_samples(job.files.fit), load_samples(job.files.holdout)
    reference = np.load(job.files.reference, allow_pickle=False)
    (job.folder / "out").mkdir(parents=True)
    (job.folder / "work").mkdir()
    module = pickle.load(io.BytesIO(job.module))
    context = ExportContext(float_onnx=job.float_onnx, module=module, inputs=list(recipe.inputs), calibration=fit,
                            method=job.method, quantization=recipe.quantization, out_dir=job.folder / "out",
                            scratch_dir=job.folder / "work", options=job.options, threads=job.threads,
                            float_modules=job.float_modules, unquantized_onnx=job.unquantized_onnx)
    artifacts = target.export(context)
    failures, metrics, size = [], {}, 0
    latency, latency_artifact = None, None
    task = tasks.kind(recipe.task)
    for artifact in artifacts:
        runner = target.runner(artifact.path, threads=job.threads)
        outputs = collect_outputs(runner, holdout)
        measured = task.drift_metrics(reference, outputs, holdout, recipe.evaluation)
        budget, _ = checkable_budget(recipe, measured)
        report = check_budget(measured, budget)
        failures += [f"{artifact.path.name}: {check.describe()}" for check in report.failures]
        size += artifact.path.stat().st_size
        if artifact is artifacts[-1] or "int8" in artifact.precision:
            metrics = {key: float(value) for key, value in measured.items() if isinstance(value, (int, float))}
            latency_artifact = artifact.path
            if measure_latency:
                latency = _measure(runner, holdout, recipe)
            if "int8" in artifact.precision:
                break
    trial = TrialRecord(label=job.label, config=fragment_entry(job.tuned), passed=not failures, metrics=metrics,
                        failures=failures, latency_ms=latency, latency_batch=recipe.latency.batch_size,
                        size_bytes=size)
    return CandidateResult(trial, latency_artifact)
