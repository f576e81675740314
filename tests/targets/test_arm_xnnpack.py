"""The arm-xnnpack target against the shared contract: INT8 delegated to XNNPACK, per-row tables fused into
ExecuTorch's embedding kernels, batches above the planned maximum."""

from __future__ import annotations

import numpy as np

from tests.targets.contract import TargetContract

REFUSED = "tests/text/test_xnnpack_4bit.py (a model without attention mask refuses 4-bit weights)"


class TestArmXnnpack(TargetContract):
    target_name = "arm-xnnpack"
    option_values = {"group_size": (64,)}
    # both models are quantized statically: weight_bits 4 is refused (a group size needs it), tested on the tiny BERT
    covered_elsewhere = {f"{model}-{option}": REFUSED for model in ("image", "ctr")
                         for option in ("weight_bits=4", "group_size=64")}

    def check_structure(self, artifact, exported) -> None:
        case = exported.case
        details = artifact.details
        assert artifact.format == "pte" and details["delegate"] == "XnnpackBackend"
        assert details["delegated_subgraphs"] >= 1 and details["delegated_op_count"] > 0
        delegated = details["delegated_ops"]
        assert any("quantize_per_tensor" in op for op in delegated), "int8 activations inside the delegate"
        assert any("dequantize_per_channel" in op for op in delegated), "per-channel int8 weights"
        for entry in details["inputs"]:
            assert entry["dtype"] == ("int64" if case.is_id(entry["name"]) else "float32"), entry
        assert [entry["dtype"] for entry in details["outputs"]] == ["float32"]
        assert [entry["name"] for entry in details["inputs"]] == case.names, "the model's input order"
        assert details["weight_scheme"].startswith("int8 weights, symmetric, a scale per output channel; int8 "
                                                   "activations, static ranges")
        if case.name == "image":
            assert delegated.get("aten_convolution_default", 0) == 5 and delegated.get("aten_linear_default", 0) == 2
            # nothing heavy left outside the delegate: only shape plumbing (flatten's view, getitem, sym_size)
            assert set(details["non_delegated_ops"]) <= {"aten_view_copy_default", "getitem", "sym_size"}
            return
        assert delegated.get("aten_linear_default", 0) == 3
        # XNNPACK has no gather: the tables are read outside it, by ExecuTorch's quantized embedding kernel
        assert details["embedding_kernels"] == {"quantized_decomposed.embedding_byte.out": 2}
        reported = {table["table"]: table for table in details["embedding_tables"]}
        assert set(reported) == {"user.weight", "item.weight"}
        assert all(table["bits"] == 8 and table["scales"] == "per row" for table in reported.values())

    def test_runner_splits_batches_above_the_planned_maximum(self, exported):
        case = exported.case
        runner = exported.runner(exported.artifacts[0])
        size = runner.max_batch + 5
        rows = np.resize(np.arange(runner.max_batch), size)  # the 5 rows past the maximum repeat rows 0..4
        (out,) = runner({name: array[rows] for name, array in case.feeds.items()})
        assert out.shape == (size, *case.reference.shape[1:]) and out.dtype == np.float32
        np.testing.assert_allclose(out[-5:], out[:5], rtol=1e-5, atol=1e-5 * float(np.abs(out).max()))
