"""One benchmark job in a fresh process, so its peak memory is its own."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Optional

import numpy as np

from edgepack.bundle.entries import Latency

if TYPE_CHECKING:
    from edgepack.evaluation.runners import Runner
    from edgepack.recipe.schema import Recipe


@dataclass(frozen=True)
class BenchJob:
    """What to time: the float model of `recipe` (torch), an ONNX file, or a target's artifact."""

    kind: Literal["torch", "onnx", "artifact"]
    batches: dict[int, dict[str, np.ndarray]]
    warmup: int
    repeats: int
    threads: int
    path: Optional[Path] = None
    target: Optional[str] = None
    recipe: Optional["Recipe"] = None


@dataclass(frozen=True)
class JobMeasurement:
    """Latency per batch size and memory of one job, measured in its own process."""

    latency: Latency
    device: str
    steady_allocator: bool
    peak_rss_mb: float
    model_memory_mb: float


def _rss_kb(field: str) -> int:
    """VmRSS (current) or VmHWM (peak) of this process in kB, from /proc (Linux)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
STEADY_THRESHOLD = 64 << 20


def steady_allocator() -> bool:
    """Keep glibc malloc from returning large blocks to the OS after every call.

    In a fresh process glibc serves the multi-MB activation tensors of PyTorch eager by mmap and
    unmaps them on free, so every inference pays page faults (measured here: batch 64 took 20 ms
    instead of 13 ms). A long-running app reaches the steady state this sets; the runtimes with their
    own arenas (onnxruntime) are unaffected. Returns whether the setting was applied.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, STEADY_THRESHOLD)) and \
            bool(libc.mallopt(M_TRIM_THRESHOLD, 4 * STEADY_THRESHOLD))
    except (OSError, AttributeError):
        return False


def _runner(job: BenchJob) -> Runner:
    if job.kind == "torch":
        from edgepack.evaluation.runners import TorchRunner
        from edgepack.model.load import load_model

        assert job.recipe is not None, "a torch job carries the bundle's recipe"
        module = load_model(job.recipe).module
        assert module is not None, "torch jobs are made only for factory and pickle models"
        return TorchRunner(module, job.recipe.input_names, job.threads)
    assert job.path is not None, "onnx and artifact jobs name a file"
    if job.kind == "onnx":
        from edgepack.evaluation.runners import OrtRunner

        return OrtRunner(job.path, threads=job.threads)
    from edgepack.registry import get_target

    assert job.target is not None, "an artifact job names its target"
    return get_target(job.target).runner(job.path, threads=job.threads)


def run(job: BenchJob) -> JobMeasurement:
    """Load the runner, time it at each batch size, and report latency and memory."""
    import torch

    from edgepack.evaluation.latency import measure

    torch.set_num_threads(job.threads)
    steady = steady_allocator()
    baseline_kb = _rss_kb("VmRSS")
    runner = _runner(job)
    latency = {f"batch_{size}": measure(runner, feeds, warmup=job.warmup, repeats=job.repeats)
               for size, feeds in sorted(job.batches.items())}
    peak_kb = _rss_kb("VmHWM")
    return JobMeasurement(latency=latency, device=runner.device, steady_allocator=steady,
                          peak_rss_mb=peak_kb / 1024, model_memory_mb=max(peak_kb - baseline_kb, 0) / 1024)
