"""Activation ranges from calibration data, computed with onnxruntime's calibrators.

Every method goes through the same path: a calibrator collects statistics, we turn them into
ranges, and the quantizer reads them back from a calibration cache. That keeps each method
honest: Entropy gets the histogram resolution it asks for instead of onnxruntime's 128/128
default (where it collapses to MinMax).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

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


BATCHES_PER_COLLECT = 4


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
            # collect_data call reads (gigabytes for a 224x224 CNN on a few hundred images); their
            # histograms merge across calls, so the data goes in chunks of a few batches.
            reader = SampleSetReader(sample_set, input_names, equal_only=method.needs_equal_batches)
            for _ in range(0, len(reader), BATCHES_PER_COLLECT):
                calibrator.collect_data(_Chunk(reader, BATCHES_PER_COLLECT))
            tensors = calibrator.compute_data()
        except Exception as exc:
            raise CalibrationError(f"{type(method).__name__} calibration failed on {sample_set.source}: "
                                   f"{describe(exc)}") from exc
    save_tensors_data(tensors, cache_path)
    return {name: (float(low.reshape(-1)[0]), float(high.reshape(-1)[0]))
            for name in tensors for low, high in [tensors[name].range_value]}
