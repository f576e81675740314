"""x86 weight schemes per example: fp32 ONNX, the two portable INT8 schemes and `vnni`, on this host.

Each scheme is packed with its own bench (every entry in a fresh process), so size, drift and b1/bN
latency of one row come from one run; speed-ups are against ONNX Runtime fp32 and PyTorch eager from
that same run.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from edgepack.benchmark.bench import EAGER, ONNX_FP32
from edgepack.bundle.manifest import Manifest
from edgepack.bundle.sections import BenchRow
from edgepack.pipeline import pack
from edgepack.recipe.load import load_recipe

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = {"image": (ROOT / "examples" / "image_classifier" / "recipe.yaml", "accuracy_drop", "points"),
            "recommender": (ROOT / "examples" / "recommender" / "recipe.yaml", "auc_drop", "AUC")}
VARIANTS = {"portable int8-7bit": {"isa": "portable", "portable_weights": "int8-7bit"},
            "portable uint8 (U8U8)": {"isa": "portable", "portable_weights": "uint8"},
            "vnni (full int8)": {"isa": "vnni"}}


def _bench_row(manifest: Manifest, name: str) -> BenchRow:
    return next(row for row in manifest.bench.rows if row.name == name)


def isa_schemes(example: str, repeats: int) -> list[tuple]:
    """Rows (measure, value, target, ok) for every x86 weight scheme of one example."""
    recipe_path, drift_key, unit = EXAMPLES[example]
    rows = []
    for label, options in VARIANTS.items():
        with tempfile.TemporaryDirectory() as scratch:
            recipe = load_recipe(recipe_path, output=Path(scratch) / "bundle", targets=("x86",))
            recipe = recipe.model_copy(update={"latency": recipe.latency.model_copy(update={"repeats": repeats}),
                                               "target_options": {**recipe.target_options, "x86": options}})
            manifest = pack(recipe).manifest
        large = f"batch_{recipe.latency.batch_size}"
        artifact = manifest.targets["x86"].artifacts[0]
        row, onnx_fp32 = _bench_row(manifest, "x86/model.int8.onnx"), _bench_row(manifest, ONNX_FP32)
        if label.startswith("portable int8"):
            rows += [(f"{example}: fp32 ONNX ms b1 / {large}", onnx_fp32.latency["batch_1"].median_ms, "(info)",
                      True),
                     (f"{example}: fp32 ONNX ms {large}", onnx_fp32.latency[large].median_ms, "(info)", True)]
        rows += [
            (f"{example} {label}: size / fp32 ONNX", artifact.size_ratio_vs_fp32_onnx, "(info)", True),
            (f"{example} {label}: {drift_key} ({unit})", artifact.metrics[drift_key], "(info)", True),
            (f"{example} {label}: ms b1", row.latency["batch_1"].median_ms, "(info)", True),
            (f"{example} {label}: ms {large}", row.latency[large].median_ms, "(info)", True),
            (f"{example} {label}: speed-up vs ORT fp32 b1", row.speedup_vs_onnx_fp32["batch_1"], "(info)", True),
            (f"{example} {label}: speed-up vs ORT fp32 {large}", row.speedup_vs_onnx_fp32[large], "(info)", True),
        ]
        if EAGER in {r.name for r in manifest.bench.rows}:
            rows.append((f"{example} {label}: speed-up vs eager {large}", row.speedup_vs_eager[large], "(info)",
                         True))
        if label.startswith("vnni"):
            rows.append((f"{example} {label}: outputs with an int16 pair beyond range on calibration data",
                         artifact.isa.saturation.data_check_outputs_at_risk or 0, "(info)", True))
    return rows
