"""The pack pipeline: recipe -> checked float reference -> per-target artifacts -> verified bundle."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
from pydantic import BaseModel

from edgepack.benchmark.bench import BenchSettings, bench_bundle
from edgepack.bundle.build import build_manifest
from edgepack.bundle.documents import write_bundle_documents
from edgepack.bundle.entries import FileEntry, Latency, Status
from edgepack.bundle.files import Bundle, sha256_file, staging
from edgepack.bundle.manifest import (
    ActivationCoverageEntry,
    LibraryLog,
    Manifest,
    PruningSection,
    ReferenceEntry,
    SourceModel,
    ValidatedOn,
)
from edgepack.bundle.signing import fingerprint, sign_bundle
from edgepack.calibration.dataset import SampleSet, load_sample_set
from edgepack.capture import LOG_NAME
from edgepack.compression.compress import CompressionResult, compress, compression_manifest, save_student
from edgepack.device.golden import artifact_inputs, copy_device_script, write_golden
from edgepack.errors import EXIT_DRIFT, EXIT_ERROR, EXIT_OK, ConfigError, EdgepackError, ExportError, describe
from edgepack.evaluation import tasks
from edgepack.evaluation.divergence import DivergenceRecord, onnx_divergence
from edgepack.evaluation.divergence_pte import pte_divergence
from edgepack.evaluation.divergence_tflite import tflite_divergence
from edgepack.evaluation.drift import DriftReport, check_budget, collect_outputs
from edgepack.evaluation.latency import measure_batches
from edgepack.evaluation.runners import FAKE_QUANT_DEVICE, OrtRunner, Runner, TorchRunner
from edgepack.evaluation.sanity import (
    activation_coverage,
    calibration_warnings,
    float_model_warnings,
    input_scale_warnings,
)
from edgepack.evaluation.speed_flags import flag_slow_artifacts
from edgepack.isa import host_isa
from edgepack.model.bag_rewrite import rewrite_embedding_bags
from edgepack.model.load import LoadedModel, load_model
from edgepack.model.onnx_export import check_against_torch, export_float_onnx
from edgepack.model.tensors import as_tensors, count_macs_and_params
from edgepack.progress import Progress, SilentProgress
from edgepack.recipe.schema import Recipe, TunedTarget
from edgepack.registry import get_target
from edgepack.targets.base import Artifact, ExportContext, Target
from edgepack.text.bundle import recipe_reader, write_text_bundle
from edgepack.tuning.apply import VariantCache, fragment_entry
from edgepack.tuning.record import TuningRecord
from edgepack.tuning.run import chosen_configs, prepare_search, tune_targets

REFERENCE_DIR = "reference"
REFERENCE_FILE = "model.fp32.onnx"
PRUNED_DIR = "pruned"


@dataclass(frozen=True)
class ArtifactResult:
    """A verified artifact: where it is, what it weighs, how it drifted, how fast it ran."""

    artifact: Artifact
    relative_path: str
    sha256: str
    size_bytes: int
    drift: DriftReport
    latency: Latency
    validated_on: ValidatedOn
    golden: tuple[FileEntry, ...] = ()
    divergence: Optional[DivergenceRecord] = None  # where a failing ONNX artifact's error starts


@dataclass(frozen=True)
class TargetResult:
    """Outcome of one target: its artifacts, or the error that stopped it."""

    name: str
    artifacts: tuple[ArtifactResult, ...] = ()
    error: Optional[str] = None

    @property
    def status(self) -> Status:
        """'passed', 'failed' (drift over budget) or 'error'."""
        if self.error is not None:
            return "error"
        return "passed" if all(result.drift.passed for result in self.artifacts) else "failed"


@dataclass(frozen=True)
class PackResult:
    """What `pack` produced."""

    bundle: Path
    manifest: Manifest
    targets: tuple[TargetResult, ...]
    warnings: tuple[str, ...] = field(default=())
    signed_by: Optional[str] = None  # fingerprint of the key that signed the manifest

    @property
    def exit_code(self) -> int:
        """0 when every target passed, EXIT_ERROR if any errored, else EXIT_DRIFT if any drifted."""
        statuses = {result.status for result in self.targets}
        if "error" in statuses:
            return EXIT_ERROR
        return EXIT_DRIFT if "failed" in statuses else EXIT_OK


def resolve_targets(recipe: Recipe) -> list[tuple[Target, BaseModel]]:
    """The recipe's targets with their validated options, checked to be installed and able to honour it."""
    resolved = []
    for name in recipe.targets:
        target = get_target(name)
        options = target.parse_options(recipe.target_options.get(name, {}))
        target.check_available()
        target.check_recipe(recipe)
        tuned = recipe.tuned.get(name)
        if tuned is not None and tuned.method is not None and tuned.method.name not in target.calibration_methods:
            raise ConfigError(f"tuned.{name}.method: target '{name}' does not support calibration method "
                              f"'{tuned.method.name}' (supported: {', '.join(sorted(target.calibration_methods))})")
        resolved.append((target, options))
    return resolved


