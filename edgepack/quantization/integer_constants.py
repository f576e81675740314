"""Keep integer arithmetic integer through PT2E annotation.

ExecuTorch's XNNPACKQuantizer (and quantizers like it) turn the scalar operand of add/sub/mul into a
float32 tensor constant before annotating, so every such op can carry a quantization spec. On index
arithmetic that breaks the graph: a transformer's mask code computes `arange(L) + offset` and indexes
with the result, which becomes float and fails with "IndexError: tensors used as indices must be
long, int, byte or bool tensors". This pass gives such a constant back the integer dtype of the
other operand when its values are whole numbers."""

from __future__ import annotations

from typing import Any

ARITHMETIC = ("add.Tensor", "sub.Tensor", "mul.Tensor", "add_.Tensor", "sub_.Tensor", "mul_.Tensor")


def _dtype(node: Any):
    value = node.meta.get("val") if hasattr(node, "meta") else None
    return getattr(value, "dtype", None)


def restore_integer_constants(graph_module: Any) -> int:
    """Cast float tensor constants that meet an integer operand in add/sub/mul back to its integer dtype;
    return how many were restored."""
    import torch

    restored = 0
    for node in graph_module.graph.nodes:
        if node.op != "call_function" or not str(node.target).endswith(ARITHMETIC) or len(node.args) < 2:
            continue
        operands = [arg for arg in node.args[:2] if isinstance(arg, torch.fx.Node)]
        integer = next((_dtype(arg) for arg in operands if _dtype(arg) is not None and
                        not _dtype(arg).is_floating_point and _dtype(arg) != torch.bool), None)
        if integer is None:
            continue
        for arg in operands:
            if arg.op != "get_attr" or not isinstance(arg.target, str):
                continue
            constant = getattr(graph_module, arg.target, None)
            if not isinstance(constant, torch.Tensor) or not constant.is_floating_point() or \
                    not torch.equal(constant, constant.round()):
                continue
            setattr(graph_module, arg.target, constant.to(integer))
            if "val" in arg.meta:
                arg.meta["val"] = arg.meta["val"].to(integer)
            restored += 1
    if restored:
        graph_module.recompile()
    return restored
