"""Golden files: the first rows of the real evaluation data with what the packing host measured on them,
written beside an artifact so the device can re-check it with numpy and the artifact's runtime alone
(`verify_on_device.py`, copied into the bundle by `copy_device_script`).

Beside an artifact `FOLDER/STEM.EXT` (e.g. `x86/model.int8.onnx`) go two files:

- `STEM.golden.npz`: the first N evaluation rows, N <= `max_samples` (256), fewer when the compressed
  file would exceed `max_bytes` (300 kB). `input_0`, `input_1`, ...: the inputs exactly as the artifact
  consumes them (its dtype, layout and input quantization; `artifact_inputs` lays evaluation arrays
  out so); `artifact_output`: the artifact's first output as the packing host computed it, dequantized
  to float32 (what edgepack's runners return); `reference_output`: the float model's, float32;
  `labels`: int64, when the evaluation set has labels.
- `STEM.golden.json`: kind and schema_version, target, the artifact's file name and sha256, task,
  samples and how they were chosen, each array's key, name, dtype and shape, the output's tolerance
  for comparing raw outputs (and its basis), the budget bounds the device checks (limit, direction and
  the host's own value on these rows), the bounds it cannot check there, the host's metrics on these
  rows (edgepack's own code) and the host's CPU and ISA features.

The format needs only `json` and `numpy.load(allow_pickle=False)` to read.
"""

from __future__ import annotations

import io as bytes_io
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from edgepack.calibration.dataset import SampleSet
from edgepack.device import verify_on_device as device_script
from edgepack.errors import VerificationError
from edgepack.evaluation import tasks
from edgepack.evaluation.drift import DriftCheck
from edgepack.isa import host_isa
from edgepack.recipe.budget import BOUND_SPECS
from edgepack.targets.arm_tflite.runner import quantize

MAX_SAMPLES = 256
MAX_BYTES = 300_000
DEVICE_SCRIPT = Path(device_script.__file__)
OUTPUT_KEY, REFERENCE_KEY, LABELS_KEY = "artifact_output", "reference_output", "labels"


@dataclass(frozen=True)
class _WholeRows:
    """Evaluation settings for metrics on the golden rows: no user groups, no segments (not measured there)."""

    group_by: Optional[str] = None
    segments: tuple[str, ...] = ()
    top_k: int = 10


def golden_paths(artifact: Path) -> tuple[Path, Path]:
    """(STEM.golden.json, STEM.golden.npz) beside `artifact`."""
    stem = Path(artifact).name.rsplit(".", 1)[0]
    folder = Path(artifact).parent
    return folder / (stem + device_script.GOLDEN_JSON), folder / (stem + device_script.GOLDEN_NPZ)


