"""PT2E quantization shared by the ARM targets (arm-tflite, arm-xnnpack): activation observers for the
recipe's calibration method, own observers for ReLU6 after conv/linear, calibration of a prepared
graph, example batches."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Optional

import numpy as np

from edgepack.errors import ExportError, describe
from edgepack.model.tensors import as_tensors
from edgepack.quantization.integer_constants import restore_integer_constants


@lru_cache(maxsize=1)
def _percentile_observer_class():
    """A HistogramObserver whose range is the p-th percentile of |x| instead of its L2-error search.

    Built lazily so this module imports without torchao (check_available must be able to name the extra).
    """
    import torch
    from torchao.quantization.pt2e.observer import HistogramObserver

    class PercentileObserver(HistogramObserver):
        def __init__(self, percentile: float = 99.999, **kwargs):
            super().__init__(**kwargs)
            self.percentile = percentile

        def _non_linear_param_search(self):
            # Bin centres of the value histogram, weighted by counts, give the distribution of |x|.
            edges = torch.linspace(float(self.min_val), float(self.max_val), self.bins + 1)
            centres = ((edges[:-1] + edges[1:]) / 2).abs()
            order = torch.argsort(centres)
            cumulative = torch.cumsum(self.histogram[order], 0)
            total = float(cumulative[-1]) if len(cumulative) else 0.0
            if total <= 0:
                return self.min_val, self.max_val
            index = int(torch.searchsorted(cumulative, torch.tensor(total * self.percentile / 100.0)))
            threshold = float(centres[order][min(index, len(order) - 1)])
            low = torch.clamp(self.min_val, min=-threshold)
            high = torch.clamp(self.max_val, max=threshold)
            return low, high

    return PercentileObserver


def activation_observer(method):
    """Observer constructor honouring the recipe's calibration method (minmax or percentile)."""
    from torchao.quantization.pt2e.observer import MinMaxObserver

    if method.name == "minmax":
        return MinMaxObserver.with_args(eps=2**-12)
    if method.name == "percentile":
        return _percentile_observer_class().with_args(percentile=method.percentile, eps=2**-12)
    raise ExportError(f"calibration method '{method.name}' is not available for PT2E targets")


def with_activation_observer(config, method):
    """A copy of a PT2E QuantizationConfig whose activation observers follow `method`.

    Both quantizers default to torchao's HistogramObserver, which picks an L2-optimal range: that
    is neither MinMax nor Percentile, so the recipe's method would silently not be honoured.
    """
    import dataclasses

    observer = activation_observer(method)
    replace = {}
    for field in ("input_activation", "output_activation"):
        spec = getattr(config, field)
        if spec is not None:
            replace[field] = dataclasses.replace(spec, observer_or_fake_quant_ctr=observer)
    return dataclasses.replace(config, **replace)


def _is_relu6(node) -> bool:
    """A clamp whose output range is narrower than its input's: hardtanh (F.relu6, nn.ReLU6, nn.Hardtanh)
    or clamp with a lower bound of 0 (ReLU6 written as `x.clamp(0, 6)`)."""
    import torch

    aten = torch.ops.aten
    if node.target in (aten.hardtanh.default, aten.hardtanh_.default):
        return True
    if node.target in (aten.clamp.default, aten.clamp_.default):
        low = node.args[1] if len(node.args) > 1 else node.kwargs.get("min")
        return low == 0
    return False


def separate_activation_ranges(graph, activation_qspec) -> int:
    """Give each ReLU6 that follows a conv/linear its own output observer; return how many were re-annotated.

    ExecuTorch's XNNPACKQuantizer and litert-torch's PT2EQuantizer fuse conv/linear with `relu` only.
    For conv → hardtanh they observe the conv output, i.e. the pre-activation range, and hardtanh
    shares that observer, so its [0, 6] output is quantized on a range that can be many times wider.
    This annotates conv → ReLU6 the way they annotate conv → relu: no observer between the two,
    one observer on the clamp's output.
    """
    import torch
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    aten = torch.ops.aten
    producers = (aten.conv1d.default, aten.conv2d.default, aten.linear.default)
    fixed = 0
    for node in graph.graph.nodes:
        if node.op != "call_function" or not _is_relu6(node):
            continue
        producer = node.args[0]
        if not isinstance(producer, torch.fx.Node) or producer.target not in producers or len(producer.users) != 1:
            continue
        annotation = producer.meta.get("quantization_annotation")
        if annotation is None or annotation.output_qspec is None:
            continue
        annotation.output_qspec = None
        node.meta["quantization_annotation"] = QuantizationAnnotation(output_qspec=activation_qspec, _annotated=True)
        fixed += 1
    return fixed


FOLLOWERS = ("batch_norm", "_native_batch_norm_legit_no_training", "relu", "relu_", "hardtanh", "hardtanh_",
             "clamp", "clamp_", "getitem")


