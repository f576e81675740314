"""The slower-than-fp32 flag: only artifacts that really ran on this host's kernels are judged."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepack.evaluation.runners import FAKE_QUANT_DEVICE
from edgepack.evaluation.speed_flags import explain, flag_slow_artifacts

FAST = {"batch_1": {"median_ms": 0.1}, "batch_64": {"median_ms": 1.0}}
SLOW = {"batch_1": {"median_ms": 0.5}, "batch_64": {"median_ms": 9.0}}


def test_an_emulated_run_is_not_flagged_or_profiled(tmp_path):
    artifact = {"path": "x86/missing.onnx", "format": "onnx", "latency": SLOW,
                "validated_on": {"execution_provider": "CPUExecutionProvider" + FAKE_QUANT_DEVICE}}
    manifest = {"source_model": {"reference_onnx_latency": FAST},
                "targets": {"x86": {"artifacts": [artifact]}}}
    flag_slow_artifacts(manifest, Path(tmp_path), {"x": np.zeros((4, 2), np.float32)}, threads=1,
                        targets=frozenset({"x86"}))  # the file does not exist: profiling it would raise
    assert "slower_than_fp32" not in artifact


def test_explain_splits_kernel_time_by_kind():
    text = explain({"QLinearConv": 0.6, "QuantizeLinear": 0.25, "Transpose": 0.1, "Gather": 0.05})
    assert "integer kernels 60%, quantize/dequantize 25%, layout 10%, float ops 5%" in text
