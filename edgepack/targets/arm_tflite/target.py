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
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import cast

from pydantic import BaseModel, ConfigDict, Field

from edgepack.bundle.manifest import ArtifactEntry
from edgepack.errors import ExportError, describe
from edgepack.quantization.pt2e import calibrated_pt2e, example_batch, with_activation_observer
from edgepack.quantization.transformer_int8 import additive_mask_constant
from edgepack.targets.arm_tflite.flatbuffer import add_float_io
from edgepack.targets.arm_tflite.lookup_tables import dequantize_asymmetric_lookup_tables
from edgepack.targets.arm_tflite.runner import TfliteRunner, describe_tflite, runtime_info
from edgepack.targets.arm_tflite.tables import quantize_tflite_tables
from edgepack.targets.base import Artifact, ExportContext, Summary, Target, basic_summary


class TfliteOptions(BaseModel):
    """Options under `target_options.arm-tflite` in the recipe."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    float_io: bool = False  # float32 inputs/outputs, with QUANTIZE/DEQUANTIZE ops added at the boundary
    nhwc: bool = False  # channel-last I/O for 4-D (image) inputs, as Android camera pipelines deliver
    batch: int = Field(1, ge=1, le=4096)  # the artifact's fixed batch; a recommender scoring candidates wants > 1



def named_io_module(inner, names: list[str], nhwc_inputs: list[bool]):
    """The module litert-torch converts: keyword inputs, so the TFLite signature carries the recipe's
    input names (not args_0), and optional channel-last image inputs."""
    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner

        def forward(self, **feeds):
            return self.inner(*(feeds[name].permute(0, 3, 1, 2) if channel_last else feeds[name]
                                for name, channel_last in zip(names, nhwc_inputs)))

    wrapped = Wrapped()
    # Not .eval(): exported PT2E graphs refuse train()/eval(); the inner graph is already inference-only.
    wrapped.training = False
    return wrapped



def float_arithmetic_ops(path: Path, names: tuple[str, ...] = ("ADD", "MUL")) -> dict[str, int]:
    """How many of the builtin ops `names` compute in float (some input is float32), read from the flatbuffer."""
    from ai_edge_litert import schema_py_generated as fb

    model = fb.ModelT.InitFromPackedBuf(path.read_bytes(), 0)
    codes = {getattr(fb.BuiltinOperator, name): name for name in names}
    counts = dict.fromkeys(names, 0)
    for graph in model.subgraphs:
        for operator in graph.operators:
            code = model.operatorCodes[operator.opcodeIndex]
            name = codes.get(max(code.builtinCode, code.deprecatedBuiltinCode))
            if name and any(index >= 0 and graph.tensors[index].type == fb.TensorType.FLOAT32
                            for index in operator.inputs):
                counts[name] += 1
    return counts


class TfliteArmTarget(Target):
    """Full-integer INT8 .tflite (int8 I/O by default) for the LiteRT interpreter on ARM CPUs."""

    name = "arm-tflite"
    description = "TFLite full-integer INT8 (litert-torch PT2E) for LiteRT on ARM CPUs"
    extra = "arm"
    required_modules = ("litert_torch", "ai_edge_litert", "torchao")
    # Percentile through a histogram observer; no KL-entropy observer exists in torchao's PT2E.
    calibration_methods = frozenset({"minmax", "percentile"})
    Options = TfliteOptions

    def export(self, context: ExportContext) -> list[Artifact]:
        """Quantize the float torch module with PT2E on the calibration set and write model.int8.tflite."""
        if context.module is None:
            raise ExportError("target 'arm-tflite' needs a PyTorch model (model.factory or model.pickle); "
                              "it cannot start from an ONNX file")
        import litert_torch
        from litert_torch.quantize import pt2e_quantizer, quant_config

        options = cast(TfliteOptions, context.options)
        names = [spec.name for spec in context.inputs]
        started = time.perf_counter()
        # A transformer's additive attention mask (-3.4e38) would flatten every static activation range it
        # enters: dynamic-range INT8 instead (int8 weights, activations quantized per call inside the kernels).
        mask_value = additive_mask_constant(context.float_onnx)
        config = pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True) \
            if mask_value is not None else \
            with_activation_observer(pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True),
                                     context.method)
        quantizer = pt2e_quantizer.PT2EQuantizer().set_global(config)
        calibration_size = min(context.calibration.batch_size, context.calibration.num_samples)
        quantized = calibrated_pt2e(context.module, example_batch(context.calibration, names, calibration_size),
                                    context.calibration, quantizer, fold_quantize=False, strict=True,
                                    float_modules=context.float_modules)
        nhwc_inputs = [options.nhwc and len(spec.shape) == 4 for spec in context.inputs]
        wrapped = named_io_module(quantized.module, names, nhwc_inputs)
        sample = {name: tensor.permute(0, 2, 3, 1).contiguous() if channel_last else tensor
                  for name, tensor, channel_last in zip(names, example_batch(context.calibration, names, options.batch),
                                                        nhwc_inputs)}
        path = context.out_dir / "model.int8.tflite"
        try:
            edge = litert_torch.convert(wrapped, sample_kwargs=sample,
                                        quant_config=quant_config.QuantConfig(pt2e_quantizer=quantizer))
            edge.export(str(path))
        except Exception as exc:  # the converter raises jax/MLIR errors of many types
            raise ExportError(f"litert-torch could not convert the quantized model: {describe(exc)}") from exc
        parameters = {name: value.detach().cpu().numpy() for name, value in context.module.state_dict().items()
                      if value.ndim == 2}
        float_arithmetic = float_arithmetic_ops(path)
        restored_tables = dequantize_asymmetric_lookup_tables(path) if mask_value is not None else []
        tables = quantize_tflite_tables(path, bits=context.quantization.embedding_bits, parameters=parameters)
        if options.float_io:
            add_float_io(path)
        seconds = time.perf_counter() - started
        runtime_name, version = runtime_info()
        details = describe_tflite(path)
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
                       embedding_tables=tables, float_arithmetic_ops=float_arithmetic, **quantized.details())
        if restored_tables:
            details["converter_tables_requantized"] = restored_tables
        if tables:
            details["embedding_lookup"] = ("hybrid EMBEDDING_LOOKUP (int8/int4 table, float rows out); per-row "
                                           "scales make it op version 4, which the phone's LiteRT must register")
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
        return [*basic_summary(artifact), *facts]

    def runner(self, path: Path, *, threads: int) -> "TfliteRunner":
        """LiteRT interpreter (ai-edge-litert, else tflite-runtime) with float I/O around int8 tensors."""
        return TfliteRunner(path, threads=threads)
