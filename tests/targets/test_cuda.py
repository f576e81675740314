"""The cuda target against the shared contract: FP16 initializers and symmetric INT8 QDQ structure."""

from __future__ import annotations

import onnx
from onnx import numpy_helper

from tests.targets.contract import TargetContract


class TestCuda(TargetContract):
    target_name = "cuda"

    def check_structure(self, artifact) -> None:
        model = onnx.load(str(artifact.path))
        constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
        import onnxruntime

        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            assert artifact.details["validation"] == "validated on GPU (CUDAExecutionProvider)"
        else:
            assert "fp16 numerics approximated" in artifact.details["validation"]
        if artifact.precision == "fp16":
            large = {name: value.dtype.name for name, value in constants.items() if value.size > 100}
            assert large and set(large.values()) == {"float16"}, large
            assert artifact.details["inputs"][0]["dtype"] == "float32", "keep_io_types keeps float32 I/O"
            return
        assert artifact.precision == "int8-qdq-symmetric"
        quantize = [node for node in model.graph.node if node.op_type == "QuantizeLinear"]
        assert quantize, "explicit QDQ expected"
        for node in quantize:
            zero_point = constants[node.input[2]]
            assert zero_point.dtype.name == "int8" and not zero_point.any(), f"{node.name}: zero point must be 0"
        for node in (n for n in model.graph.node if n.op_type == "DequantizeLinear"):
            zero_point = constants[node.input[2]]  # int8 activations and weights, int32 biases
            assert zero_point.dtype.name in ("int8", "int32") and not zero_point.any(), node.name
        weight_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"
                     and constants.get(n.input[0]) is not None and constants[n.input[0]].ndim >= 2]
        assert weight_dq and all(constants[n.input[1]].size > 1 for n in weight_dq), "per-channel weight scales"
        assert not artifact.details.get("float_nodes")
