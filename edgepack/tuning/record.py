"""What a tuning search tried and chose, per target: the manifest's `tuning` section."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import Field

from edgepack.bundle.entries import _Strict


class TrialRecord(_Strict):
    """One candidate configuration, built by the target and run in its runtime on held-out calibration data."""

    label: str
    config: dict[str, Any]  # a `tuned` entry of the recipe (edgepack.recipe.schema.TunedTarget)
    passed: bool
    metrics: dict[str, float] = Field(default_factory=dict)  # drift against the float model on the holdout
    failures: list[str] = Field(default_factory=list)
    latency_ms: Optional[float] = None  # median at the recipe's latency batch size, this host
    latency_batch: Optional[int] = None
    size_bytes: Optional[int] = None
    seconds: float = 0.0  # build + run time of this trial
    error: Optional[str] = None


class SensitivityRecord(_Strict):
    """One layer's weight-rounding sensitivity (edgepack.tuning.sensitivity)."""

    module: str
    position: int
    alone: float
    left_out: Optional[float] = None
    target_names: dict[str, list[str]] = Field(default_factory=dict)


class TuningRecord(_Strict):
    """The search of one target: every trial in the order tried, the one chosen and why."""

    target: str
    met_budget: bool
    chosen: Optional[int] = None  # index into trials
    reason: str
    trials: list[TrialRecord]
    fit_samples: int
    holdout_samples: int
    bounds_checked: list[str]
    bounds_not_checked: list[str] = Field(default_factory=list)  # they need labels the calibration data lacks
    sensitivity: list[SensitivityRecord] = Field(default_factory=list)  # most sensitive layers first
    bias_correction: list[dict[str, Any]] = Field(default_factory=list)  # largest corrections first
    evaluated_by: Optional[str] = None  # how candidates ran: one at a time, a process pool, Ray (edgepack.tuning.pool)
    latency_measured: Optional[str] = None  # when trials' latency was measured: always with no other candidate running

    @property
    def chosen_trial(self) -> Optional[TrialRecord]:
        """The trial whose configuration pack builds."""
        return self.trials[self.chosen] if self.chosen is not None else None
