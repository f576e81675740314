"""Target `arm-xnnpack`: ExecuTorch `.pte` with INT8 kernels delegated to XNNPACK, for ARM CPUs.

The float torch module is exported with a dynamic batch, quantized by ExecuTorch's
`XNNPACKQuantizer` (symmetric int8, per-channel weights) through torchao's PT2E prepare/convert,
calibrated on the recipe's calibration set, then lowered with `to_edge_transform_and_lower` and
`XnnpackPartitioner`. Inputs and outputs stay float32; quantize/dequantize run inside the delegate.
A transformer (a model with an additive attention mask) gets dynamically quantized linear layers
instead, with int8 weights or, with the option `weight_bits: 4`, int4 groupwise weights
(edgepack.targets.arm_xnnpack.linear4).

The .pte is self-describing: a constant method `edgepack_io` returns the input names as UTF-8
JSON bytes, because ExecuTorch's method metadata carries shapes and dtypes but no names.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgepack.bundle.manifest import ArtifactEntry
from edgepack.errors import ConfigError, ExportError, MissingDependencyError, describe
from edgepack.evaluation.runners import X86_BUILD_OF_ARM_KERNELS
from edgepack.model.tensors import as_tensors
from edgepack.quantization.transformer_int8 import additive_mask_constant
from edgepack.targets.arm_xnnpack.linear4 import quantize_linears_4bit, weight_scheme
from edgepack.targets.arm_xnnpack.tables import fused_table_ops, quantize_embeddings
from edgepack.targets.base import Artifact, ExportContext, Summary, Target, basic_summary

IO_METHOD = "edgepack_io"
# Memory planning sizes buffers for the upper bound of the dynamic batch: keep it moderate.
MAX_BATCH = 256


class XnnpackOptions(BaseModel):
    """Options under `target_options.arm-xnnpack` in the recipe."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    weight_bits: Literal[8, 4] = Field(default=8, description=(
        "weights of a transformer's dynamically quantized linear layers: 8 = int8 per output channel, 4 = int4 "
        "per group of group_size input channels; int8 activations quantized at run time either way. Models "
        "without an attention mask (static int8) take 8 only"))
    # 32 by default: XNNPACK's smallest group, the most accurate; its bfloat16 scales add 0.5 bit per weight.
    group_size: int = Field(default=32, ge=32, le=4096, multiple_of=32, description=(
        "weight_bits 4 only: input channels sharing one scale, a multiple of 32 (XNNPACK's blockwise kernels)"))


@dataclass(frozen=True)
class XnnpackQuantized:
    """The quantized torch module this target lowers, with what the manifest says of its quantization."""

    module: Any  # a PT2E GraphModule (static or dynamic int8) or a torchao-quantized eager module (4-bit)
    example: tuple  # the example batch it is exported with
    tables: list  # edgepack.targets.arm_xnnpack.tables reports, one per quantized embedding table
    weight_bits: int
    details: dict[str, Any]


