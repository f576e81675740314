"""One benchmark job in a fresh process, so its peak memory is its own."""

from __future__ import annotations

from pathlib import Path


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


def _runner(job: dict):
    if job["kind"] == "torch":
        from edgepack.evaluation.runners import TorchRunner
        from edgepack.model.load import load_model
        from edgepack.recipe.load import parse_recipe

        recipe = parse_recipe(job["recipe"], source="bundle manifest", base_dir=Path(job["base_dir"]))
        return TorchRunner(load_model(recipe).module, recipe.input_names, job["threads"])
    if job["kind"] == "onnx":
        from edgepack.evaluation.runners import OrtRunner

        return OrtRunner(Path(job["path"]), threads=job["threads"])
    from edgepack.registry import get_target

    return get_target(job["target"]).runner(Path(job["path"]), threads=job["threads"])


def run(job: dict) -> dict:
    """Load the runner, time it at each batch size, and report latency and memory."""
    import torch

    from edgepack.evaluation.latency import measure

    torch.set_num_threads(job["threads"])
    steady = steady_allocator()
    baseline_kb = _rss_kb("VmRSS")
    runner = _runner(job)
    latency = {f"batch_{size}": measure(runner, feeds, warmup=job["warmup"], repeats=job["repeats"])
               for size, feeds in sorted(job["batches"].items())}
    peak_kb = _rss_kb("VmHWM")
    return {"latency": latency, "device": runner.device, "steady_allocator": steady,
            "peak_rss_mb": peak_kb / 1024, "model_memory_mb": max(peak_kb - baseline_kb, 0) / 1024}
