"""The tuning search: for each target, the cheapest configuration whose artifact meets the budget.

Never on the evaluation data: the calibration set is split (seeded) into a part that calibrates and
corrects, and a held-out part that scores candidates against the float model's outputs. Candidates
come in order of cost, each built by the target and run in its own runtime:
1. the recipe as written, then each other calibration method the target honours;
2. sequential bias correction (edgepack.tuning.bias_correction) with the best method so far;
3. float fallback as one contiguous region from the input, long enough to cover the early layers that
   weight rounding hurts most (edgepack.tuning.sensitivity): a prefix costs no extra Q/DQ pair in
   the middle of the network, where scattered float islands made a model slower than fp32.
The search stops at the first candidate that meets the budget. Its latency is measured like every
other trial's; if none meets it, the best one found is reported with its figures.

The search is written as a generator of waves (`Search.steps`): the candidates of one tier, at most
`wave_size` at a time, that the driver (edgepack.tuning.run) evaluates together on an executor
(edgepack.tuning.pool). With a wave size of 1 it is the serial search, candidate after candidate.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Generator, Optional, Union

import numpy as np

from edgepack.calibration.dataset import SampleSet
from edgepack.calibration.methods import CalibrationMethod, Percentile, PerTensorMse
from edgepack.errors import ConfigError, EdgepackError, describe
from edgepack.quantization.ort_qdq import module_nodes
from edgepack.recipe.schema import Recipe, TunedTarget
from edgepack.targets.base import Target
from edgepack.tuning.apply import VariantCache
from edgepack.tuning.candidate import (
    CandidateJob,
    CandidateResult,
    SearchFiles,
    checkable_budget,
    failed,
    pickle_module,
)
from edgepack.tuning.record import SensitivityRecord, TrialRecord, TuningRecord
from edgepack.tuning.sensitivity import LayerSensitivity, layer_sensitivity

SENSITIVE_LISTED = 10  # layers kept in the record, most sensitive first
PREFIXES_TRIED = 4  # float prefixes tried at most per target


def split_calibration(calibration: SampleSet, holdout: float, seed: int) -> tuple[SampleSet, SampleSet]:
    """(fit, holdout): a seeded split of the calibration samples; the holdout scores candidates."""
    order = np.random.default_rng(seed).permutation(calibration.num_samples)
    count = max(1, int(round(holdout * calibration.num_samples)))
    if count >= calibration.num_samples:
        raise ConfigError(f"tune.holdout {holdout} leaves no calibration sample to calibrate with "
                          f"({calibration.num_samples} samples)")
    parts = []
    for role, rows in (("calibration (fit)", np.sort(order[count:])),
                       ("calibration (holdout)", np.sort(order[:count]))):
        labels = calibration.labels[rows] if calibration.labels is not None else None
        arrays = {name: array[rows] for name, array in calibration.arrays.items()}
        parts.append(dataclasses.replace(calibration, role=role, arrays=arrays, labels=labels,
                                         sha256=f"{calibration.sha256}:{role}", warnings=()))
    return parts[0], parts[1]


@dataclass
class SearchData:
    """What every target's search shares: the split, the float outputs on the holdout, the sensitivity."""

    fit: SampleSet
    holdout: SampleSet
    reference: np.ndarray
    files: SearchFiles  # the split and the float outputs on disk, for candidate jobs
    variants: VariantCache
    sensitivity: list[LayerSensitivity]
    order: list[str]  # Conv/Linear modules in execution order


def methods_to_try(target: Target, recipe: Recipe) -> list[CalibrationMethod]:
    """The recipe's calibration method first, then percentile 99.99 and the per-tensor choice of range
    (PerTensorMse) where the target honours them."""
    methods: list[CalibrationMethod] = [recipe.calibration.method]
    for candidate in (Percentile(percentile=99.99), PerTensorMse()):
        if candidate.name in target.calibration_methods and candidate not in methods:
            methods.append(candidate)
    return methods


def prefix_lengths(data: SearchData, limit: int) -> list[int]:
    """Float prefix lengths worth trying: each ends just after one of the most sensitive early layers."""
    early = [item for item in data.sensitivity if item.position < limit]
    ranked = sorted(early, key=lambda item: item.alone, reverse=True)[:PREFIXES_TRIED]
    return sorted({item.position + 1 for item in ranked})


@dataclass(frozen=True)
class Candidate:
    """One configuration to try, and how the record names it."""

    tuned: TunedTarget
    label: str


Wave = list[Candidate]  # candidates of one cost tier evaluated together, in order of cost
Steps = Generator[Wave, list[CandidateResult], TuningRecord]