class XnnpackArmTarget(Target):
    """INT8 ExecuTorch program, XNNPACK-delegated, float32 I/O, dynamic batch up to MAX_BATCH."""

    name = "arm-xnnpack"
    description = ("ExecuTorch .pte, INT8 (XNNPACKQuantizer; optional int4 linear weights for transformers) delegated "
                   "to XNNPACK, for ARM CPUs")
    extra = "arm"
    required_modules = ("executorch", "torchao")
    calibration_methods = frozenset({"minmax", "percentile"})
    Options = XnnpackOptions

    def parse_options(self, raw: dict) -> BaseModel:
        """The recipe's options; a group size without 4-bit weights is refused rather than ignored."""
        options = cast(XnnpackOptions, super().parse_options(raw))
        if "group_size" in options.model_fields_set and options.weight_bits != 4:
            raise ConfigError(f"target_options.{self.name}.group_size: applies to weight_bits 4 only "
                              "(8-bit weights have one scale per output channel)")
        return options

    def export(self, context: ExportContext) -> list[Artifact]:
        """Quantize (PT2E + XNNPACKQuantizer on the calibration set, or int4 linear weights for a transformer with
        `weight_bits` 4), lower to XNNPACK, write model.int8.pte (model.int4w.pte)."""
        if context.module is None:
            raise ExportError("target 'arm-xnnpack' needs a PyTorch model (model.factory or model.pickle); "
                              "it cannot start from an ONNX file")
        import torch
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower

        names = [spec.name for spec in context.inputs]
        started = time.perf_counter()
        options = context.options if isinstance(context.options, XnnpackOptions) else XnnpackOptions()
        quantized = quantize_for_xnnpack(context, names, options)
        example = quantized.example
        # A batch of 1 in the example would specialise the batch dimension; size >= 2 keeps it symbolic.
        batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
        four_bit = quantized.weight_bits == 4
        path = context.out_dir / ("model.int4w.pte" if four_bit else "model.int8.pte")
        try:
            program = torch.export.export(quantized.module, example, dynamic_shapes=tuple({0: batch} for _ in example))
            names_blob = torch.tensor(list(json.dumps({"inputs": names}).encode()), dtype=torch.uint8)
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()],
                                               constant_methods={IO_METHOD: names_blob})
            delegation = describe_delegation(edge.exported_program().graph_module)
            # The fusion pass turns dequantize_affine -> embedding into embedding_byte / embedding_4bit.
            program_out = edge.to_executorch(ExecutorchBackendConfig(
                do_quant_fusion_and_const_prop=bool(quantized.tables)))
            path.write_bytes(program_out.buffer)
        except Exception as exc:  # export and lowering raise many exception types
            raise ExportError(f"ExecuTorch could not lower the quantized model: {describe(exc)}") from exc
        outside = delegation["non_delegated_ops"]
        # torchao's tables also dequantize through dequantize_affine, read outside XNNPACK by design: one per table
        stray = (sum(outside.get(op, 0) for op in ("aten_linear_default", "aten_addmm_default", "aten_mm_default"))
                 + outside.get("torchao_dequantize_affine_default", 0) - len(quantized.tables))
        if four_bit and stray:
            raise ExportError(f"XNNPACK did not take every 4-bit linear layer: {stray} linear or weight "
                              "dequantization ops stayed outside the delegate")
        seconds = time.perf_counter() - started
        details = describe_pte(path) | delegation
        details.update(layout="as exported (NCHW for images)", batch=f"dynamic, 1..{MAX_BATCH} per call "
                       "(the runner splits larger batches)", conversion_seconds=round(seconds, 1),
                       calibration_method=context.method.model_dump(), embedding_tables=quantized.tables,
                       **quantized.details)
        if quantized.tables:
            details["embedding_kernels"] = fused_table_ops(program_out)
            details["embedding_lookup"] = ("quantized_decomposed embedding kernels outside the delegate: the "
                                           "runtime must link ExecuTorch's quantized kernels library")
        return [Artifact(target=self.name, path=path, format="pte",
                         precision="int8-int4w-xnnpack" if four_bit else "int8-xnnpack",
                         runtime="executorch", runtime_version=importlib.metadata.version("executorch"),
                         details=details, lowered_from=quantized.module)]

    def summarize(self, artifact: ArtifactEntry) -> Summary:
        """What XNNPACK runs and what stays outside the delegate, the batch range, the table kernels."""
        structure = artifact.structure
        outside = structure.get("non_delegated_ops", {})
        facts = [("delegated to XNNPACK", f"{structure.get('delegated_op_count', 0)} ops in "
                                          f"{structure.get('delegated_subgraphs', 0)} subgraph(s)"),
                 ("not delegated", f"{structure.get('non_delegated_op_count', 0)} ops"
                                   + (": " + ", ".join(f"{op} {count}" for op, count in outside.items()) if outside
                                      else "")),
                 ("weights", str(structure.get("weight_scheme", "—"))),
                 ("batch", str(structure.get("batch", "—")))]
        if structure.get("embedding_kernels"):
            facts.append(("embedding kernels", ", ".join(f"{kernel} {count}" for kernel, count
                                                         in structure["embedding_kernels"].items())))
        return [*basic_summary(artifact), *facts]

    def runner(self, path: Path, *, threads: int) -> "PteRunner":
        """executorch.runtime with the XNNPACK backend compiled into its Python bindings."""
        return PteRunner(path, threads=threads)


