"""Compression before quantization: pruning with self-checks, then distillation from the float model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from edgepack.calibration.dataset import SampleSet, load_sample_set
from edgepack.compression.distill import SELECTION, DistillReport, distill, label_loss
from edgepack.compression.lowrank import factorize
from edgepack.compression.prune import (
    PruneResult,
    output_heads,
    prune_model,
    reload_and_check,
    save_pruned,
    unpruned,
)
from edgepack.evaluation import tasks
from edgepack.model.tensors import as_tensors, count_macs_and_params
from edgepack.progress import Progress
from edgepack.recipe.schema import Recipe


@dataclass(frozen=True)
class CompressionResult:
    """The compressed student and the measurements that justify it."""

    module: torch.nn.Module
    pruning: PruneResult
    distillation: Optional[DistillReport]
    accuracy: dict[str, float]
    lowrank: tuple[dict, ...] = ()
    params_after: int = 0
    macs_after: int = 0
    quality_metric: str = "accuracy"
    huggingface: Optional[Path] = None  # a pruned encoder: saved as a Hugging Face folder with this tokenizer


def _quality(module: torch.nn.Module, evaluation: SampleSet, recipe: Recipe) -> float:
    """The task's headline metric (accuracy, AUC) of `module` on the evaluation set."""
    with torch.no_grad():
        outputs = torch.cat([module(*as_tensors(batch, recipe.input_names)) for batch in evaluation.batches()])
    task = tasks.kind(recipe.task)
    metrics = task.quality(outputs.numpy().astype(np.float64), evaluation, recipe.evaluation)
    return float(metrics[task.headline])


def compress(teacher: torch.nn.Module, recipe: Recipe, calibration: SampleSet, evaluation: SampleSet,
             progress: Progress) -> CompressionResult:
    """Prune the float model to the recipe's target (distilling between steps if asked) and recover it."""
    if recipe.model.huggingface is not None:
        return _compress_encoder(teacher, recipe, calibration, evaluation, progress)
    names = recipe.input_names
    task = tasks.kind(recipe.task)
    example = as_tensors({k: v[:16] for k, v in calibration.arrays.items()}, names)
    distill_data = None
    if recipe.distill is not None:
        distill_data = load_sample_set(recipe.distill, recipe.inputs, role="distillation", base_dir=recipe.base_dir,
                                       labels=recipe.distill.labels)
        distill_data = task.distillation_labels(distill_data, recipe.distill.labels)
        for warning in distill_data.warnings:
            progress.warn(warning)

    def taylor_loss(model):
        inputs = as_tensors(calibration.arrays, names)
        with torch.no_grad():
            teacher_logits = teacher(*inputs)
        # Not the distillation loss: before the first step the model IS the teacher, so that loss is at
        # its minimum with exactly zero gradient and every Taylor score would be 0. Use the teacher's
        # hard predictions as labels: a non-zero gradient that still needs no labelled data.
        targets = task.pruning_targets(teacher_logits)
        return label_loss(model(*inputs), targets)

    def recover(model, step):
        with progress.step(f"distilling after pruning step {step}"):
            distill(model, teacher, distill_data.arrays, distill_data.labels, names, recipe.distill,
                    seed=recipe.distill.seed)

    if recipe.prune is not None:
        with progress.step(f"pruning {recipe.prune.ratio:.0%} of {recipe.prune.by} in {recipe.prune.steps} step(s), "
                           "self-checking every layer group"):
            pruned = prune_model(teacher, example, recipe.prune, taylor_loss=taylor_loss,
                                 between_steps=recover if distill_data is not None else None)
    else:
        pruned = unpruned(teacher, example)
    factorized = []
    if recipe.lowrank is not None:
        with progress.step(f"factorizing Linear layers (SVD, {recipe.lowrank.energy:.0%} energy)"):
            heads = {name for name, layer in pruned.module.named_modules()
                     if layer in output_heads(pruned.module, example)}
            factorized = factorize(pruned.module, energy=recipe.lowrank.energy,
                                   min_features=recipe.lowrank.min_features, keep=heads)
    stage = "pruned" if recipe.prune is not None else "compressed"
    accuracy = {"float": _quality(teacher, evaluation, recipe), stage: _quality(pruned.module, evaluation, recipe)}
    report = None
    if distill_data is not None:
        with progress.step("distilling the pruned model from the float model"):
            assert recipe.distill is not None, "distill_data comes from recipe.distill"
            report = distill(pruned.module, teacher, distill_data.arrays, distill_data.labels, names,
                             recipe.distill, seed=recipe.distill.seed)
        accuracy["distilled"] = _quality(pruned.module, evaluation, recipe)
    macs_after, params_after = count_macs_and_params(pruned.module, example)
    return CompressionResult(module=pruned.module, pruning=pruned, distillation=report, accuracy=accuracy,
                             lowrank=tuple(factorized), params_after=params_after, macs_after=macs_after,
                             quality_metric=tasks.kind(recipe.task).headline)


