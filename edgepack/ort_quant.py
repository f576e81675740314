"""onnxruntime static QDQ quantization driven by our calibration ranges (shared by ONNX targets)."""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path

from edgepack.calibration.ranges import compute_ranges, ort_method
from edgepack.errors import ExportError


@dataclass(frozen=True)
class QdqSettings:
    """How weights and activations are quantized in a QDQ graph."""

    activation_type: str = "uint8"
    weight_type: str = "int8"
    per_channel: bool = True
    symmetric_activations: bool = False


def quantize_qdq(float_path: Path, out_path: Path, *, calibration, input_names: list[str], method,
                 settings: QdqSettings, scratch: Path) -> dict[str, tuple[float, float]]:
    """Pre-process, calibrate and quantize `float_path` into a QDQ model at `out_path`; returns ranges."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    prepared = scratch / "prepared.onnx"
    cache = scratch / "calibration_cache.json"
    with _quiet():
        try:
            quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        except Exception as exc:
            raise ExportError(f"onnxruntime pre-processing failed: {type(exc).__name__}: {exc}") from exc
        ranges = compute_ranges(prepared, calibration, input_names, method, cache)
        try:
            quantize_static(
                str(prepared), str(out_path), calibration_data_reader=None, calibration_cache_path=str(cache),
                calibrate_method=ort_method(method), quant_format=QuantFormat.QDQ,
                activation_type=types[settings.activation_type], weight_type=types[settings.weight_type],
                per_channel=settings.per_channel,
                extra_options={"ActivationSymmetric": settings.symmetric_activations, "WeightSymmetric": True},
            )
        except Exception as exc:
            raise ExportError(f"onnxruntime quantization failed: {type(exc).__name__}: {exc}") from exc
    return ranges


@contextlib.contextmanager
def _quiet():
    """onnxruntime's quantizer logs advice at WARNING level on every call; keep the CLI output clean."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)
