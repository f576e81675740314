"""Activation ranges from calibration data, computed with onnxruntime's calibrators.

Every method goes through the same path: a calibrator collects statistics, we turn them into
ranges, and the quantizer reads them back from a calibration cache. That keeps each method
honest: Entropy gets the histogram resolution it asks for instead of onnxruntime's 128/128
default (where it collapses to MinMax).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgepack.calibration.dataset import SampleSet
from edgepack.calibration.methods import Entropy, MinMax, Percentile, PerTensorMse
from edgepack.errors import CalibrationError, MissingDependencyError, describe

if TYPE_CHECKING:
    import onnx


def ort_method(method):
    """The onnxruntime CalibrationMethod matching one of our method configs."""
    from onnxruntime.quantization import CalibrationMethod

    # PerTensorMse collects the same real-valued histograms as Percentile, then picks its own ranges
    return {MinMax: CalibrationMethod.MinMax, Percentile: CalibrationMethod.Percentile,
            Entropy: CalibrationMethod.Entropy, PerTensorMse: CalibrationMethod.Percentile}[type(method)]


def calibrator_options(method) -> dict:
    """Options passed to onnxruntime's create_calibrator for this method."""
    if isinstance(method, Percentile):
        return {"percentile": method.percentile, "symmetric": False}
    if isinstance(method, Entropy):
        return {"num_bins": method.num_bins, "num_quantized_bins": method.num_quantized_bins, "symmetric": False}
    if isinstance(method, PerTensorMse):
        return {"num_bins": method.num_bins, "symmetric": False}
    return {}


@dataclass(frozen=True)
class ActivationGrid:
    """The integer grid onnxruntime maps an activation range onto (quant_utils.compute_scale_zp)."""

    qmin: int
    qmax: int
    symmetric: bool

    @classmethod
    def of(cls, activation_type: str, symmetric: bool) -> ActivationGrid:
        """The grid of `activation_type` ('uint8' or 'int8'); symmetric int8 leaves out -128 as onnxruntime does."""
        if activation_type == "uint8":
            return cls(0, 255, symmetric)
        return cls(-127 if symmetric else -128, 127, symmetric)

    def describe(self) -> str:
        """For instance 'uint8 asymmetric [0, 255]'."""
        kind = "uint8" if self.qmin >= 0 else "int8"
        return f"{kind} {'symmetric' if self.symmetric else 'asymmetric'} [{self.qmin}, {self.qmax}]"

    def fake_quantize(self, values: np.ndarray, low: float, high: float) -> np.ndarray:
        """`values` quantized and dequantized with the scale and zero point onnxruntime derives from (low, high)."""
        low, high = min(low, 0.0), max(high, 0.0)
        if self.symmetric:
            high = max(-low, high)
            low = -high
        scale = (high - low) / (self.qmax - self.qmin)
        if scale <= np.finfo(np.float32).tiny:
            return np.zeros_like(values)
        zero = round((self.qmin + self.qmax) / 2.0) if self.symmetric else round(self.qmin - low / scale)
        scale = float(np.float32(scale))  # the model stores a float32 scale; the zero point comes from the exact one
        return (np.clip(np.round(values / scale) + zero, self.qmin, self.qmax) - zero) * scale


SUBPOINTS = 16  # points per histogram bin at which the quantization error is evaluated (mass spread evenly)


def _percentile_ranges(hist: np.ndarray, edges: np.ndarray, percentiles: np.ndarray,
                       symmetric: bool) -> list[tuple[float, float]]:
    """onnxruntime's percentile range of a real-valued histogram (edges symmetric about 0) for each of
    `percentiles`, all from one cumulative sum: both tails cut by (100 - p) / 200 for an asymmetric grid; for a
    symmetric one, |x| cut at p (the grid only sees max |x|)."""
    if symmetric:
        half = len(hist) // 2
        folded = hist[half:] + hist[:half][::-1]
        cdf = np.cumsum(folded) / folded.sum()
        bounds = edges[half:][np.searchsorted(cdf, percentiles / 100.0)]
        return [(-float(bound), float(bound)) for bound in bounds]
    cdf = np.cumsum(hist) / hist.sum()
    cuts = (100.0 - percentiles) / 200.0
    lows, highs = edges[np.searchsorted(cdf, cuts)], edges[np.searchsorted(cdf, 1.0 - cuts)]
    return [(float(lo), float(hi)) for lo, hi in zip(lows, highs)]