def load_data(recipe: Recipe) -> tuple[SampleSet, SampleSet]:
    """Calibration and evaluation sets, validated against the input spec."""
    reader = recipe_reader(recipe)  # raw text tokenized (edgepack.text), else None: arrays as stored
    calibration = load_sample_set(recipe.calibration, recipe.inputs, role="calibration", base_dir=recipe.base_dir,
                                  reader=reader)
    evaluation = load_sample_set(recipe.evaluation, recipe.inputs, role="evaluation", base_dir=recipe.base_dir,
                                 labels=recipe.evaluation.labels, extras=tuple(recipe.evaluation.segments),
                                 reader=reader)
    tasks.kind(recipe.task).check_labels(evaluation, recipe.evaluation.labels)
    return calibration, evaluation


def pack(recipe: Recipe, progress: Progress = SilentProgress(), *, bench: bool = True,
         log_path: Optional[Path] = None, force: bool = False, sign_key: Any = None) -> PackResult:
    """Validate everything, build and verify every target's artifacts, and write the bundle.

    With `bench`, every artifact and the float baselines are also timed in fresh processes
    (`edgepack bench`) and the figures go into the manifest and reports. `log_path`, the file the
    libraries' own output was sent to, is copied into the bundle as pack.log. An existing output folder
    is replaced only when it is an intact edgepack bundle, or with `force`. With `sign_key` (an ed25519
    private key, edgepack.bundle.signing), the finished manifest is signed."""
    if recipe.output is None:
        raise ConfigError(f"recipe '{recipe.name}': no output folder (load_recipe resolves one)")
    targets = resolve_targets(recipe)
    with progress.step("reading calibration and evaluation data"):
        calibration, evaluation = load_data(recipe)
    warnings = [*calibration.warnings, *evaluation.warnings, *calibration_warnings(calibration, evaluation),
                *input_scale_warnings(evaluation)]
    for warning in warnings:
        progress.warn(warning)
    with progress.step("loading the float model"):
        original = load_model(recipe)
        loaded, rewrites = _export_friendly(original, recipe, calibration)
    compressed = None
    if recipe.prune is not None or recipe.lowrank is not None:
        assert loaded.module is not None, "the recipe schema refuses compression of an ONNX model"
        compressed = compress(loaded.module, recipe, calibration, evaluation, progress)
    with (staging(recipe.output, force=force, on_clean=progress.warn) as stage,
          tempfile.TemporaryDirectory(prefix="edgepack-") as scratch):
        reference_path = stage / REFERENCE_DIR / REFERENCE_FILE
        reference_path.parent.mkdir()
        with progress.step("exporting and checking the fp32 ONNX reference"):
            export_difference = _reference_onnx(loaded, recipe, evaluation, reference_path)
        with progress.step("measuring the float model"):
            source, reference_outputs = _measure_source(original, recipe, evaluation, reference_path)
        coverage = None
        if original.module is not None:
            with progress.step("checking that calibration ranges cover the evaluation activations"):
                coverage = activation_coverage(original.module, calibration, evaluation, recipe.input_names)
        for warning in [*float_model_warnings(recipe.task, source.metrics, evaluation),
                        *(coverage.warnings() if coverage is not None else [])]:
            progress.warn(warning)
            warnings.append(warning)
        if rewrites:
            source.rewrites_for_export = rewrites
        student_module, student_onnx, pruning = loaded.module, reference_path, None
        if compressed is not None:
            with progress.step("saving, reloading and exporting the pruned model"):
                student_module, student_onnx = compressed.module, stage / PRUNED_DIR / "model.fp32.onnx"
                pruning = _pruned_outputs(compressed, recipe, evaluation, source, stage)
        tuned, tuning = dict(recipe.tuned), {}
        if recipe.tune.auto and targets:
            data = prepare_search(recipe, teacher=original.module, student=student_module, student_onnx=student_onnx,
                                  calibration=calibration, scratch=Path(scratch) / "tune", progress=progress)
            tuning = tune_targets(recipe, targets, data, Path(scratch) / "tune", progress)
            tuned.update(chosen_configs(tuning))
        variants = VariantCache(student_module, student_onnx, recipe, calibration, Path(scratch) / "variants")
        results = []
        for target, options in targets:
            results.append(_run_target(target, options, recipe, variants, tuned.get(target.name), calibration,
                                       evaluation, reference_outputs, stage, Path(scratch), progress))
        reference_entry = ReferenceEntry(path=f"{REFERENCE_DIR}/{REFERENCE_FILE}", sha256=sha256_file(reference_path),
                                         size_bytes=reference_path.stat().st_size, format="onnx", precision="fp32",
                                         max_abs_difference_vs_torch=export_difference)
        manifest = build_manifest(recipe, source=source, reference=reference_entry, targets=results,
                                  calibration=calibration, evaluation=evaluation, warnings=warnings, pruning=pruning)
        manifest.tuned = {name: fragment_entry(config) for name, config in tuned.items()
                          if name in {target.name for target, _ in targets}}
        manifest.tuning = tuning
        manifest.divergence = {item.relative_path: item.divergence for result in results for item in result.artifacts
                               if item.divergence is not None}
        if coverage is not None:
            manifest.activation_coverage = ActivationCoverageEntry(**coverage.as_dict())
        if recipe.text is not None:
            manifest.text = write_text_bundle(stage, recipe)
        if any(item.golden for _, item in manifest.artifacts()):
            script = copy_device_script(stage)
            manifest.device_script = _file_entry(script, stage)
        if bench:
            manifest.bench = bench_bundle(Bundle(folder=stage, manifest=manifest, recipe=recipe),
                                          BenchSettings.from_latency(recipe.latency), progress=progress)
        flag_slow_artifacts(manifest, stage, evaluation.arrays, threads=recipe.latency.threads,
                            targets=frozenset(target.name for target, _ in targets if target.runs_on_host))
        if log_path is not None:
            shutil.copyfile(log_path, stage / LOG_NAME)
            manifest.library_log = LibraryLog(path=LOG_NAME, note="what the libraries edgepack ran printed during "
                                              "pack (warnings, converter progress, runtime info); --verbose shows it "
                                              "live")
        write_bundle_documents(stage, manifest)
        if sign_key is not None:
            sign_bundle(stage, sign_key)
    return PackResult(bundle=Path(recipe.output), manifest=manifest, targets=tuple(results),
                      warnings=tuple(warnings), signed_by=fingerprint(sign_key.public_key()) if sign_key else None)


