"""Target `arm-tflite`: full-integer INT8 TFLite (LiteRT) for ARM CPUs, built by litert-torch's PT2E path.

No TensorFlow is involved: the float torch module is exported, annotated by litert-torch's
`PT2EQuantizer` (symmetric int8, per-channel weights), calibrated on the recipe's calibration set,
converted by torchao's `convert_pt2e` and lowered to a .tflite flatbuffer by `litert_torch.convert`.

The float module is exported strict (through dynamo): litert-torch's add/mul/cat/pool annotators
match on the `source_fn_stack` that only strict export records, and a non-strict export leaves every
residual ADD float. A model strict export cannot trace is exported non-strict, with a note in the
artifact's details; the details count the ADD/MUL ops left float either way.

The converted graph has a fixed batch (`batch`, 1 by default): litert-torch could not lower `flatten`
with a dynamic batch dimension (jax bridge: "Shapes must be 1D sequences of concrete values"), and
resizing the input of the fixed-shape model fails inside the XNNPACK delegate. Batch 1 is the usual
shape of a phone image model; a recommender scoring candidates wants a larger fixed batch. The
runner feeds chunks of the artifact's batch, padding the last one.

A text model can also be exported at shorter fixed sequence lengths (`sequence_lengths`): one artifact
made of a model per length, each row run on the shortest that holds its tokens (edgepack.bundle.buckets,
targets/arm_tflite/buckets.py). Conversion is per length: litert-torch lowers fixed shapes only.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import cast

from edgepack.bundle.manifest import ArtifactEntry
from edgepack.errors import EdgepackError, ExportError
from edgepack.evaluation.runners import Runner
from edgepack.quantization.transformer_int8 import additive_mask_constant
from edgepack.recipe.schema import Recipe
from edgepack.targets.arm_tflite.buckets import bucket_lengths, read_bucket_files
from edgepack.targets.arm_tflite.convert import convert_int8, export_buckets
from edgepack.targets.arm_tflite.options import TfliteOptions
from edgepack.targets.arm_tflite.runner import BucketedTfliteRunner, TfliteRunner, describe_tflite, runtime_info
from edgepack.targets.base import Artifact, ExportContext, Summary, Target, basic_summary


class TfliteArmTarget(Target):
    """Full-integer INT8 .tflite (int8 I/O by default) for the LiteRT interpreter on ARM CPUs."""

    name = "arm-tflite"
    description = "TFLite full-integer INT8 (litert-torch PT2E) for LiteRT on ARM CPUs"
    extra = "arm"
    required_modules = ("litert_torch", "ai_edge_litert", "torchao")
    # Percentile through a histogram observer; no KL-entropy observer exists in torchao's PT2E.
    calibration_methods = frozenset({"minmax", "percentile"})
    Options = TfliteOptions

    def check_recipe(self, recipe: Recipe) -> None:
        """The shared checks, and `sequence_lengths` against the recipe's text section."""
        super().check_recipe(recipe)
        options = cast(TfliteOptions, self.parse_options(recipe.target_options.get(self.name, {})))
        bucket_lengths(options.sequence_lengths, recipe.inputs, text=recipe.text is not None)

    def export(self, context: ExportContext) -> list[Artifact]:
        """Quantize the float torch module with PT2E on the calibration set and write model.int8.tflite
        (and, with `sequence_lengths`, a companion model per shorter length)."""
        if context.module is None:
            raise ExportError("target 'arm-tflite' needs a PyTorch model (model.factory or model.pickle); "
                              "it cannot start from an ONNX file")
        options = cast(TfliteOptions, context.options)
        lengths = bucket_lengths(options.sequence_lengths, context.inputs)
        started = time.perf_counter()
        # A transformer's additive attention mask (-3.4e38) would flatten every static activation range it
        # enters: dynamic-range INT8 instead (int8 weights, activations quantized per call inside the kernels).
        mask_value = additive_mask_constant(context.float_onnx)
        path = context.out_dir / "model.int8.tflite"
        converted = convert_int8(context, context.calibration, path, dynamic=mask_value is not None)
        seconds = time.perf_counter() - started
        runtime_name, version = runtime_info()
        details = describe_tflite(path)
        nhwc_inputs = [options.nhwc and len(spec.shape) == 4 for spec in context.inputs]
        for entry, channel_last in zip(details["inputs"], nhwc_inputs):
            entry["layout"] = "NHWC" if channel_last else "as exported (NCHW for images)"
        details.update(layout="NHWC image I/O" if any(nhwc_inputs) else "as exported (NCHW for images)",
                       float_io=options.float_io,
                       batch=f"fixed batch {options.batch} (the runner feeds chunks of {options.batch}, "
                       "padding the last)",
                       calibration_method=context.method.model_dump(), conversion_seconds=round(seconds, 1),
                       quantizer="litert-torch PT2EQuantizer, symmetric int8, per-channel weights"
                       + (", dynamic-range (a transformer: the attention mask constant "
                          f"{mask_value:.3g} stays out of every quantized range)" if mask_value is not None else ""),
                       embedding_tables=converted.tables, float_arithmetic_ops=converted.float_arithmetic,
                       **converted.quantized.details())
        if converted.restored_tables:
            details["converter_tables_requantized"] = converted.restored_tables
        if converted.tables:
            details["embedding_lookup"] = ("hybrid EMBEDDING_LOOKUP (int8/int4 table, float rows out); per-row "
                                           "scales make it op version 4, which the phone's LiteRT must register")
        if lengths:
            details["sequence_buckets"] = export_buckets(context, lengths, path, dynamic=mask_value is not None)
        return [Artifact(target=self.name, path=path, format="tflite",
                         precision="int8-dynamic-range" if mask_value is not None else
                         "int8-float-io" if options.float_io else "int8-full-integer",
                         runtime=runtime_name, runtime_version=version, details=details)]

    def summarize(self, artifact: ArtifactEntry) -> Summary:
        """QUANTIZE/DEQUANTIZE ops, tensors by dtype, the tensors left float, the fixed batch, table lookups."""
        structure = artifact.structure
        ops = structure.get("op_counts", {})
        inner = [entry for entry in structure.get("float_tensors", []) if entry["role"] not in ("input", "output")]
        dtypes = ", ".join(f"{dtype} {count}" for dtype, count in structure.get("tensor_dtypes", {}).items())
        facts = [("QUANTIZE / DEQUANTIZE ops", f"{ops.get('QUANTIZE', 0)} / {ops.get('DEQUANTIZE', 0)}"),
                 ("tensors by dtype", dtypes or "—"),
                 ("float tensors besides I/O", f"{len(inner)}, {sum(entry['bytes'] for entry in inner) / 1e3:.1f} kB"),
                 ("batch", str(structure.get("batch", "—")))]
        if "embedding_lookup" in structure:
            facts.append(("embedding lookup", structure["embedding_lookup"]))
        buckets = artifact.sequence_buckets
        if buckets is not None:
            facts.append(("sequence lengths", "; ".join(
                f"{bucket.length}: {bucket.file}, {bucket.size_bytes / 1e6:.1f} MB, "
                + (f"{bucket.evaluation_rows} held-out rows" if bucket.evaluation_rows is not None
                   else "rows not counted")
                for bucket in buckets.buckets)))
            total = sum(bucket.size_bytes for bucket in buckets.buckets)
            facts.append(("size of the set", f"{total / 1e6:.1f} MB in {len(buckets.buckets)} files"))
            facts.append(("latency of the set", buckets.latency))
        return [*basic_summary(artifact), *facts]

    def runner(self, path: Path, *, threads: int) -> Runner:
        """LiteRT interpreter (ai-edge-litert, else tflite-runtime) with float I/O around int8 tensors; for a
        bucketed model set, one interpreter per length with each row routed to the shortest that holds it."""
        files = read_bucket_files(path)
        missing = [str(file.name) for file in files.values() if not file.is_file()]
        if missing:
            raise EdgepackError(f"{path}: the sequence-length models it names are missing: {', '.join(missing)}")
        return BucketedTfliteRunner(files, threads=threads) if files else TfliteRunner(path, threads=threads)
