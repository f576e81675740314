"""`edgepack verify`: re-check a bundle's checksums and drift from the bundle alone."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from edgepack import tasks
from edgepack.bundle import check_checksums, open_manifest
from edgepack.calibration.dataset import load_sample_set
from edgepack.config import EvaluationConfig, InputSpec
from edgepack.errors import EXIT_DRIFT, EXIT_OK, VerificationError
from edgepack.isa import host_isa
from edgepack.manifest_model import Manifest
from edgepack.registry import get_target
from edgepack.runners import OrtRunner
from edgepack.verify import DriftReport, check_budget, collect_outputs


@dataclass(frozen=True)
class BundleCheck:
    """Drift of each artifact against the bundle's own fp32 reference, on new data."""

    bundle: Path
    samples: int
    reports: dict[str, DriftReport]
    warnings: tuple[str, ...] = ()

    @property
    def exit_code(self) -> int:
        """0 when every artifact is within budget, EXIT_DRIFT otherwise."""
        return EXIT_OK if all(report.passed for report in self.reports.values()) else EXIT_DRIFT


def verify_bundle(bundle: Path, data: Path, *, labels: Optional[str] = None, threads: int = 2) -> BundleCheck:
    """Check every checksum, then run the reference and each artifact on `data` and compare with the budget."""
    bundle = Path(bundle)
    manifest = open_manifest(bundle)
    problems = check_checksums(bundle, manifest.to_json_dict())
    if problems:
        raise VerificationError(f"{bundle}: " + "; ".join(problems))
    _check_host_isa(manifest)
    recipe = manifest.recipe
    inputs = [InputSpec(**spec) for spec in recipe["inputs"]]
    settings = EvaluationConfig.model_validate({**recipe["evaluation"], "path": Path(data).resolve(), "callable": None,
                                                "samples": None, "columns": None}
                                               | ({"labels": labels} if labels else {}))
    evaluation = load_sample_set(settings, inputs, role="evaluation", base_dir=Path.cwd(), labels=settings.labels,
                                 extras=tuple(settings.segments))
    reference = collect_outputs(OrtRunner(bundle / manifest.reference.path, threads=threads), evaluation)
    tasks.check_class_indices(manifest.task, evaluation, settings.labels, reference)
    reports = {}
    for name, target_entry in manifest.targets.items():
        target = get_target(name)
        target.check_available()
        for artifact in target_entry.artifacts:
            runner = target.runner(bundle / artifact.path, threads=threads)
            metrics = tasks.drift_metrics(manifest.task, reference, collect_outputs(runner, evaluation), evaluation,
                                          settings)
            reports[artifact.path] = check_budget(metrics, artifact.budget)
    return BundleCheck(bundle=bundle, samples=evaluation.num_samples, reports=reports, warnings=evaluation.warnings)


def _check_host_isa(manifest: Manifest) -> None:
    """Refuse artifacts built for ISA features this host lacks: their integer kernels would compute
    something else here (int16 pair saturation), so a drift measured here would be meaningless."""
    host = host_isa()
    for _, artifact in manifest.artifacts():
        needs = artifact.structure.get("isa", {}).get("requires_isa") or []
        if needs and not set(needs) & set(host.features):
            raise VerificationError(
                f"{artifact.path} was built with isa: vnni (full 8-bit weights) and needs one of {', '.join(needs)}; "
                f"this host ({host.cpu}: {' '.join(host.features) or 'no tracked ISA features'}) has none, so its "
                "integer kernels would saturate; verify on a VNNI host or re-pack with "
                "target_options.x86.isa: portable")
