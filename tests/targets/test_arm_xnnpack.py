"""The arm-xnnpack target against the shared contract, plus its XNNPACK delegation."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("executorch")
pytest.importorskip("torchao")

from tests.targets.contract import TargetContract  # noqa: E402


class TestArmXnnpack(TargetContract):
    target_name = "arm-xnnpack"

    def check_structure(self, artifact) -> None:
        details = artifact.details
        assert artifact.format == "pte" and details["delegate"] == "XnnpackBackend"
        assert details["delegated_subgraphs"] >= 1 and details["delegated_op_count"] > 0
        delegated = details["delegated_ops"]
        assert delegated.get("aten_convolution_default", 0) == 5 and delegated.get("aten_linear_default", 0) == 2
        assert any("quantize_per_tensor" in op for op in delegated), "int8 activations inside the delegate"
        assert any("dequantize_per_channel" in op for op in delegated), "per-channel int8 weights"
        # nothing heavy left outside the delegate: only shape plumbing (flatten's view, getitem, sym_size)
        assert set(details["non_delegated_ops"]) <= {"aten_view_copy_default", "getitem", "sym_size"}
        assert details["inputs"][0]["dtype"] == "float32" and details["outputs"][0]["dtype"] == "float32"

    def test_runner_splits_batches_above_the_planned_maximum(self, exported):
        target, artifacts, _, evaluation, _ = exported
        runner = target.runner(artifacts[0].path, threads=2)
        size = runner.max_batch + 5
        images = np.concatenate([evaluation.arrays["image"]] * (size // len(evaluation.arrays["image"]) + 1))[:size]
        (out,) = runner({"image": images})
        assert out.shape == (size, 10) and out.dtype == np.float32