class Search:
    """The search for one target, as a generator of waves (`steps`) that the driver (edgepack.tuning.run)
    evaluates on its executor. A wave holds at most `wave_size` candidates of one cost tier; within a tier
    the first candidate in order of cost that passes is chosen, and the trials after it in its wave are
    dropped, so the record is the one the serial search (`wave_size` 1) writes. The tiers stay sequential:
    bias correction uses the best method of the first tier, the float prefixes use its outcome."""

    def __init__(self, target: Target, options, recipe: Recipe, data: SearchData, scratch: Path, *, wave_size: int = 1,
                 threads: int = 0):
        self.target, self.options, self.recipe, self.data = target, options, recipe, data
        self.scratch, self.wave_size = scratch, wave_size
        self.threads = threads or recipe.latency.threads
        self.trials: list[TrialRecord] = []
        self.latency_artifacts: list[Optional[Path]] = []  # per trial, for latency measured afterwards
        self._submitted = 0
        self.skipped: list[str] = []  # techniques the search could not consider on this model, and why

    def steps(self) -> Steps:
        """Try candidates in order of cost until one meets the budget."""
        methods = methods_to_try(self.target, self.recipe)
        tried = yield from self._tier([Candidate(_tuned(method), _label(_tuned(method))) for method in methods])
        if tried[-1].passed:
            return self._record()
        best = None
        for trial in tried:
            best = self._better(best, trial)
        assert best is not None
        method = TunedTarget.model_validate(best.config).method or self.recipe.calibration.method
        with_correction = _tuned(method, bias_correction=True)
        corrected, = yield from self._tier([Candidate(with_correction, _label(with_correction))])
        if corrected.passed:
            return self._record()
        use_correction = corrected.error is None and _agreement(corrected) > _agreement(best)
        base = _tuned(method, bias_correction=use_correction)
        smoothing = [_tuned(method, bias_correction=use_correction, smooth=(alpha, insert))
                     for insert in (False, True) for alpha in self._smoothing_alphas(insert)]
        if smoothing:  # activations with outlier channels: migrate part of their range into the weights
            smoothed = yield from self._tier([Candidate(tuned, _label(tuned)) for tuned in smoothing])
            if smoothed[-1].passed:
                return self._record()
            closest = max(smoothed, key=_agreement)
            if closest.error is None and _agreement(closest) > _agreement(corrected if use_correction else best):
                base = TunedTarget.model_validate(closest.config | {"method": method.model_dump()})
        prefixes = [base.model_copy(update={"float_modules": self.data.order[:length]})
                    for length in prefix_lengths(self.data, self.recipe.tune.max_float_layers)]
        yield from self._tier([Candidate(tuned, _label(tuned)) for tuned in prefixes])
        return self._record()

    def _smoothing_alphas(self, insert_scales: bool) -> list[float]:
        """SmoothQuant alphas worth trying ([] without outliers); a model the analysis cannot trace gets none."""
        try:
            return self.data.variants.smoothing_alphas(insert_scales=insert_scales)
        except Exception as exc:  # the analysis is an optimization: its failure must not stop the search
            self.skipped.append(f"SmoothQuant analysis skipped: {describe(exc)}")
            return []

    def _tier(self, candidates: list[Candidate]) -> Generator[Wave, list[CandidateResult], list[TrialRecord]]:
        """Waves of the tier until a candidate passes: the trials kept, in order of cost."""
        tried: list[TrialRecord] = []
        for start in range(0, len(candidates), self.wave_size):
            results = yield candidates[start:start + self.wave_size]
            for result in results:
                self.trials.append(result.trial)
                self.latency_artifacts.append(result.latency_artifact)
                tried.append(result.trial)
                if result.trial.passed:
                    return tried
        return tried

    def job(self, candidate: Candidate) -> Union[CandidateJob, CandidateResult]:
        """The candidate's job; a candidate whose inputs cannot be prepared is already its (failed) result."""
        folder = self.scratch / f"trial{self._submitted}"
        self._submitted += 1
        started = time.perf_counter()
        try:
            # bias correction, when asked, runs here once and is shared by the candidates that use it
            build = self.data.variants.build(candidate.tuned, self.recipe.calibration.method)
        except EdgepackError as exc:
            return failed(candidate.tuned, candidate.label, str(exc))
        except Exception as exc:  # a candidate the toolchain cannot build is a result, not a crash
            return failed(candidate.tuned, candidate.label, describe(exc))
        return CandidateJob(target=self.target, options=self.options, recipe=self.recipe, tuned=candidate.tuned,
                            label=candidate.label, module=pickle_module(build.module), float_onnx=build.float_onnx,
                            method=build.method, float_modules=build.float_modules,
                            unquantized_onnx=self.data.variants.float_onnx, files=self.data.files,
                            folder=folder, threads=self.threads,
                            setup_seconds=time.perf_counter() - started)

    @staticmethod
    def _better(best: Optional[TrialRecord], trial: TrialRecord) -> TrialRecord:
        if best is None or best.error is not None:
            return trial
        return trial if trial.error is None and _agreement(trial) > _agreement(best) else best

    def _record(self) -> TuningRecord:
        passing = [index for index, trial in enumerate(self.trials) if trial.passed]
        chosen: Optional[int]
        if passing:
            chosen = passing[0]
            reason = (f"the first candidate in order of cost that meets the budget on "
                      f"{self.data.holdout.num_samples} held-out calibration samples: {self.trials[chosen].label}")
        else:
            built = [index for index, trial in enumerate(self.trials) if trial.error is None]
            chosen = max(built, key=lambda index: _agreement(self.trials[index])) if built else None
            reason = (f"no candidate meets the budget; the closest is kept: {self.trials[chosen].label}"
                      if chosen is not None else "no candidate could be built")
        sample_metrics = next((trial.metrics for trial in self.trials if trial.metrics), {})
        checked, not_checked = checkable_budget(self.recipe, sample_metrics)
        variants = self.data.variants
        corrections = sorted(variants.correction_layers(), key=lambda item: -item["max_shift"])[:SENSITIVE_LISTED]
        reason = "; ".join([reason, *self.skipped])
        return TuningRecord(target=self.target.name, met_budget=bool(passing), chosen=chosen, reason=reason,
                            trials=self.trials, fit_samples=self.data.fit.num_samples,
                            holdout_samples=self.data.holdout.num_samples, bounds_checked=sorted(checked),
                            bounds_not_checked=not_checked, sensitivity=self._sensitivity(),
                            bias_correction=corrections)

    def _sensitivity(self) -> list[SensitivityRecord]:
        ranked = sorted(self.data.sensitivity, key=lambda item: item.alone, reverse=True)[:SENSITIVE_LISTED]
        names = _target_names(self.target, self.data.variants.float_onnx, [item.module for item in ranked])
        return [SensitivityRecord(module=item.module, position=item.position, alone=item.alone,
                                  left_out=item.left_out, target_names={self.target.name: names.get(item.module, [])})
                for item in ranked]


