"""Task behaviour through the task kinds of edgepack.evaluation.tasks: the labels each task accepts,
the metrics it measures, its headline metric and its report columns."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgepack.calibration.dataset import SampleSet
from edgepack.errors import DataError
from edgepack.evaluation import tasks
from edgepack.recipe.schema import EvaluationConfig
from tests.helpers import sample_set

RNG = np.random.default_rng(0)
USERS = np.repeat(np.arange(8), 6)  # 8 users with 6 candidates each
SEGMENT = (USERS >= 4).astype(np.int64)  # 0 = cold, 1 = warm
LOGITS = RNG.normal(size=len(USERS)).astype(np.float32)
CLICKS = (RNG.random(len(USERS)) < 1 / (1 + np.exp(-LOGITS))).astype(np.int64)
GRADES = np.where(CLICKS == 1, RNG.integers(1, 4, len(USERS)), 0)
CLASS_LOGITS = RNG.normal(size=(40, 5)).astype(np.float32)
CLASSES = CLASS_LOGITS.argmax(1)


def settings(top_k: int = 3) -> EvaluationConfig:
    """The recipe's evaluation section: per-user ranking metrics and a cold/warm segment."""
    return EvaluationConfig(path="eval.npz", labels="click", group_by="user", segments=["segment"], top_k=top_k)


def recommender_set(labels) -> SampleSet:
    """Recommender evaluation data: the first len(labels) rows' users and segments, with `labels`."""
    rows = len(labels)
    return sample_set({"user": USERS[:rows]}, labels, extras={"segment": SEGMENT[:rows]})


# labels each task accepts


def test_ctr_labels_must_be_clicks_and_point_to_ranking():
    tasks.kind("ctr").check_labels(recommender_set(CLICKS), "click")
    with pytest.raises(DataError, match=r"^evaluation data evaluation\.npz: labels 'relevance' must be clicks "
                                        r"\(0 or 1\) for task 'ctr', found \[2, 3\]; graded relevance needs task "
                                        r"'ranking'$"):
        tasks.kind("ctr").check_labels(recommender_set(np.array([0, 1, 2, 3, 2])), "relevance")


def test_ranking_labels_are_grades_of_at_least_zero():
    tasks.kind("ranking").check_labels(recommender_set(GRADES), "relevance")
    with pytest.raises(DataError, match=r"labels 'relevance' are relevance grades for task 'ranking' and must be "
                                        r">= 0, found -2$"):
        tasks.kind("ranking").check_labels(recommender_set(np.array([0, 3, -1, -2])), "relevance")


def test_classification_labels_and_absent_labels_are_not_checked_here():
    tasks.kind("classification").check_labels(sample_set({"x": CLASS_LOGITS}, [7, -3]), "label")
    for task in ("classification", "ctr", "ranking"):
        tasks.kind(task).check_labels(sample_set({"x": CLASS_LOGITS}), None)


@pytest.mark.parametrize("labels, found", [([0, 4, 5, 1], "[5]"), ([1.5, 2.0], "[1.5]"), ([-1, 0, 9, 7], "[-1, 7, 9]")])
def test_class_indices_must_index_the_outputs(labels, found):
    outputs = np.zeros((len(labels), 5), np.float32)
    with pytest.raises(DataError) as info:
        tasks.kind("classification").check_against_outputs(sample_set({"x": outputs}, labels), "label", outputs)
    assert str(info.value) == (f"evaluation data evaluation.npz: labels 'label' must be class indices 0..4 "
                               f"(the model has 5 outputs), found {found}")


def test_class_indices_in_range_or_other_tasks_pass():
    outputs = np.zeros((4, 5), np.float32)
    tasks.kind("classification").check_against_outputs(sample_set({"x": outputs}, [0, 4, 2, 2]), "label", outputs)
    tasks.kind("ctr").check_against_outputs(sample_set({"x": outputs}, [7, 9, 9, 9]), "click", outputs)
    one_logit = np.zeros(4, np.float32)  # one output per row: no class count to check against
    tasks.kind("classification").check_against_outputs(sample_set({"x": outputs}, [7, 9, 9, 9]), "label", one_logit)


def test_only_the_first_five_bad_labels_are_named():
    outputs = np.zeros((8, 2), np.float32)
    with pytest.raises(DataError, match=r"found \[2, 3, 4, 5, 6\]$"):
        tasks.kind("classification").check_against_outputs(sample_set({"x": outputs}, [9, 8, 7, 6, 5, 4, 3, 2]),
                                                            "label", outputs)


# metrics each task measures


def test_classification_drift_of_a_perfect_copy_and_of_a_changed_row():
    evaluation = sample_set({"x": CLASS_LOGITS}, CLASSES)
    same = tasks.kind("classification").drift_metrics(CLASS_LOGITS, CLASS_LOGITS.copy(), evaluation, settings())
    assert set(same) == {"top1_agreement", "max_abs_error", "relative_l2", "kl", "samples", "reference_accuracy",
                         "accuracy", "accuracy_drop"}
    assert same["top1_agreement"] == 1.0 and same["accuracy_drop"] == 0.0 and same["kl"] == pytest.approx(0, abs=1e-9)
    changed = CLASS_LOGITS.copy()
    changed[0] = np.roll(changed[0], 1)  # row 0's top class moves
    drift = tasks.kind("classification").drift_metrics(CLASS_LOGITS, changed, evaluation, settings())
    assert drift["top1_agreement"] == pytest.approx(39 / 40) and drift["accuracy_drop"] == pytest.approx(100 / 40)
    assert drift["kl"] > 0 and drift["samples"] == 40


