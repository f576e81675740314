"""Latency: median wall time of a runner on a fixed batch, after warm-up."""

from __future__ import annotations

import statistics
import time
from typing import Optional

import numpy as np

from edgepack.bundle.entries import Latency, LatencyFigure
from edgepack.evaluation.runners import Runner
from edgepack.recipe.schema import LatencyConfig


def make_batch(arrays: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    """The first `batch_size` samples, tiled when the data set is smaller."""
    batch = {}
    for name, array in arrays.items():
        repeats = -(-batch_size // len(array))
        tiled = np.concatenate([array] * repeats) if repeats > 1 else array
        batch[name] = np.ascontiguousarray(tiled[:batch_size])
    return batch


MIN_TIMED_RUNS = 3  # a time-bounded measurement still takes a median of at least this many runs


def measure(runner: Runner, batch: dict[str, np.ndarray], *, warmup: int, repeats: int,
            max_seconds: Optional[float] = None) -> LatencyFigure:
    """Median and 90th percentile in milliseconds over `repeats` timed runs, or fewer (at least
    MIN_TIMED_RUNS) when they pass `max_seconds`: a large model at batch 64 under load can take tens of
    seconds a call. The figure records how many runs were timed and, when cut short, how many were asked."""
    for _ in range(warmup):
        runner(batch)
    times: list[float] = []
    deadline = time.perf_counter() + max_seconds if max_seconds is not None else None
    while len(times) < repeats:
        started = time.perf_counter()
        runner(batch)
        times.append((time.perf_counter() - started) * 1000.0)
        if deadline is not None and len(times) >= MIN_TIMED_RUNS and time.perf_counter() > deadline:
            break
    times.sort()
    entry = LatencyFigure(median_ms=statistics.median(times),
                          p90_ms=times[min(len(times) - 1, int(0.9 * len(times)))], repeats=len(times), warmup=warmup)
    if len(times) < repeats:
        entry.cut_short = f"{len(times)} of {repeats} timed runs: stopped after {max_seconds:g} s"
    fixed = runner.fixed_batch
    rows = len(next(iter(batch.values())))
    if fixed > 1 and rows % fixed:
        calls = -(-rows // fixed)
        entry.padded = f"the artifact has a fixed batch of {fixed}: {rows} row(s) ran as {calls} padded call(s)"
    return entry


def measure_batches(runner: Runner, arrays: dict[str, np.ndarray], settings: LatencyConfig) -> Latency:
    """Latency at batch 1 and at the recipe's larger batch size, labelled with where it ran."""
    return {f"batch_{size}": measure(runner, make_batch(arrays, size), warmup=settings.warmup,
                                     repeats=settings.repeats, max_seconds=settings.max_seconds)
            .model_copy(update={"device": runner.device})
            for size in sorted({1, settings.batch_size})}
