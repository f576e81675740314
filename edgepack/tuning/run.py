"""Run the tuning search over a recipe's quantizing targets, and turn its choices into a recipe fragment.

The searches run on the executor that `tune.workers` and `tune.ray` ask for (edgepack.tuning.pool). One
candidate at a time (one worker), each target is searched in turn, as the serial search always did.
On a concurrent executor (a local process pool or Ray), every target's search runs at once: each
submits its next wave (edgepack.tuning.search) as soon as its previous one is done, and the pool or Ray
dispatches the jobs. The latency of the trials kept is then measured here, one artifact at a time,
once no candidate runs any more: a latency taken while other candidates share the cores is wrong.
Each record says how its candidates ran and how their latency was measured.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import Any, ContextManager, Optional, Union

import yaml
from pydantic import BaseModel

from edgepack.calibration.dataset import SampleSet
from edgepack.errors import ConfigError, EdgepackError, describe
from edgepack.evaluation.drift import collect_outputs
from edgepack.evaluation.runners import TorchRunner
from edgepack.progress import Progress
from edgepack.recipe.schema import Recipe, TunedTarget
from edgepack.targets.base import Target
from edgepack.tuning.apply import VariantCache
from edgepack.tuning.candidate import CandidateJob, CandidateResult, SearchFiles, failed, latency_of
from edgepack.tuning.pool import CandidateExecutor, open_executor
from edgepack.tuning.record import TuningRecord
from edgepack.tuning.search import Candidate, Search, SearchData, Steps, sensitivity_for, split_calibration

INLINE_LATENCY = "right after each candidate was built and scored, with no other candidate running"
LATENCY_AFTERWARDS = ("after the search, in the main process, one artifact at a time, with no candidate running "
                      "(candidates were scored concurrently)")


def prepare_search(recipe: Recipe, *, teacher, student, student_onnx: Path, calibration: SampleSet, scratch: Path,
                   progress: Progress) -> SearchData:
    """Split the calibration data, compute the float outputs on the holdout once, rank layer sensitivity."""
    if student is None:
        raise ConfigError("tune needs a PyTorch model (model.factory): bias correction, sensitivity and float "
                          "fallback work on the torch module, an ONNX file has none")
    fit, holdout = split_calibration(calibration, recipe.tune.holdout, recipe.calibration.seed)
    with progress.step(f"tune: float outputs on {holdout.num_samples} held-out calibration samples"):
        reference = collect_outputs(TorchRunner(teacher, recipe.input_names, recipe.latency.threads), holdout)
    with progress.step("tune: per-layer sensitivity to weight rounding"):
        sensitivity = sensitivity_for(student, holdout, recipe)
    order = [item.module for item in sensitivity]  # execution order, as layer_sensitivity returns them
    variants = VariantCache(student, student_onnx, recipe, fit, scratch / "variants")
    files = SearchFiles.write(scratch / "data", fit, holdout, reference)
    return SearchData(fit=fit, holdout=holdout, reference=reference, files=files, variants=variants,
                      sensitivity=sensitivity, order=order)


def tune_targets(recipe: Recipe, targets: list[tuple[Target, BaseModel]], data: SearchData, scratch: Path,
                 progress: Progress) -> dict[str, TuningRecord]:
    """One search per target, on the executor the recipe's `tune` section asks for; records in the recipe's
    target order."""
    with open_executor(workers=recipe.tune.workers, ray_address=recipe.tune.ray,
                       threads=recipe.latency.threads) as executor:
        searches = []
        for target, options in targets:
            folder = scratch / f"tune-{target.name}"
            folder.mkdir(parents=True)
            searches.append(Search(target, options, recipe, data, folder, wave_size=executor.workers,
                                   threads=executor.threads))
        if executor.concurrent:
            records = _run_concurrently(searches, executor, progress)
            _measure_latency(searches, records, data, recipe, progress)
        else:
            records = {search.target.name: _run_serially(search, executor, progress) for search in searches}
    for record in records.values():
        record.evaluated_by = executor.description
        record.latency_measured = LATENCY_AFTERWARDS if executor.concurrent else INLINE_LATENCY
        chosen = record.chosen_trial
        if not record.met_budget and chosen is not None:
            progress.warn(f"{record.target} cannot meet the budget with the candidates tried; best: {chosen.label} "
                          f"({figures(chosen.metrics, chosen.latency_ms)})")
    return {target.name: records[target.name] for target, _ in targets}


def _run_serially(search: Search, executor: CandidateExecutor, progress: Progress) -> TuningRecord:
    """The search of one target, one candidate after another."""
    steps = search.steps()
    wave = next(steps)
    while True:
        results = []
        for candidate in wave:
            with progress.step(f"{search.target.name}: trying {candidate.label}"):
                results.append(_outcome(_submit(executor, search.job(candidate)), candidate))
        try:
            wave = steps.send(results)
        except StopIteration as done:
            return done.value


def _run_concurrently(searches: list[Search], executor: CandidateExecutor,
                      progress: Progress) -> dict[str, TuningRecord]:
    """Every target's search at once: each sends its next wave when its last one is done."""
    records: dict[str, TuningRecord] = {}
    running: dict[str, tuple[Search, Steps, list[Candidate], list[Future]]] = {}
    corrected: list[str] = []  # the student is bias-corrected once (edgepack.tuning.apply.VariantCache), here

    def advance(search: Search, steps: Steps, results: Optional[list[CandidateResult]]) -> None:
        try:
            wave = next(steps) if results is None else steps.send(results)
        except StopIteration as done:
            records[search.target.name] = done.value
            return
        step: ContextManager[None] = contextlib.nullcontext()
        if not corrected and any(candidate.tuned.bias_correction for candidate in wave):
            step = progress.step(f"{search.target.name}: bias correction for the candidates that use it")
            corrected.append(search.target.name)
        with step:
            jobs = [search.job(candidate) for candidate in wave]
        running[search.target.name] = (search, steps, wave, [_submit(executor, job) for job in jobs])

    for search in searches:
        advance(search, search.steps(), None)
    while running:
        pending = {name: [(candidate, future) for candidate, future in zip(wave, futures) if not future.done()]
                   for name, (_, _, wave, futures) in running.items()}
        trying = "; ".join(f"{name}: trying {', '.join(candidate.label for candidate, _ in items)}"
                           for name, items in pending.items() if items)
        if trying:
            with progress.step(f"{trying} ({executor.description})"):
                wait([future for items in pending.values() for _, future in items], return_when=FIRST_COMPLETED)
        for name, (search, steps, wave, futures) in list(running.items()):
            if all(future.done() for future in futures):
                del running[name]
                advance(search, steps, [_outcome(future, candidate) for future, candidate in zip(futures, wave)])
    return records


