"""Choosing the x86 INT8 weight scheme that cannot saturate on any x86 CPU, by measurement.

Two schemes are exact on every x86 ISA (see edgepack.quantization.saturation):
- `int8-7bit`: int8 weights in [-64, 64] on every layer whose U8S8 kernel adds product pairs in
  int16, full 8-bit on depthwise convolutions (their kernel never adds in int16). Fast U8S8
  kernels everywhere; one bit of weight precision lost on the pair-summed layers.
- `uint8`: uint8 weights (U8U8 kernels widen both operands to int16): full 8-bit precision, but
  the kernels do twice the work per product on AVX2 and have no VNNI fast path.
Which one keeps a given model closer to its float outputs, and at what speed on this host, is
measured on calibration samples against the fp32 ONNX; the choice and the figures go in the manifest.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgepack.calibration.dataset import SampleSet
from edgepack.evaluation.drift import collect_outputs
from edgepack.evaluation.latency import make_batch, measure
from edgepack.evaluation.runners import OrtRunner

SCHEMES = {
    "int8-7bit": "int8 weights in [-64, 64] on pair-summed layers (reduce_range), 8 bits on depthwise convs; "
                 "U8S8 kernels",
    "uint8": "uint8 weights (U8U8 kernels)",
}
# The faster scheme is kept unless it is clearly less accurate than the most accurate one: output
# error (relative L2 against fp32) more than ERROR_RATIO times as large, or, for classifiers, top-1
# agreement lower by more than AGREEMENT_MARGIN. One bit less on the weights roughly doubles their
# rounding error but not the model's total error, which activation rounding dominates on most models.
ERROR_RATIO = 1.5
AGREEMENT_MARGIN = 0.005
CHECK_SAMPLES = 512
LATENCY_BATCH = 64


@dataclass(frozen=True)
class SchemeMeasurement:
    """How one weight scheme did on calibration samples."""

    scheme: str
    relative_l2: float
    top1_agreement: float | None
    median_ms: float
    path: Path

    def to_dict(self) -> dict:
        """JSON-ready form (without the scratch path)."""
        return {"scheme": self.scheme, "description": SCHEMES[self.scheme], "relative_l2": self.relative_l2,
                "top1_agreement": self.top1_agreement, f"median_ms_batch_{LATENCY_BATCH}": self.median_ms}


def measure_scheme(scheme: str, path: Path, reference: np.ndarray, samples: SampleSet, *,
                   threads: int) -> SchemeMeasurement:
    """Output error against the float reference and batch-64 latency of one quantized file."""
    runner = OrtRunner(path, threads=threads)
    outputs = collect_outputs(runner, samples)
    error = float(np.linalg.norm(outputs - reference)) / max(float(np.linalg.norm(reference)), 1e-12)
    agreement = None
    if reference.ndim == 2 and reference.shape[1] > 1:
        agreement = float((outputs.argmax(axis=1) == reference.argmax(axis=1)).mean())
    latency = measure(runner, make_batch(samples.arrays, LATENCY_BATCH), warmup=3, repeats=20).median_ms
    return SchemeMeasurement(scheme=scheme, relative_l2=error, top1_agreement=agreement, median_ms=latency, path=path)


def choose(measurements: list[SchemeMeasurement]) -> tuple[SchemeMeasurement, str]:
    """The fastest scheme whose accuracy is close to the most accurate one (see ERROR_RATIO); and why."""
    best = min(measurements, key=lambda item: item.relative_l2)

    def close(item: SchemeMeasurement) -> bool:
        if item.relative_l2 > best.relative_l2 * ERROR_RATIO:
            return False
        return item.top1_agreement is None or best.top1_agreement is None or \
            item.top1_agreement >= best.top1_agreement - AGREEMENT_MARGIN

    chosen = min((item for item in measurements if close(item)), key=lambda item: item.median_ms)
    figures = "; ".join(f"{item.scheme}: relative L2 {item.relative_l2:.4g}"
                        + (f", top-1 agreement {item.top1_agreement:.4f}" if item.top1_agreement is not None else "")
                        + f", {item.median_ms:.2f} ms at batch {LATENCY_BATCH}" for item in measurements)
    if chosen is best and all(item is best or not close(item) for item in measurements):
        reason = f"{chosen.scheme} is clearly the most accurate on calibration samples ({figures})"
    elif chosen is best:
        reason = f"{chosen.scheme} is the most accurate and the fastest on this host ({figures})"
    else:
        reason = (f"{chosen.scheme} is faster on this host and close in accuracy to {best.scheme} (error within "
                  f"{ERROR_RATIO}x, agreement within {AGREEMENT_MARGIN}) ({figures})")
    return chosen, reason


def portable_int8(quantize: Callable[[str, Path], None], float_onnx: Path, calibration: SampleSet, scratch: Path,
                  *, threads: int) -> tuple[SchemeMeasurement, list[SchemeMeasurement], str]:
    """Quantize with each portable scheme (`quantize(scheme, path)`), measure, and pick one."""
    samples = dataclasses.replace(calibration, labels=None, extras={},
                                  arrays={name: array[:CHECK_SAMPLES] for name, array in calibration.arrays.items()})
    reference = collect_outputs(OrtRunner(float_onnx, threads=threads), samples)
    measurements = []
    for scheme in SCHEMES:
        path = scratch / f"portable.{scheme}.onnx"
        quantize(scheme, path)
        measurements.append(measure_scheme(scheme, path, reference, samples, threads=threads))
    chosen, reason = choose(measurements)
    return chosen, measurements, reason


def scheme_settings(base, scheme: str):
    """QdqSettings for a weight scheme: 'int8' (full 8-bit, VNNI hosts), 'int8-7bit' or 'uint8'."""
    if scheme == "uint8":
        return dataclasses.replace(base, weight_type="uint8", seven_bit_weights=False)
    return dataclasses.replace(base, weight_type="int8", seven_bit_weights=scheme == "int8-7bit")