def _module_path(node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return str(list(stack.values())[-1][0]) if stack else ""


def keep_modules_float(graph, modules: tuple[str, ...]) -> dict[str, int]:
    """Remove the quantization annotations of every node computed inside `modules` (qualified torch
    names) and of the BatchNorm/activation chain that consumes a kept conv/linear alone, so they stay
    float; return how many nodes each module lost. A module that matches no node is an error."""
    import torch

    def inside(path: str, module: str) -> bool:
        return path == module or path.startswith(module + ".")

    counts = dict.fromkeys(modules, 0)
    for node in graph.graph.nodes:
        if node.op != "call_function":
            continue
        owner = next((module for module in modules if inside(_module_path(node), module)), None)
        if owner is None:
            continue
        chain = [node]
        while len(chain[-1].users) == 1:
            follower = next(iter(chain[-1].users))
            name = getattr(follower.target, "__name__", "").split(".")[0]
            if follower.op != "call_function" or name not in FOLLOWERS:
                break
            chain.append(follower)
        for item in chain:
            if not isinstance(item, torch.fx.Node):
                continue
            item.meta.pop("quantization_annotation", None)
        counts[owner] += 1
    missing = [module for module, count in counts.items() if count == 0]
    if missing:
        raise ExportError(f"float_modules: no operation of the exported model belongs to {', '.join(missing)}")
    return counts


@lru_cache(maxsize=1)
def _separating_quantizer_class():
    """A Quantizer that runs another one, then `separate_activation_ranges` (built lazily: torchao is optional)."""
    from torchao.quantization.pt2e.quantizer import Quantizer

    class SeparatingQuantizer(Quantizer):
        def __init__(self, inner, activation_qspec, *, separate: bool = True, float_modules: tuple[str, ...] = ()):
            super().__init__()
            self.inner = inner
            self.activation_qspec = activation_qspec
            self.separate = separate
            self.float_modules = float_modules
            self.fixed = 0

        def transform_for_annotation(self, model):
            model = self.inner.transform_for_annotation(model)
            restore_integer_constants(model)  # edgepack.quantization.integer_constants: index arithmetic
            return model

        def annotate(self, model):
            model = self.inner.annotate(model)
            if self.separate:
                self.fixed = separate_activation_ranges(model, self.activation_qspec)
            if self.float_modules:
                keep_modules_float(model, self.float_modules)
            return model

        def validate(self, model):
            self.inner.validate(model)

        def prepare_obs_or_fq_callback(self, model, edge_or_node_to_obs_or_fq):
            self.inner.prepare_obs_or_fq_callback(model, edge_or_node_to_obs_or_fq)

    return SeparatingQuantizer


@dataclass(frozen=True)
class QuantizedGraph:
    """A converted PT2E graph and how it was obtained (for the artifact's details)."""

    module: Any  # torch.fx.GraphModule with quantize/dequantize nodes
    export_mode: str  # "strict" or "non-strict"
    activation_annotations_fixed: int  # ReLU6 after conv/linear given their own observer
    export_note: Optional[str] = None  # why the export mode differs from the one asked for

    def details(self) -> dict[str, Any]:
        """The facts a manifest records about this quantization."""
        facts = {"export_mode": self.export_mode, "activation_annotations_fixed": self.activation_annotations_fixed}
        return facts | ({"export_note": self.export_note} if self.export_note else {})


def _export(module, example: tuple, *, strict: bool):
    """torch.export with a dynamic batch; (graph module, mode used, note when strict fell back to non-strict)."""
    import torch

    batch = torch.export.Dim("batch", min=1, max=65536)
    dynamic = tuple({0: batch} for _ in example)
    note = None
    if strict:
        try:
            return torch.export.export(module, example, dynamic_shapes=dynamic, strict=True).module(), "strict", None
        except Exception as exc:  # dynamo raises many types (data-dependent control flow, unsupported ops)
            note = f"strict export failed, exported non-strict instead: {describe(exc)}"
    return torch.export.export(module, example, dynamic_shapes=dynamic).module(), "non-strict", note


def calibrated_pt2e(module, example: tuple, calibration, quantizer, *, fold_quantize: bool, strict: bool = False,
                    separate_relu6: bool = True, float_modules: tuple[str, ...] = ()) -> QuantizedGraph:
    """Export `module` with a dynamic batch, annotate, insert observers, run the calibration set, convert.

    Calibration batches come in the set's batch size, hence the dynamic batch dimension here
    even when the final artifact has a fixed batch. `strict` exports through dynamo, which records
    the `source_fn_stack` some annotators match on; a model it cannot trace is exported non-strict,
    with a note. `separate_relu6` applies `separate_activation_ranges` after the quantizer's annotation;
    `float_modules` are then left unannotated (`keep_modules_float`), so they stay float.
    """
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    graph, mode, note = _export(module.eval(), example, strict=strict)
    separating = _separating_quantizer_class()(quantizer, quantizer.global_config.output_activation,
                                               separate=separate_relu6, float_modules=float_modules)
    prepared = prepare_pt2e(graph, separating)
    with torch.no_grad():
        for feeds in calibration.batches():
            prepared(*as_tensors(feeds, list(feeds)))
    # litert-torch's converter wants explicit weight Q/DQ (fold_quantize=False); ExecuTorch wants them
    # folded (it has no out-variant for quantize_per_channel and fails to_executorch otherwise).
    return QuantizedGraph(module=convert_pt2e(prepared, fold_quantize=fold_quantize), export_mode=mode,
                          activation_annotations_fixed=separating.fixed, export_note=note)


def example_batch(calibration, names: list[str], size: int) -> tuple:
    """The first `size` calibration samples as torch tensors, in input order (repeated if the set is smaller)."""
    rows = np.resize(np.arange(calibration.num_samples), size)
    return as_tensors({name: calibration.arrays[name][rows] for name in names}, names)
