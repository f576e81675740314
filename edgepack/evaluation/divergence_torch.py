"""The float side of first-divergence localization for artifacts built from a torch module (arm-tflite,
arm-xnnpack): every conv/linear layer's output after the BatchNorm and activation that consume it alone
(what a converter folds and fuses into the layer), read from the float module exported by torch.export;
and the pairing of those layers with an artifact's, by order, into a DivergenceRecord.

Layers come in the exported graph's order and are named by the torch module that computes them
(the graph's `nn_module_stack`), the same names `float_modules` and the ONNX localization use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgepack.evaluation.divergence import DivergenceRecord, LayerError, first_jump
from edgepack.model.tensors import as_tensors
from edgepack.quantization.pt2e import FOLLOWERS

COMPUTE_OPS = ("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "linear")


def op_name(node) -> str:
    """The bare aten name of a call_function node (`conv2d` for aten.conv2d.default), else ''."""
    return getattr(node.target, "__name__", "").split(".")[0] if node.op == "call_function" else ""


def module_path(node) -> str:
    """Qualified name of the innermost torch module that computed `node` ('' at top level)."""
    stack = node.meta.get("nn_module_stack") or {}
    return str(list(stack.values())[-1][0]) if stack else ""


def after_followers(node, followers: tuple[str, ...] = FOLLOWERS):
    """The last node of the chain of single-consumer BatchNorm/activation nodes that starts at `node`."""
    while len(node.users) == 1:
        follower = next(iter(node.users))
        if op_name(follower) not in followers:
            break
        node = follower
    return node


@dataclass(frozen=True)
class FloatLayer:
    """One conv/linear layer of the float model: its module, the graph node read, its output on the samples."""

    module: str
    node: str
    values: np.ndarray


def compute_layers(graph) -> list[tuple[str, Any]]:
    """(module name, node whose output is the layer's output) for every conv/linear node, in graph order."""
    return [(module_path(node) or node.name, after_followers(node)) for node in graph.nodes
            if op_name(node) in COMPUTE_OPS]


def float_layers(module, feeds: dict[str, np.ndarray], input_names: list[str]) -> list[FloatLayer]:
    """Every conv/linear layer's output (after its BatchNorm/activation) of the float `module` on `feeds`."""
    import torch

    example = as_tensors(feeds, input_names)
    graph_module = torch.export.export(module.eval(), example, strict=False).module()
    layers = compute_layers(graph_module.graph)
    wanted = {node: name for name, node in layers}
    captured: dict[Any, np.ndarray] = {}

    class Capture(torch.fx.Interpreter):
        def run_node(self, node):
            result = super().run_node(node)
            if node in wanted:
                captured[node] = result.detach().cpu().numpy().astype(np.float64)
            return result

    with torch.no_grad():
        Capture(graph_module).run(*example)
    return [FloatLayer(module=name, node=node.name, values=captured[node]) for name, node in layers]


def relative_error(values: np.ndarray, expected: np.ndarray) -> float:
    """Relative L2 distance of `values` from `expected`."""
    return float(np.linalg.norm(values - expected) / max(float(np.linalg.norm(expected)), 1e-12))


def compare_layers(reference: list[FloatLayer], artifact: list[tuple[str, np.ndarray]], *, label: str, samples: int,
                   convert, compared: str, note: str = "") -> DivergenceRecord:
    """Pair float and artifact layers by order, `convert` each artifact tensor to the float one's layout (None
    when it cannot), and name the first jump; a count or shape mismatch leaves a note instead."""
    if len(reference) != len(artifact) or not reference:
        return DivergenceRecord(artifact=label, samples=samples, layers=[],
                                note=f"not localized: the artifact has {len(artifact)} compute layers, the float "
                                     f"model {len(reference)}, so they cannot be paired", compared=compared)
    layers: list[LayerError] = []
    for float_layer, (node, values) in zip(reference, artifact):
        converted = convert(values, float_layer.values.shape)
        if converted is None:
            return DivergenceRecord(artifact=label, samples=samples, layers=layers, compared=compared,
                                    first=first_jump([layer.relative_error for layer in layers]),
                                    note=f"stopped at {node} ({float_layer.module}): shapes differ "
                                         f"({list(values.shape)} vs {list(float_layer.values.shape)})")
        layers.append(LayerError(module=float_layer.module, node=node,
                                 relative_error=relative_error(converted, float_layer.values)))
    return DivergenceRecord(artifact=label, samples=samples, layers=layers, compared=compared, note=note,
                            first=first_jump([layer.relative_error for layer in layers]))


def output_gap(outputs: list[np.ndarray], reference: list[np.ndarray], what: str) -> str:
    """A note: the largest absolute difference between the outputs of the localization run and `what`."""
    gap = max(float(np.max(np.abs(np.asarray(got, dtype=np.float64) - np.asarray(want, dtype=np.float64)),
                           initial=0.0)) for got, want in zip(outputs, reference))
    return f"outputs of this run vs the {what} on the same samples: max |difference| {gap:.3g}"
