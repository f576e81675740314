"""The fp32 ONNX check against PyTorch: a tolerance that scales with the outputs, and a hint when they are huge."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgepack.errors import ExportError
from edgepack.model.onnx_export import check_against_torch, export_float_onnx
from edgepack.recipe.schema import InputSpec

INPUTS = [InputSpec(name="x", dtype="float32", shape=["batch", 256])]


def _model(scale: float) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(scale)
    return model


def _onnx_returning(model, monkeypatch, shift: float) -> None:
    """Stand in for onnxruntime: PyTorch's own outputs plus `shift` on every value."""

    class Shifted:
        def __init__(self, *args, **kwargs):
            pass

        def __call__(self, feeds):
            with torch.no_grad():
                return [model(torch.from_numpy(feeds["x"])).numpy() + shift]

    monkeypatch.setattr("edgepack.model.onnx_export.OrtRunner", Shifted)


def test_large_outputs_get_a_proportional_tolerance(tmp_path, monkeypatch):
    model = _model(4.0)
    batch = {"x": (np.random.default_rng(0).random((64, 256)) * 255).astype(np.float32)}  # unnormalized pixels
    path = export_float_onnx(model, INPUTS, {"x": batch["x"][:2]}, tmp_path / "m.onnx")
    assert check_against_torch(model, path, INPUTS, batch, threads=1) >= 0.0  # the real export matches
    with torch.no_grad():
        outputs = model(torch.from_numpy(batch["x"])).numpy()
    assert np.abs(outputs).max() > 1000
    # 5e-3 everywhere is fp32 rounding at this scale; a fixed atol of 1e-4 failed it on the smallest logits
    assert not np.allclose(outputs + 5e-3, outputs, atol=1e-4, rtol=1e-3)
    _onnx_returning(model, monkeypatch, 5e-3)
    assert check_against_torch(model, path, INPUTS, batch, threads=1) == pytest.approx(5e-3, rel=0.05)


def test_a_real_mismatch_on_huge_outputs_names_the_likely_cause(tmp_path, monkeypatch):
    model = _model(4.0)
    batch = {"x": (np.random.default_rng(0).random((8, 256)) * 255).astype(np.float32)}
    path = export_float_onnx(model, INPUTS, {"x": batch["x"][:2]}, tmp_path / "m.onnx")
    _onnx_returning(model, monkeypatch, 50.0)
    with pytest.raises(ExportError, match="are the inputs normalized as in training"):
        check_against_torch(model, path, INPUTS, batch, threads=1)