def tune_only(recipe: Recipe, progress: Progress = SilentProgress()) -> dict[str, TuningRecord]:
    """`edgepack tune`: the search of `tune.auto` for every target, without writing a bundle. With a `prune`
    section the student is pruned (and distilled) first, as pack would, and the search runs on it."""
    targets = resolve_targets(recipe)
    with progress.step("reading calibration and evaluation data"):
        calibration, evaluation = load_data(recipe)
    with progress.step("loading the float model"):
        original = load_model(recipe)
        loaded, _ = _export_friendly(original, recipe, calibration)
    student = loaded.module
    if recipe.prune is not None or recipe.lowrank is not None:
        assert loaded.module is not None, "the recipe schema refuses compression of an ONNX model"
        student = compress(loaded.module, recipe, calibration, evaluation, progress).module
    with tempfile.TemporaryDirectory(prefix="edgepack-tune-") as scratch:
        student_onnx = Path(scratch) / "student.fp32.onnx"
        with progress.step("exporting and checking the fp32 ONNX of the model to tune"):
            if student is None:
                raise ConfigError("tune needs a PyTorch model (model.factory), not an ONNX file")
            _export_checked(student, recipe, evaluation, student_onnx)
        data = prepare_search(recipe, teacher=original.module, student=student, student_onnx=student_onnx,
                              calibration=calibration, scratch=Path(scratch) / "tune", progress=progress)
        return tune_targets(recipe, targets, data, Path(scratch) / "tune", progress)


