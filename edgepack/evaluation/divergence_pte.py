"""First-divergence localization for an ExecuTorch .pte artifact (XNNPACK-delegated): per-layer tensors computed by
XNNPACK's kernels against the float torch module the artifact was built from.

Why not the .pte itself: ExecuTorch's ETDump debug output (pybindings `enable_etdump`, `debug_buffer_size`, read
by the Inspector) stores tensors only for the operators the ExecuTorch runtime executes; an XNNPACK delegate call
counts as one. With executorch 1.5.1 here, an artifact's ETDump lists every XNNPACK operator inside the delegate
("Convolution (NHWC, QC8) IGEMM #2") with its timing but no tensor, and tensors only at each DELEGATE_CALL's
inputs and outputs, so its layers cannot be read from the file. What ExecuTorch offers instead is its numerical
debugger's intermediate-output taps (`executorch.devtools.intermediate_output_tap`): chosen graph values become
extra program outputs that survive partitioning, so the delegate itself computes and returns them.

So the quantized graph the artifact is lowered from (the PT2E-converted module, or the torchao-quantized one for
4-bit weights, that the target hands over in `Artifact.lowered_from`: nothing is quantized or calibrated again)
is exported with each conv/linear layer's output tapped where its quantize node stores it (after the BatchNorm
folded into it and its activation), lowered with `XnnpackPartitioner` as the target does, and run by
`executorch.runtime`. The int8 taps are dequantized with
their quantize node's scale and zero point and compared with the float module's layers
(edgepack.evaluation.divergence_torch), paired by order; the note gives how far this program's output is from the
artifact's own on the same samples (0 when the re-lowered program reproduces the artifact).
"""

from __future__ import annotations

import importlib
from typing import Any, Optional

import numpy as np

from edgepack.evaluation.divergence import DivergenceRecord
from edgepack.evaluation.divergence_torch import (
    after_followers,
    compare_layers,
    compute_layers,
    float_layers,
    op_name,
    output_gap,
)
from edgepack.model.tensors import as_tensors

COMPARED = ("XNNPACK kernels via ExecuTorch on the quantized graph the .pte is lowered from (kept by the target's "
            "export), lowered again with XnnpackPartitioner and every conv/linear output tapped as a delegate output, "
            "vs the float torch module; each conv/linear output after its folded BatchNorm and activation, "
            "dequantized")


def _tap_points(graph) -> list[tuple[Any, Optional[tuple[float, int]]]]:
    """(node to tap, (scale, zero point) when it is a quantize node) for every conv/linear layer, in order."""
    points: list[tuple[Any, Optional[tuple[float, int]]]] = []
    for _, node in compute_layers(graph):
        end = after_followers(node)
        users = list(end.users)
        quantize = users[0] if len(users) == 1 and op_name(users[0]) == "quantize_per_tensor" else None
        if quantize is not None and all(isinstance(arg, (int, float)) for arg in quantize.args[1:3]):
            points.append((quantize, (float(quantize.args[1]), int(quantize.args[2]))))
        else:  # a layer kept float (float_modules) or dynamically quantized: its float output
            points.append((end, None))
    return points


def xnnpack_layer_outputs(quantized_module, feeds: dict[str, np.ndarray], input_names: list[str]
                          ) -> tuple[list[tuple[str, np.ndarray]], list[np.ndarray]]:
    """Every conv/linear layer's output as XNNPACK computes it in the lowered `quantized_module`, dequantized,
    and the program's own outputs, on `feeds` (one call, a static batch of all samples)."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.devtools.intermediate_output_tap import FULL_TENSOR, strip_taps_, tap_intermediate_outputs_
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.runtime import Runtime

    example = as_tensors(feeds, input_names)
    program = torch.export.export(quantized_module, example, strict=False)
    points = _tap_points(program.graph_module.graph)
    tapped = {node for node, _ in points}
    program, specs = tap_intermediate_outputs_(program, [(lambda node: node in tapped, FULL_TENSOR)])
    # Per-row embedding tables (torchao dequantize_affine -> embedding) stay outside XNNPACK; as in the target's
    # export, the fusion pass turns them into embedding_byte / embedding_4bit (else: no out variant)
    tables = any(op_name(node) == "embedding" and isinstance(node.args[0], torch.fx.Node)
                 and op_name(node.args[0]) == "dequantize_affine" for node in program.graph.nodes)
    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    strip_taps_(edge)
    # the loaded program reads this memory: keep a reference while it runs
    buffer = edge.to_executorch(ExecutorchBackendConfig(do_quant_fusion_and_const_prop=tables)).buffer
    importlib.import_module("executorch.kernels.quantized")  # registers embedding_byte in the runtime
    method = Runtime.get().load_program(buffer).load_method("forward")
    values = [output.numpy().copy() for output in method.execute(list(example))]
    output_of = {spec.node_name: spec.output_index for spec in specs}
    layers: list[tuple[str, np.ndarray]] = []
    for node, quantization in points:
        value = values[output_of[node.name]].astype(np.float64)
        if quantization is not None:
            value = (value - quantization[1]) * quantization[0]
        layers.append((node.name, value))
    return layers, values[:min(output_of.values())]


def pte_divergence(module, quantized_module, feeds: dict[str, np.ndarray], input_names: list[str], *,
                   verified_outputs: Optional[list[np.ndarray]] = None, label: str = "model.int8.pte"
                   ) -> DivergenceRecord:
    """Per-layer error of `quantized_module` (the graph a .pte is lowered from, `Artifact.lowered_from`) run by
    XNNPACK through ExecuTorch, against the float `module` on `feeds`, first jump named.

    `verified_outputs` (the artifact's outputs on `feeds`) let the note say whether this program reproduces it."""
    reference = float_layers(module, feeds, input_names)
    layers, outputs = xnnpack_layer_outputs(quantized_module, feeds, input_names)
    note = output_gap(outputs, verified_outputs, "artifact's") if verified_outputs is not None else ""
    return compare_layers(reference, layers, label=label, samples=len(next(iter(feeds.values()))),
                          convert=lambda values, shape: values if values.shape == shape else None,
                          compared=COMPARED, note=note)

