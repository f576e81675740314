"""Sample sets: validated, seeded subsets of calibration or evaluation data."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from edgepack.calibration.readers import Found, read_arrays, read_callable
from edgepack.errors import DataError

FEW_SAMPLES = 100


@dataclass(frozen=True)
class SampleSet:
    """Named arrays with a common first (sample) dimension, plus optional labels."""

    role: str
    source: str
    arrays: dict[str, np.ndarray]
    labels: Optional[np.ndarray]
    batch_size: int
    sha256: str
    warnings: tuple[str, ...] = field(default=())
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        """Number of samples held."""
        return len(next(iter(self.arrays.values())))

    def batches(self, *, equal_only: bool = False) -> Iterator[dict[str, np.ndarray]]:
        """Yield batches in order; with `equal_only`, an uneven last batch is dropped.

        Histogram calibrators in onnxruntime fail on an uneven last batch, hence `equal_only`.
        """
        size = min(self.batch_size, self.num_samples)
        stop = (self.num_samples // size) * size if equal_only else self.num_samples
        for start in range(0, stop, size):
            yield {name: array[start:start + size] for name, array in self.arrays.items()}

    def used_samples(self, *, equal_only: bool) -> int:
        """How many samples `batches(equal_only=...)` yields."""
        size = min(self.batch_size, self.num_samples)
        return (self.num_samples // size) * size if equal_only else self.num_samples


def load_sample_set(source, inputs, *, role: str, base_dir: Path, labels: Optional[str] = None,
                    extras: tuple[str, ...] = (), reader: Optional[Callable[..., Found]] = None) -> SampleSet:
    """Read, check and subsample data for `inputs` as described by a recipe DataSource.

    `extras` are further per-sample arrays to carry along (e.g. segment ids), subsampled the same way.
    `reader` replaces `read_arrays` for data files (e.g. raw text tokenized by edgepack.text)."""
    names = [spec.name for spec in inputs]
    wanted = names + ([labels] if labels else []) + list(extras)
    if source.path is not None:
        origin = str(source.path)
        arrays, available = (reader or read_arrays)(source.path, wanted=wanted, columns=source.columns)
    else:
        origin = source.callable
        arrays, available = read_callable(source.callable, base_dir=base_dir, wanted=wanted)
    missing = [name for name in wanted if name not in arrays]
    if missing:
        what = "label array" if missing == [labels] else "array(s)"
        raise DataError(f"{role} data {origin}: no {what} named {', '.join(repr(m) for m in missing)} "
                        f"(the data holds: {', '.join(available) or 'nothing'})")
    checked = {spec.name: _check_input(arrays[spec.name], spec, role, origin) for spec in inputs}
    counts = {name: len(array) for name, array in checked.items()}
    label_array = None
    if labels:
        label_array = _check_labels(arrays[labels], role, origin, labels)
        counts[labels] = len(label_array)
    extra_arrays = {name: _check_labels(arrays[name], role, origin, name) for name in extras}
    counts.update({name: len(array) for name, array in extra_arrays.items()})
    if len(set(counts.values())) != 1:
        raise DataError(f"{role} data {origin}: arrays have different sample counts: {counts}")
    total = next(iter(counts.values()))
    if total == 0:
        raise DataError(f"{role} data {origin}: no samples")
    chosen = _choose(total, source.samples, source.seed)
    subset = {name: np.ascontiguousarray(array[chosen]) for name, array in checked.items()}
    label_subset = None if label_array is None else np.ascontiguousarray(label_array[chosen])
    warnings: tuple[str, ...] = ()
    if len(chosen) < FEW_SAMPLES:
        warnings = (f"{role} data {origin}: only {len(chosen)} samples; results are unreliable below {FEW_SAMPLES}",)
    return SampleSet(role=role, source=origin, arrays=subset, labels=label_subset, batch_size=source.batch_size,
                     sha256=_digest(subset, label_subset), warnings=warnings,
                     extras={name: np.ascontiguousarray(array[chosen]) for name, array in extra_arrays.items()})


def _choose(total: int, samples: Optional[int], seed: int) -> np.ndarray:
    """A seeded random subset (kept in file order) when fewer samples are asked for than exist."""
    if samples is None or samples >= total:
        return np.arange(total)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(total, size=samples, replace=False))


def _check_input(array: np.ndarray, spec, role: str, origin: str) -> np.ndarray:
    where = f"{role} data {origin}: input '{spec.name}'"
    array = np.asarray(array)
    flat_size = int(np.prod(spec.sample_shape))
    if (array.ndim == 2 and len(spec.sample_shape) > 1 and array.shape[1] == flat_size) or \
            (array.ndim == 1 and flat_size == 1):
        array = array.reshape((len(array),) + spec.sample_shape)  # flat table columns
    if tuple(array.shape[1:]) != spec.sample_shape:
        raise DataError(f"{where}: expected shape {['N', *spec.sample_shape]}, got {list(array.shape)}")
    converted = _cast(array, np.dtype(spec.dtype), where)
    if spec.range is not None and converted.size:
        low, high = spec.range
        outside = (converted < low) | (converted >= high)
        if outside.any():
            raise DataError(f"{where}: {int(outside.sum())} id(s) outside the table range [{low}, {high}) "
                            f"(data range {converted.min()}..{converted.max()})")
    return converted


def _cast(array: np.ndarray, expected: np.dtype, where: str) -> np.ndarray:
    if array.dtype == expected:
        converted = array
    elif array.dtype.kind == expected.kind == "f" or (array.dtype.kind in "iu" and expected.kind in "iu"):
        converted = array.astype(expected)
        if expected.kind in "iu" and array.size and not np.array_equal(converted, array):
            raise DataError(f"{where}: values do not fit {expected} (range {array.min()}..{array.max()})")
    elif array.dtype.kind in "iu" and expected.kind == "f":
        converted = array.astype(expected)
    else:
        raise DataError(f"{where}: expected dtype {expected}, got {array.dtype}")
    if converted.dtype.kind == "f" and converted.size and not np.isfinite(converted).all():
        bad = int((~np.isfinite(converted)).sum())
        raise DataError(f"{where}: contains {bad} NaN/inf value(s)")
    return converted


def _check_labels(array: np.ndarray, role: str, origin: str, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 1 or array.dtype.kind not in "iub":
        raise DataError(f"{role} data {origin}: '{name}' must be a 1-D integer array, "
                        f"got shape {list(array.shape)} dtype {array.dtype}")
    return array.astype(np.int64)


def _digest(arrays: dict[str, np.ndarray], labels: Optional[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        digest.update(name.encode())
        digest.update(str(arrays[name].dtype).encode() + str(arrays[name].shape).encode())
        digest.update(arrays[name].tobytes())
    if labels is not None:
        digest.update(labels.tobytes())
    return digest.hexdigest()
