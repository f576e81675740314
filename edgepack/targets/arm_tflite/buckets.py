"""The arm-tflite `sequence_lengths` option: a text model exported at several fixed sequence lengths.

The main file stays `model.int8.tflite` at `text.max_length`; each shorter length L is a companion
`model.int8.len{L}.tflite` beside it, quantized on the calibration rows that fit L. The main file names
its companions in a flatbuffer metadata entry, so a runner given the main file finds the whole set and
a phone app can read it without the manifest.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from edgepack.bundle.buckets import route
from edgepack.calibration.dataset import SampleSet
from edgepack.errors import ConfigError
from edgepack.recipe.schema import InputSpec
from edgepack.text.spec import ATTENTION_MASK

OPTION = "target_options.arm-tflite.sequence_lengths"
METADATA_NAME = b"edgepack_sequence_buckets"
ROUTING = ("each row runs on the shortest length that holds every token its attention mask keeps (right "
           "padding), with input_ids and attention_mask cut to [:, :L]; verification routes the held-out rows "
           "the same way, so its metrics are those of the model set an app runs")


def bucket_lengths(requested: Sequence[int], inputs: Sequence[InputSpec], *, text: bool = True) -> tuple[int, ...]:
    """The set's lengths, shortest first, `max_length` always last; () without the option. One ConfigError
    naming the option for a length out of (0, max_length], a duplicate, or a model without text inputs."""
    if not requested:
        return ()
    widths = {spec.shape[1] for spec in inputs if len(spec.shape) == 2}
    if not text or ATTENTION_MASK not in {spec.name for spec in inputs} or len(widths) != 1 \
            or not isinstance(next(iter(widths)), int):
        raise ConfigError(f"{OPTION}: only for text models (a `text` section: input_ids and attention_mask of a "
                          "fixed max_length)")
    max_length = int(next(iter(widths)))
    bad = [length for length in requested if not 0 < length <= max_length]
    if bad:
        raise ConfigError(f"{OPTION}: {', '.join(map(str, bad))} not in 1..{max_length} (text.max_length)")
    repeated = sorted({length for length in requested if list(requested).count(length) > 1})
    if repeated:
        raise ConfigError(f"{OPTION}: {', '.join(map(str, repeated))} given more than once")
    return tuple(sorted({*requested, max_length}))


def companion_name(main: Path, length: int) -> str:
    """`model.int8.tflite` -> `model.int8.len16.tflite`."""
    return f"{main.stem}.len{length}{main.suffix}"


MIN_FITTING_ROWS = 8  # fewer calibration rows than this (or than one batch) that fit: use every row, cut


def calibration_for_length(calibration: SampleSet, lengths: Sequence[int], length: int) -> tuple[SampleSet, str]:
    """The calibration set cut to `length` for the model of that length, and a note of which rows it holds.

    The rows that fit it (the rows the runner would route to it or to a shorter model) when there are at
    least one batch (or MIN_FITTING_ROWS) of them; otherwise every row cut to `length`, whose activations
    are those of real text even if some rows lose their last tokens."""
    fits = route(calibration.arrays[ATTENTION_MASK], lengths) <= length
    wanted = min(calibration.batch_size, calibration.num_samples, MIN_FITTING_ROWS)
    rows = np.flatnonzero(fits) if fits.sum() >= wanted else np.arange(calibration.num_samples)
    note = (f"{len(rows)} rows that fit" if len(rows) == int(fits.sum()) else
            f"all {len(rows)} rows cut to {length} tokens (only {int(fits.sum())} fit, fewer than {wanted})")
    arrays = {name: _cut(array[rows], length) for name, array in calibration.arrays.items()}
    return dataclasses.replace(calibration, arrays=arrays, labels=None, extras={}), note


def _cut(array: np.ndarray, length: int) -> np.ndarray:
    return np.ascontiguousarray(array[:, :length]) if array.ndim == 2 else array


def write_bucket_metadata(main: Path, files: dict[int, str]) -> None:
    """Record in the main .tflite the set's files by length (JSON in a metadata entry)."""
    from ai_edge_litert import schema_py_generated as fb

    from edgepack.targets.arm_tflite.tables import write_tflite

    model = fb.ModelT.InitFromPackedBuf(main.read_bytes(), 0)
    buffer = fb.BufferT()
    buffer.data = np.frombuffer(json.dumps({str(length): name for length, name in files.items()}).encode(),
                                dtype=np.uint8)
    model.buffers.append(buffer)
    entry = fb.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    write_tflite(model, main)


def read_bucket_files(main: Path) -> dict[int, Path]:
    """The set's files by length as the main .tflite records them; {} for a single-length model."""
    from ai_edge_litert import schema_py_generated as fb

    data = main.read_bytes()
    model = fb.Model.GetRootAs(data, 0)
    for index in range(model.MetadataLength()):
        entry = model.Metadata(index)
        if entry.Name() == METADATA_NAME:
            raw = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
            return {int(length): main.parent / name for length, name in json.loads(raw).items()}
    return {}
