"""Text classifier benchmark (issue 14): the MiniLM-L6 review classifier packed for every target, and the
pruned + distilled student packed for x86, each against the issue's goals.

Prints, from one run on this host: per artifact accuracy drop, top-1 agreement, size against fp32 and
batch-1 / batch-64 latency against PyTorch eager and ONNX Runtime fp32 (each entry timed in a fresh
process by the bundle benchmark); for the student also params, MACs and the ratios against the float
teacher.

    python bench/run.py --only text --only text-pruned
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from edgepack.benchmark.bench import EAGER, ONNX_FP32
from edgepack.bundle.manifest import Manifest
from edgepack.pipeline import pack
from edgepack.recipe.load import load_recipe

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "text_classifier"
LARGE_BATCH = 64
INT8_DROP_GOAL, INT8_SIZE_GOAL, INT8_SPEEDUP_GOAL = 0.5, 0.27, 2.0  # INT8 alone, speed-up vs eager at batch 64
STUDENT_DROP_GOAL, STUDENT_SMALLER_GOAL, STUDENT_SPEEDUP_GOAL = 1.0, 8.0, 3.0  # pruned + distilled + INT8


def _pack(recipe_name: str, repeats: int) -> tuple[Manifest, float]:
    if not (EXAMPLE / "artifacts" / "model" / "model.safetensors").is_file():
        raise SystemExit("train the example first: make demo-text (or python examples/text_classifier/train.py)")
    with tempfile.TemporaryDirectory() as scratch:
        recipe = load_recipe(EXAMPLE / recipe_name, output=Path(scratch) / "bundle")
        recipe = recipe.model_copy(update={"latency": recipe.latency.model_copy(
            update={"batch_size": LARGE_BATCH, "repeats": repeats})})
        started = time.perf_counter()
        manifest = pack(recipe).manifest
        return manifest, time.perf_counter() - started


def _baselines(manifest: Manifest) -> list[tuple]:
    rows = []
    for baseline in (EAGER, ONNX_FP32):
        row = manifest.bench.row(baseline) if manifest.bench is not None else None
        if row is not None:
            for batch in ("batch_1", f"batch_{LARGE_BATCH}"):
                rows.append((f"{baseline} (float teacher) median ms, {batch}", row.latency[batch].median_ms,
                             "(info)", True))
    return rows


def _speedups(manifest: Manifest, label: str) -> dict[str, float]:
    row = manifest.bench.row(label) if manifest.bench is not None else None
    return dict(row.speedup_vs_eager) if row is not None and row.speedup_vs_eager else {}


def text_classifier(repeats: int) -> list[tuple]:
    """Pack recipe.yaml (every target, bench at batch 1 and 64); rows per artifact against the INT8 goals."""
    manifest, wall = _pack("recipe.yaml", repeats)
    rows: list[tuple] = [("float model accuracy", manifest.source_model.metrics["accuracy"], "(info)", True)]
    for name, target in manifest.targets.items():
        for artifact in target.artifacts:
            label, int8 = artifact.path, "int8" in artifact.precision
            drop, ratio = artifact.metrics["accuracy_drop"], artifact.size_ratio_vs_fp32_onnx
            rows += [(f"{label} accuracy drop, points", drop, f"<= {INT8_DROP_GOAL}" if int8 else "(info)",
                      not int8 or drop <= INT8_DROP_GOAL),
                     (f"{label} top-1 agreement", artifact.metrics["top1_agreement"], "(info)", True),
                     (f"{label} size / fp32 ONNX", ratio, f"<= {INT8_SIZE_GOAL}" if int8 else "(info)",
                      not int8 or ratio <= INT8_SIZE_GOAL)]
            for batch, speedup in _speedups(manifest, label).items():
                goal = int8 and batch == f"batch_{LARGE_BATCH}" and name == "x86"
                rows.append((f"{label} speed-up vs eager, {batch}", speedup,
                             f">= {INT8_SPEEDUP_GOAL}" if goal else "(info)", not goal or speedup >= INT8_SPEEDUP_GOAL))
    return rows + _baselines(manifest) + [("edgepack pack wall time, all targets incl. bench, s", wall, "(info)",
                                           True)]


def pruned_text_classifier(repeats: int) -> list[tuple]:
    """Pack recipe_pruned.yaml (prune layers/heads/FFN, distill, INT8 x86); rows against the student goals."""
    manifest, wall = _pack("recipe_pruned.yaml", repeats)
    pruning = manifest.pruning
    assert pruning is not None, "recipe_pruned.yaml prunes"
    artifact = manifest.targets["x86"].artifacts[0]
    smaller = manifest.source_model.size_bytes / artifact.size_bytes
    speedup = _speedups(manifest, artifact.path).get(f"batch_{LARGE_BATCH}", 0.0)
    accuracy = pruning.accuracy
    drop = 100 * (accuracy["float"] - artifact.metrics["accuracy"])
    rows = [
        ("params before (teacher), M", pruning.params.before / 1e6, "(info)", True),
        ("params after (student), M", pruning.params.after / 1e6, "(info)", True),
        ("MACs per text before, M", pruning.macs.before / 1e6, "(info)", True),
        ("MACs per text after, M", pruning.macs.after / 1e6, "(info)", True),
        *[(f"  {stage} accuracy (float)", value, "(info)", True) for stage, value in accuracy.items()],
        ("student INT8 x86 accuracy", artifact.metrics["accuracy"], "(info)", True),
        ("accuracy drop, teacher float → student INT8 x86, points", drop, f"<= {STUDENT_DROP_GOAL}",
         drop <= STUDENT_DROP_GOAL),
        ("student INT8 x86 top-1 agreement with the teacher", artifact.metrics["top1_agreement"], "(info)", True),
        ("teacher size (fp32) / student INT8 x86 size", smaller, f">= {STUDENT_SMALLER_GOAL}",
         smaller >= STUDENT_SMALLER_GOAL),
        (f"student INT8 x86 speed-up vs teacher eager fp32, batch_{LARGE_BATCH}", speedup,
         f">= {STUDENT_SPEEDUP_GOAL}", speedup >= STUDENT_SPEEDUP_GOAL),
        ("student INT8 x86 speed-up vs teacher eager fp32, batch_1", _speedups(manifest, artifact.path).get(
            "batch_1", 0.0), "(info)", True),
    ]
    return rows + _baselines(manifest) + [("edgepack pack wall time incl. pruning, distillation, bench, s", wall,
                                           "(info)", True)]
