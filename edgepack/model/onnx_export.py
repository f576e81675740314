"""Float ONNX export with a dynamic batch axis, checked against PyTorch before anything else uses it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch

from edgepack.capture import quiet_python_output
from edgepack.errors import ExportError, describe
from edgepack.evaluation.runners import OrtRunner, TorchRunner
from edgepack.model.tensors import as_tensors

OPSET = 20
ATOL = 1e-4
LARGE_OUTPUT = 1000.0  # beyond this, large fp32 differences usually mean unnormalized inputs
RTOL = 1e-3


def export_float_onnx(module: torch.nn.Module, inputs, example: dict[str, np.ndarray], path: Path) -> Path:
    """Export `module` to a single-file fp32 ONNX model whose batch dimension is symbolic."""
    names = [spec.name for spec in inputs]
    args = as_tensors(example, names)
    try:
        with torch.no_grad():
            module.eval()(*args)
    except Exception as exc:
        shapes = ", ".join(f"{name} {list(arg.shape)} {str(arg.dtype).replace('torch.', '')}"
                           for name, arg in zip(names, args))
        raise ExportError(f"the model fails on inputs as the recipe declares them ({shapes}): "
                          f"{describe(exc)}") from exc
    batch = torch.export.Dim("batch", min=1, max=65536)
    dynamic_shapes = tuple({0: batch} for _ in names)
    try:
        with quiet_python_output("torch"):
            program = torch.onnx.export(
                module.eval(), args, dynamo=True, input_names=names, output_names=["output"],
                dynamic_shapes=dynamic_shapes, opset_version=OPSET, optimize=True, verbose=False,
            )
            if program is None:
                raise ExportError("torch.onnx.export returned no program")
            program.save(str(path), external_data=False)
    except Exception as exc:
        root: BaseException = exc
        while root.__cause__ is not None:
            root = root.__cause__
        first_line = (str(root).strip().splitlines() or [""])[0]
        raise ExportError(f"ONNX export failed: {type(root).__name__}: {first_line}") from exc
    strip_debug_info(path)
    onnx.checker.check_model(str(path))
    return path


def strip_debug_info(path: Path, *, compact_names: bool = False) -> None:
    """Drop what only debugging needs from a deployment model: the exporter's per-node metadata
    (source stack traces, original node names), doc strings and intermediate shape annotations.
    Runtimes do not read them; on the pruned example they were 10% of the INT8 file.

    With `compact_names` the intermediate tensors are renamed t0, t1, ... as well (see
    `compact_value_names`)."""
    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del model.graph.value_info[:]
    if compact_names:
        compact_value_names(model.graph)
    onnx.save(model, str(path))


def compact_value_names(graph: onnx.GraphProto) -> int:
    """Rename the tensors that flow between nodes to t0, t1, ... in place; return how many.

    The quantizer names them after their producer ("/mlp/mlp.0/Gemm_output_0_QuantizeLinear_Output"),
    about 2% of the recommender's INT8 file. Graph inputs and outputs, initializers (the model's
    parameters, named in the manifest) and node names (the float-node list, profiles) are kept.
    Subgraphs (If/Loop bodies) may read outer tensors by name, so a graph with any is left alone."""
    if any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for node in graph.node for attr in node.attribute):
        return 0
    kept = {value.name for value in graph.input} | {value.name for value in graph.output}
    kept |= {init.name for init in graph.initializer} | {init.values.name for init in graph.sparse_initializer}
    kept |= {""}
    renamed: dict[str, str] = {}
    counter = iter(range(1 << 62))

    def fresh() -> str:
        # t0, t1, ... skipping any name the graph keeps (an input or initializer may be called "t3")
        return next(candidate for candidate in (f"t{index}" for index in counter) if candidate not in kept)

    def short(name: str) -> str:
        if name in kept:
            return name
        if name not in renamed:
            renamed[name] = fresh()
        return renamed[name]

    for node in graph.node:
        node.input[:] = [short(name) for name in node.input]
        node.output[:] = [short(name) for name in node.output]
    return len(renamed)


def check_against_torch(module: torch.nn.Module, path: Path, inputs, batch: dict[str, np.ndarray],
                        *, threads: int) -> float:
    """Run the same batch through PyTorch and the ONNX model; fail with the max difference if they differ."""
    names = [spec.name for spec in inputs]
    expected = TorchRunner(module, names, threads)(batch)
    actual = OrtRunner(path, threads=threads)(batch)
    worst = 0.0
    for index, (want, got) in enumerate(zip(expected, actual)):
        if want.shape != got.shape:
            raise ExportError(f"ONNX output {index} has shape {list(got.shape)}, PyTorch gives {list(want.shape)}")
        difference = float(np.max(np.abs(want.astype(np.float64) - got)))
        worst = max(worst, difference)
        # fp32 sums in another order differ in proportion to the output's scale, not by a fixed amount:
        # the absolute part of the tolerance grows with the largest output.
        scale = float(np.max(np.abs(want))) if want.size else 0.0
        atol = ATOL * max(1.0, scale)
        if not np.allclose(got, want, atol=atol, rtol=RTOL):
            hint = (f"; the outputs reach {scale:.4g}, far beyond usual logits: are the inputs normalized as in "
                    "training?" if scale > LARGE_OUTPUT else "")
            raise ExportError(f"fp32 ONNX does not match PyTorch on output {index}: max abs difference "
                              f"{difference:.3g} (tolerance atol={atol:.3g}, rtol={RTOL}){hint}")
    return worst
