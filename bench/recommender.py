"""Recommender benchmark: the MovieLens example's x86 (and, if installed, arm-tflite) artifacts with
INT8 and with 4-bit tables."""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

from edgepack.pipeline import pack
from edgepack.recipe.load import load_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "examples" / "recommender" / "recipe.yaml"
PRUNED_RECIPE = ROOT / "examples" / "recommender" / "recipe_pruned.yaml"


def recommender(repeats: int) -> list[tuple]:
    """Pack the example twice (INT8, 4-bit tables) for x86 and arm-tflite; compare with the issue's targets."""
    rows = []
    targets = ("x86", "arm-tflite") if importlib.util.find_spec("litert_torch") else ("x86",)
    for bits, size_target, auc_target in ((8, 0.27, 0.003), (4, 0.16, 0.005)):
        with tempfile.TemporaryDirectory() as scratch:
            recipe = load_recipe(RECIPE, output=Path(scratch) / "bundle", targets=targets)
            recipe = recipe.model_copy(update={
                "latency": recipe.latency.model_copy(update={"repeats": repeats}),
                "quantization": recipe.quantization.model_copy(update={"embedding_bits": bits})})
            manifest = pack(recipe, bench=False).manifest
        artifact = manifest.targets["x86"].artifacts[0]
        metrics = artifact.metrics
        ratio = artifact.size_ratio_vs_fp32_onnx
        tables = artifact.embedding_tables
        table_ratio = sum(t.bytes_after for t in tables) / sum(t.bytes_before for t in tables)
        rows += [
            (f"{bits}-bit tables: x86 size / fp32 ONNX (tables included)", ratio, f"<= {size_target}",
             ratio <= size_target),
            (f"{bits}-bit tables: embedding bytes after / before", table_ratio, "(info)", True),
            (f"{bits}-bit tables: AUC drop", metrics["auc_drop"], f"<= {auc_target}",
             metrics["auc_drop"] <= auc_target),
            (f"{bits}-bit tables: NDCG@10 relative drop", metrics["ndcg_relative_drop"], "<= 0.01",
             bits == 4 or metrics["ndcg_relative_drop"] <= 0.01),
            (f"{bits}-bit tables: worst segment AUC drop",
             max(v for k, v in metrics.items() if k.endswith("/auc_drop")), "(info)", True),
            (f"{bits}-bit tables: top-10 overlap with float", metrics["topk_overlap"], "(info)", True),
        ]
        if "arm-tflite" in manifest.targets:
            tflite = manifest.targets["arm-tflite"].artifacts[0]
            rows += [(f"{bits}-bit tables: arm-tflite size / fp32 ONNX", tflite.size_ratio_vs_fp32_onnx,
                      "(info)", True),
                     (f"{bits}-bit tables: arm-tflite AUC drop", tflite.metrics["auc_drop"], f"<= {auc_target}",
                      tflite.metrics["auc_drop"] <= auc_target)]
    rows.append(("float AUC / NDCG@10", manifest.source_model.metrics["auc"], "(info)", True))
    return rows


def pruned_recommender(repeats: int) -> list[tuple]:
    """Pack recipe_pruned.yaml (Taylor pruning 30% of params, distillation, INT8 x86), then again with
    label fine-tuning instead of distillation (alpha 0, same epochs), and compare."""
    rows = []
    for label, alpha in (("distillation (alpha 1)", 1.0), ("label fine-tuning (alpha 0)", 0.0)):
        with tempfile.TemporaryDirectory() as scratch:
            recipe = load_recipe(PRUNED_RECIPE, output=Path(scratch) / "bundle")
            recipe = recipe.model_copy(update={
                "latency": recipe.latency.model_copy(update={"repeats": repeats}),
                "distill": recipe.distill.model_copy(update={"alpha": alpha})})
            manifest = pack(recipe, bench=False).manifest
        pruning = manifest.pruning
        accuracy = pruning.accuracy
        artifact = manifest.targets["x86"].artifacts[0]
        metrics = artifact.metrics
        if alpha == 1.0:
            size = artifact.size_bytes / manifest.source_model.size_bytes
            rows += [("parameters removed (fraction)", 1 - pruning.params.after / pruning.params.before,
                      "(info)", True),
                     ("MACs removed (fraction)", pruning.macs.removed_fraction, "(info)", True),
                     ("AUC float", accuracy["float"], "(info)", True),
                     ("AUC pruned, before recovery", accuracy["pruned"], "(info)", True),
                     ("pruned INT8 x86 size / float model", size, "(info)", True)]
        rows += [(f"{label}: AUC after recovery", accuracy["distilled"], "(info)", True),
                 (f"{label}: kept epoch", pruning.distillation.best_epoch, "(info)", True),
                 (f"{label}: INT8 x86 AUC drop vs float", metrics["auc_drop"], "<= 0.003",
                  alpha == 0.0 or metrics["auc_drop"] <= 0.003),
                 (f"{label}: INT8 x86 NDCG@10 relative drop", metrics["ndcg_relative_drop"], "<= 0.01",
                  alpha == 0.0 or metrics["ndcg_relative_drop"] <= 0.01)]
    return rows