def quantize_for_xnnpack(context: ExportContext, names: list[str], options: XnnpackOptions) -> XnnpackQuantized:
    """The quantized module this target lowers: PT2E with XNNPACKQuantizer (static int8 calibrated on the
    recipe's set; dynamic int8 linear layers for a transformer), or, for a transformer with `weight_bits` 4,
    torchao's int4 groupwise weights with dynamic int8 activations (edgepack.targets.arm_xnnpack.linear4)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    # Shared PT2E helpers: same observers for the recipe's method, same calibration loop.
    from edgepack.quantization.pt2e import calibrated_pt2e, example_batch, with_activation_observer

    # A transformer's additive attention mask (-3.4e38) would flatten every static activation range it
    # enters: its linear layers are quantized dynamically instead (edgepack.quantization.transformer_int8).
    mask_value = additive_mask_constant(context.float_onnx)
    if options.weight_bits == 4 and mask_value is None:
        raise ConfigError("target_options.arm-xnnpack.weight_bits: 4 applies to transformers (a model with an "
                          "additive attention mask) only; this model is quantized statically, with 8-bit weights")
    size = max(2, min(context.calibration.batch_size, context.calibration.num_samples))
    example = example_batch(context.calibration, names, size)
    # Tables first, on the eager module (see edgepack.targets.arm_xnnpack.tables); the quantizers leave them alone.
    module, tables = quantize_embeddings(context.module, bits=context.quantization.embedding_bits)
    mask_note = (f"the attention mask constant {mask_value:.3g} stays out of every quantized range"
                 if mask_value is not None else "")
    if options.weight_bits == 4:
        quantized_module, layers = quantize_linears_4bit(module, group_size=options.group_size,
                                                         float_modules=context.float_modules)
        scheme = weight_scheme(options.group_size, layers)
        details = {"quantizer": f"torchao Int8DynamicActivationIntxWeightConfig (a transformer: {mask_note})",
                   "weight_scheme": scheme, "linear_layers": layers, "export_mode": "non-strict"}
        return XnnpackQuantized(quantized_module, example, tables, 4, details)
    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True) if mask_value is not None \
        else with_activation_observer(get_symmetric_quantization_config(is_per_channel=True), context.method)
    quantizer = XNNPACKQuantizer().set_global(config)
    graph = calibrated_pt2e(module, example, context.calibration, quantizer, fold_quantize=True,
                            float_modules=context.float_modules)
    scheme = ("int8 weights, symmetric, a scale per output channel; "
              + ("int8 activations quantized per call at run time (linear layers)" if mask_value is not None
                 else "int8 activations, static ranges from calibration"))
    details = {"quantizer": "executorch XNNPACKQuantizer, symmetric int8, per-channel weights"
                            + (f", dynamic activations on linear layers (a transformer: {mask_note})"
                               if mask_value is not None else ""),
               "weight_scheme": scheme, **graph.details()}
    return XnnpackQuantized(graph.module, example, tables, 8, details)


def _load_program(path: Path):
    try:
        # Registers the quantized kernels (embedding_byte for per-row tables) in the runtime.
        importlib.import_module("executorch.kernels.quantized")
        from executorch.runtime import Runtime
    except ImportError as exc:
        raise MissingDependencyError("running ExecuTorch programs", "executorch", "arm") from exc
    return Runtime.get().load_program(Path(path))


def _input_names(program, count: int) -> list[str]:
    """Names stored by export in the `edgepack_io` constant method, else input_0.."""
    if IO_METHOD in program.method_names:
        blob = program.load_method(IO_METHOD).execute([])[0]
        return list(json.loads(bytes(blob.numpy().astype(np.uint8).tolist()).decode())["inputs"])
    return [f"input_{index}" for index in range(count)]


class PteRunner:
    """Runs the `forward` method; batches above the planned maximum are split.

    The Python bindings of executorch 1.5 expose no thread-count setting for XNNPACK's pool; it
    sizes itself from the CPU count (2 on this machine, matching the recipe's usual threads: 2).
    """

    def __init__(self, path: Path, *, threads: int):
        import torch

        self._torch = torch
        self.program = _load_program(path)
        self.method = self.program.load_method("forward")
        meta = self.method.metadata
        self.input_names = _input_names(self.program, meta.num_inputs())
        self.output_names = [f"output_{index}" if index else "output" for index in range(meta.num_outputs())]
        self.max_batch = int(meta.input_tensor_meta(0).sizes()[0]) if meta.num_inputs() else MAX_BATCH
        self.threads = threads
        self.device = "ExecuTorch XNNPACK delegate, CPU (x86 emulation of ARM kernels)"
        self.fixed_batch = 1  # dynamic batch up to max_batch; larger inputs are split, not padded
        self.arithmetic = X86_BUILD_OF_ARM_KERNELS

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        count = len(next(iter(feeds.values())))
        parts: list[list[np.ndarray]] = []
        for start in range(0, count, self.max_batch):
            chunk = {name: feeds[name][start:start + self.max_batch] for name in self.input_names}
            inputs = list(as_tensors(chunk, self.input_names))
            outputs = self.method.execute(inputs)
            parts.append([output.numpy().astype(np.float32, copy=False) for output in outputs])
        return [np.concatenate([part[index] for part in parts]) for index in range(len(parts[0]))]


# ExecuTorch ScalarType codes (the bindings return them as plain ints).
SCALAR_TYPES = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64", 5: "float16", 6: "float32",
                7: "float64", 11: "bool", 15: "bfloat16"}


def _dtype_name(dtype: Any) -> str:
    try:
        return SCALAR_TYPES.get(int(dtype), str(dtype))
    except (TypeError, ValueError):
        return str(dtype).split(".")[-1].lower()


def describe_pte(path: Path) -> dict[str, Any]:
    """Input/output names, planned shapes (batch = the upper bound) and dtypes from the program."""
    program = _load_program(path)
    meta = program.metadata("forward")
    names = _input_names(program, meta.num_inputs())
    inputs = [{"name": name, "shape": list(meta.input_tensor_meta(i).sizes()),
               "dtype": _dtype_name(meta.input_tensor_meta(i).dtype())} for i, name in enumerate(names)]
    outputs = [{"name": f"output_{i}" if i else "output", "shape": list(meta.output_tensor_meta(i).sizes()),
                "dtype": _dtype_name(meta.output_tensor_meta(i).dtype())} for i in range(meta.num_outputs())]
    return {"inputs": inputs, "outputs": outputs, "methods": sorted(program.method_names)}


def describe_delegation(graph_module) -> dict[str, Any]:
    """Delegated vs non-delegated operators of the lowered program (counts and names)."""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(graph_module)
    by_op = info.delegation_by_operator
    return {"delegated_subgraphs": info.num_delegated_subgraphs,
            "delegated_op_count": info.num_delegated_nodes,
            "non_delegated_op_count": info.num_non_delegated_nodes,
            "delegated_ops": {op: b.delegated for op, b in sorted(by_op.items()) if b.delegated},
            "non_delegated_ops": {op: b.non_delegated for op, b in sorted(by_op.items()) if b.non_delegated},
            "delegate": "XnnpackBackend"}