def artifact_inputs(arrays: Mapping[str, np.ndarray], io_inputs: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """Evaluation arrays (the recipe's layout: NCHW images, int64 ids) as the artifact consumes them, from its I/O
    description (the manifest's `io.inputs`): channel-last when its 4-D shape says so, quantized with the input's
    (scale, zero point) when it takes integers for float data, cast to its dtype (int64 ids -> int32 for TFLite)."""
    laid_out = {}
    for spec in io_inputs:
        value = np.asarray(arrays[spec["name"]])
        dtype = np.dtype(spec["dtype"])
        if value.ndim == 4 and not _fits(value, spec["shape"]) and _fits(value.transpose(0, 2, 3, 1), spec["shape"]):
            value = value.transpose(0, 2, 3, 1)
        quantization = spec.get("quantization") or {}
        if dtype.kind in "iu" and value.dtype.kind == "f" and quantization.get("scale"):
            value = quantize(value, quantization["scale"], quantization["zero_point"], dtype)
        laid_out[spec["name"]] = np.ascontiguousarray(value.astype(dtype, copy=False))
    return laid_out


def _fits(value: np.ndarray, shape: Sequence[Any]) -> bool:
    """Whether the per-sample dimensions of `value` match the fixed (integer) dimensions of `shape`."""
    wanted = list(shape)[1:]
    return len(wanted) == value.ndim - 1 and all(not isinstance(dim, int) or dim == have
                                                 for dim, have in zip(wanted, value.shape[1:]))


def write_golden(artifact: Path, *, target: str, task: str, io: Mapping[str, Any], inputs: Mapping[str, np.ndarray],
                 artifact_outputs: np.ndarray, reference_outputs: np.ndarray, labels: Optional[np.ndarray],
                 budget: Mapping[str, Any], max_samples: int = MAX_SAMPLES, max_bytes: int = MAX_BYTES) -> list[Path]:
    """Write STEM.golden.npz and STEM.golden.json beside `artifact` from the first rows of the evaluation data;
    returns both paths (for the manifest's file list).

    `inputs` are the evaluation inputs exactly as the artifact consumes them (see `artifact_inputs`), by name;
    `io` is the artifact's I/O description (`{"inputs": [...], "outputs": [...]}` as in the manifest);
    `artifact_outputs` and `reference_outputs` are the first output of the artifact (dequantized, as edgepack's
    runners return it) and of the float model on the same rows; `budget` is the budget as dumped in the
    manifest. A ValueError names an input that does not match `io` or arrays of different lengths."""
    artifact = Path(artifact)
    for spec in io["inputs"]:
        value = np.asarray(inputs[spec["name"]]) if spec["name"] in inputs else None
        if value is None or value.dtype != np.dtype(spec["dtype"]) or not _fits(value, spec["shape"]):
            found = "missing" if value is None else f"{value.dtype} {list(value.shape)}"
            raise ValueError(f"input '{spec['name']}' must be laid out as the artifact takes it ({spec['dtype']} "
                             f"{spec['shape']}), got {found}; see artifact_inputs")
    ordered = [(spec["name"], np.asarray(inputs[spec["name"]])) for spec in io["inputs"]]
    lengths = {len(value) for _, value in ordered} | {len(artifact_outputs), len(reference_outputs)} | \
        ({len(labels)} if labels is not None else set())
    if len(lengths) != 1:
        raise ValueError(f"inputs, outputs and labels differ in length: {sorted(lengths)}")
    total = lengths.pop()
    count = min(max_samples, total)
    while True:
        arrays: dict[str, Any] = {f"input_{index}": value[:count] for index, (_, value) in enumerate(ordered)}
        arrays[OUTPUT_KEY] = np.asarray(artifact_outputs[:count], dtype=np.float32)
        arrays[REFERENCE_KEY] = np.asarray(reference_outputs[:count], dtype=np.float32)
        if labels is not None:
            arrays[LABELS_KEY] = np.asarray(labels[:count], dtype=np.int64)
        buffer = bytes_io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        if buffer.tell() <= max_bytes or count == 1:
            break
        count = max(1, min(count - 1, int(count * max_bytes / buffer.tell() * 0.95)))
    metrics = _host_metrics(task, arrays, labels is not None)
    json_path, npz_path = golden_paths(artifact)
    npz_path.write_bytes(buffer.getvalue())
    bounds, unchecked = _device_budget(task, budget, metrics)
    info = {
        "kind": device_script.GOLDEN_KIND, "schema_version": device_script.GOLDEN_VERSION, "target": target,
        "artifact": artifact.name, "sha256": device_script.sha256_file(artifact), "task": task,
        "samples": count, "selection": f"the first {count} of {total} evaluation rows, in the evaluation set's order",
        "inputs": [_array_entry(f"input_{index}", arrays[f"input_{index}"], name=name, spec=spec)
                   for index, ((name, _), spec) in enumerate(zip(ordered, io["inputs"]))],
        "outputs": [_array_entry(OUTPUT_KEY, arrays[OUTPUT_KEY], name=(io.get("outputs") or [{}])[0].get("name"),
                                 tolerance=_tolerance(arrays, io))],
        "reference": _array_entry(REFERENCE_KEY, arrays[REFERENCE_KEY], name="float model, first output"),
        "labels": _array_entry(LABELS_KEY, arrays[LABELS_KEY]) if labels is not None else None,
        "budget": bounds, "budget_not_checked": unchecked, "metrics": metrics,
        "host": host_isa().to_dict(),
    }
    json_path.write_text(json.dumps(device_script.json_ready(info), indent=1, allow_nan=False) + "\n")
    return [json_path, npz_path]


def _array_entry(key: str, value: np.ndarray, **extra: Any) -> dict:
    entry = {"key": key, "dtype": str(value.dtype), "shape": list(value.shape)}
    for name, item in extra.items():
        if name == "spec":
            entry.update(artifact_shape=item["shape"], quantization=item.get("quantization"))
        elif item is not None:
            entry[name] = item
    return entry


def _host_metrics(task: str, arrays: dict[str, np.ndarray], has_labels: bool) -> dict:
    """edgepack's own metrics on the golden rows, restricted to those the device script computes."""
    rows = SampleSet(role="golden", source="golden rows", arrays={}, batch_size=1, sha256="",
                     labels=arrays[LABELS_KEY] if has_labels else None)
    reference, artifact = (arrays[key].astype(np.float64) for key in (REFERENCE_KEY, OUTPUT_KEY))
    metrics = tasks.kind(task).drift_metrics(reference, artifact, rows, _WholeRows())
    return {key: value for key, value in metrics.items() if key in device_script.DEVICE_METRICS[task]}


def _device_budget(task: str, budget: Mapping[str, Any], metrics: dict) -> tuple[list[dict], list[dict]]:
    """The bounds the device checks, with the host's value on the golden rows, and those it cannot check."""
    if budget.get("disabled"):
        return [], [{"bound": "budget", "reason": "budget: none (drift measured, not checked)"}]
    checked, unchecked = [], []
    for key, spec in BOUND_SPECS.items():
        limit = budget.get(key)
        if limit is None:
            continue
        if spec.metric not in device_script.DEVICE_METRICS[task]:
            unchecked.append({"bound": key, "reason": f"'{spec.metric}' needs per-group data the golden rows do not "
                                                      "hold; checked on the host at packing time"})
            continue
        value = float(metrics.get(spec.metric, math.nan))
        checked.append({"bound": key, "metric": spec.metric, "direction": spec.direction, "limit": float(limit),
                        "host_value": value,
                        "host_passed": DriftCheck(spec.metric, value, float(limit), spec.direction).passed})
    if budget.get("segments") and checked:
        unchecked.append({"bound": "segments", "reason": "per-segment bounds (evaluation.segments), if any, are "
                                                         "checked on the host only"})
    return checked, unchecked


def _tolerance(arrays: dict[str, np.ndarray], io: Mapping[str, Any]) -> dict:
    """How far the device's outputs may be from the packing host's: 2 output quantization steps, half the
    quantization error the host measured against the float model on these rows, or 1% of the float outputs'
    largest magnitude, whichever is largest (GPU fp16 and other kernels round differently)."""
    step = float(((io.get("outputs") or [{}])[0].get("quantization") or {}).get("scale") or 0.0)
    host_error = float(np.abs(arrays[OUTPUT_KEY] - arrays[REFERENCE_KEY]).max()) if arrays[OUTPUT_KEY].size else 0.0
    magnitude = float(np.abs(arrays[REFERENCE_KEY]).max()) if arrays[REFERENCE_KEY].size else 0.0
    atol = max(2 * step, 0.5 * host_error, 0.01 * magnitude, 1e-6)
    return {"atol": atol, "basis": f"max of 2 output quantization steps (step {step:.4g}), half the host's max "
                                   f"error vs the float model ({host_error:.4g}), 1% of max |float output| "
                                   f"({magnitude:.4g})"}


@dataclass(frozen=True)
class Golden:
    """An artifact's golden files as read back: golden.json and its arrays."""

    info: dict
    arrays: dict[str, np.ndarray]

    @property
    def inputs(self) -> dict[str, np.ndarray]:
        """Golden inputs by name, as the artifact consumes them."""
        return {entry["name"]: self.arrays[entry["key"]] for entry in self.info["inputs"]}

    @property
    def artifact_outputs(self) -> np.ndarray:
        """The packing host's first output of the artifact (float32)."""
        return self.arrays[OUTPUT_KEY]

    @property
    def reference_outputs(self) -> np.ndarray:
        """The float model's first output (float32)."""
        return self.arrays[REFERENCE_KEY]

    @property
    def labels(self) -> Optional[np.ndarray]:
        """Labels of the golden rows, when the evaluation set had them."""
        return self.arrays.get(LABELS_KEY)


def read_golden(artifact: Path) -> Golden:
    """The golden files beside `artifact`, checked as the device script checks them; VerificationError if not."""
    json_path, _ = golden_paths(artifact)
    try:
        info, arrays = device_script.load_golden(json_path)
    except device_script.ArtifactError as exc:
        raise VerificationError(str(exc)) from exc
    return Golden(info=info, arrays=arrays)


def copy_device_script(bundle: Path) -> Path:
    """Copy verify_on_device.py into the bundle's top folder (it imports nothing from edgepack); returns its path."""
    destination = Path(bundle) / DEVICE_SCRIPT.name
    shutil.copyfile(DEVICE_SCRIPT, destination)
    return destination