def _compress_encoder(teacher: torch.nn.Module, recipe: Recipe, calibration: SampleSet, evaluation: SampleSet,
                      progress: Progress) -> CompressionResult:
    """A Hugging Face encoder: whole layers, heads and FFN channels (edgepack.text.compress)."""
    from edgepack.text.compress import compress_encoder
    from edgepack.text.huggingface import LogitsOnly

    assert isinstance(teacher, LogitsOnly), "model.huggingface loads a LogitsOnly classifier"
    assert recipe.model.huggingface is not None, "only for model.huggingface"
    result = compress_encoder(teacher, recipe, calibration, lambda module: _quality(module, evaluation, recipe),
                              progress)
    return CompressionResult(module=result.student, pruning=result.pruning, distillation=result.distillation,
                             accuracy=result.accuracy, params_after=result.params_after, macs_after=result.macs_after,
                             quality_metric=tasks.kind(recipe.task).headline, huggingface=recipe.model.huggingface)


def save_compressed(result: CompressionResult, example: dict[str, np.ndarray], names: list[str], path: Path) -> float:
    """Save the pruned model as a whole program and check that reloading gives identical outputs."""
    tensors = as_tensors({k: v[:4] for k, v in example.items()}, names)
    save_pruned(result.module, tensors, path)
    return reload_and_check(path, result.module, tensors)


def save_student(result: CompressionResult, example: dict[str, np.ndarray], names: list[str],
                 folder: Path) -> tuple[float, list[Path]]:
    """Save the pruned model into `folder` and reload it from there: (max abs output difference, files written).

    A whole torch.export program (model.pt2), or for an encoder a Hugging Face folder (huggingface/:
    save_pretrained plus the tokenizer) reloaded by from_pretrained from that folder alone."""
    if result.huggingface is None:
        path = folder / "model.pt2"
        return save_compressed(result, example, names, path), [path]
    from edgepack.text.huggingface import reload_difference
    from edgepack.text.prune import save_encoder

    tensors = as_tensors({k: v[:4] for k, v in example.items()}, names)
    saved, vocabulary = folder / "huggingface", getattr(result.module, "vocabulary", None)
    files = save_encoder(getattr(result.module, "model"), saved, result.huggingface)
    if vocabulary is not None:  # the kept token rows (edgepack.text.vocab), read back by the loader
        files = sorted([*files, vocabulary.save(saved)])
    return reload_difference(saved, result.module, tensors), files


def compression_manifest(result: CompressionResult, *, latency: dict, reload_difference: float) -> dict:
    """The manifest's `pruning` section."""
    pruning = result.pruning
    section: dict[str, Any] = {
        "params": {"before": pruning.params_before, "after": result.params_after},
        "macs": {"before": pruning.macs_before, "after": result.macs_after,
                 "removed_fraction": 1 - result.macs_after / pruning.macs_before},
        "size_bytes": {"before": pruning.params_before * 4, "after": result.params_after * 4},
        "lowrank": list(result.lowrank),
        "accuracy": result.accuracy,
        "quality_metric": result.quality_metric,
        "layers": {name: {"before": before, "after": after} for name, (before, after) in pruning.layers.items()},
        "self_check": list(pruning.checks),
        "notes": list(pruning.notes),
        "latency": latency,
        "reload_max_abs_difference": reload_difference,
    }
    section["summary"] = (f"{section['macs']['removed_fraction']:.0%} of MACs and "
                          f"{1 - result.params_after / pruning.params_before:.0%} of parameters removed; "
                          f"{result.quality_metric} "
                          + " → ".join(f"{k} {v:.4f}" for k, v in result.accuracy.items()))
    if result.distillation is not None:
        report = result.distillation
        section["distillation"] = {"epochs_run": report.epochs_run, "best_epoch": report.best_epoch,
                                   "best_validation": report.best_validation,
                                   "validation_metric": report.validation_metric, "selected_by": SELECTION,
                                   "stopped": report.stopped,
                                   "seconds": report.seconds, "history": list(report.history)}
    return section
