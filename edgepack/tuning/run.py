"""Run the tuning search over a recipe's quantizing targets, and turn its choices into a recipe fragment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from edgepack.calibration.dataset import SampleSet
from edgepack.errors import ConfigError
from edgepack.evaluation.drift import collect_outputs
from edgepack.evaluation.runners import TorchRunner
from edgepack.progress import Progress
from edgepack.recipe.schema import Recipe, TunedTarget
from edgepack.targets.base import Target
from edgepack.tuning.apply import VariantCache
from edgepack.tuning.record import TuningRecord
from edgepack.tuning.search import Search, SearchData, sensitivity_for, split_calibration


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
    return SearchData(fit=fit, holdout=holdout, reference=reference, variants=variants, sensitivity=sensitivity,
                      order=order)


def tune_targets(recipe: Recipe, targets: list[tuple[Target, BaseModel]], data: SearchData, scratch: Path,
                 progress: Progress) -> dict[str, TuningRecord]:
    """One search per target, in the recipe's order."""
    records = {}
    for target, options in targets:
        folder = scratch / f"tune-{target.name}"
        folder.mkdir(parents=True)
        records[target.name] = Search(target, options, recipe, data, folder, progress).run()
        record = records[target.name]
        chosen = record.chosen_trial
        if not record.met_budget and chosen is not None:
            progress.warn(f"{target.name} cannot meet the budget with the candidates tried; best: {chosen.label} "
                          f"({figures(chosen.metrics, chosen.latency_ms)})")
    return records


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
