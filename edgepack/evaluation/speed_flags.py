"""Flag an artifact meant for this host that runs slower than the fp32 ONNX it came from, and say why.

The reason is measured: onnxruntime's profiler splits one artifact's run into time per op type,
so the flag names the ops that stay float, the QuantizeLinear/DequantizeLinear and layout
(Transpose/Reorder) work around the integer layers, and the integer kernels' own share.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np

from edgepack.benchmark.bench import ONNX_FP32
from edgepack.bundle.entries import Latency, batch_of
from edgepack.bundle.manifest import ArtifactEntry, BenchFigures, Manifest, SlowerThanFp32
from edgepack.evaluation.latency import make_batch
from edgepack.evaluation.runners import FAKE_QUANT_DEVICE, ort_session
from edgepack.isa import host_isa

INTEGER_OPS = frozenset({"QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger", "ConvInteger",
                         "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "GatherBlockQuantized"})
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
LAYOUT_OPS = frozenset({"Transpose", "ReorderInput", "ReorderOutput", "Reshape", "Flatten", "Squeeze", "Unsqueeze"})
PROFILED_RUNS = 10


def op_time_shares(path: Path, feeds: dict[str, np.ndarray], *, threads: int) -> dict[str, float]:
    """Share of kernel time per op type over PROFILED_RUNS runs of an ONNX model (after one warm-up)."""
    with tempfile.TemporaryDirectory(prefix="edgepack-profile-") as folder:
        session = ort_session(path, threads=threads, profile_prefix=str(Path(folder) / "profile"))
        inputs = {node.name: feeds[node.name] for node in session.get_inputs()}
        for _ in range(PROFILED_RUNS + 1):
            session.run(None, inputs)
        events = json.loads(Path(session.end_profiling()).read_text())
    times: Counter[str] = Counter()
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            times[event["args"]["op_name"]] += event["dur"]
    total = sum(times.values()) or 1
    return {op: value / total for op, value in times.most_common()}


def _kind(op: str) -> str:
    if op in INTEGER_OPS:
        return "integer kernels"
    if op in QDQ_OPS:
        return "quantize/dequantize"
    if op in LAYOUT_OPS:
        return "layout"
    return "float ops"


def explain(shares: dict[str, float]) -> str:
    """One sentence: time by kind (integer, Q/DQ, layout, float) and the heaviest op types."""
    kinds: dict[str, float] = {}
    for op, share in shares.items():
        kinds[_kind(op)] = kinds.get(_kind(op), 0.0) + share
    top = ", ".join(f"{op} {share:.0%}" for op, share in list(shares.items())[:5])
    split = ", ".join(f"{kind} {share:.0%}" for kind, share in sorted(kinds.items(), key=lambda item: -item[1]))
    isa = host_isa()
    hardware = ("" if isa.has_int32_dot_product or not isa.is_x86 else
                "; this CPU has no VNNI/AMX, so its u8 x s8 kernels (vpmaddubsw + vpmaddwd) do little more work per "
                "cycle than fp32 FMA and do not pay for the quantize/dequantize and layout work around small layers")
    return f"kernel time: {split} (top ops: {top}){hardware}"


def flag_slow_artifacts(manifest: Manifest, bundle: Path, arrays: dict[str, np.ndarray], *, threads: int,
                        targets: frozenset[str]) -> None:
    """Set `slower_than_fp32` on every artifact of `targets` whose latency at some batch size exceeds
    the fp32 ONNX reference's in the same measurement (bench if present, else in-process)."""
    reference_latency, latency_of = _latencies(manifest)
    for name, item in manifest.artifacts():
        # an emulated run (fake-quant) is not this artifact's speed on this host: nothing to explain
        if name not in targets or item.format != "onnx" or item.validated_on.execution_provider.endswith(
                FAKE_QUANT_DEVICE):
            continue
        latency = latency_of(item)
        slower = [key for key in latency if key in reference_latency
                  and latency[key].median_ms > reference_latency[key].median_ms]
        if not slower:
            continue
        key = slower[-1]
        feeds = make_batch(arrays, batch_of(key))
        item.slower_than_fp32 = SlowerThanFp32(
            batch=batch_of(key), artifact_ms=latency[key].median_ms, fp32_onnx_ms=reference_latency[key].median_ms,
            batches=[batch_of(k) for k in slower],
            reason=explain(op_time_shares(bundle / item.path, feeds, threads=threads)))


def _latencies(manifest: Manifest) -> tuple[Latency, Callable[[ArtifactEntry], Latency]]:
    """The fp32 ONNX reference's latency and a lookup of each artifact's, from one measurement."""
    bench = manifest.bench
    if bench is not None:
        reference = bench.row(ONNX_FP32)
        if reference is not None:
            return reference.latency, lambda item: _bench_latency(bench, item)
    return manifest.source_model.reference_onnx_latency, lambda item: item.latency


def _bench_latency(bench: BenchFigures, item: ArtifactEntry) -> Latency:
    row = bench.row(item.path)
    return row.latency if row is not None else item.latency
