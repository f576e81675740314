"""Manifest sections written by optional stages: pruning and distillation, and the isolated benchmark."""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from edgepack.bundle.entries import FileEntry, Latency, Timing, _Strict


class BeforeAfter(_Strict):
    """A count before and after compression."""

    before: int
    after: int


class MacCounts(BeforeAfter):
    """MACs per sample before and after, and the fraction removed."""

    removed_fraction: float


class LowRankLayer(_Strict):
    """One Linear layer considered for truncated-SVD factorization."""

    layer: str
    in_features: int = Field(alias="in")
    out: int
    rank: int
    energy: float
    params_before: int
    params_after: int
    factorized: bool


class LatencyChange(_Strict):
    """Latency of one runtime before and after compression."""

    before: Latency
    after: Latency


class GroupCheck(_Strict):
    """The self-check of one pruned layer group: outputs unchanged when its channels were zeroed."""

    step: int
    group: str
    channels: int
    max_relative_difference: float
    checked: bool


class DistillEpoch(_Strict):
    """One distillation epoch."""

    epoch: int
    loss: float
    validation: float
    validation_kl: float


class Distillation(_Strict):
    """What the recovery training did and which epoch it kept."""

    epochs_run: int
    best_epoch: int
    best_validation: float
    validation_metric: str
    selected_by: str
    stopped: str
    seconds: float
    history: list[DistillEpoch]


class PruningSection(_Strict):
    """Pruning, low-rank factorization and distillation: sizes, latency and quality before and after."""

    params: BeforeAfter
    macs: MacCounts
    size_bytes: BeforeAfter
    lowrank: list[LowRankLayer]
    accuracy: dict[str, float]  # the quality metric per stage: float, pruned (or compressed), distilled
    quality_metric: str
    layers: dict[str, BeforeAfter]
    self_check: list[GroupCheck]
    notes: list[str]
    latency: dict[str, LatencyChange]  # "torch_eager_fp32", "onnxruntime_fp32"
    reload_max_abs_difference: float
    summary: str
    distillation: Optional[Distillation] = None
    files: list[FileEntry] = []


class BenchSettingsEntry(Timing):
    """How the benchmark timed its entries (the in-process figures of `pack` carry no memory note)."""

    batch_sizes: Optional[list[int]] = None
    data: str
    isolation: str
    memory: Optional[str] = None


class BenchRow(_Strict):
    """One timed entry (a float baseline or an artifact) with its ratios against the baselines."""

    name: str
    group: Optional[str] = None
    size_bytes: Optional[int] = None
    latency: Latency
    device: str
    steady_allocator: Optional[bool] = None
    peak_rss_mb: Optional[float] = None
    model_memory_mb: Optional[float] = None
    speedup_vs_onnx_fp32: Optional[dict[str, float]] = None
    speedup_vs_eager: Optional[dict[str, float]] = None
    size_vs_eager: Optional[float] = None


class BenchFigures(_Strict):
    """`edgepack bench`: every entry timed in its own process."""

    settings: BenchSettingsEntry
    rows: list[BenchRow]

    def row(self, name: str) -> Optional[BenchRow]:
        """The row called `name`, if it was timed."""
        return next((row for row in self.rows if row.name == name), None)
