"""MobileNetV2 benchmark (issue 13): the pretrained example packed for every target with its tuned
configurations (`tuned:` in examples/mobilenet_v2/recipe.yaml), or with a fresh `edgepack tune` first.

Prints, from one run on this host: per artifact top-1 agreement, accuracy drop, size against fp32,
batch-1 and batch-64 latency against ONNX Runtime fp32 and PyTorch eager (each entry timed in a
fresh process by the bundle benchmark), how many layers stayed float, and the pack (and tune) wall
time, next to the issue's goals.

    python bench/run.py --only mobilenet [--tune]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from edgepack.benchmark.bench import EAGER, ONNX_FP32
from edgepack.bundle.manifest import Manifest
from edgepack.isa import host_isa
from edgepack.pipeline import pack, tune_only
from edgepack.recipe.load import load_recipe
from edgepack.tuning.run import chosen_configs

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "examples" / "mobilenet_v2" / "recipe.yaml"
LARGE_BATCH = 64
AGREEMENT_GOAL = 0.97
SIZE_GOAL = 0.30
X86_LATENCY_GOAL = 0.5  # batch-64 latency of x86 INT8 over ORT fp32, "where the ISA allows" (VNNI)
WALL_GOAL_S = 600.0


def mobilenet(repeats: int, *, tune: bool = False) -> list[tuple]:
    """Pack the MobileNetV2 example for its four targets with bench at batch 1 and 64; rows of figures."""
    if not (RECIPE.parent / "artifacts" / "model.safetensors").is_file():
        raise SystemExit("prepare the example first: make demo-mobilenet (or python examples/mobilenet_v2/prepare.py)")
    rows: list[tuple] = []
    with tempfile.TemporaryDirectory() as scratch:
        recipe = load_recipe(RECIPE, output=Path(scratch) / "bundle")
        recipe = recipe.model_copy(update={"latency": recipe.latency.model_copy(
            update={"batch_size": LARGE_BATCH, "repeats": repeats})})
        if tune:
            started = time.perf_counter()
            records = tune_only(recipe.model_copy(update={"tuned": {}}))
            tune_wall = time.perf_counter() - started
            rows.append(("edgepack tune wall time, all targets, s", tune_wall, f"<= {WALL_GOAL_S:.0f}",
                         tune_wall <= WALL_GOAL_S))
            recipe = recipe.model_copy(update={"tuned": chosen_configs(records)})
        started = time.perf_counter()
        manifest = pack(recipe).manifest
        wall = time.perf_counter() - started
    rows.append(("edgepack pack wall time, 4 targets incl. bench, s", wall, f"<= {WALL_GOAL_S:.0f}",
                 wall <= WALL_GOAL_S))
    rows.append(("float model top-1 accuracy", manifest.source_model.metrics["accuracy"], "(info)", True))
    return rows + artifact_rows(manifest, recipe.tuned)


def artifact_rows(manifest: Manifest, tuned: dict) -> list[tuple]:
    """Per artifact: agreement, drop, size, latency ratios; per target: layers kept float."""
    vnni = host_isa().has_int32_dot_product
    rows: list[tuple] = []
    bench = manifest.bench
    for name, target in manifest.targets.items():
        entry = tuned.get(name)
        rows.append((f"{name}: layers kept float (tuned)", len(entry.float_modules) if entry else 0, "(info)", True))
        for artifact in target.artifacts:
            label = artifact.path
            int8 = "int8" in artifact.precision
            agreement, ratio = artifact.metrics["top1_agreement"], artifact.size_ratio_vs_fp32_onnx
            rows += [(f"{label} top-1 agreement", agreement, f">= {AGREEMENT_GOAL}", agreement >= AGREEMENT_GOAL),
                     (f"{label} accuracy drop, points", artifact.metrics["accuracy_drop"], "(info)", True),
                     (f"{label} size / fp32 ONNX", ratio, f"<= {SIZE_GOAL}" if int8 else "(info)",
                      not int8 or ratio <= SIZE_GOAL)]
            row = bench.row(label) if bench is not None else None
            if row is None or row.speedup_vs_onnx_fp32 is None or row.speedup_vs_eager is None:
                continue
            for batch in ("batch_1", f"batch_{LARGE_BATCH}"):
                ratio = 1.0 / row.speedup_vs_onnx_fp32[batch]  # latency over ORT fp32's
                goal = name == "x86" and int8 and batch != "batch_1" and vnni
                rows.append((f"{label} latency / ORT fp32, {batch}", ratio,
                             f"<= {X86_LATENCY_GOAL}" if goal else "(info)", not goal or ratio <= X86_LATENCY_GOAL))
                rows.append((f"{label} speed-up vs eager, {batch}", row.speedup_vs_eager[batch], "(info)", True))
    for baseline in (EAGER, ONNX_FP32):
        row = bench.row(baseline) if bench is not None else None
        if row is not None:
            for batch in ("batch_1", f"batch_{LARGE_BATCH}"):
                rows.append((f"{baseline} median ms, {batch}", row.latency[batch].median_ms, "(info)", True))
    return rows