def mse_choice(hist: np.ndarray, edges: np.ndarray, low: float, high: float,
               grid: ActivationGrid) -> tuple[float, tuple[float, float], list[float]]:
    """(chosen candidate, its range, the expected squared error of every candidate) for one tensor's
    histogram, observed min `low` and max `high`. Candidates are PerTensorMse.CANDIDATES (100 is minmax);
    ties go to the earlier, wider one."""
    hist = hist.astype(np.float64)
    if hist.sum() == 0 or high <= low:
        ranges = [(low, high)] * len(PerTensorMse.CANDIDATES)
    else:
        cut = _percentile_ranges(hist, edges, np.array(PerTensorMse.CANDIDATES), grid.symmetric)
        ranges = [(low, high) if percentile >= 100.0 else (max(lo, low), min(hi, high))
                  for percentile, (lo, hi) in zip(PerTensorMse.CANDIDATES, cut)]
    width = np.diff(edges.astype(np.float64))
    offsets = (np.arange(SUBPOINTS) + 0.5) / SUBPOINTS
    points = (edges[:-1, None] + width[:, None] * offsets[None, :]).reshape(-1)
    points = np.clip(points, low, high)  # no mass lies outside the observed range
    weights = np.repeat(hist / max(hist.sum(), 1.0) / SUBPOINTS, SUBPOINTS)
    errors = [float(np.sum(weights * (points - grid.fake_quantize(points, lo, hi)) ** 2)) for lo, hi in ranges]
    best = int(np.argmin(errors))
    return PerTensorMse.CANDIDATES[best], ranges[best], errors


