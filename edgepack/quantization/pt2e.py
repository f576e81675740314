"""PT2E quantization shared by the ARM targets (arm-tflite, arm-xnnpack): activation observers for the
recipe's calibration method, calibration of a prepared graph, example batches."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from edgepack.errors import ExportError


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


def calibrated_pt2e(module, example: tuple, calibration, quantizer, *, fold_quantize: bool):
    """Export `module` with a dynamic batch, insert observers, run the calibration set, convert.

    Calibration batches come in the set's batch size, hence the dynamic batch dimension here
    even when the final artifact has a fixed batch.
    """
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    batch = torch.export.Dim("batch", min=1, max=65536)
    dynamic = tuple({0: batch} for _ in example)
    graph = torch.export.export(module.eval(), example, dynamic_shapes=dynamic).module()
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for feeds in calibration.batches():
            prepared(*(torch.from_numpy(array) for array in feeds.values()))
    # litert-torch's converter wants explicit weight Q/DQ (fold_quantize=False); ExecuTorch wants them
    # folded (it has no out-variant for quantize_per_channel and fails to_executorch otherwise).
    return convert_pt2e(prepared, fold_quantize=fold_quantize)


def example_batch(calibration, names: list[str], size: int) -> tuple:
    """The first `size` calibration samples as torch tensors, in input order (repeated if the set is smaller)."""
    from edgepack.model.tensors import as_tensors

    rows = np.resize(np.arange(calibration.num_samples), size)
    return as_tensors({name: calibration.arrays[name][rows] for name in names}, names)
