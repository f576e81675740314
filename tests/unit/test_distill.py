"""Distillation pieces: the divergence that picks the kept epoch."""

from __future__ import annotations

import math

import pytest
import torch

from edgepack.distill import divergence


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
