"""The cuda target against the shared contract: FP16 initializers, symmetric INT8 QDQ structure, the
`keep_io_types`, `int8` and `fuse_attention` options. Provider-dependent facts follow onnxruntime's available providers,
so this passes on a CPU-only host and on a GPU host alike."""

from __future__ import annotations

import onnx

from tests.helpers import is_per_channel, onnx_constants, onnx_io_dtypes, relative_rms
from tests.targets.contract import TargetContract


def on_gpu() -> bool:
    """Whether onnxruntime can run on CUDA here."""
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


class TestCuda(TargetContract):
    target_name = "cuda"
    # true is an error on these models (not transformers): tests/text/test_cuda_text.py covers it
    option_values = {"fuse_attention": (False,)}
    runs_on_data = TargetContract.runs_on_data + ("test_fp16_stays_closer_to_the_float_model_than_int8",)

    def check_structure(self, artifact, exported) -> None:
        options, case = exported.options, exported.case
        precisions = [a.precision for a in exported.artifacts]
        assert precisions == (["fp16", "int8-qdq-symmetric"] if options.int8 else ["fp16"])
        self._check_provider(artifact, exported)
        model = onnx.load(str(artifact.path))
        constants = onnx_constants(model)
        graph_io = onnx_io_dtypes(model)
        for entry in artifact.details["inputs"] + artifact.details["outputs"]:
            assert entry["dtype"] == graph_io[entry["name"]], entry
        if artifact.precision == "fp16":
            large = {name: value.dtype.name for name, value in constants.items() if value.size > 100}
            assert large and set(large.values()) == {"float16"}, large
            if case.name == "ctr":  # the fp16 artifact halves the tables
                assert {constants[name].shape for name in large} >= {(64, 16), (48, 16)}
            float_io = "float32" if options.keep_io_types else "float16"
            for entry in artifact.details["inputs"]:
                assert entry["dtype"] == ("int64" if case.is_id(entry["name"]) else float_io), entry
            assert [entry["dtype"] for entry in artifact.details["outputs"]] == [float_io]
            return
        quantize = [node for node in model.graph.node if node.op_type == "QuantizeLinear"]
        assert quantize, "explicit QDQ expected"
        for node in quantize:
            zero_point = constants[node.input[2]]
            assert zero_point.dtype.name == "int8" and not zero_point.any(), f"{node.name}: zero point must be 0"
        for node in (n for n in model.graph.node if n.op_type == "DequantizeLinear"):
            zero_point = constants[node.input[2]]  # int8 activations and weights, int32 biases
            assert zero_point.dtype.name in ("int8", "int32") and not zero_point.any(), node.name
        gathered = {node.input[0] for node in model.graph.node if node.op_type == "Gather"}
        weight_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"
                     and constants.get(n.input[0]) is not None and constants[n.input[0]].ndim >= 2]
        layers = [n for n in weight_dq if n.output[0] not in gathered]
        assert len(layers) == (7 if case.name == "image" else 3)
        assert all(is_per_channel(n, constants) for n in layers), "per-channel weight scales"
        tables = [n for n in weight_dq if n.output[0] in gathered]
        # TensorRT-style: onnxruntime's per-tensor table quantization, no per-row rewrite
        assert len(tables) == (2 if case.name == "ctr" else 0)
        assert all(constants[n.input[1]].size == 1 for n in tables)
        assert not artifact.details.get("float_nodes")

    @staticmethod
    def _check_provider(artifact, exported) -> None:
        runner = exported.runner(artifact)
        if on_gpu():
            assert artifact.details["validation"] == "validated on GPU (CUDAExecutionProvider)"
            assert runner.device == "CUDAExecutionProvider"
            return
        assert "validated on CPU" in artifact.details["validation"]
        assert "fp16 numerics approximated" in artifact.details["validation"]
        assert runner.device.startswith("CPUExecutionProvider")
        if artifact.precision == "fp16":
            assert "fp16 weights" in runner.arithmetic and "fake-quant" not in runner.device
        else:  # the CPU's fused integer kernels are not what TensorRT computes: fake-quant instead
            assert runner.device.endswith("(fake-quant emulation)") and "TensorRT" in runner.arithmetic

    def batch_tolerance(self, artifact) -> float:
        """CUDA may pick other kernels (fp16, TF32) for other batch sizes; the CPU computes each row alike."""
        return 1e-2 if on_gpu() else super().batch_tolerance(artifact)

    def test_fp16_stays_closer_to_the_float_model_than_int8(self, exported):
        case = exported.case
        errors = {artifact.precision: relative_rms(exported.runner(artifact)(case.feeds)[0], case.reference)
                  for artifact in exported.artifacts}
        assert errors["fp16"] <= 0.01, errors
        if "int8-qdq-symmetric" in errors:
            # measured ~60x apart on the CPU, which only rounds the weights; CUDA also computes in fp16
            assert errors["fp16"] < errors["int8-qdq-symmetric"] / (2 if on_gpu() else 10), errors
        assert errors["fp16"] > 0, "fp16 rounding changes the outputs: the weights were not converted"