def prune_only(recipe: Recipe, progress: Progress = SilentProgress(), *, log_path: Optional[Path] = None,
               force: bool = False) -> PackResult:
    """`edgepack prune`: the pack pipeline up to the pruned, distilled and checked fp32 model, no targets."""
    if recipe.prune is None and recipe.lowrank is None:
        raise ConfigError("the recipe has no 'prune' (or 'lowrank') section; add one (ratio, by, importance, ...)")
    return pack(recipe.model_copy(update={"targets": []}), progress, bench=False, log_path=log_path, force=force)


def _export_friendly(loaded: LoadedModel, recipe: Recipe, calibration: SampleSet) -> tuple[LoadedModel, list[str]]:
    """The module every export starts from: nn.EmbeddingBag rewritten (edgepack.model.bag_rewrite), checked to
    give the float model's outputs on calibration samples. The float model itself is still what is
    measured as the baseline."""
    if loaded.module is None:
        return loaded, []
    module, notes = rewrite_embedding_bags(loaded.module)
    if not notes:
        return loaded, []
    sample = {name: array[:256] for name, array in calibration.arrays.items()}
    threads = recipe.latency.threads
    before = TorchRunner(loaded.module, recipe.input_names, threads)(sample)
    after = TorchRunner(module, recipe.input_names, threads)(sample)
    difference = max(float(np.abs(a - b).max()) for a, b in zip(before, after))
    scale = max(float(np.abs(a).max()) for a in before)
    if difference > 1e-5 + 1e-5 * scale:  # sums in another order: relative, not absolute, tolerance
        raise ExportError(f"rewriting nn.EmbeddingBag for export changed the outputs (max abs difference "
                          f"{difference:.2e}): {'; '.join(notes)}")
    count = len(next(iter(sample.values())))
    notes = [f"{note}; max abs difference {difference:.1e} on {count} calibration samples" for note in notes]
    return dataclasses.replace(loaded, module=module), notes


def _reference_onnx(loaded: LoadedModel, recipe: Recipe, evaluation: SampleSet, path: Path) -> Optional[float]:
    """Write the fp32 ONNX every target starts from; for torch models check it against PyTorch."""
    if loaded.module is None:
        assert loaded.onnx_path is not None, "a model without a module is an ONNX file"
        shutil.copyfile(loaded.onnx_path, path)
        return None
    return _export_checked(loaded.module, recipe, evaluation, path)


def _export_checked(module, recipe: Recipe, evaluation: SampleSet, path: Path) -> float:
    """Export `module` to fp32 ONNX and check it against PyTorch on the first evaluation batch."""
    sample = next(evaluation.batches())
    export_float_onnx(module, recipe.inputs, {k: v[:2] for k, v in sample.items()}, path)
    return check_against_torch(module, path, recipe.inputs, sample, threads=recipe.latency.threads)


def _float_runner(loaded: LoadedModel, recipe: Recipe, reference_path: Path):
    if loaded.module is not None:
        return TorchRunner(loaded.module, recipe.input_names, recipe.latency.threads), "torch eager fp32"
    return OrtRunner(reference_path, threads=recipe.latency.threads), "onnxruntime fp32"


def _measure_source(loaded: LoadedModel, recipe: Recipe, evaluation: SampleSet,
                    reference_path: Path) -> tuple[SourceModel, np.ndarray]:
    """Float model metrics and latency, plus its outputs on the evaluation set (the drift reference)."""
    runner, runtime = _float_runner(loaded, recipe, reference_path)
    outputs = collect_outputs(runner, evaluation)
    task = tasks.kind(recipe.task)
    task.check_against_outputs(evaluation, recipe.evaluation.labels, outputs)
    metrics = task.quality(outputs, evaluation, recipe.evaluation)
    latency = measure_batches(runner, evaluation.arrays, recipe.latency)
    reference_runner = OrtRunner(reference_path, threads=recipe.latency.threads)
    source = SourceModel(kind=loaded.kind, description=loaded.description, runtime=runtime, metrics=metrics,
                         latency=latency,
                         reference_onnx_latency=measure_batches(reference_runner, evaluation.arrays, recipe.latency))
    if loaded.module is not None:
        one_sample = as_tensors({name: evaluation.arrays[name][:1] for name in recipe.input_names}, recipe.input_names)
        source.macs, source.params = count_macs_and_params(loaded.module, one_sample)
        source.size_bytes = sum(t.numel() * t.element_size() for t in loaded.module.state_dict().values())
    return source, outputs