class SampleSetReader:
    """onnxruntime CalibrationDataReader over equal-sized batches of a SampleSet."""

    def __init__(self, sample_set: SampleSet, input_names: list[str], *, equal_only: bool):
        self.sample_set = sample_set
        self.input_names = input_names
        self.equal_only = equal_only
        self._batches = None

    def get_next(self):
        """Next batch as a feed dict, or None when exhausted."""
        if self._batches is None:
            self._batches = self.sample_set.batches(equal_only=self.equal_only)
        batch = next(self._batches, None)
        return None if batch is None else {name: batch[name] for name in self.input_names}

    def rewind(self) -> None:
        """Start again from the first batch."""
        self._batches = None

    def __len__(self) -> int:
        size = min(self.sample_set.batch_size, self.sample_set.num_samples)
        return -(-self.sample_set.used_samples(equal_only=self.equal_only) // size)


COLLECT_BYTES = 1 << 30  # intermediate tensors held by one collect_data call, at most (about)


def batches_per_collect(model: onnx.ModelProto, batch_size: int) -> int:
    """How many batches one collect_data call may read: all of them for a model whose intermediate
    float tensors (from ONNX shape inference, batch 1) fit COLLECT_BYTES many times over, else as many
    as fit (at least one). `model` has been through shape inference; one without inferred shapes goes a
    batch at a time."""
    import onnx

    per_sample = 0
    for value in model.graph.value_info:
        tensor = value.type.tensor_type
        if tensor.elem_type != onnx.TensorProto.FLOAT or not tensor.shape.dim:
            continue
        dims = [dim.dim_value if dim.HasField("dim_value") else 1 for dim in tensor.shape.dim]
        per_sample += 4 * max(1, int(np.prod(dims[1:])))
    if per_sample == 0:
        return 1
    return max(1, COLLECT_BYTES // (per_sample * batch_size))


class _Chunk:
    """At most `size` further batches of a reader, for one collect_data call."""

    def __init__(self, reader: SampleSetReader, size: int):
        self.reader, self.left = reader, size

    def get_next(self):
        """The reader's next batch while this chunk lasts, else None."""
        if self.left == 0:
            return None
        self.left -= 1
        return self.reader.get_next()


def _candidate_label(percentile: float) -> str:
    """A PerTensorMse candidate as the calibration summary names it: 'minmax' or 'percentile p'."""
    return "minmax" if percentile >= 100.0 else f"percentile {percentile:g}"


@dataclass(frozen=True)
class Calibration:
    """Activation ranges by tensor name; for PerTensorMse also the candidate each tensor chose."""

    ranges: dict[str, tuple[float, float]]
    choices: dict[str, float] = field(default_factory=dict)  # tensor -> percentile chosen (100: minmax)
    grid: str = ""

    def summary(self) -> dict:
        """How many tensors chose each candidate (the artifact's `calibration` facts); empty unless per tensor."""
        if not self.choices:
            return {}
        counts = {_candidate_label(value): 0 for value in PerTensorMse.CANDIDATES}
        for value in self.choices.values():
            counts[_candidate_label(value)] += 1
        return {"per_tensor": "least expected squared quantization error over each tensor's histogram",
                "grid": self.grid, "tensors": len(self.choices), "chosen": counts}


def calibrate(model_path: Path, sample_set: SampleSet, input_names: list[str], method, cache_path: Path,
              *, op_types: list[str] | None = None, grid: ActivationGrid | None = None) -> Calibration:
    """Collect statistics for `model_path` on the calibration set, write the cache, return the ranges (and
    for PerTensorMse, which needs the target's activation `grid`, each tensor's choice)."""
    try:
        from onnxruntime.quantization.calibrate import TensorData, TensorsData, create_calibrator, save_tensors_data
    except ImportError as exc:
        raise MissingDependencyError("calibration", "onnxruntime", "x86") from exc
    if isinstance(method, PerTensorMse) and grid is None:
        raise CalibrationError("per-tensor MSE calibration needs the target's activation grid")
    with tempfile.TemporaryDirectory(prefix="edgepack-calib-") as scratch:
        calibrator = create_calibrator(
            Path(model_path), op_types or [], augmented_model_path=str(Path(scratch) / "augmented.onnx"),
            calibrate_method=ort_method(method), extra_options=calibrator_options(method),
        )
        try:
            # onnxruntime's histogram calibrators keep every intermediate tensor of the batches one
            # collect_data call reads (16 GB for MobileNetV2 on 300 crops); their histograms merge
            # across calls, so a large model's data goes in chunks of about COLLECT_BYTES.
            reader = SampleSetReader(sample_set, input_names, equal_only=method.needs_equal_batches)
            # the calibrator loaded the model through ONNX shape inference already: read its shapes there
            per_call = batches_per_collect(calibrator.model, min(sample_set.batch_size, sample_set.num_samples))
            for _ in range(0, len(reader), per_call):
                calibrator.collect_data(_Chunk(reader, per_call))
            choices: dict[str, float] = {}
            if isinstance(method, PerTensorMse):
                assert grid is not None
                chosen = {}
                for name, (hist, edges, low, high, _) in calibrator.collector.get_histogram_dict().items():
                    choices[name], (lo, hi), _ = mse_choice(hist, edges, float(low), float(high), grid)
                    chosen[name] = TensorData(lowest=np.array(lo, dtype=np.float32),
                                              highest=np.array(hi, dtype=np.float32))
                tensors = TensorsData(ort_method(method), chosen)
            else:
                tensors = calibrator.compute_data()
        except Exception as exc:
            raise CalibrationError(f"{type(method).__name__} calibration failed on {sample_set.source}: "
                                   f"{describe(exc)}") from exc
    save_tensors_data(tensors, cache_path)
    ranges = {name: (float(low.reshape(-1)[0]), float(high.reshape(-1)[0]))
              for name in tensors for low, high in [tensors[name].range_value]}
    return Calibration(ranges, choices, grid.describe() if grid is not None and choices else "")
