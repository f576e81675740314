"""Drift measurement shared by every target: run a reference and an artifact on the same data, compare."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from edgepack.calibration.dataset import SampleSet
from edgepack.evaluation.runners import Runner
from edgepack.recipe.budget import BOUND_SPECS


@dataclass(frozen=True)
class DriftCheck:
    """One budget bound compared with its measurement."""

    metric: str
    value: float
    limit: float
    bound: str  # "max" or "min"

    @property
    def passed(self) -> bool:
        """Whether the measurement is within the bound."""
        return self.value <= self.limit if self.bound == "max" else self.value >= self.limit

    def describe(self) -> str:
        """One line such as 'accuracy_drop 0.6 > max 0.5'."""
        sign = ("<=" if self.passed else ">") if self.bound == "max" else (">=" if self.passed else "<")
        return f"{self.metric} {self.value:.4g} {sign} {self.bound} {self.limit:g}"


@dataclass(frozen=True)
class DriftReport:
    """Metrics of the reference and the artifact, and the budget checks."""

    metrics: dict[str, float]
    checks: tuple[DriftCheck, ...]

    @property
    def passed(self) -> bool:
        """True when every check passed."""
        return all(check.passed for check in self.checks)

    @property
    def failures(self) -> list[DriftCheck]:
        """The checks that failed."""
        return [check for check in self.checks if not check.passed]

    def to_dict(self) -> dict:
        """JSON-ready form for the manifest."""
        return {"metrics": self.metrics, "passed": self.passed,
                "checks": [{"metric": c.metric, "value": c.value, "limit": c.limit, "bound": c.bound,
                            "passed": c.passed} for c in self.checks]}


def collect_outputs(runner: Runner, sample_set: SampleSet) -> np.ndarray:
    """First output of `runner` over every batch of the set, concatenated, as float64."""
    parts = [np.asarray(runner(batch)[0], dtype=np.float64) for batch in sample_set.batches()]
    return np.concatenate(parts)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def classification_metrics(reference: np.ndarray, artifact: np.ndarray, labels: Optional[np.ndarray]) -> dict:
    """Accuracy of both, accuracy drop in points, top-1 agreement, logit errors and mean KL(ref || artifact)."""
    if reference.shape != artifact.shape:
        raise ValueError(f"output shapes differ: reference {reference.shape}, artifact {artifact.shape}")
    reference_top1, artifact_top1 = reference.argmax(axis=1), artifact.argmax(axis=1)
    p, q = _softmax(reference), _softmax(artifact)
    eps = 1e-12
    metrics = {
        "top1_agreement": float((reference_top1 == artifact_top1).mean()),
        "max_abs_error": float(np.abs(reference - artifact).max()),
        "relative_l2": float(np.linalg.norm(reference - artifact)) / max(float(np.linalg.norm(reference)), eps),
        "kl": float(np.mean(np.sum(p * (np.log(p + eps) - np.log(q + eps)), axis=1))),
        "samples": int(len(reference)),
    }
    if labels is not None:
        metrics["reference_accuracy"] = float((reference_top1 == labels).mean())
        metrics["accuracy"] = float((artifact_top1 == labels).mean())
        metrics["accuracy_drop"] = 100.0 * (metrics["reference_accuracy"] - metrics["accuracy"])
    return metrics


def check_budget(metrics: dict, budget: dict) -> DriftReport:
    """Compare metrics with every bound the budget sets (None means unbounded); each bound's metric
    and direction come from its field in edgepack.recipe.budget.Budget.

    A bound whose metric was not measured fails (value NaN): a budget never passes unchecked. With
    `budget["segments"]`, a bound also applies to the same metric in every segment (keys like
    'user_segment=0/auc_drop'), so a drift hidden in the average still fails. A segment metric that
    is not a number (AUC of a one-class segment) is not checked; an overall NaN fails."""
    checks = []
    for key, limit in budget.items():
        if key in ("segments", "disabled") or limit is None:
            continue
        if key not in BOUND_SPECS:
            raise ValueError(f"unknown budget bound '{key}' (known: {', '.join(BOUND_SPECS)})")
        spec = BOUND_SPECS[key]
        checks.append(DriftCheck(metric=spec.metric, value=float(metrics.get(spec.metric, math.nan)),
                                 limit=float(limit), bound=spec.direction))
        if budget.get("segments"):
            for name in (name for name in metrics if name.endswith("/" + spec.metric)):
                if not math.isnan(float(metrics[name])):
                    checks.append(DriftCheck(metric=name, value=float(metrics[name]), limit=float(limit),
                                             bound=spec.direction))
    return DriftReport(metrics=metrics, checks=tuple(checks))