def _pruned_outputs(compressed: CompressionResult, recipe: Recipe, evaluation: SampleSet, source: SourceModel,
                    stage: Path) -> PruningSection:
    """Write the pruned model (whole program + fp32 ONNX), check both, measure it, describe it."""
    folder = stage / PRUNED_DIR
    folder.mkdir()
    onnx_path = folder / "model.fp32.onnx"
    reload_difference, saved = save_student(compressed, evaluation.arrays, recipe.input_names, folder)
    if reload_difference > 1e-5:
        raise ExportError(f"the reloaded pruned model differs from the pruned model by {reload_difference:.3g}")
    _export_checked(compressed.module, recipe, evaluation, onnx_path)
    latency = {
        "torch_eager_fp32": {"before": source.latency,
                             "after": measure_batches(TorchRunner(compressed.module, recipe.input_names,
                                                                  recipe.latency.threads), evaluation.arrays,
                                                      recipe.latency)},
        "onnxruntime_fp32": {"before": source.reference_onnx_latency,
                             "after": measure_batches(OrtRunner(onnx_path, threads=recipe.latency.threads),
                                                      evaluation.arrays, recipe.latency)},
    }
    section = PruningSection.model_validate(compression_manifest(compressed, latency=latency,
                                                                 reload_difference=reload_difference))
    section.files = [_file_entry(path, stage) for path in (*saved, onnx_path)]
    return section


def validated_on(artifact: Artifact, runner: Runner) -> ValidatedOn:
    """Where and how an artifact's drift was measured: CPU, ISA features, runtime, provider, arithmetic."""
    host = host_isa()
    return ValidatedOn(cpu=host.cpu, machine=host.machine, isa=list(host.features), runtime=artifact.runtime,
                       runtime_version=artifact.runtime_version, execution_provider=runner.device,
                       arithmetic=runner.arithmetic)


def _run_target(target: Target, options, recipe: Recipe, variants: VariantCache, tuned: Optional[TunedTarget],
                calibration: SampleSet, evaluation: SampleSet, reference_outputs: np.ndarray, stage: Path,
                scratch: Path, progress: Progress) -> TargetResult:
    """Export, run and measure one target; an error here is recorded and the other targets go on.

    `tuned` (from the recipe or the search) may change the calibration method, apply bias correction to
    the student, and keep modules float (edgepack.tuning.apply)."""
    out_dir = stage / target.name
    out_dir.mkdir()
    scratch_dir = scratch / target.name
    scratch_dir.mkdir()
    try:
        if tuned is not None and tuned.bias_correction:
            with progress.step(f"{target.name}: bias correction on {recipe.tune.correction_samples} calibration "
                               "samples"):
                variants.corrected(tuned.smooth_quant, tuned.smooth_quant_mul)
        build = variants.build(tuned, recipe.calibration.method)
        context = ExportContext(float_onnx=build.float_onnx, module=build.module, inputs=list(recipe.inputs),
                                calibration=calibration, method=build.method,
                                quantization=recipe.quantization, out_dir=out_dir, scratch_dir=scratch_dir,
                                options=options, threads=recipe.latency.threads, float_modules=build.float_modules,
                                unquantized_onnx=variants.float_onnx, unquantized_module=variants.module)
        with progress.step(f"{target.name}: building artifacts"):
            artifacts = target.export(context)
        results = []
        for artifact in artifacts:
            with progress.step(f"{target.name}: verifying {artifact.path.name} on {evaluation.num_samples} samples"):
                runner = target.runner(artifact.path, threads=recipe.latency.threads)
                outputs = collect_outputs(runner, evaluation)
                task = tasks.kind(recipe.task)
                metrics = task.drift_metrics(reference_outputs, outputs, evaluation, recipe.evaluation)
                drift = check_budget(metrics, recipe.budget.model_dump())
                latency = measure_batches(runner, evaluation.arrays, recipe.latency)
                golden = _golden_files(artifact, recipe, evaluation, outputs, reference_outputs, stage)
            divergence = None
            if not drift.passed and "int8" in artifact.precision:
                with progress.step(f"{target.name}: localizing where {artifact.path.name} diverges"):
                    divergence = _localize(context, artifact, runner, evaluation, recipe, stage)
            artifact = dataclasses.replace(artifact, lowered_from=None)  # its quantized module is no longer needed
            results.append(ArtifactResult(artifact=artifact, relative_path=str(artifact.path.relative_to(stage)),
                                          sha256=sha256_file(artifact.path), size_bytes=artifact.path.stat().st_size,
                                          drift=drift, latency=latency, validated_on=validated_on(artifact, runner),
                                          golden=golden, divergence=divergence))
        return TargetResult(name=target.name, artifacts=tuple(results))
    except EdgepackError as exc:
        progress.warn(f"target '{target.name}' failed: {exc}")
        return TargetResult(name=target.name, error=str(exc))
    except Exception as exc:  # one broken target must not hide the others' results
        progress.warn(f"target '{target.name}' failed: {describe(exc)}")
        return TargetResult(name=target.name, error=describe(exc))


