"""Flatbuffer surgery on a .tflite file: float32 I/O around a full-integer model."""

from __future__ import annotations

from pathlib import Path

from edgepack.targets.arm_tflite.tables import write_tflite


def add_float_io(path: Path) -> None:
    """Rewrite a full-integer .tflite to float32 I/O: a QUANTIZE op after each int8 input and a
    DEQUANTIZE op before each int8 output.

    litert-torch 0.10 always folds the boundary Q/DQ into int8 I/O and has no flag against it (a
    float op placed in front of the model was quantized too), so the boundary ops are added here.
    """
    from ai_edge_litert import schema_py_generated as fb

    model = fb.ModelT.InitFromPackedBuf(path.read_bytes(), 0)
    graph = model.subgraphs[0]

    def opcode(code: int) -> int:
        for index, existing in enumerate(model.operatorCodes):
            if max(existing.builtinCode, existing.deprecatedBuiltinCode) == code:
                return index
        new = fb.OperatorCodeT()
        new.builtinCode, new.deprecatedBuiltinCode, new.version = code, code, 1
        model.operatorCodes.append(new)
        return len(model.operatorCodes) - 1

    def float_twin(index: int) -> int:
        original = graph.tensors[index]
        twin = fb.TensorT()
        twin.shape, twin.shapeSignature = original.shape, original.shapeSignature
        twin.type, twin.name = fb.TensorType.FLOAT32, original.name
        original.name = (original.name or b"") + b"_int8"
        model.buffers.append(fb.BufferT())
        twin.buffer = len(model.buffers) - 1
        graph.tensors.append(twin)
        return len(graph.tensors) - 1

    def boundary_op(code: int, source: int, target: int):
        op = fb.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = opcode(code), [source], [target]
        return op

    remap: dict[int, int] = {}
    # numpy views are read-only
    graph.inputs, graph.outputs = [int(i) for i in graph.inputs], [int(i) for i in graph.outputs]
    for position, index in enumerate(graph.inputs):
        if graph.tensors[index].type == fb.TensorType.INT8:
            remap[index] = float_twin(index)
            graph.operators.insert(0, boundary_op(fb.BuiltinOperator.QUANTIZE, remap[index], index))
            graph.inputs[position] = remap[index]
    for position, index in enumerate(graph.outputs):
        if graph.tensors[index].type == fb.TensorType.INT8:
            remap[index] = float_twin(index)
            graph.operators.append(boundary_op(fb.BuiltinOperator.DEQUANTIZE, index, remap[index]))
            graph.outputs[position] = remap[index]
    for signature in model.signatureDefs or []:
        for entry in list(signature.inputs or []) + list(signature.outputs or []):
            entry.tensorIndex = remap.get(entry.tensorIndex, entry.tensorIndex)
    write_tflite(model, path)