def test_ctr_drift_covers_ranking_calibration_and_every_segment():
    shifted = LOGITS + 0.5  # same order, higher click probabilities
    drift = tasks.kind("ctr").drift_metrics(LOGITS, shifted, recommender_set(CLICKS), settings())
    overall = {"auc_drop", "logloss_increase", "ndcg_relative_drop", "hr_drop", "recall_drop", "calibration_shift",
               "calibration_shift_abs", "spearman", "topk_overlap", "max_abs_error", "samples"}
    assert overall <= set(drift)
    for segment in ("segment=0", "segment=1"):
        assert {f"{segment}/auc_drop", f"{segment}/logloss_increase", f"{segment}/calibration_shift_abs"} <= set(drift)
        assert drift[f"{segment}/samples"] == 24
    assert drift["auc_drop"] == pytest.approx(0) and drift["spearman"] == pytest.approx(1)
    assert drift["topk_overlap"] == 1.0 and drift["ndcg_relative_drop"] == pytest.approx(0)
    assert drift["calibration_shift"] > 0 and drift["calibration_shift_abs"] == drift["calibration_shift"]
    assert drift["max_abs_error"] == pytest.approx(0.5)
    reversed_order = tasks.kind("ctr").drift_metrics(LOGITS, -LOGITS, recommender_set(CLICKS), settings())
    assert reversed_order["auc_drop"] > 0.2 and reversed_order["spearman"] == pytest.approx(-1)


def test_ranking_drift_has_no_probability_metrics():
    drift = tasks.kind("ranking").drift_metrics(LOGITS, LOGITS * 2, recommender_set(GRADES), settings())
    assert {"auc_drop", "ndcg_relative_drop", "hr_drop", "spearman", "topk_overlap"} <= set(drift)
    assert not [key for key in drift if "logloss" in key or "calibration" in key]
    assert drift["ndcg_relative_drop"] == pytest.approx(0) and drift["spearman"] == pytest.approx(1)


def test_quality_of_the_float_model_per_task():
    evaluation = sample_set({"x": CLASS_LOGITS}, CLASSES)
    labels = CLASSES.copy()
    labels[:10] = (labels[:10] + 1) % 5
    assert tasks.kind("classification").quality(CLASS_LOGITS, sample_set({"x": CLASS_LOGITS}, labels), settings()) == {
        "accuracy": 0.75, "samples": 40}
    assert tasks.kind("classification").quality(CLASS_LOGITS, evaluation, settings())["accuracy"] == 1.0
    ctr = tasks.kind("ctr").quality(LOGITS, recommender_set(CLICKS), settings())
    assert set(ctr) == {"auc", "logloss", "mean_predicted", "observed_rate", "ndcg@3", "hr@3", "recall@3", "samples"}
    assert 0.5 < ctr["auc"] <= 1 and ctr["samples"] == len(LOGITS)
    assert ctr["observed_rate"] == pytest.approx(CLICKS.mean())
    ranking = tasks.kind("ranking").quality(LOGITS, recommender_set(GRADES), settings(top_k=5))
    assert set(ranking) == {"auc", "ndcg@5", "hr@5", "recall@5", "samples"}


def test_headline_metric_per_task():
    assert tasks.kind("classification").headline == "accuracy"
    assert tasks.kind("ctr").headline == tasks.kind("ranking").headline == "auc"


# report columns


def test_columns_name_metrics_the_task_measures():
    cases = {"classification": (CLASS_LOGITS, sample_set({"x": CLASS_LOGITS}, CLASSES)),
             "ctr": (LOGITS, recommender_set(CLICKS)), "ranking": (LOGITS, recommender_set(GRADES))}
    for task, (outputs, evaluation) in cases.items():
        measured = tasks.kind(task).drift_metrics(outputs, outputs * 0.9, evaluation, settings(top_k=5))
        columns = tasks.kind(task).columns(top_k=5)
        missing = [key for _, key, _ in columns if key not in measured]
        assert not missing, f"{task}: columns without a metric: {missing}"
        assert not [key for _, key, _ in columns if math.isnan(measured[key])], f"{task}: undefined metrics"


def test_column_headers_per_task():
    classification = [header for header, _, _ in tasks.kind("classification").columns()]
    assert classification == ["accuracy", "drop pts", "top-1 agree", "KL"]
    ctr = [header for header, _, _ in tasks.kind("ctr").columns(top_k=5)]
    assert ctr == ["AUC", "AUC drop", "logloss", "NDCG@5", "NDCG rel. drop", "Spearman", "top-5 overlap"]
    assert [header for header, _, _ in tasks.kind("ranking").columns(top_k=5)] == [h for h in ctr if h != "logloss"]