DIVERGENCE_SAMPLES = 16


def _localize(context: ExportContext, artifact: Artifact, runner: Runner, evaluation: SampleSet, recipe: Recipe,
              stage: Path) -> DivergenceRecord:
    """First-divergence localization of a failing INT8 artifact (ONNX, .tflite, .pte) on a few evaluation samples;
    a model it cannot pair layer by layer gets a record that says why instead of failing the target."""
    feeds = {name: array[:DIVERGENCE_SAMPLES] for name, array in evaluation.arrays.items()}
    label = str(artifact.path.relative_to(stage))
    threads = recipe.latency.threads
    try:
        if artifact.format == "onnx":
            return onnx_divergence(context.float_onnx, artifact.path, feeds, threads=threads,
                                   fake_quant=FAKE_QUANT_DEVICE in runner.device, label=label)
        if artifact.format == "tflite" and context.module is not None:
            return tflite_divergence(context.module, artifact.path, feeds, recipe.input_names, threads=threads,
                                     label=label)
        if artifact.format == "pte" and context.module is not None and artifact.lowered_from is not None:
            # the target's own quantized graph: nothing is quantized or calibrated again
            return pte_divergence(context.module, artifact.lowered_from, feeds, recipe.input_names,
                                  verified_outputs=runner(feeds), label=label)
        return DivergenceRecord(artifact=label, samples=len(next(iter(feeds.values()))), layers=[],
                                note=f"not localized: no layer-by-layer comparison for a {artifact.format} "
                                     f"{artifact.precision} artifact")
    except Exception as exc:  # a diagnosis must not turn a drift failure into an error
        return DivergenceRecord(artifact=label, samples=DIVERGENCE_SAMPLES, layers=[],
                                note=f"not localized: {describe(exc)}")


def _file_entry(path: Path, stage: Path) -> FileEntry:
    return FileEntry(path=str(path.relative_to(stage)), sha256=sha256_file(path), size_bytes=path.stat().st_size)


def _golden_files(artifact: Artifact, recipe: Recipe, evaluation: SampleSet, outputs: np.ndarray,
                  reference_outputs: np.ndarray, stage: Path) -> tuple[FileEntry, ...]:
    """Golden inputs and outputs from the evaluation data, beside the artifact, for verify_on_device.py."""
    io = {"inputs": artifact.details["inputs"], "outputs": artifact.details["outputs"]}
    paths = write_golden(artifact.path, target=artifact.target, task=recipe.task, io=io,
                         inputs=artifact_inputs(evaluation.arrays, io["inputs"]), artifact_outputs=outputs,
                         reference_outputs=reference_outputs, labels=evaluation.labels,
                         budget=recipe.budget.model_dump())
    return tuple(_file_entry(path, stage) for path in paths)
