"""The arm-tflite target against the shared contract: full-integer INT8 flatbuffers, per-row INT8 tables
read by EMBEDDING_LOOKUP, and the `float_io`, `nhwc` and `batch` options, read back from the file."""

from __future__ import annotations

from collections import Counter

import numpy as np

from tests.helpers import read_tflite, tflite_op_names
from tests.targets.contract import MODELS, TargetContract

PER_ROW_VERSION = 4  # EMBEDDING_LOOKUP with per-channel (per-row) tables


def signature_io(path) -> tuple[dict, dict]:
    """The interpreter's view of the signature's inputs and outputs: name -> (dtype name, shape, scale)."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner()

    def view(details):
        return {name: (np.dtype(d["dtype"]).name, [int(x) for x in d["shape"]], d["quantization"][0])
                for name, d in details.items()}

    return view(runner.get_input_details()), view(runner.get_output_details())


class TestArmTflite(TargetContract):
    target_name = "arm-tflite"
    option_values = {"batch": (4,), "sequence_lengths": ((8,),)}
    # a text-only option: the contract's image and CTR models refuse it (tested there too)
    covered_elsewhere = {f"{model}-sequence_lengths=(8,)": "tests/text/test_tflite_buckets.py" for model in MODELS}

    def check_structure(self, artifact, exported) -> None:
        options, case = exported.options, exported.case
        assert artifact.format == "tflite"
        assert artifact.precision == ("int8-float-io" if options.float_io else "int8-full-integer")
        fb, model = read_tflite(artifact.path)
        graph = model.subgraphs[0]
        ops = tflite_op_names(fb, model)
        types = Counter(tensor.type for tensor in graph.tensors)
        assert types[fb.TensorType.INT8] >= 10, "int8 weights and activations"
        inputs, outputs = signature_io(artifact.path)
        assert sorted(inputs) == sorted(case.names)
        for name, (dtype, shape, scale) in inputs.items():
            spec = next(spec for spec in case.inputs if spec.name == name)
            assert shape[0] == options.batch, "the fixed batch the option asks for"
            sample = list(spec.sample_shape)
            if options.nhwc and len(sample) == 3:
                sample = sample[1:] + sample[:1]  # channel-last image input
            assert shape[1:] == sample, (name, shape)
            if case.is_id(name):
                assert dtype == "int32", "ids are looked up as int32"
            elif options.float_io:
                assert dtype == "float32" and not scale
            else:
                assert dtype == "int8" and scale > 0
        ((output_dtype, output_shape, output_scale),) = outputs.values()
        assert output_shape[0] == options.batch
        assert output_dtype == ("float32" if options.float_io else "int8") and (output_scale > 0) != options.float_io
        float_inputs = [name for name in case.names if not case.is_id(name)]
        if options.float_io:  # the boundary ops added around the int8 graph
            assert ops[:len(float_inputs)] == ["QUANTIZE"] * len(float_inputs) and ops[-1] == "DEQUANTIZE"
        for entry, channel_last in ((e, options.nhwc and len(e["shape"]) == 4) for e in artifact.details["inputs"]):
            assert (entry["layout"] == "NHWC") == channel_last
        runner = exported.runner(artifact)
        assert runner.fixed_batch == options.batch
        if case.name == "image":
            if options.nhwc:  # the runner takes the recipe's NCHW layout and the artifact's own alike
                images = case.feeds["image"][:8]
                np.testing.assert_array_equal(runner({"image": images})[0],
                                              runner({"image": images.transpose(0, 2, 3, 1)})[0])
            assert {"CONV_2D", "FULLY_CONNECTED"} <= set(ops)
            # this CNN quantizes completely: nothing stays float but the I/O float_io asks for
            roles = {entry["role"] for entry in artifact.details["float_tensors"]}
            assert roles == ({"input", "output"} if options.float_io else set()), artifact.details["float_tensors"]
        else:
            self._check_tables(fb, model, graph, ops, artifact)

    @staticmethod
    def _check_tables(fb, model, graph, ops, artifact) -> None:
        """TinyCtr's two tables: INT8 with one scale per row and zero points 0, read by EMBEDDING_LOOKUP v4."""
        assert ops.count("EMBEDDING_LOOKUP") == 2
        lookups = [op for op in graph.operators
                   if model.operatorCodes[op.opcodeIndex].builtinCode == fb.BuiltinOperator.EMBEDDING_LOOKUP]
        for op in lookups:
            table = graph.tensors[op.inputs[1]]
            assert table.type == fb.TensorType.INT8
            assert len(table.quantization.scale) == table.shape[0] and not any(table.quantization.zeroPoint)
            assert model.operatorCodes[op.opcodeIndex].version == PER_ROW_VERSION
        assert sorted(tuple(graph.tensors[op.inputs[1]].shape) for op in lookups) == [(48, 16), (64, 16)]
        reported = {table["table"]: table for table in artifact.details["embedding_tables"]}
        assert set(reported) == {"user.weight", "item.weight"}, "tables named after the model's parameters"
        assert all(table["bits"] == 8 and table["scales"] == "per row" for table in reported.values())
