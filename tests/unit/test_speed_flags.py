"""The slower-than-fp32 flag: only artifacts that really ran on this host's kernels are judged."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgepack.evaluation.runners import FAKE_QUANT_DEVICE
from edgepack.evaluation.speed_flags import explain, flag_slow_artifacts
from tests.unit.manifests import fixture_manifest


def test_an_emulated_run_is_not_flagged_or_profiled(tmp_path):
    manifest = fixture_manifest("image")
    manifest.bench = None
    slow = {key: figure.model_copy(update={"median_ms": figure.median_ms * 100})
            for key, figure in manifest.source_model.reference_onnx_latency.items()}
    artifact = manifest.targets["x86"].artifacts[0]
    artifact.latency = slow
    artifact.validated_on.execution_provider = "CPUExecutionProvider" + FAKE_QUANT_DEVICE
    flag_slow_artifacts(manifest, Path(tmp_path), {"image": np.zeros((4, 1, 28, 28), np.float32)}, threads=1,
                        targets=frozenset({"x86"}))  # the file does not exist: profiling it would raise
    assert artifact.slower_than_fp32 is None


def test_explain_splits_kernel_time_by_kind():
    text = explain({"QLinearConv": 0.6, "QuantizeLinear": 0.25, "Transpose": 0.1, "Gather": 0.05})
    assert "integer kernels 60%, quantize/dequantize 25%, layout 10%, float ops 5%" in text
