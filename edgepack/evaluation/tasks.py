"""Task kinds as small classes: each owns its label checks, metrics, drift, headline, table columns,
distillation labels, default budget and the budget bounds it accepts.

Nothing else compares task names: code asks `kind(recipe.task)` and calls the answer. A bound's
metric and direction live on its Budget field (edgepack.recipe.budget); a task accepts the bounds
whose field names it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Optional

import numpy as np

from edgepack.calibration.dataset import SampleSet
from edgepack.errors import ConfigError, DataError
from edgepack.evaluation.drift import classification_metrics
from edgepack.recipe.budget import Budget, bounds_for

CHANCE_MARGIN = 0.05  # accuracy within this of the majority class (or AUC within it of 0.5) is "chance"

Column = tuple[str, str, str]  # (header, metric key, format spec)


class TaskKind:
    """What one kind of task measures and how it is shown; subclasses fill in the differences."""

    name: ClassVar[str]
    headline: ClassVar[str]  # the one metric that summarises quality (plots, pruning summaries)
    drop_note: ClassVar[str] = ""  # unit of the drop column, said under the terminal table
    default_bounds: ClassVar[Optional[dict[str, float]]] = None

    def check_labels(self, data: SampleSet, label_name: Optional[str]) -> None:
        """Labels that fit the task, else a DataError naming the data (no check by default)."""

    def check_against_outputs(self, data: SampleSet, label_name: Optional[str], outputs: np.ndarray) -> None:
        """Checks that need the float model's outputs (how many classes it has); none by default."""

    def drift_metrics(self, reference: np.ndarray, artifact: np.ndarray, evaluation: SampleSet,
                      settings: Any) -> dict:
        """Metrics of the artifact against the float reference on the evaluation set."""
        raise NotImplementedError

    def quality(self, outputs: np.ndarray, evaluation: SampleSet, settings: Any) -> dict:
        """The float model's own quality on the evaluation set."""
        raise NotImplementedError

    def columns(self, top_k: int = 10) -> list[Column]:
        """(header, metric key, format) of the drift table."""
        raise NotImplementedError

    def chance_warnings(self, metrics: dict, evaluation: SampleSet) -> list[str]:
        """A warning when the float model scores at chance level (its drift then means little)."""
        return []

    def distillation_labels(self, data: SampleSet, label_name: Optional[str]) -> SampleSet:
        """Distillation labels as the label loss needs them, checked against the task."""
        self.check_labels(data, label_name)
        return data

    def pruning_targets(self, teacher_logits: Any) -> Any:
        """Hard targets from the teacher for the Taylor importance loss (a tensor of class indices)."""
        return teacher_logits.argmax(1)

    def recipe_problems(self, group_by: Optional[str]) -> list[str]:
        """Recipe settings this task cannot work without."""
        return []

    def bounds(self) -> list[str]:
        """The budget fields this task's drift report can be checked against."""
        return bounds_for(self.name)

    def default_budget(self) -> Optional[Budget]:
        """The budget used when a recipe has no `budget` section; None when the user must say."""
        return Budget.model_validate(self.default_bounds) if self.default_bounds is not None else None


class Classification(TaskKind):
    """Class logits [batch, classes] against integer class labels."""

    name = "classification"
    headline = "accuracy"
    drop_note = "; drop in percentage points."
    default_bounds = {"max_accuracy_drop": 0.5, "min_top1_agreement": 0.99}

    def check_against_outputs(self, data: SampleSet, label_name: Optional[str], outputs: np.ndarray) -> None:
        """Labels must index the model's outputs: integers in [0, classes)."""
        labels = data.labels
        if labels is None or outputs.ndim != 2:
            return
        classes = outputs.shape[1]
        bad = labels[(labels < 0) | (labels >= classes) | (labels != np.round(labels))]
        if bad.size:
            found = sorted(set(bad.tolist()))[:5]
            raise DataError(f"{data.role} data {data.source}: labels '{label_name}' must be class indices "
                            f"0..{classes - 1} (the model has {classes} outputs), found {found}")

    def drift_metrics(self, reference: np.ndarray, artifact: np.ndarray, evaluation: SampleSet,
                      settings: Any) -> dict:
        return classification_metrics(reference, artifact, evaluation.labels)

    def quality(self, outputs: np.ndarray, evaluation: SampleSet, settings: Any) -> dict:
        return {"accuracy": float((outputs.argmax(axis=1) == evaluation.labels).mean()), "samples": int(len(outputs))}

    def columns(self, top_k: int = 10) -> list[Column]:
        return [("accuracy", "accuracy", ".4f"), ("drop pts", "accuracy_drop", "+.2f"),
                ("top-1 agree", "top1_agreement", ".4f"), ("KL", "kl", ".1e")]

    def chance_warnings(self, metrics: dict, evaluation: SampleSet) -> list[str]:
        if evaluation.labels is None or "accuracy" not in metrics:
            return []
        _, counts = np.unique(evaluation.labels, return_counts=True)
        majority = float(counts.max() / counts.sum())
        if metrics["accuracy"] > majority + CHANCE_MARGIN:
            return []
        return [f"the float model scores accuracy {metrics['accuracy']:.3f} on the evaluation data, at chance "
                f"level (always predicting the most frequent class scores {majority:.3f}): its weights, its "
                "preprocessing or the labels are likely wrong, and drift against it means little"]


