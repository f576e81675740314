"""Task kinds: which metrics describe the float model and its drift, and how reports show them."""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from edgepack.calibration.dataset import SampleSet
from edgepack.errors import DataError
from edgepack.evaluation.drift import classification_metrics

RECOMMENDER_TASKS = ("ctr", "ranking")


def check_labels(task: str, data: SampleSet, name: Optional[str]) -> None:
    """Labels that fit the task, else a DataError naming the data: clicks (0 or 1) for ctr, relevance
    grades >= 0 for ranking (classification labels are checked as class indices elsewhere)."""
    labels = data.labels
    if labels is None:
        return
    if task == "ctr" and not np.isin(labels, (0, 1)).all():
        raise DataError(f"{data.role} data {data.source}: labels '{name}' must be clicks (0 or 1) for task 'ctr', "
                        f"found {sorted(set(np.unique(labels).tolist()) - {0, 1})[:5]}; graded relevance needs "
                        "task 'ranking'")
    if task == "ranking" and (labels < 0).any():
        raise DataError(f"{data.role} data {data.source}: labels '{name}' are relevance grades for task 'ranking' "
                        f"and must be >= 0, found {int(labels.min())}")


def check_class_indices(task: str, data: SampleSet, name: Optional[str], outputs: np.ndarray) -> None:
    """Classification labels must index the model's outputs: integers in [0, classes). Checked once the
    float model's outputs show how many classes it has; a DataError names the data and the values."""
    labels = data.labels
    if task != "classification" or labels is None or outputs.ndim != 2:
        return
    classes = outputs.shape[1]
    bad = labels[(labels < 0) | (labels >= classes) | (labels != np.round(labels))]
    if bad.size:
        raise DataError(f"{data.role} data {data.source}: labels '{name}' must be class indices 0..{classes - 1} "
                        f"(the model has {classes} outputs), found {sorted(set(bad.tolist()))[:5]}")


def _recommender(task: str, reference: np.ndarray, artifact: np.ndarray, evaluation: SampleSet, settings) -> dict:
    from edgepack.evaluation.rec_metrics import recommender_metrics

    groups = evaluation.arrays[settings.group_by] if settings.group_by else None
    segments = {name: evaluation.extras[name] for name in settings.segments}
    metrics = recommender_metrics(reference, artifact, evaluation.labels, groups, segments, k=settings.top_k,
                                  probabilistic=task == "ctr")
    shifts = {key: value for key, value in metrics.items() if key.endswith("calibration_shift")}
    metrics.update({f"{key}_abs": abs(value) for key, value in shifts.items() if not math.isnan(value)})
    return metrics


def drift_metrics(task: str, reference: np.ndarray, artifact: np.ndarray, evaluation: SampleSet, settings) -> dict:
    """Metrics of the artifact against the float reference on the evaluation set."""
    if task in RECOMMENDER_TASKS:
        return _recommender(task, reference, artifact, evaluation, settings)
    return classification_metrics(reference, artifact, evaluation.labels)


def quality(task: str, outputs: np.ndarray, evaluation: SampleSet, settings) -> dict:
    """The float model's own quality on the evaluation set."""
    if task in RECOMMENDER_TASKS:
        metrics = _recommender(task, outputs, outputs, evaluation, settings)
        return {key.removeprefix("reference_"): value for key, value in metrics.items()
                if key.startswith("reference_") and "/" not in key} | {"samples": int(len(outputs))}
    return {"accuracy": float((outputs.argmax(axis=1) == evaluation.labels).mean()), "samples": int(len(outputs))}


def headline(task: str) -> str:
    """The one metric that summarises quality (plots, pruning summaries)."""
    return "auc" if task in RECOMMENDER_TASKS else "accuracy"


def columns(task: str, top_k: int = 10) -> list[tuple[str, str, str]]:
    """(header, metric key, format) of the drift table for this task."""
    if task in RECOMMENDER_TASKS:
        logloss = [("logloss", "logloss", ".4f")] if task == "ctr" else []
        return [("AUC", "auc", ".4f"), ("AUC drop", "auc_drop", "+.4f"), *logloss,
                (f"NDCG@{top_k}", f"ndcg@{top_k}", ".4f"), ("NDCG rel. drop", "ndcg_relative_drop", "+.2%"),
                ("Spearman", "spearman", ".4f"), (f"top-{top_k} overlap", "topk_overlap", ".3f")]
    return [("accuracy", "accuracy", ".4f"), ("drop pts", "accuracy_drop", "+.2f"),
            ("top-1 agree", "top1_agreement", ".4f"), ("KL", "kl", ".1e")]


def cell(metrics: dict, key: str, spec: str) -> str:
    """One formatted table cell; '—' when the metric is absent or not a number."""
    value = metrics.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return format(value, spec)


def manifest_columns(manifest: dict) -> list[tuple[str, str, str]]:
    """The drift columns for a bundle, from its task and evaluation settings."""
    return columns(manifest["task"], manifest.get("recipe", {}).get("evaluation", {}).get("top_k", 10))
