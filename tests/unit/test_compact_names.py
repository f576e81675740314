"""Deployment ONNX files with intermediate tensors renamed t0, t1, ...: same outputs, smaller file."""

from __future__ import annotations

import numpy as np
import onnx

from edgepack.evaluation.runners import OrtRunner
from edgepack.model.onnx_export import strip_debug_info
from tests.helpers import embedding_onnx


def test_intermediate_names_shrink_and_interface_stays(tmp_path):
    path, feeds = embedding_onnx(tmp_path, count=8)
    before = onnx.load(str(path))
    expected = OrtRunner(path, threads=1)(feeds)[0]
    size = path.stat().st_size

    strip_debug_info(path, compact_names=True)

    after = onnx.load(str(path))
    onnx.checker.check_model(after)
    assert path.stat().st_size < size
    assert [v.name for v in after.graph.input] == [v.name for v in before.graph.input]
    assert [v.name for v in after.graph.output] == [v.name for v in before.graph.output]
    assert sorted(i.name for i in after.graph.initializer) == sorted(i.name for i in before.graph.initializer)
    assert [n.name for n in after.graph.node] == [n.name for n in before.graph.node]
    interface = {v.name for v in after.graph.input} | {v.name for v in after.graph.output}
    interface |= {i.name for i in after.graph.initializer}
    inner = [name for node in after.graph.node for name in node.output if name not in interface]
    assert inner and all(name[0] == "t" and name[1:].isdigit() for name in inner)
    assert np.array_equal(OrtRunner(path, threads=1)(feeds)[0], expected)


def test_new_names_never_collide_with_kept_ones():
    from onnx import TensorProto, helper, numpy_helper

    from edgepack.model.onnx_export import compact_value_names

    graph = helper.make_graph(
        [helper.make_node("Add", ["t0", "t1"], ["sum"]), helper.make_node("Relu", ["sum"], ["t2_out"]),
         helper.make_node("Neg", ["t2_out"], ["y"])], "g",
        [helper.make_tensor_value_info("t0", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [numpy_helper.from_array(np.ones(2, np.float32), "t1")])
    assert compact_value_names(graph) == 2
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    produced = [name for node in graph.node for name in node.output]
    assert produced[:2] == ["t2", "t3"] and produced[2] == "y"  # t0 (input) and t1 (initializer) skipped
    import onnxruntime

    out = onnxruntime.InferenceSession(model.SerializeToString())
    assert np.array_equal(out.run(None, {"t0": np.array([1.0, -3.0], np.float32)})[0],
                          np.array([-2.0, 0.0], np.float32))
