"""`edgepack verify`: re-check a bundle's checksums and drift from the bundle alone."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from edgepack.bundle.entries import Number
from edgepack.bundle.files import Bundle, check_checksums, unlisted_files
from edgepack.bundle.manifest import Manifest
from edgepack.bundle.signing import SignatureCheck, check_signature
from edgepack.calibration.dataset import load_sample_set
from edgepack.device.report import DeviceReport, read_device_report
from edgepack.errors import EXIT_DRIFT, EXIT_ERROR, EXIT_OK, VerificationError
from edgepack.evaluation import tasks
from edgepack.evaluation.drift import DriftReport, check_budget, collect_outputs
from edgepack.evaluation.runners import OrtRunner
from edgepack.isa import host_isa
from edgepack.recipe.budget import Budget
from edgepack.registry import get_target
from edgepack.text.bundle import bundle_reader, verify_bundle_tokens

RECORDED_ABS_TOLERANCE = 2e-3  # accuracy, agreement, AUC: a sample or two of 1,000 may flip across hosts
RECORDED_REL_TOLERANCE = 0.05  # KL, relative L2: rounding of a different build or thread count
UNTRUSTED_BUDGET = ("budget taken from the bundle's own manifest: whoever can edit the bundle can loosen it; "
                    "pass --budget FILE or --recipe FILE to check against bounds you keep")


@dataclass(frozen=True)
class BundleCheck:
    """Drift of each artifact against the bundle's own fp32 reference, on new data, and what that says
    about the verdict recorded at packing time."""

    bundle: Path
    samples: int
    reports: dict[str, DriftReport]
    warnings: tuple[str, ...] = ()
    recorded_failures: tuple[str, ...] = ()  # targets the manifest itself records as failed or in error
    same_data: bool = False  # the data is the evaluation set the bundle was packed with (same sha256)
    signature: Optional[SignatureCheck] = None
    device: Optional[DeviceReport] = None  # what verify_on_device.py reported from a device

    @property
    def exit_code(self) -> int:
        """0 when every artifact is within budget, the recorded verdict passed and the device report (if
        any) passed; EXIT_ERROR when the device report records an error; EXIT_DRIFT otherwise."""
        device = self.device.verdict_exit_code if self.device is not None else EXIT_OK
        if device == EXIT_ERROR:
            return EXIT_ERROR
        passed = all(report.passed for report in self.reports.values()) and not self.recorded_failures
        return EXIT_OK if passed and device == EXIT_OK else EXIT_DRIFT


def verify_bundle(bundle: Path, data: Optional[Path], *, labels: Optional[str] = None, threads: int = 2,
                  budget: Optional[Budget] = None, key: Optional[Path] = None,
                  device_report: Optional[Path] = None) -> BundleCheck:
    """Check the signature (against `key`, when given), every checksum and that no file was added; then
    run the reference and each artifact on `data` and compare with the budget (`budget`, else the
    manifest's, with a warning). On the data the bundle was packed with, re-measured metrics must equal
    the recorded ones (within tolerance). `device_report` is the --json output of verify_on_device.py
    run on a device; its files must be this bundle's."""
    signature = check_signature(Path(bundle), key)
    opened = Bundle.open(Path(bundle))
    bundle, manifest = opened.folder, opened.manifest
    files = manifest.files()
    problems = check_checksums(bundle, files) + [f"{name}: not listed in the manifest (added after packing)"
                                                 for name in unlisted_files(bundle, files)]
    if problems:
        raise VerificationError(f"{bundle}: " + "; ".join(problems))
    if manifest.text is not None:
        verify_bundle_tokens(bundle)  # the shipped tokenizer reproduces the golden token ids
    device = (read_device_report(device_report, {entry.path: entry.sha256 for entry in files})
              if device_report is not None else None)
    if data is None:
        return BundleCheck(bundle=bundle, samples=0, reports={}, signature=signature, device=device,
                           recorded_failures=_recorded_failures(manifest))
    _check_host_isa(manifest)
    misfit = budget.problems_for(manifest.task) if budget is not None else []
    if misfit:
        raise VerificationError("the given budget does not fit this bundle: " + "; ".join(misfit))
    settings = opened.recipe.evaluation.model_copy(update={"path": Path(data).resolve(), "callable": None,
                                                           "samples": None, "columns": None}
                                                   | ({"labels": labels} if labels else {}))
    evaluation = load_sample_set(settings, opened.recipe.inputs, role="evaluation", base_dir=Path.cwd(),
                                 labels=settings.labels, extras=tuple(settings.segments),
                                 reader=bundle_reader(bundle, opened.recipe))
    reference = collect_outputs(OrtRunner(bundle / manifest.reference.path, threads=threads), evaluation)
    task = tasks.kind(manifest.task)
    task.check_against_outputs(evaluation, settings.labels, reference)
    warnings = list(evaluation.warnings) + ([UNTRUSTED_BUDGET] if budget is None else [])
    same_data = evaluation.sha256 == manifest.evaluation.sha256
    reports = {}
    for name, target_entry in manifest.targets.items():
        target = get_target(name)
        target.check_available()
        for artifact in target_entry.artifacts:
            runner = target.runner(bundle / artifact.path, threads=threads)
            metrics = task.drift_metrics(reference, collect_outputs(runner, evaluation), evaluation, settings)
            if same_data:
                _compare_with_recorded(artifact.path, metrics, artifact.metrics)
            bounds = budget.model_dump() if budget is not None else artifact.budget
            reports[artifact.path] = check_budget(metrics, bounds)
    return BundleCheck(bundle=bundle, samples=evaluation.num_samples, reports=reports, warnings=tuple(warnings),
                       recorded_failures=_recorded_failures(manifest), same_data=same_data, signature=signature,
                       device=device)


def _recorded_failures(manifest: Manifest) -> tuple[str, ...]:
    return tuple(f"{name}: {entry.status}" + (f" ({entry.error})" if entry.error else "")
                 for name, entry in manifest.targets.items() if entry.status != "passed")


def _compare_with_recorded(path: str, measured: dict[str, float], recorded: dict[str, Optional[Number]]) -> None:
    """On the packing data, a recorded metric that the artifact does not reproduce means the manifest
    (or the artifact, with its checksum rewritten) was changed: refuse, naming the metric."""
    for key, was in recorded.items():
        now = measured.get(key)
        if not isinstance(was, (int, float)) or not isinstance(now, (int, float)) or key == "samples":
            continue
        if math.isnan(was) and math.isnan(now):
            continue
        tolerance = max(RECORDED_ABS_TOLERANCE, RECORDED_REL_TOLERANCE * abs(was))
        if not abs(now - was) <= tolerance:
            raise VerificationError(f"{path}: re-measured {key} {now:.6g} differs from the recorded {was:.6g} on the "
                                    "data the bundle was packed with: the manifest or the artifact was changed")


def _check_host_isa(manifest: Manifest) -> None:
    """Refuse artifacts built for ISA features this host lacks: their integer kernels would compute
    something else here (int16 pair saturation), so a drift measured here would be meaningless."""
    host = host_isa()
    for _, artifact in manifest.artifacts():
        needs = artifact.isa.requires_isa if artifact.isa is not None else []
        if needs and not set(needs) & set(host.features):
            raise VerificationError(
                f"{artifact.path} was built with isa: vnni (full 8-bit weights) and needs one of {', '.join(needs)}; "
                f"this host ({host.cpu}: {' '.join(host.features) or 'no tracked ISA features'}) has none, so its "
                "integer kernels would saturate; verify on a VNNI host or re-pack with "
                "target_options.x86.isa: portable")
