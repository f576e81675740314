"""Distillation pieces: the divergence that picks the kept epoch, labels that fit the task."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from edgepack.compression.distill import divergence
from tests.helpers import sample_set


def test_binary_divergence_is_the_bernoulli_kl_and_zero_for_the_teacher_itself():
    teacher = torch.tensor([0.0, 2.0])
    student = torch.tensor([1.0, 2.0])
    p, q = 0.5, 1 / (1 + math.exp(-1.0))
    expected = (p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q)) + 0.0) / 2
    assert divergence(student, teacher) == pytest.approx(expected, rel=1e-5)
    assert divergence(teacher, teacher) == pytest.approx(0.0, abs=1e-7)


def test_class_divergence_is_the_softmax_kl():
    teacher = torch.tensor([[2.0, 0.0, -1.0]])
    student = torch.tensor([[0.0, 0.0, 0.0]])
    p = torch.softmax(teacher, 1)[0]
    expected = float((p * (p.log() - math.log(1 / 3))).sum())
    assert divergence(student, teacher) == pytest.approx(expected, rel=1e-5)
    assert divergence(teacher, teacher) == pytest.approx(0.0, abs=1e-7)


def _labelled(labels):
    return sample_set({"x": np.zeros((len(labels), 2), np.float32)}, labels, role="distillation", source="train.npz")


def test_distillation_labels_fit_the_task():
    from edgepack.errors import DataError
    from edgepack.evaluation.tasks import kind

    grades = _labelled([0, 2, 1, 0])
    assert kind("ranking").distillation_labels(grades, "relevance").labels.tolist() == [0, 1, 1, 0]  # relevant or not
    with pytest.raises(DataError, match="train.npz: labels 'relevance' must be clicks"):
        kind("ctr").distillation_labels(grades, "relevance")
    with pytest.raises(DataError, match="must be >= 0, found -1"):
        kind("ranking").distillation_labels(_labelled([0, -1]), "relevance")
    classes = _labelled([0, 7, 3])
    assert kind("classification").distillation_labels(classes, "label") is classes


def test_linear_schedule_warms_up_then_decays_to_zero_and_constant_has_none():
    from edgepack.compression.distill import learning_rate_schedule
    from edgepack.recipe.schema import DistillConfig

    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    linear = DistillConfig.model_validate({"path": "d.csv", "epochs": 2, "lr": 1.0, "lr_schedule": "linear"})
    assert learning_rate_schedule(optimizer, linear.model_copy(update={"lr_schedule": "constant"}),
                                  steps_per_epoch=50) is None
    scheduler = learning_rate_schedule(optimizer, linear, steps_per_epoch=50)
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    peak = int(np.argmax(rates))
    assert 0 < peak <= 10 and rates[peak] == pytest.approx(1.0)  # 6 % of 100 steps of warm-up
    assert rates[0] < 0.5 and all(a >= b for a, b in zip(rates[peak:], rates[peak + 1:]))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-9) and rates[-1] < 0.02
