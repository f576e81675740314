"""Pruning benchmark: the pruned example against the issue's targets, and recovery methods compared."""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgepack.compression.distill import distill
from edgepack.compression.prune import prune_model
from edgepack.model.load import load_model
from edgepack.pipeline import pack
from edgepack.recipe.load import load_recipe

ROOT = Path(__file__).resolve().parents[1]
PRUNED_RECIPE = ROOT / "examples" / "image_classifier" / "recipe_pruned.yaml"


def pruned_image_classifier(repeats: int) -> list[tuple]:
    """Pack recipe_pruned.yaml (prune 50% MACs, distill, INT8 x86) and derive the ratios."""
    with tempfile.TemporaryDirectory() as scratch:
        recipe = load_recipe(PRUNED_RECIPE, output=Path(scratch) / "bundle")
        recipe = recipe.model_copy(update={"latency": recipe.latency.model_copy(update={"repeats": repeats})})
        started = time.perf_counter()
        result = pack(recipe)
        wall = time.perf_counter() - started
    manifest = result.manifest
    pruning = manifest.pruning
    large = f"batch_{recipe.latency.batch_size}"
    onnx_before = pruning.latency["onnxruntime_fp32"].before[large].median_ms
    onnx_after = pruning.latency["onnxruntime_fp32"].after[large].median_ms
    artifact = manifest.targets["x86"].artifacts[0]
    speedup = manifest.bench.row("x86/model.int8.onnx").speedup_vs_eager[large]
    smaller = manifest.source_model.size_bytes / artifact.size_bytes
    accuracy = pruning.accuracy
    drop = 100 * (accuracy["float"] - accuracy["distilled"])
    return [
        ("MACs removed (fraction)", pruning.macs.removed_fraction, ">= 0.50", pruning.macs.removed_fraction >= 0.5),
        ("accuracy float → pruned → distilled (points of drop after)", drop, "<= 0.5", drop <= 0.5),
        ("  float accuracy", accuracy["float"], "(info)", True),
        ("  pruned accuracy before recovery", accuracy["pruned"], "(info)", True),
        ("  accuracy after distillation", accuracy["distilled"], "(info)", True),
        (f"pruned fp32 ONNX speed-up vs unpruned, {large}", onnx_before / onnx_after, ">= 1.6",
         onnx_before / onnx_after >= 1.6),
        ("float model size / pruned INT8 x86 size", smaller, ">= 8", smaller >= 8),
        (f"pruned INT8 x86 speed-up vs eager fp32, {large}", speedup, ">= 6", speedup >= 6),
        ("pruned INT8 x86 drift vs float: accuracy drop, points", artifact.metrics["accuracy_drop"], "(info)", True),
        ("edgepack pack wall time incl. pruning, distillation, bench, s", wall, "(info)", True),
    ]


def recovery_comparison(epochs: int = 5) -> list[tuple]:
    """The same pruned model recovered three ways with the same epochs: none, labels only, distillation."""
    recipe = load_recipe(PRUNED_RECIPE, output=Path(tempfile.gettempdir()) / "unused")
    teacher = load_model(recipe).module
    data = {name: np.load(recipe.base_dir / "artifacts" / f"{name}.npz") for name in ("train", "eval", "calib")}
    example = (torch.from_numpy(data["calib"]["image"][:16]),)
    student = prune_model(teacher, example, recipe.prune).module
    images, labels = torch.from_numpy(data["eval"]["image"]), data["eval"]["label"]

    def accuracy(model) -> float:
        with torch.no_grad():
            return float((model(images).argmax(1).numpy() == labels).mean())

    fixed = recipe.distill.model_copy(update={"epochs": epochs, "patience": epochs + 1, "time_budget_s": 3600})
    rows = [("recovery: none", accuracy(student), "(info)", True)]
    for label, alpha in (("recovery: label fine-tuning (alpha 0)", 0.0),
                         ("recovery: distillation (alpha 0.9, T 4)", 0.9)):
        candidate = copy.deepcopy(student)
        started = time.perf_counter()
        distill(candidate, teacher, {"image": data["train"]["image"]}, data["train"]["label"], ["image"],
                fixed.model_copy(update={"alpha": alpha}), seed=0)
        rows.append((f"{label}, {epochs} epochs ({time.perf_counter() - started:.0f} s)", accuracy(candidate),
                     "(info)", True))
    rows.append(("  float model", accuracy(teacher), "(info)", True))
    return rows
