"""Activation ranges from calibration data, computed with onnxruntime's calibrators.

Every method goes through the same path: a calibrator collects statistics, we turn them into
ranges, and the quantizer reads them back from a calibration cache. That keeps each method
honest: Entropy gets the histogram resolution it asks for instead of onnxruntime's 128/128
default (where it collapses to MinMax).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from edgepack.calibration.dataset import SampleSet
from edgepack.calibration.methods import Entropy, MinMax, Percentile
from edgepack.errors import CalibrationError, MissingDependencyError, describe


def ort_method(method):
    """The onnxruntime CalibrationMethod matching one of our method configs."""
    from onnxruntime.quantization import CalibrationMethod

    return {MinMax: CalibrationMethod.MinMax, Percentile: CalibrationMethod.Percentile,
            Entropy: CalibrationMethod.Entropy}[type(method)]


def calibrator_options(method) -> dict:
    """Options passed to onnxruntime's create_calibrator for this method."""
    if isinstance(method, Percentile):
        return {"percentile": method.percentile, "symmetric": False}
    if isinstance(method, Entropy):
        return {"num_bins": method.num_bins, "num_quantized_bins": method.num_quantized_bins, "symmetric": False}
    return {}


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


def batches_per_collect(model_path: Path, batch_size: int) -> int:
    """How many batches one collect_data call may read: all of them for a model whose intermediate
    float tensors (from ONNX shape inference, batch 1) fit COLLECT_BYTES many times over, else as many
    as fit (at least one). A model whose shapes cannot be inferred goes a batch at a time."""
    import onnx

    try:
        model = onnx.shape_inference.infer_shapes(onnx.load(str(model_path)))
    except Exception:  # shape inference is best effort; one batch per call is always safe
        return 1
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


def compute_ranges(model_path: Path, sample_set: SampleSet, input_names: list[str], method, cache_path: Path,
                   *, op_types: list[str] | None = None) -> dict[str, tuple[float, float]]:
    """Collect statistics for `model_path` on the calibration set, write the cache, return tensor ranges."""
    try:
        from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    except ImportError as exc:
        raise MissingDependencyError("calibration", "onnxruntime", "x86") from exc
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
            per_call = batches_per_collect(Path(model_path), min(sample_set.batch_size, sample_set.num_samples))
            for _ in range(0, len(reader), per_call):
                calibrator.collect_data(_Chunk(reader, per_call))
            tensors = calibrator.compute_data()
        except Exception as exc:
            raise CalibrationError(f"{type(method).__name__} calibration failed on {sample_set.source}: "
                                   f"{describe(exc)}") from exc
    save_tensors_data(tensors, cache_path)
    return {name: (float(low.reshape(-1)[0]), float(high.reshape(-1)[0]))
            for name in tensors for low, high in [tensors[name].range_value]}
