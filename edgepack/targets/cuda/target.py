"""Target `cuda`: FP16 ONNX and an explicit-QDQ INT8 ONNX in the form TensorRT expects.

Transformer encoders: the fp16 graph carries onnxruntime's fused attention when the module allows it
(edgepack.targets.cuda.fused_fp16; option `fuse_attention`), and the INT8 graph stores embedding
tables as int8 behind a per-channel DequantizeLinear (edgepack.quantization.gather_dq).

Validation runs on the CUDA execution provider when onnxruntime has it; otherwise on the CPU
provider, where most fp16 kernels run as fp32 behind Casts: that checks the effect of rounding the
weights, not CUDA's fp16 arithmetic, and the manifest says so. Latency is labelled with the
provider it was measured on; no GPU figure is reported unless it was measured on a GPU.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal, Optional, Union, cast

import onnx
from pydantic import BaseModel, ConfigDict, Field

from edgepack.bundle.manifest import ArtifactEntry
from edgepack.errors import ExportError
from edgepack.evaluation.runners import OrtRunner
from edgepack.model.onnx_export import strip_debug_info
from edgepack.model.onnx_inspect import describe_onnx, onnx_summary
from edgepack.quantization.gather_dq import dequantize_gathered_tables
from edgepack.quantization.ort_qdq import QdqSettings, quantize_qdq
from edgepack.quantization.transformer_int8 import additive_mask_constant
from edgepack.targets.base import Artifact, ExportContext, Summary, Target, basic_summary
from edgepack.targets.cuda.fused_fp16 import FusionUnavailable, build_fused_fp16

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
    fuse_attention: Union[bool, Literal["auto"]] = Field(
        "auto", description="transformer encoders: fp16 graph with onnxruntime's fused contrib ops (Attention, "
        "SkipLayerNormalization, BiasGelu) for the CUDA execution provider; auto: when the model allows it, else "
        "the plain fp16 graph and why; false: the plain graph (TensorRT fuses attention itself)")


class CudaTarget(Target):
    """FP16 ONNX plus symmetric INT8 QDQ ONNX (per-channel weights, zero points 0) for TensorRT / CUDA EP."""

    name = "cuda"
    description = "ONNX FP16 and INT8 explicit-QDQ for NVIDIA GPUs (CUDA / TensorRT execution providers)"
    extra = "cuda"
    required_modules = ("onnxruntime", "onnxscript")
    calibration_methods = frozenset({"minmax", "percentile", "entropy", "mse"})
    Options = CudaOptions

    def export(self, context: ExportContext) -> list[Artifact]:
        """Convert the checked fp32 ONNX to fp16 (fused for transformers), and quantize it to symmetric INT8 QDQ."""
        import onnxruntime

        options = cast(CudaOptions, context.options)
        mask_value = additive_mask_constant(context.float_onnx)
        artifacts = [self._fp16(context, options, mask_value)]
        if options.int8:
            artifacts.append(self._int8(context, mask_value, onnxruntime.__version__))
        return artifacts

    def _fp16(self, context: ExportContext, options: CudaOptions, mask_value: Optional[float]) -> Artifact:
        import onnxruntime
        from onnxruntime.transformers.float16 import convert_float_to_float16

        fp16_path = context.out_dir / "model.fp16.onnx"
        extra: dict[str, Any] = {"keep_io_types": options.keep_io_types}
        fusion = self._fused(context, options, mask_value, fp16_path)
        if fusion:
            extra["fused_attention"] = fusion
        if fusion.get("used"):
            return self._artifact(fp16_path, "fp16", onnxruntime.__version__, self._validation_note(),
                                  context.quantization.compact_names, extra, providers=["CUDAExecutionProvider"])
        # fp16 needs no quantization help: built from the float model itself, never from a bias-corrected variant
        fp16 = convert_float_to_float16(onnx.load(str(context.unquantized_onnx or context.float_onnx)),
                                        keep_io_types=options.keep_io_types)
        onnx.save(fp16, str(fp16_path))
        return self._artifact(fp16_path, "fp16", onnxruntime.__version__, self._validation_note(),
                              context.quantization.compact_names, extra)

    @staticmethod
    def _fused(context: ExportContext, options: CudaOptions, mask_value: Optional[float], path: Path) -> dict:
        """The fused fp16 graph at `path` when wanted and possible: its facts with `used` true; else why not."""
        if options.fuse_attention is False:
            return {}
        if mask_value is None:
            if options.fuse_attention is True:
                raise ExportError("target_options.cuda.fuse_attention: the model is not a transformer encoder (no "
                                  "additive attention mask in its graph)")
            return {}
        try:
            return {"used": True, **build_fused_fp16(context, path, keep_io_types=options.keep_io_types),
                    "intended_provider": "CUDAExecutionProvider (TensorRT's parser does not take com.microsoft "
                                         "ops: for TensorRT use fuse_attention: false)"}
        except FusionUnavailable as exc:
            if options.fuse_attention is True:
                raise ExportError(f"target_options.cuda.fuse_attention: {exc}") from exc
            return {"used": False, "reason": str(exc)}

    def _int8(self, context: ExportContext, mask_value: Optional[float], version: str) -> Artifact:
        int8_path = context.out_dir / "model.int8.qdq.onnx"
        settings = QdqSettings(activation_type="int8", weight_type="int8", per_channel=True,
                               symmetric_activations=True, keep_input_convs_float=False,
                               embedding_bits=None, float_modules=context.float_modules)
        extra: dict[str, Any] = {"calibration_method": context.method.model_dump()}
        if mask_value is not None:  # a transformer: keep the attention mask out of every quantized range
            settings = dataclasses.replace(settings, op_types=("MatMul", "Gemm"), float_outputs_of=("MatMul", "Gemm"))
            extra["transformer"] = {"attention_mask_constant": mask_value, "quantized": "MatMul/Gemm inputs and "
                                    "embedding tables (int8, DequantizeLinear before the Gather); MatMul outputs, the "
                                    "mask, softmax and LayerNorm stay float"}
        outcome = quantize_qdq(context.float_onnx, int8_path, calibration=context.calibration,
                               input_names=[spec.name for spec in context.inputs], method=context.method,
                               settings=settings, scratch=context.scratch_dir)
        if mask_value is not None:  # onnxruntime left the Gathers float: INT8 tables with a DQ before the lookup
            extra["embedding_tables"] = dequantize_gathered_tables(int8_path)
        if outcome.calibration:  # a per-tensor method: how many tensors chose each candidate range
            extra["calibration"] = outcome.calibration
        return self._artifact(int8_path, "int8-qdq-symmetric", version, self._validation_note(),
                              context.quantization.compact_names, extra)

    def _artifact(self, path: Path, precision: str, version: str, validation: str, compact_names: bool,
                  extra: dict, providers: Optional[list[str]] = None) -> Artifact:
        strip_debug_info(path, compact_names=compact_names)
        details = describe_onnx(path) | extra
        details.update(layout="as exported (NCHW for images)", validation=validation,
                       intended_providers=providers or ["TensorrtExecutionProvider", "CUDAExecutionProvider"])
        return Artifact(target=self.name, path=path, format="onnx", precision=precision, runtime="onnxruntime",
                        runtime_version=version, details=details)

    def summarize(self, artifact: ArtifactEntry) -> Summary:
        """ONNX facts (opset, Q/DQ nodes, weights by dtype) and the providers the artifact is meant for."""
        structure = artifact.structure
        kept = [("float32 I/O kept", "yes" if structure["keep_io_types"] else "no")] if "keep_io_types" in structure \
            else []
        fusion = structure.get("fused_attention")
        if fusion:
            kept.append(("fused attention", ", ".join(f"{op} x{count}" for op, count in fusion["fused_ops"].items())
                         if fusion["used"] else f"no: {fusion['reason']}"))
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
