"""Target `arm-xnnpack`: ExecuTorch `.pte` with INT8 kernels delegated to XNNPACK, for ARM CPUs.

The float torch module is exported with a dynamic batch, quantized by ExecuTorch's
`XNNPACKQuantizer` (symmetric int8, per-channel weights) through torchao's PT2E prepare/convert,
calibrated on the recipe's calibration set, then lowered with `to_edge_transform_and_lower` and
`XnnpackPartitioner`. Inputs and outputs stay float32; quantize/dequantize run inside the delegate.

The .pte is self-describing: a constant method `edgepack_io` returns the input names as UTF-8
JSON bytes, because ExecuTorch's method metadata carries shapes and dtypes but no names.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.bundle.manifest import ArtifactEntry
from edgepack.errors import ExportError, MissingDependencyError, describe
from edgepack.evaluation.runners import X86_BUILD_OF_ARM_KERNELS
from edgepack.model.tensors import as_tensors
from edgepack.quantization.transformer_int8 import additive_mask_constant
from edgepack.targets.arm_xnnpack.tables import fused_table_ops, quantize_embeddings
from edgepack.targets.base import Artifact, ExportContext, Summary, Target, basic_summary

IO_METHOD = "edgepack_io"
# Memory planning sizes buffers for the upper bound of the dynamic batch: keep it moderate.
MAX_BATCH = 256


class XnnpackArmTarget(Target):
    """INT8 ExecuTorch program, XNNPACK-delegated, float32 I/O, dynamic batch up to MAX_BATCH."""

    name = "arm-xnnpack"
    description = "ExecuTorch .pte, INT8 (XNNPACKQuantizer) delegated to XNNPACK, for ARM CPUs"
    extra = "arm"
    required_modules = ("executorch", "torchao")
    calibration_methods = frozenset({"minmax", "percentile"})

    def export(self, context: ExportContext) -> list[Artifact]:
        """Quantize with PT2E + XNNPACKQuantizer on the calibration set, lower to XNNPACK, write model.int8.pte."""
        if context.module is None:
            raise ExportError("target 'arm-xnnpack' needs a PyTorch model (model.factory or model.pickle); "
                              "it cannot start from an ONNX file")
        import torch
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower

        names = [spec.name for spec in context.inputs]
        started = time.perf_counter()
        quantized, tables, example, mask_value = quantize_for_xnnpack(context, names)
        # A batch of 1 in the example would specialise the batch dimension; size >= 2 keeps it symbolic.
        batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
        path = context.out_dir / "model.int8.pte"
        try:
            program = torch.export.export(quantized.module, example, dynamic_shapes=tuple({0: batch} for _ in example))
            names_blob = torch.tensor(list(json.dumps({"inputs": names}).encode()), dtype=torch.uint8)
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()],
                                               constant_methods={IO_METHOD: names_blob})
            delegation = describe_delegation(edge.exported_program().graph_module)
            # The fusion pass turns dequantize_affine -> embedding into embedding_byte / embedding_4bit.
            program_out = edge.to_executorch(ExecutorchBackendConfig(do_quant_fusion_and_const_prop=bool(tables)))
            path.write_bytes(program_out.buffer)
        except Exception as exc:  # export and lowering raise many exception types
            raise ExportError(f"ExecuTorch could not lower the quantized model: {describe(exc)}") from exc
        seconds = time.perf_counter() - started
        details = describe_pte(path) | delegation
        details.update(layout="as exported (NCHW for images)", batch=f"dynamic, 1..{MAX_BATCH} per call "
                       "(the runner splits larger batches)", conversion_seconds=round(seconds, 1),
                       calibration_method=context.method.model_dump(),
                       quantizer="executorch XNNPACKQuantizer, symmetric int8, per-channel weights"
                       + (", dynamic activations on linear layers (a transformer: the attention mask constant "
                          f"{mask_value:.3g} stays out of every quantized range)" if mask_value is not None else ""),
                       embedding_tables=tables, **quantized.details())
        if tables:
            details["embedding_kernels"] = fused_table_ops(program_out)
            details["embedding_lookup"] = ("quantized_decomposed embedding kernels outside the delegate: the "
                                           "runtime must link ExecuTorch's quantized kernels library")
        return [Artifact(target=self.name, path=path, format="pte", precision="int8-xnnpack",
                         runtime="executorch", runtime_version=importlib.metadata.version("executorch"),
                         details=details)]

    def summarize(self, artifact: ArtifactEntry) -> Summary:
        """What XNNPACK runs and what stays outside the delegate, the batch range, the table kernels."""
        structure = artifact.structure
        outside = structure.get("non_delegated_ops", {})
        facts = [("delegated to XNNPACK", f"{structure.get('delegated_op_count', 0)} ops in "
                                          f"{structure.get('delegated_subgraphs', 0)} subgraph(s)"),
                 ("not delegated", f"{structure.get('non_delegated_op_count', 0)} ops"
                                   + (": " + ", ".join(f"{op} {count}" for op, count in outside.items()) if outside
                                      else "")),
                 ("batch", str(structure.get("batch", "—")))]
        if structure.get("embedding_kernels"):
            facts.append(("embedding kernels", ", ".join(f"{kernel} {count}" for kernel, count
                                                         in structure["embedding_kernels"].items())))
        return [*basic_summary(artifact), *facts]

    def runner(self, path: Path, *, threads: int) -> "PteRunner":
        """executorch.runtime with the XNNPACK backend compiled into its Python bindings."""
        return PteRunner(path, threads=threads)


def quantize_for_xnnpack(context: ExportContext, names: list[str]):
    """The PT2E-quantized module this target lowers, with its embedding tables, example batch and the
    attention-mask constant (None for a model without one). Shared with edgepack.evaluation.divergence_pte,
    which re-lowers the same graph with its conv outputs tapped."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    # Shared PT2E helpers: same observers for the recipe's method, same calibration loop.
    from edgepack.quantization.pt2e import calibrated_pt2e, example_batch, with_activation_observer

    # A transformer's additive attention mask (-3.4e38) would flatten every static activation range it
    # enters: its linear layers are quantized dynamically instead (edgepack.quantization.transformer_int8).
    mask_value = additive_mask_constant(context.float_onnx)
    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True) if mask_value is not None \
        else with_activation_observer(get_symmetric_quantization_config(is_per_channel=True), context.method)
    quantizer = XNNPACKQuantizer().set_global(config)
    size = max(2, min(context.calibration.batch_size, context.calibration.num_samples))
    example = example_batch(context.calibration, names, size)
    # Tables first, on the eager module (see edgepack.targets.arm_xnnpack.tables); the static quantizer
    # leaves them alone.
    module, tables = quantize_embeddings(context.module, bits=context.quantization.embedding_bits)
    quantized = calibrated_pt2e(module, example, context.calibration, quantizer, fold_quantize=True,
                                float_modules=context.float_modules)
    return quantized, tables, example, mask_value


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
