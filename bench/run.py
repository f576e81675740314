"""Benchmark harness: packs the bundled example and prints the ratios quoted in the README and issues.

Every figure comes from this one run on this machine. Targets from the issues are printed next to
the measurements; the harness exits 1 when one is missed.

    python bench/run.py [--repeats N] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from edgepack.benchmark.bench import EAGER, BenchSettings, bench_bundle
from edgepack.bundle.build import machine_facts
from edgepack.bundle.files import Bundle
from edgepack.bundle.manifest import BenchFigures
from edgepack.bundle.sections import BenchRow
from edgepack.capture import library_output_to_log
from edgepack.isa import host_isa
from edgepack.pipeline import pack
from edgepack.recipe.load import load_recipe

sys.path.insert(0, str(Path(__file__).resolve().parent))
from isa import isa_schemes  # noqa: E402
from mobilenet import mobilenet  # noqa: E402
from pruning import pruned_image_classifier, recovery_comparison  # noqa: E402
from recommender import pruned_recommender, recommender  # noqa: E402
from text import pruned_text_classifier, text_classifier  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IMAGE_RECIPE = ROOT / "examples" / "image_classifier" / "recipe.yaml"


def _row(bench: BenchFigures, name: str) -> BenchRow:
    row = bench.row(name)
    assert row is not None, f"{name} was not timed"
    return row


def image_classifier(repeats: int) -> tuple[list[tuple], dict]:
    """Pack the image example for x86 and cuda (with bench), bench it a second time, derive the ratios."""
    if not (IMAGE_RECIPE.parent / "artifacts" / "model.safetensors").is_file():
        sys.exit("train the example first: make demo (or python examples/image_classifier/train.py)")
    with tempfile.TemporaryDirectory() as scratch:
        recipe = load_recipe(IMAGE_RECIPE, output=Path(scratch) / "bundle", targets=("x86", "cuda"))
        recipe = recipe.model_copy(update={"latency": recipe.latency.model_copy(update={"repeats": repeats})})
        started = time.perf_counter()
        result = pack(recipe)
        wall = time.perf_counter() - started
        second = bench_bundle(Bundle.open(result.bundle), BenchSettings.from_latency(recipe.latency))
    manifest = result.manifest
    first = manifest.bench
    large = f"batch_{recipe.latency.batch_size}"
    x86 = manifest.targets["x86"].artifacts[0]
    x86_bench = _row(first, "x86/model.int8.onnx")
    drift = max(abs(a.latency[large].median_ms / b.latency[large].median_ms - 1)
                for a, b in zip(first.rows, second.rows))
    rows = [
        ("x86 INT8 size / fp32 ONNX size", x86.size_ratio_vs_fp32_onnx, "<= 0.30", x86.size_ratio_vs_fp32_onnx <= 0.30),
        (f"x86 INT8 speed-up vs eager fp32, {large}", x86_bench.speedup_vs_eager[large], ">= 4.0",
         x86_bench.speedup_vs_eager[large] >= 4.0),
        ("x86 INT8 speed-up vs eager fp32, batch_1", x86_bench.speedup_vs_eager["batch_1"], "(info)", True),
        ("x86 INT8 accuracy drop, points", x86.metrics["accuracy_drop"], "<= 0.3",
         x86.metrics["accuracy_drop"] <= 0.3),
        ("x86 INT8 top-1 agreement", x86.metrics["top1_agreement"], "(info)", True),
        ("bench repeatability: max |run1/run2 - 1|, " + large, drift, "<= 0.10", drift <= 0.10),
        ("edgepack pack wall time incl. bench, s", wall, "<= 60", wall <= 60),
    ]
    for target in ("cuda",):
        for artifact in manifest.targets[target].artifacts:
            rows.append((f"{artifact.path} size / fp32 ONNX", artifact.size_ratio_vs_fp32_onnx, "(info)", True))
            rows.append((f"{artifact.path} accuracy drop, points", artifact.metrics["accuracy_drop"], "(info)", True))
    medians = {row.name: [run_row.latency[large].median_ms for run_row in (row, _row(second, row.name))]
               for row in first.rows}
    return rows, {"medians_ms_run1_run2": medians, "batch": large, "eager": EAGER,
                  "float_accuracy": manifest.source_model.metrics["accuracy"],
                  "peak_rss_mb": {row.name: row.peak_rss_mb for row in first.rows}}


def run_parts(parts: set[str], args: argparse.Namespace) -> tuple[dict[str, list[tuple]], dict]:
    """The benchmark sections asked for, in order: {title: rows}, and the image example's details."""
    sections: dict[str, list[tuple]] = {}
    details: dict = {}
    if "image" in parts:
        sections["image_classifier (x86 + cuda)"], details = image_classifier(args.repeats)
    if "isa" in parts:
        for example in ("image", "recommender"):
            sections[f"x86 weight schemes: {example} example"] = isa_schemes(example, args.repeats)
    if "pruned" in parts:
        sections["image_classifier pruned 50% MACs + distilled (x86)"] = pruned_image_classifier(args.repeats)
    if "recovery" in parts:
        sections["recovery after pruning, same epochs"] = recovery_comparison()
    if "recommender" in parts:
        sections["recommender (DeepFM, MovieLens-100K, x86 and arm-tflite)"] = recommender(args.repeats)
    if "recommender-pruned" in parts:
        sections["recommender pruned 30% params + recovered (x86)"] = pruned_recommender(args.repeats)
    if "mobilenet" in parts:
        sections["MobileNetV2, pretrained, 4 targets, tuned (issue 13)"] = mobilenet(args.repeats, tune=args.tune)
    if "text" in parts:
        sections["MiniLM-L6 review classifier, 5 artifacts (issue 14)"] = text_classifier(args.repeats)
    if "text-pruned" in parts:
        sections["MiniLM-L6 pruned + distilled student, x86 INT8 (issue 14)"] = pruned_text_classifier(args.repeats)
    return sections, details


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50, help="timed runs per latency figure (median taken)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--only", choices=("image", "isa", "pruned", "recovery", "recommender", "recommender-pruned",
                                           "mobilenet", "text", "text-pruned"), action="append",
                        help="run only these parts (repeatable; default: all but mobilenet, text and text-pruned, "
                        "which take 10-20 min each)")
    parser.add_argument("--verbose", action="store_true", help="let the libraries print to the terminal")
    parser.add_argument("--tune", action="store_true", help="mobilenet: run edgepack tune first (timed) instead of "
                        "the recipe's tuned configurations")
    args = parser.parse_args()
    parts = set(args.only or ("image", "isa", "pruned", "recovery", "recommender", "recommender-pruned"))
    machine = machine_facts(threads=2)
    print(f"machine: {machine.processor}, {machine.cpu_count} cores, 2 threads, {machine.platform}")
    print(host_isa().line())
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    library_log = args.out / f"bench-{stamp}.log"
    if not args.verbose:
        print(f"third-party output: {library_log}", flush=True)
    with library_output_to_log(lambda out, err: None, verbose=args.verbose) as log:
        try:
            sections, details = run_parts(parts, args)
        finally:
            if log is not None:
                shutil.copyfile(log, library_log)
    rows = [row for section in sections.values() for row in section]
    for title, section in sections.items():
        print(f"\n{title:64} {'value':>9}  {'target':>8}  ok")
        for name, value, target, ok in section:
            print(f"{name:64} {value:9.3f}  {target:>8}  {'yes' if ok else 'NO'}")
    if details:
        print(f"\nmedian latency at {details['batch']} (ms), bench run 1 / run 2, each entry in a fresh process:")
        for name, (first, second) in details["medians_ms_run1_run2"].items():
            print(f"  {name:40} {first:8.2f} {second:8.2f}")
    record = {"machine": machine.to_json_dict(), "isa": host_isa().to_dict(),
              "sections": {title: [dict(zip(("measure", "value", "target", "ok"), row)) for row in section]
                           for title, section in sections.items()},
              "details": details, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    path = args.out / f"bench-{stamp}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")
    sys.exit(0 if all(ok for *_, ok in rows) else 1)


if __name__ == "__main__":
    main()
