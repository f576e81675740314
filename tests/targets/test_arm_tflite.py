"""The arm-tflite target against the shared contract, plus its full-integer INT8 structure and runner."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

from edgepack.targets.arm_tflite.runner import TfliteRunner, dequantize, quantize  # noqa: E402
from tests.targets.contract import TargetContract  # noqa: E402


class TestArmTflite(TargetContract):
    target_name = "arm-tflite"

    def check_structure(self, artifact) -> None:
        details = artifact.details
        assert artifact.format == "tflite" and artifact.precision == "int8-full-integer"
        assert details["tensor_dtypes"].get("int8", 0) >= 10, details["tensor_dtypes"]
        for entry in details["inputs"] + details["outputs"]:
            assert entry["dtype"] == "int8", "int8 inputs/outputs by default"
            assert entry["quantization"]["scale"] > 0
        assert {"CONV_2D", "FULLY_CONNECTED"} <= set(details["op_counts"])
        assert "float_tensors" in details and "float_tensor_bytes" in details
        # this CNN quantizes completely: nothing stays float, not even the I/O
        assert details["float_tensors"] == [] and details["float_tensor_bytes"] == 0

    def test_quantize_dequantize_round_trip(self, exported):
        _, artifacts, _, evaluation, _ = exported
        runner = TfliteRunner(artifacts[0].path, threads=1)
        detail = runner._inputs["image"]
        scale, zero_point = detail["quantization"]
        values = evaluation.arrays["image"][:8]
        back = dequantize(quantize(values, scale, zero_point, np.int8), scale, zero_point)
        # inside the representable range the round trip is off by at most half a step
        low, high = (-128 - zero_point) * scale, (127 - zero_point) * scale
        inside = (values >= low) & (values <= high)
        assert inside.all()
        assert np.abs(back - values)[inside].max() <= scale / 2 + 1e-6

    def test_runner_handles_any_batch_size(self, exported):
        target, artifacts, _, evaluation, _ = exported
        runner = target.runner(artifacts[0].path, threads=2)
        for size in (1, 3, 17):
            (out,) = runner({"image": evaluation.arrays["image"][:size]})
            assert out.shape == (size, 10) and out.dtype == np.float32