class _Recommender(TaskKind):
    """A score per (user, item) row; ranking metrics per user group, AUC against the labels."""

    headline = "auc"
    drop_note = "."
    probabilistic: ClassVar[bool]

    def drift_metrics(self, reference: np.ndarray, artifact: np.ndarray, evaluation: SampleSet,
                      settings: Any) -> dict:
        from edgepack.evaluation.rec_metrics import recommender_metrics

        groups = evaluation.arrays[settings.group_by] if settings.group_by else None
        segments = {name: evaluation.extras[name] for name in settings.segments}
        metrics = recommender_metrics(reference, artifact, evaluation.labels, groups, segments, k=settings.top_k,
                                      probabilistic=self.probabilistic)
        shifts = {key: value for key, value in metrics.items() if key.endswith("calibration_shift")}
        metrics.update({f"{key}_abs": abs(value) for key, value in shifts.items() if not math.isnan(value)})
        return metrics

    def quality(self, outputs: np.ndarray, evaluation: SampleSet, settings: Any) -> dict:
        metrics = self.drift_metrics(outputs, outputs, evaluation, settings)
        return {key.removeprefix("reference_"): value for key, value in metrics.items()
                if key.startswith("reference_") and "/" not in key} | {"samples": int(len(outputs))}

    def columns(self, top_k: int = 10) -> list[Column]:
        return [("AUC", "auc", ".4f"), ("AUC drop", "auc_drop", "+.4f"), *self._extra_columns(),
                (f"NDCG@{top_k}", f"ndcg@{top_k}", ".4f"), ("NDCG rel. drop", "ndcg_relative_drop", "+.2%"),
                ("Spearman", "spearman", ".4f"), (f"top-{top_k} overlap", "topk_overlap", ".3f")]

    def _extra_columns(self) -> list[Column]:
        return []

    def chance_warnings(self, metrics: dict, evaluation: SampleSet) -> list[str]:
        if "auc" in metrics and metrics["auc"] <= 0.5 + CHANCE_MARGIN:
            return [f"the float model's AUC is {metrics['auc']:.3f} on the evaluation data, at chance level: its "
                    "weights, its inputs or the labels are likely wrong, and drift against it means little"]
        return []


class Ctr(_Recommender):
    """Click-through rate: one logit per row, clicks (0/1) as labels."""

    name = "ctr"
    probabilistic = True

    def check_labels(self, data: SampleSet, label_name: Optional[str]) -> None:
        if data.labels is not None and not np.isin(data.labels, (0, 1)).all():
            found = sorted(set(np.unique(data.labels).tolist()) - {0, 1})[:5]
            raise DataError(f"{data.role} data {data.source}: labels '{label_name}' must be clicks (0 or 1) for task "
                            f"'ctr', found {found}; graded relevance needs task 'ranking'")

    def _extra_columns(self) -> list[Column]:
        return [("logloss", "logloss", ".4f")]

    def pruning_targets(self, teacher_logits: Any) -> Any:
        return (teacher_logits > 0).long() if teacher_logits.dim() == 1 else teacher_logits.argmax(1)


class Ranking(_Recommender):
    """Relevance scores ranked within each user's group; graded relevance (>= 0) as labels."""

    name = "ranking"
    probabilistic = False

    def check_labels(self, data: SampleSet, label_name: Optional[str]) -> None:
        if data.labels is not None and (data.labels < 0).any():
            raise DataError(f"{data.role} data {data.source}: labels '{label_name}' are relevance grades for task "
                            f"'ranking' and must be >= 0, found {int(data.labels.min())}")

    def distillation_labels(self, data: SampleSet, label_name: Optional[str]) -> SampleSet:
        """Relevance grades become relevant / not (grade > 0): the label loss is binary."""
        self.check_labels(data, label_name)
        if data.labels is None:
            return data
        return dataclasses.replace(data, labels=(data.labels > 0).astype(np.int64))

    def pruning_targets(self, teacher_logits: Any) -> Any:
        # Ranking scores have no threshold of their own: the upper half of the scores counts as positive.
        if teacher_logits.dim() == 1:
            return (teacher_logits > teacher_logits.median()).long()
        return teacher_logits.argmax(1)

    def recipe_problems(self, group_by: Optional[str]) -> list[str]:
        if group_by is None:
            return ["task 'ranking' needs evaluation.group_by (the input that identifies a user)"]
        return []


TASKS: dict[str, TaskKind] = {task.name: task for task in (Classification(), Ctr(), Ranking())}


def kind(name: str) -> TaskKind:
    """The task kind called `name`; a ConfigError lists the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"unknown task '{name}'; use one of {', '.join(TASKS)}") from None


def cell(metrics: dict, key: str, spec: str) -> str:
    """One formatted table cell; '—' when the metric is absent or not a number."""
    value = metrics.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return format(value, spec)


def manifest_columns(manifest: Any) -> list[Column]:
    """The drift columns for a bundle, from its task and evaluation settings."""
    if isinstance(manifest, dict):
        task, recipe = manifest["task"], manifest.get("recipe", {})
    else:
        task, recipe = manifest.task, manifest.recipe
    return kind(task).columns(recipe.get("evaluation", {}).get("top_k", 10))
