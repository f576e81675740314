"""Pruning and distillation inside `pack` on real MNIST: recovery beats no recovery, the bundle records it."""

from __future__ import annotations

import pytest
import torch

from edgepack.bundle.check import verify_bundle
from edgepack.bundle.files import check_checksums
from edgepack.errors import EXIT_OK
from tests.e2e.conftest import pack_example

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pruned(trained_example, tmp_path_factory):
    return pack_example(
        trained_example, tmp_path_factory.mktemp("pruned") / "bundle",
        prune={"ratio": 0.5, "by": "macs"}, lowrank={"energy": 0.7, "min_features": 64},
        distill={"path": str(trained_example / "train.npz"), "labels": "label", "epochs": 3, "patience": 3},
        # the quick-trained teacher is itself under-trained: pruning drift is judged loosely here,
        # the bench measures the fully trained example against the real budget
        budget={"max_accuracy_drop": 2.0, "min_top1_agreement": 0.95})


def test_distillation_beats_no_recovery(pruned):
    accuracy = pruned.manifest.pruning.accuracy
    assert accuracy["pruned"] < accuracy["float"]
    assert accuracy["distilled"] > accuracy["pruned"]
    assert accuracy["distilled"] >= accuracy["float"] - 0.02


def test_bundle_records_the_pruning(pruned):
    section = pruned.manifest.pruning
    assert section.macs.removed_fraction >= 0.5 and section.params.after < section.params.before
    assert any(widths.after < widths.before for widths in section.layers.values())
    assert all(check.checked and check.max_relative_difference <= 1e-4 for check in section.self_check)
    assert section.reload_max_abs_difference < 1e-5
    (factorized,) = [layer for layer in section.lowrank if layer.factorized]
    assert factorized.layer == "9" and factorized.params_after < factorized.params_before
    assert {"torch_eager_fp32", "onnxruntime_fp32"} == set(section.latency)
    assert section.distillation.epochs_run >= 1
    assert [entry.path for entry in section.files] == ["pruned/model.pt2", "pruned/model.fp32.onnx"]
    assert check_checksums(pruned.bundle, pruned.manifest.files()) == []
    report = (pruned.bundle / "report.md").read_text()
    assert "Pruning and distillation" in report and "distilled" in report


def test_pruned_artifact_is_smaller_and_verified(pruned, trained_example):
    assert pruned.exit_code == EXIT_OK
    artifact = pruned.manifest.targets["x86"].artifacts[0]
    assert artifact.size_ratio_vs_fp32_onnx < 0.2
    check = verify_bundle(pruned.bundle, trained_example / "eval.npz")
    assert check.exit_code == EXIT_OK


def test_saved_pruned_model_reloads_as_a_whole_architecture(pruned, trained_example):
    import numpy as np

    program = torch.export.load(str(pruned.bundle / "pruned" / "model.pt2")).module()
    images = torch.from_numpy(np.load(trained_example / "eval.npz")["image"][:32])
    assert program(images).shape == (32, 10)
