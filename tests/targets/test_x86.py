"""The x86 target against the shared contract, plus its INT8 QDQ structure."""

from __future__ import annotations

import onnx
from onnx import numpy_helper

from tests.targets.contract import TargetContract


class TestX86(TargetContract):
    target_name = "x86"

    def check_structure(self, artifact) -> None:
        model = onnx.load(str(artifact.path))
        ops = [node.op_type for node in model.graph.node]
        assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0
        constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
        # the portable default stores weights as int8 (7-bit where kernels add pairs) or uint8 (U8U8)
        weight_dtype = "uint8" if artifact.details["isa"]["weights"] == "uint8" else "int8"
        int_weights = [name for name, value in constants.items()
                       if value.dtype.name == weight_dtype and value.ndim >= 2]
        assert len(int_weights) >= 5, f"conv and linear weights must be stored as {weight_dtype}"
        float_weights = [name for name, value in constants.items()
                         if value.dtype.name == "float32" and value.size > 1000]
        assert float_weights == [], f"large float initializers left: {float_weights}"
        # per-channel weight scales: a DequantizeLinear on an integer weight has a vector scale
        weight_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in int_weights]
        assert weight_dq and all(constants[n.input[1]].size > 1 for n in weight_dq)
        if weight_dtype == "int8":
            assert all(abs(int(constants[name].min())) <= 64 and constants[name].max() <= 64 for name in int_weights)
        # activations are uint8 on x86 (U8S8 kernels)
        activation_zero_points = [constants[n.input[2]] for n in model.graph.node
                                  if n.op_type == "QuantizeLinear" and len(n.input) > 2]
        assert activation_zero_points and all(z.dtype.name == "uint8" for z in activation_zero_points)
        # the 1-channel input conv stays float by default, so the input itself is not quantized
        assert artifact.details["float_nodes"] and "quantization" not in artifact.details["inputs"][0]
        first_conv = next(n for n in model.graph.node if n.op_type == "Conv")
        assert constants[first_conv.input[1]].dtype.name == "float32"
