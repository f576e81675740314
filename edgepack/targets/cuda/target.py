"""Target `cuda`: FP16 ONNX and an explicit-QDQ INT8 ONNX in the form TensorRT expects.

Validation runs on the CUDA execution provider when onnxruntime has it; otherwise on the CPU
provider, where most fp16 kernels run as fp32 behind Casts: that checks the effect of rounding the
weights, not CUDA's fp16 arithmetic, and the manifest says so. Latency is labelled with the
provider it was measured on; no GPU figure is reported unless it was measured on a GPU.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import cast

import onnx
from pydantic import BaseModel, ConfigDict, Field

from edgepack.bundle.manifest import ArtifactEntry
from edgepack.evaluation.runners import OrtRunner
from edgepack.model.onnx_export import strip_debug_info
from edgepack.model.onnx_inspect import describe_onnx, onnx_summary
from edgepack.quantization.ort_qdq import QdqSettings, quantize_qdq
from edgepack.quantization.transformer_int8 import additive_mask_constant
from edgepack.targets.base import Artifact, ExportContext, Summary, Target, basic_summary

PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
CPU_NOTE = "validated on CPU (CPUExecutionProvider); fp16 numerics approximated, latency is CPU latency"
FP16_ON_CPU = "fp16 weights; on CPU most ops run in fp32 behind Casts (CUDA's fp16 arithmetic not emulated)"
TENSORRT_EMULATION = ("TensorRT-style INT8 arithmetic emulated on CPU (QDQ kept as fake-quant: float between "
                      "Q/DQ, no int16 pair sums)")


class CudaOptions(BaseModel):
    """Options under `target_options.cuda` in the recipe."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    keep_io_types: bool = Field(True, description="the fp16 artifact keeps float32 inputs and outputs (casts "
                                "inside the graph); false: float16 I/O")
    int8: bool = Field(True, description="also build the TensorRT-ready symmetric INT8 QDQ artifact")


class CudaTarget(Target):
    """FP16 ONNX plus symmetric INT8 QDQ ONNX (per-channel weights, zero points 0) for TensorRT / CUDA EP."""

    name = "cuda"
    description = "ONNX FP16 and INT8 explicit-QDQ for NVIDIA GPUs (CUDA / TensorRT execution providers)"
    extra = "cuda"
    required_modules = ("onnxruntime", "onnxscript")
    calibration_methods = frozenset({"minmax", "percentile", "entropy", "mse"})
    Options = CudaOptions

    def export(self, context: ExportContext) -> list[Artifact]:
        """Convert the checked fp32 ONNX to fp16, and quantize it to symmetric INT8 QDQ."""
        import onnxruntime
        from onnxruntime.transformers.float16 import convert_float_to_float16

        options = cast(CudaOptions, context.options)
        validation = self._validation_note()
        fp16_path = context.out_dir / "model.fp16.onnx"
        # fp16 needs no quantization help: built from the float model itself, never from a bias-corrected variant
        fp16 = convert_float_to_float16(onnx.load(str(context.unquantized_onnx or context.float_onnx)),
                                        keep_io_types=options.keep_io_types)
        onnx.save(fp16, str(fp16_path))
        compact = context.quantization.compact_names
        artifacts = [self._artifact(fp16_path, "fp16", onnxruntime.__version__, validation, compact,
                                    {"keep_io_types": options.keep_io_types})]
        if options.int8:
            int8_path = context.out_dir / "model.int8.qdq.onnx"
            settings = QdqSettings(activation_type="int8", weight_type="int8", per_channel=True,
                                   symmetric_activations=True, keep_input_convs_float=False,
                                   embedding_bits=None, float_modules=context.float_modules)
            mask_value = additive_mask_constant(context.float_onnx)
            extra = {"calibration_method": context.method.model_dump()}
            if mask_value is not None:  # a transformer: keep the attention mask out of every quantized range
                settings = dataclasses.replace(settings, op_types=("MatMul", "Gemm"),
                                               float_outputs_of=("MatMul", "Gemm"))
                extra["transformer"] = {"attention_mask_constant": mask_value, "quantized": "MatMul/Gemm inputs "
                                        "only; their outputs, the mask, softmax and LayerNorm stay float"}
            outcome = quantize_qdq(context.float_onnx, int8_path, calibration=context.calibration,
                                   input_names=[spec.name for spec in context.inputs], method=context.method,
                                   settings=settings, scratch=context.scratch_dir)
            if outcome.calibration:  # a per-tensor method: how many tensors chose each candidate range
                extra["calibration"] = outcome.calibration
            artifacts.append(self._artifact(int8_path, "int8-qdq-symmetric", onnxruntime.__version__, validation,
                                            compact, extra))
        return artifacts

    def _artifact(self, path: Path, precision: str, version: str, validation: str, compact_names: bool,
                  extra: dict) -> Artifact:
        strip_debug_info(path, compact_names=compact_names)
        details = describe_onnx(path) | extra
        details.update(layout="as exported (NCHW for images)", validation=validation,
                       intended_providers=["TensorrtExecutionProvider", "CUDAExecutionProvider"])
        return Artifact(target=self.name, path=path, format="onnx", precision=precision, runtime="onnxruntime",
                        runtime_version=version, details=details)

    def summarize(self, artifact: ArtifactEntry) -> Summary:
        """ONNX facts (opset, Q/DQ nodes, weights by dtype) and the providers the artifact is meant for."""
        structure = artifact.structure
        kept = [("float32 I/O kept", "yes" if structure["keep_io_types"] else "no")] if "keep_io_types" in structure \
            else []
        return [*basic_summary(artifact), *onnx_summary(structure), *kept,
                ("intended providers", ", ".join(structure.get("intended_providers", [])) or "—")]

    @staticmethod
    def _validation_note() -> str:
        import onnxruntime

        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            return "validated on GPU (CUDAExecutionProvider)"
        return CPU_NOTE

    def runner(self, path: Path, *, threads: int) -> OrtRunner:
        """CUDA execution provider when present. Else the CPU provider, where a QDQ model runs as
        fake-quant: the CPU's fused integer kernels (int16 pair sums without VNNI) are not what
        TensorRT computes (int32 accumulation)."""
        import onnxruntime

        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            return OrtRunner(path, threads=threads, providers=PROVIDERS)
        model = onnx.load(str(path), load_external_data=False)
        quantized = any(node.op_type == "QuantizeLinear" for node in model.graph.node)
        if quantized:
            return OrtRunner(path, threads=threads, emulation=TENSORRT_EMULATION)
        return OrtRunner(path, threads=threads, arithmetic=FP16_ON_CPU)
