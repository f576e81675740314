"""Drift metrics and budget checks, compared with values computed by hand on tiny arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgepack.evaluation.drift import DriftCheck, check_budget, classification_metrics
from edgepack.evaluation.tasks import kind
from edgepack.recipe.budget import Budget

REFERENCE = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 4.0], [5.0, 1.0, 1.0]])
ARTIFACT = np.array([[1.0, 2.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 4.0], [5.0, 1.0, 1.0]])
LABELS = np.array([0, 1, 2, 1])


def _kl_row(p_logits, q_logits) -> float:
    p = [math.exp(v) / sum(math.exp(w) for w in p_logits) for v in p_logits]
    q = [math.exp(v) / sum(math.exp(w) for w in q_logits) for v in q_logits]
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def test_metrics_match_hand_computed_values():
    metrics = classification_metrics(REFERENCE, ARTIFACT, LABELS)
    # top-1: reference [0, 1, 2, 0], artifact [1, 1, 2, 0]
    assert metrics["top1_agreement"] == 0.75
    assert metrics["reference_accuracy"] == 0.75
    assert metrics["accuracy"] == 0.5
    assert metrics["accuracy_drop"] == pytest.approx(25.0)  # percentage points, not a fraction
    assert metrics["max_abs_error"] == 1.0
    assert metrics["relative_l2"] == pytest.approx(math.sqrt(2) / math.sqrt(59))
    assert metrics["kl"] == pytest.approx(_kl_row([2, 1, 0], [1, 2, 0]) / 4, rel=1e-6)
    assert metrics["samples"] == 4


def test_identical_logits_have_no_drift():
    metrics = classification_metrics(REFERENCE, REFERENCE.copy(), LABELS)
    assert metrics["top1_agreement"] == 1.0
    assert metrics["accuracy_drop"] == 0.0
    assert metrics["relative_l2"] == 0.0
    assert metrics["max_abs_error"] == 0.0
    assert metrics["kl"] == 0.0


def test_improved_artifact_gives_negative_drop():
    metrics = classification_metrics(ARTIFACT, REFERENCE, LABELS)
    assert metrics["accuracy_drop"] == pytest.approx(-25.0)


def test_kl_is_direction_sensitive_and_positive():
    reference = np.array([[4.0, 0.0, 0.0]])
    artifact = np.array([[1.0, 1.0, 0.0]])
    forward = classification_metrics(reference, artifact, None)["kl"]
    backward = classification_metrics(artifact, reference, None)["kl"]
    assert forward == pytest.approx(_kl_row([4, 0, 0], [1, 1, 0]), rel=1e-6)
    assert forward > 0 and backward > 0 and forward != pytest.approx(backward)


def test_large_logits_stay_finite():
    reference = np.array([[1000.0, 0.0], [0.0, 1000.0]])
    metrics = classification_metrics(reference, reference + np.array([[0.0, 1.0], [0.0, 0.0]]), None)
    assert all(math.isfinite(value) for value in metrics.values())


def test_without_labels_there_is_no_accuracy():
    metrics = classification_metrics(REFERENCE, ARTIFACT, None)
    assert "accuracy" not in metrics and "accuracy_drop" not in metrics and "reference_accuracy" not in metrics
    assert metrics["top1_agreement"] == 0.75


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="output shapes differ"):
        classification_metrics(REFERENCE, ARTIFACT[:, :2], LABELS)


GOOD = {"accuracy_drop": 0.2, "top1_agreement": 0.995, "kl": 0.001, "relative_l2": 0.01}
ALL_BOUNDS = {"max_accuracy_drop": 0.5, "min_top1_agreement": 0.99, "max_kl": 0.01, "max_relative_l2": 0.05}


def test_budget_passes_within_every_bound():
    report = check_budget(GOOD, ALL_BOUNDS)
    assert report.passed
    assert [check.metric for check in report.checks] == ["accuracy_drop", "top1_agreement", "kl", "relative_l2"]
    assert report.failures == []


@pytest.mark.parametrize("metric, value", [("accuracy_drop", 0.6), ("top1_agreement", 0.98), ("kl", 0.02),
                                           ("relative_l2", 0.06)])
def test_budget_fails_on_each_bound(metric, value):
    report = check_budget({**GOOD, metric: value}, ALL_BOUNDS)
    assert not report.passed
    assert [check.metric for check in report.failures] == [metric]


def test_values_exactly_at_the_bound_pass():
    at_bound = {"accuracy_drop": 0.5, "top1_agreement": 0.99, "kl": 0.01, "relative_l2": 0.05}
    assert check_budget(at_bound, ALL_BOUNDS).passed


def test_none_bounds_are_skipped_and_unknown_keys_refused():
    report = check_budget({**GOOD, "kl": 99.0}, {"max_accuracy_drop": 0.5, "max_kl": None})
    assert [check.metric for check in report.checks] == ["accuracy_drop"]
    assert report.passed
    with pytest.raises(ValueError, match="unknown budget bound 'max_latency'"):
        check_budget(GOOD, {"max_latency": 1.0})


def test_default_budget_checks_accuracy_and_agreement():
    report = check_budget({**GOOD, "kl": 5.0, "relative_l2": 5.0}, kind("classification").default_budget().model_dump())
    assert {check.metric for check in report.checks} == {"accuracy_drop", "top1_agreement"}
    assert report.passed


def test_a_bound_whose_metric_was_not_measured_fails():
    report = check_budget({"top1_agreement": 1.0}, ALL_BOUNDS)
    assert [check.metric for check in report.failures] == ["accuracy_drop", "kl", "relative_l2"]
    assert not report.passed


def test_every_bound_declares_a_metric_each_task_produces():
    from edgepack.recipe.budget import BOUND_SPECS, bounds_for

    assert set(BOUND_SPECS) == {name for name in Budget.model_fields if name not in ("segments", "disabled")}
    assert bounds_for("classification") == ["max_accuracy_drop", "min_top1_agreement", "max_kl", "max_relative_l2",
                                            "min_reference_accuracy"]
    assert "max_logloss_increase" in bounds_for("ctr") and "max_logloss_increase" not in bounds_for("ranking")
    produced = set(classification_metrics(REFERENCE, ARTIFACT, LABELS))
    assert {BOUND_SPECS[name].metric for name in bounds_for("classification")} <= produced


def test_a_disabled_budget_checks_nothing():
    assert check_budget({**GOOD, "kl": 99.0}, Budget(disabled=True).model_dump()).checks == ()


def test_nan_metric_fails():
    assert not check_budget({"relative_l2": float("nan")}, {"max_relative_l2": 1.0}).passed


def test_report_to_dict():
    data = check_budget({**GOOD, "kl": 0.02}, ALL_BOUNDS).to_dict()
    assert data["passed"] is False
    assert data["metrics"]["kl"] == 0.02
    kl = next(check for check in data["checks"] if check["metric"] == "kl")
    assert kl == {"metric": "kl", "value": 0.02, "limit": 0.01, "bound": "max", "passed": False}


@pytest.mark.parametrize("check, text", [
    (DriftCheck("accuracy_drop", 0.6, 0.5, "max"), "accuracy_drop 0.6 > max 0.5"),
    (DriftCheck("accuracy_drop", 0.4, 0.5, "max"), "accuracy_drop 0.4 <= max 0.5"),
    (DriftCheck("top1_agreement", 0.98, 0.99, "min"), "top1_agreement 0.98 < min 0.99"),
    (DriftCheck("top1_agreement", 0.99512345, 0.99, "min"), "top1_agreement 0.9951 >= min 0.99"),
    (DriftCheck("kl", 0.0, 0.0, "max"), "kl 0 <= max 0"),
])
def test_drift_check_describe(check, text):
    assert check.describe() == text


def test_a_floor_on_the_float_model_fails_a_broken_one():
    broken = {**GOOD, "reference_accuracy": 0.113, "accuracy": 0.113, "accuracy_drop": 0.0}
    report = check_budget(broken, {"max_accuracy_drop": 0.5, "min_reference_accuracy": 0.9})
    assert [check.metric for check in report.failures] == ["reference_accuracy"]
    assert report.failures[0].describe() == "reference_accuracy 0.113 < min 0.9"


def test_every_recommender_bound_names_a_metric_the_task_produces():
    from edgepack.evaluation.rec_metrics import recommender_metrics
    from edgepack.recipe.budget import BOUND_SPECS, bounds_for

    metrics = recommender_metrics(np.array([0.1, 0.9, 0.3, 0.7]), np.array([0.2, 0.8, 0.3, 0.6]),
                                  np.array([0, 1, 0, 1]), groups=np.array([0, 0, 1, 1]), k=1)
    metrics["calibration_shift_abs"] = abs(metrics["calibration_shift"])  # added by edgepack.evaluation.tasks
    assert {BOUND_SPECS[name].metric for name in bounds_for("ctr")} <= set(metrics)
