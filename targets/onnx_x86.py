"""Target `x86`: static INT8 ONNX (QDQ, per-channel weights, uint8 activations) for onnxruntime on x86 CPUs."""

from __future__ import annotations

from pathlib import Path

from edgepack.onnx_export import strip_debug_info
from edgepack.onnx_inspect import describe_onnx
from edgepack.ort_quant import QdqSettings, quantize_qdq
from edgepack.runners import OrtRunner
from edgepack.targets.base import Artifact, ExportContext, Target


class X86Target(Target):
    """INT8 QDQ ONNX; uint8 activations because int8 ones leave Convs unfused on x86 (U8S8 kernels)."""

    name = "x86"
    description = "ONNX INT8 (QDQ) for onnxruntime on x86 CPUs"
    extra = "x86"
    required_modules = ("onnxruntime", "onnxscript")
    calibration_methods = frozenset({"minmax", "percentile", "entropy"})

    def export(self, context: ExportContext) -> list[Artifact]:
        """Quantize the checked fp32 ONNX with the recipe's calibration set and method."""
        import onnxruntime

        path = context.out_dir / "model.int8.onnx"
        settings = QdqSettings(activation_type=context.quantization.activation_type,
                               weight_type=context.quantization.weight_type,
                               per_channel=context.quantization.per_channel,
                               keep_input_convs_float=context.quantization.keep_input_convs_float,
                               embedding_bits=context.quantization.embedding_bits,
                               op_types=tuple(context.quantization.op_types or ()) or None)
        outcome = quantize_qdq(context.float_onnx, path, calibration=context.calibration,
                     input_names=[spec.name for spec in context.inputs], method=context.method,
                     settings=settings, scratch=context.scratch_dir)
        strip_debug_info(path, compact_names=context.quantization.compact_names)
        details = describe_onnx(path)
        details["layout"] = "as exported (NCHW for images)"
        details["float_nodes"] = list(outcome.float_nodes)
        details["embedding_tables"] = list(outcome.tables)
        details["calibration_method"] = context.method.model_dump()
        return [Artifact(target=self.name, path=path, format="onnx", precision="int8-qdq",
                         runtime="onnxruntime", runtime_version=onnxruntime.__version__, details=details)]

    def runner(self, path: Path, *, threads: int) -> OrtRunner:
        """onnxruntime CPU session."""
        return OrtRunner(path, threads=threads)