def _submit(executor: CandidateExecutor, job: Union[CandidateJob, CandidateResult]) -> Future:
    """The job started on `executor`; a candidate that already failed is a done Future."""
    if isinstance(job, CandidateJob):
        return executor.submit(job)
    future: Future[CandidateResult] = Future()
    future.set_result(job)
    return future


def _outcome(future: Future, candidate: Candidate) -> CandidateResult:
    """The job's result; a worker that died or could not run the job fails its candidate."""
    try:
        return future.result()
    except Exception as exc:
        return failed(candidate.tuned, candidate.label, describe(exc))


def _measure_latency(searches: list[Search], records: dict[str, TuningRecord], data: SearchData, recipe: Recipe,
                     progress: Progress) -> None:
    """The latency of every trial kept, measured here one artifact at a time once no candidate runs."""
    kept = [(search, index, path) for search in searches for index, path in enumerate(search.latency_artifacts)
            if path is not None]
    with progress.step(f"tune: latency of {len(kept)} candidate(s), one at a time"):
        for search, index, path in kept:
            if not path.is_file():
                raise EdgepackError(f"tune: the artifact of '{search.trials[index].label}' is not readable here "
                                    f"({path}): a Ray cluster of several machines needs the scratch folder (TMPDIR) "
                                    f"on a filesystem every node shares")
            records[search.target.name].trials[index].latency_ms = latency_of(search.target, path, data.holdout,
                                                                               recipe)


def chosen_configs(records: dict[str, TuningRecord]) -> dict[str, TunedTarget]:
    """The `tuned` recipe entries of the chosen trials."""
    return {name: TunedTarget.model_validate(record.chosen_trial.config)
            for name, record in records.items() if record.chosen_trial is not None}


def fragment(records: dict[str, TuningRecord]) -> str:
    """A YAML recipe fragment that reproduces the choices without searching, with why as comments."""
    lines = ["# edgepack tune: paste into the recipe to build these configurations without searching.",
             "# Scored on held-out calibration samples, never on the evaluation data."]
    body: dict[str, Any] = {"tuned": {name: record.chosen_trial.config
                                      for name, record in records.items() if record.chosen_trial is not None}}
    for name, record in records.items():
        lines.append(f"# {name}: {record.reason}")
    return "\n".join(lines) + "\n" + yaml.safe_dump(body, sort_keys=False)


def figures(metrics: dict, latency_ms) -> str:
    parts = []
    if "top1_agreement" in metrics:
        parts.append(f"agreement {metrics['top1_agreement']:.3f}")
    if "relative_l2" in metrics:
        parts.append(f"rel. L2 {metrics['relative_l2']:.3g}")
    if latency_ms is not None:
        parts.append(f"{latency_ms:.1f} ms")
    return ", ".join(parts)
