"""Benchmark harness: packs the bundled examples and prints the ratios quoted in the README and issues.

Every figure comes from this one run on this machine. Targets from the issues are printed next to
the measurements; the harness exits 1 when a target is missed, so it can gate a release.

    python bench/run.py [--repeats N] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from edgepack.config import load_recipe
from edgepack.manifest import machine_facts
from edgepack.pipeline import pack

ROOT = Path(__file__).resolve().parents[1]
IMAGE_RECIPE = ROOT / "examples" / "image_classifier" / "recipe.yaml"


def bench_image_classifier(repeats: int) -> list[tuple[str, float, str, bool]]:
    """Pack the image example into a scratch dir and derive the foundation issue's ratios."""
    if not (IMAGE_RECIPE.parent / "artifacts" / "model.safetensors").is_file():
        sys.exit("train the example first: make demo (or python examples/image_classifier/train.py)")
    with tempfile.TemporaryDirectory() as scratch:
        recipe = load_recipe(IMAGE_RECIPE, output=Path(scratch) / "bundle", targets=("x86",))
        recipe = recipe.model_copy(update={"latency": recipe.latency.model_copy(update={"repeats": repeats})})
        started = time.perf_counter()
        result = pack(recipe)
        wall = time.perf_counter() - started
    manifest = result.manifest
    source = manifest["source_model"]
    artifact = manifest["targets"]["x86"]["artifacts"][0]
    batch = f"batch_{manifest['latency_settings']['batch_size']}"
    eager = source["latency"][batch]["median_ms"]
    ort_fp32 = source["reference_onnx_latency"][batch]["median_ms"]
    int8 = artifact["latency"][batch]["median_ms"]
    rows = [
        ("x86 INT8 size / fp32 ONNX size", artifact["size_ratio_vs_fp32_onnx"], "<= 0.30",
         artifact["size_ratio_vs_fp32_onnx"] <= 0.30),
        (f"eager fp32 / x86 INT8 latency, {batch}", eager / int8, ">= 4.0", eager / int8 >= 4.0),
        (f"ORT fp32 / x86 INT8 latency, {batch}", ort_fp32 / int8, "(info)", True),
        ("eager fp32 / x86 INT8 latency, batch_1",
         source["latency"]["batch_1"]["median_ms"] / artifact["latency"]["batch_1"]["median_ms"], "(info)", True),
        ("accuracy drop, points", artifact["metrics"]["accuracy_drop"], "<= 0.3",
         artifact["metrics"]["accuracy_drop"] <= 0.3),
        ("top-1 agreement", artifact["metrics"]["top1_agreement"], "(info)", True),
        ("edgepack pack wall time, s (no training)", wall, "<= 60", wall <= 60),
    ]
    details = {"eager_ms": eager, "ort_fp32_ms": ort_fp32, "int8_ms": int8,
               "fp32_onnx_bytes": manifest["reference"]["size_bytes"], "int8_bytes": artifact["size_bytes"],
               "float_accuracy": source["metrics"]["accuracy"], "int8_accuracy": artifact["metrics"]["accuracy"]}
    return rows, details


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50, help="timed runs per latency figure (median taken)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    rows, details = bench_image_classifier(args.repeats)
    machine = machine_facts(threads=2)
    print(f"machine: {machine['processor']}, {machine['cpu_count']} cores, 2 threads; python {platform.python_version()}")
    print(f"{'measure':48} {'value':>10}  {'target':>8}  ok")
    for name, value, target, ok in rows:
        print(f"{name:48} {value:10.3f}  {target:>8}  {'yes' if ok else 'NO'}")
    print("latencies (median ms): " + ", ".join(f"{k} {v:.2f}" for k, v in details.items() if k.endswith("_ms")))
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"machine": machine, "rows": [dict(zip(("measure", "value", "target", "ok"), row)) for row in rows],
              "details": details, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    path = args.out / f"image_classifier-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")
    sys.exit(0 if all(ok for *_, ok in rows) else 1)


if __name__ == "__main__":
    main()