def _target_names(target: Target, float_onnx: Path, modules: list[str]) -> dict[str, list[str]]:
    """The nodes that compute each module in the target's graph: ONNX node names for ONNX targets; for PT2E
    targets the module's qualified name is itself the key their exclusion uses."""
    if "onnxruntime" in target.required_modules:
        return module_nodes(float_onnx, tuple(modules))
    return {module: [module] for module in modules}


def _agreement(trial: TrialRecord) -> tuple[float, float]:
    """How close a trial is to the float model: top-1 agreement first (where measured), then output L2 error."""
    return (trial.metrics.get("top1_agreement", 0.0), -trial.metrics.get("relative_l2", float("inf")))


def _method_label(method: CalibrationMethod) -> str:
    return f"{method.name} {method.percentile}" if isinstance(method, Percentile) else method.name


def _tuned(method: CalibrationMethod, *, bias_correction: bool = False, float_modules: Optional[list[str]] = None,
           smooth: Optional[tuple[float, bool]] = None) -> TunedTarget:
    entry = {"method": method.model_dump(), "bias_correction": bias_correction, "float_modules": float_modules or []}
    if smooth is not None:
        entry |= {"smooth_quant": smooth[0], "smooth_quant_mul": smooth[1]}
    return TunedTarget.model_validate(entry)


def _label(tuned: TunedTarget) -> str:
    """A candidate's name in the terminal and the record: what it changes, in order of application."""
    parts = [_method_label(tuned.method)] if tuned.method is not None else []
    if tuned.smooth_quant is not None:
        scales = " (explicit scales)" if tuned.smooth_quant_mul else ""
        parts.append(f"SmoothQuant alpha {tuned.smooth_quant:g}{scales}")
    if tuned.bias_correction:
        parts.append("bias correction")
    if tuned.float_modules:
        parts.append(f"first {len(tuned.float_modules)} layer(s) float")
    return ", ".join(parts)


def sensitivity_for(module, holdout: SampleSet, recipe: Recipe) -> list[LayerSensitivity]:
    """Per-layer sensitivity on the first `tune.sensitivity_samples` held-out samples."""
    count = min(recipe.tune.sensitivity_samples, holdout.num_samples)
    arrays = {name: holdout.arrays[name][:count] for name in recipe.input_names}
    return layer_sensitivity(module, arrays, recipe.input_names, per_channel=recipe.quantization.per_channel)
