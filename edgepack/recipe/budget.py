"""The drift budget: each bound declares, on its own field, the metric it limits, the direction, and
the tasks that produce that metric. Nothing else maps bounds to metrics, so they cannot drift apart.

Rules (checked when the recipe is read, before any work):
- a bound the recipe's task does not measure is an error naming the task;
- a budget with no bound is an error unless the recipe says `budget: none` on purpose (drift is
  then measured and reported, never checked);
- without a `budget` section, the task's default applies (edgepack.evaluation.tasks): classification
  gets max_accuracy_drop 0.5 and min_top1_agreement 0.99; ctr and ranking must say what they tolerate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

CLASSIFICATION = ("classification",)
RECOMMENDER = ("ctr", "ranking")


@dataclass(frozen=True)
class MissingBudget:
    """Stands for an absent `budget` section of a task without a default, so the error names the field."""

    task: str


@dataclass(frozen=True)
class BoundSpec:
    """What a budget field limits: the metric's name in the drift report, max or min, and the tasks."""

    metric: str
    direction: Literal["max", "min"]
    tasks: tuple[str, ...]


def _bound(metric: str, direction: Literal["max", "min"], tasks: tuple[str, ...], description: str = "",
           **constraints: Any) -> Any:
    return Field(None, description=description, **constraints,
                 json_schema_extra={"metric": metric, "direction": direction, "tasks": list(tasks)})


class Budget(BaseModel):
    """Drift budget: a target fails when any given bound is exceeded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_accuracy_drop: Optional[float] = _bound("accuracy_drop", "max", CLASSIFICATION, "percentage points", ge=0.0)
    min_top1_agreement: Optional[float] = _bound("top1_agreement", "min", CLASSIFICATION, ge=0.0, le=1.0)
    max_kl: Optional[float] = _bound("kl", "max", CLASSIFICATION, "mean KL(float || artifact)", ge=0.0)
    max_relative_l2: Optional[float] = _bound("relative_l2", "max", CLASSIFICATION, "of the logits", ge=0.0)
    max_auc_drop: Optional[float] = _bound("auc_drop", "max", RECOMMENDER, "reference AUC minus artifact AUC")
    max_logloss_increase: Optional[float] = _bound("logloss_increase", "max", ("ctr",))
    max_ndcg_relative_drop: Optional[float] = _bound("ndcg_relative_drop", "max", RECOMMENDER,
                                                     "(reference - artifact) / reference")
    max_hr_drop: Optional[float] = _bound("hr_drop", "max", RECOMMENDER)
    max_recall_drop: Optional[float] = _bound("recall_drop", "max", RECOMMENDER)
    max_calibration_shift: Optional[float] = _bound("calibration_shift_abs", "max", ("ctr",),
                                                    "|mean predicted probability change|", ge=0.0)
    min_reference_accuracy: Optional[float] = _bound(
        "reference_accuracy", "min", CLASSIFICATION, "floor on the float model's own accuracy (a fraction): a broken "
        "model or mismatched evaluation data fails instead of drifting 0.0 from its broken copy", ge=0.0, le=1.0)
    min_reference_auc: Optional[float] = _bound(
        "reference_auc", "min", RECOMMENDER, "floor on the float model's own AUC", ge=0.0, le=1.0)
    min_spearman: Optional[float] = _bound("spearman", "min", RECOMMENDER, ge=-1.0, le=1.0)
    min_topk_overlap: Optional[float] = _bound("topk_overlap", "min", RECOMMENDER, ge=0.0, le=1.0)
    segments: bool = Field(True, description="ctr/ranking: apply the drift bounds to every segment too")
    disabled: bool = Field(False, description="set by `budget: none`: drift is measured and reported, not checked")

    @model_validator(mode="before")
    @classmethod
    def _none_means_disabled(cls, value: Any) -> Any:
        if isinstance(value, MissingBudget):
            raise ValueError(f"task '{value.task}' has no default budget; say what drift is tolerated, e.g. "
                             "budget: {max_auc_drop: 0.003}, or write 'budget: none'")
        if isinstance(value, str) and value.strip().lower() == "none":
            return {"disabled": True}
        return value

    @model_validator(mode="after")
    def _disabled_has_no_bounds(self) -> "Budget":
        if self.disabled and self.limits():
            raise ValueError("budget: none cannot be combined with bounds; remove one or the other")
        return self

    def limits(self) -> dict[str, float]:
        """The bounds that are set, by field name."""
        return {key: getattr(self, key) for key in BOUND_SPECS if getattr(self, key) is not None}

    def problems_for(self, task: str) -> list[str]:
        """Why this budget does not fit `task` (empty when it does)."""
        if self.disabled:
            return []
        wrong = [key for key in self.limits() if task not in BOUND_SPECS[key].tasks]
        problems = [f"budget.{key} limits '{BOUND_SPECS[key].metric}', which task '{task}' does not measure "
                    f"(it applies to {', '.join(BOUND_SPECS[key].tasks)})" for key in wrong]
        if not self.limits():
            problems.append("the budget sets no bound: every target would pass unchecked; add bounds or write "
                            "'budget: none' to measure drift without a verdict")
        if problems:
            problems[-1] += f"; bounds for task '{task}': {', '.join(bounds_for(task))}"
        return problems


def _spec(extra: dict[str, Any]) -> BoundSpec:
    return BoundSpec(metric=str(extra["metric"]), direction=extra["direction"],
                     tasks=tuple(str(task) for task in extra["tasks"]))


BOUND_SPECS: dict[str, BoundSpec] = {
    name: _spec(extra) for name, field in Budget.model_fields.items()
    if isinstance(extra := field.json_schema_extra, dict) and "metric" in extra
}


def bounds_for(task: str) -> list[str]:
    """The budget fields a task's drift report can be checked against."""
    return [name for name, spec in BOUND_SPECS.items() if task in spec.tasks]
