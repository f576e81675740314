"""First-divergence localization for a .tflite artifact: its per-layer tensors in LiteRT against the float torch
module it was built from.

The artifact runs in ai-edge-litert's interpreter with `experimental_preserve_all_tensors`, which keeps every
intermediate tensor readable after the call. LiteRT then applies no default delegate: the layers are computed
by its builtin integer kernels, not by the XNNPACK delegate the verification used, so the record's note gives
how far that run's outputs are from the verified ones. Each CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED /
TRANSPOSE_CONV output (after its fused activation, or after a RELU/RELU6 op that alone consumes it) is
dequantized with the tensor's scale and zero point, moved from NHWC to NCHW, and compared with the float
module's conv/linear output after the BatchNorm and activation the converter folds into it
(edgepack.evaluation.divergence_torch). litert-torch's tensor names carry no module paths, so layers are
paired by the order of their compute ops; a count or shape that differs stops the pairing with a note.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from edgepack.evaluation.divergence import DivergenceRecord
from edgepack.evaluation.divergence_torch import compare_layers, float_layers, output_gap

TFLITE_COMPUTE = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "CONV_3D")
TFLITE_ACTIVATIONS = ("RELU", "RELU6", "RELU_N1_TO_1", "RELU_0_TO_1")
COMPARED = ("LiteRT builtin kernels (intermediates preserved; no XNNPACK delegate) vs the float torch module; each "
            "conv/fully-connected output after its fused activation, dequantized, NHWC moved to NCHW")


def _probe_tensors(ops: list[dict]) -> list[tuple[str, int]]:
    """(op name, index of the tensor to read) for every compute op in execution order, after a sole activation."""
    consumers: dict[int, list[dict]] = {}
    for op in ops:
        for index in op["inputs"]:
            consumers.setdefault(int(index), []).append(op)
    probes = []
    for op in ops:
        if op["op_name"] not in TFLITE_COMPUTE:
            continue
        tensor = int(op["outputs"][0])
        followers = consumers.get(tensor, [])
        if len(followers) == 1 and followers[0]["op_name"] in TFLITE_ACTIVATIONS:
            tensor = int(followers[0]["outputs"][0])
        probes.append((f"{op['op_name']}#{op['index']}", tensor))
    return probes


def _as_float(values: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    values = values.astype(np.float64)
    return (values - zero_point) * scale if scale else values


def _in_torch_layout(values: np.ndarray, shape: tuple[int, ...]) -> Optional[np.ndarray]:
    if values.shape == shape:
        return values
    if values.ndim == 4 and values.transpose(0, 3, 1, 2).shape == shape:
        return values.transpose(0, 3, 1, 2)
    return None


def tflite_layer_outputs(path: Path, feeds: dict[str, np.ndarray], *, threads: int
                         ) -> tuple[list[tuple[str, np.ndarray]], list[np.ndarray], list[np.ndarray]]:
    """Every compute layer's dequantized output (in the artifact's layout), the model outputs of that run, and the
    verification runner's outputs (XNNPACK delegate), on `feeds`.

    Inputs are prepared by the verification runner (layout, int8 quantization); the artifact's fixed batch is fed
    in chunks, the last one padded, as that runner does."""
    from edgepack.targets.arm_tflite.runner import TfliteRunner, interpreter_class

    verifier = TfliteRunner(path, threads=threads)
    with warnings.catch_warnings():  # "intended for debugging purposes only": that is what this is
        warnings.simplefilter("ignore", UserWarning)
        interpreter = interpreter_class()(model_path=str(path), num_threads=threads,
                                          experimental_preserve_all_tensors=True)
    probes = _probe_tensors(interpreter._get_ops_details())  # private in both interpreters; no public op list
    interpreter.allocate_tensors()
    details = {detail["index"]: detail for detail in interpreter.get_tensor_details()}
    signature = interpreter.get_signature_runner()
    outputs = signature.get_output_details()
    count = len(next(iter(feeds.values())))
    layer_parts: list[list[np.ndarray]] = [[] for _ in probes]
    output_parts: list[list[np.ndarray]] = [[] for _ in outputs]
    for start in range(0, count, verifier.fixed_batch):
        rows = np.arange(start, min(start + verifier.fixed_batch, count))
        padded = np.resize(rows, verifier.fixed_batch)
        result = signature(**{name: verifier._prepare(name, feeds[name][padded]) for name in verifier.input_names})
        for parts, (_, index) in zip(layer_parts, probes):
            parts.append(_as_float(interpreter.get_tensor(index)[:len(rows)], details[index]))
        for parts, (name, detail) in zip(output_parts, outputs.items()):
            parts.append(_as_float(result[name][:len(rows)], detail))
    return ([(name, np.concatenate(parts)) for (name, _), parts in zip(probes, layer_parts)],
            [np.concatenate(parts) for parts in output_parts], verifier(feeds))


def tflite_divergence(module, artifact: Path, feeds: dict[str, np.ndarray], input_names: list[str], *, threads: int,
                      label: str = "") -> DivergenceRecord:
    """Per-layer error of the .tflite `artifact` against the float torch `module` on `feeds`, first jump named;
    the note says how closely the run that preserves intermediates reproduces the verified (XNNPACK) run."""
    reference = float_layers(module, feeds, input_names)
    layers, outputs, verified = tflite_layer_outputs(artifact, feeds, threads=threads)
    return compare_layers(reference, layers, label=label or artifact.name, samples=len(next(iter(feeds.values()))),
                          convert=_in_torch_layout, compared=COMPARED,
                          note=output_gap(outputs, verified, "verified (XNNPACK) run"))
