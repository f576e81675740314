"""The x86 target against the shared contract: INT8 QDQ structure, per-row tables, the `isa` and
`portable_weights` options."""

from __future__ import annotations

import onnx

from edgepack.isa import INT32_DOT_PRODUCT, host_isa
from tests.helpers import is_per_channel, onnx_constants, onnx_io_dtypes
from tests.targets.contract import TargetContract

REQUIRES_KEY = "edgepack.requires_isa"


class TestX86(TargetContract):
    target_name = "x86"
    covered_elsewhere = {"image-isa=vnni": "tests/e2e/test_isa.py (the VNNI data check takes a minute on the CNN)"}

    def check_structure(self, artifact, exported) -> None:
        options, case = exported.options, exported.case
        model = onnx.load(str(artifact.path))
        constants = onnx_constants(model)
        ops = [node.op_type for node in model.graph.node]
        assert artifact.format == "onnx" and artifact.precision == "int8-qdq"
        assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0
        graph_io = onnx_io_dtypes(model)
        for entry in artifact.details["inputs"] + artifact.details["outputs"]:
            assert entry["dtype"] == graph_io[entry["name"]], entry
        # the weight scheme the options ask for
        scheme = artifact.details["isa"]["weights"]
        if options.isa == "vnni":
            assert scheme == "int8"
        elif options.portable_weights != "auto":
            assert scheme == options.portable_weights
        else:  # auto measured both portable schemes and kept one
            assert scheme in ("int8-7bit", "uint8")
            assert {item["scheme"] for item in artifact.details["isa"]["candidates"]} == {"int8-7bit", "uint8"}
        tables = {f"{name}_int8" for name in ("user_weight", "item_weight")} if case.name == "ctr" else set()
        weight_dtype = "uint8" if scheme == "uint8" else "int8"
        weights = {name: value for name, value in constants.items()
                   if value.dtype.name == weight_dtype and value.ndim >= 2 and name not in tables}
        assert len(weights) == (6 if case.name == "image" else 3), f"conv/linear weights stored as {weight_dtype}"
        largest = max(int(abs(value.astype(int)).max()) for value in weights.values())
        if scheme == "int8-7bit":
            assert largest <= 64, "7-bit weights: no int16 pair sum can saturate"
        elif scheme == "int8":
            assert largest > 64, "full 8-bit weights"
        float_weights = [name for name, value in constants.items()
                         if value.dtype.name == "float32" and value.size > 1000]
        assert float_weights == [], f"large float initializers left: {float_weights}"
        weight_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in weights]
        assert len(weight_dq) == len(weights) and all(is_per_channel(n, constants) for n in weight_dq)
        # activations are uint8 on x86 (U8S8 kernels)
        activation_zero_points = [constants[n.input[2]] for n in model.graph.node
                                  if n.op_type == "QuantizeLinear" and len(n.input) > 2]
        assert activation_zero_points and all(z.dtype.name == "uint8" for z in activation_zero_points)
        self._check_isa(artifact, exported, model)
        if case.name == "image":
            # the 1-channel input conv stays float by default, so the input itself is not quantized
            assert artifact.details["float_nodes"] and "quantization" not in artifact.details["inputs"][0]
            first_conv = next(n for n in model.graph.node if n.op_type == "Conv")
            assert constants[first_conv.input[1]].dtype.name == "float32"
        else:
            self._check_tables(artifact, model, constants, tables)

    def _check_isa(self, artifact, exported, model) -> None:
        requires = {prop.key: prop.value for prop in model.metadata_props}.get(REQUIRES_KEY)
        runner = exported.runner(artifact)
        if exported.options.isa == "portable":
            assert requires is None and artifact.details["isa"]["requires_isa"] == []
            assert artifact.details["isa"]["saturation"]["layers_that_can_saturate_without_vnni"] == []
            assert "fake-quant" not in runner.device
            return
        assert set(requires.split("|")) == INT32_DOT_PRODUCT
        if INT32_DOT_PRODUCT & set(host_isa().features):
            assert "fake-quant" not in runner.device
        else:  # without VNNI, onnxruntime's int16 pair sums could saturate: the runner emulates VNNI
            assert runner.device.endswith("(fake-quant emulation)") and "emulates VNNI" in runner.arithmetic

    @staticmethod
    def _check_tables(artifact, model, constants, tables) -> None:
        """TinyCtr's tables: per-row INT8 read by Gather, a float16 scale per row; the dense input is quantized."""
        gathered = {node.input[0] for node in model.graph.node if node.op_type == "Gather"}
        assert tables <= gathered
        for name, rows in (("user_weight", 64), ("item_weight", 48)):
            assert constants[f"{name}_int8"].shape == (rows, 16)
            assert constants[f"{name}_row_scale"].shape == (rows,)
            assert constants[f"{name}_row_scale"].dtype.name == "float16"
        reported = {table["table"]: table for table in artifact.details["embedding_tables"]}
        assert set(reported) == {"user.weight", "item.weight"}
        assert all(table["bits"] == 8 and table["scales"] == "per row" for table in reported.values())
        assert all(table["max_abs_error"] <= table["error_bound"] for table in reported.values())
        dense = next(entry for entry in artifact.details["inputs"] if entry["name"] == "dense")
        assert dense["quantization"]["dtype"] == "uint8"
