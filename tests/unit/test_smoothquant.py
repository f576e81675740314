"""SmoothQuant scale migration on small seeded torch models: outputs unchanged, channel ranges flatter,
inexact migrations skipped with their reason, and the outlier detector."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgepack.errors import ExportError
from edgepack.tuning.smoothquant import smooth_quant, smoothing_alphas

OUTLIER_CHANNELS = (3, 11)


class LayerNormMlp(torch.nn.Module):
    """LayerNorm -> Linear -> ReLU -> Linear (both exact), then a ReLU6 clamp, a GELU and a residual use."""

    def __init__(self, *, outliers: bool):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Linear(8, 16)
        self.norm = torch.nn.LayerNorm(16)
        self.up = torch.nn.Linear(16, 32)
        self.relu = torch.nn.ReLU()
        self.down = torch.nn.Linear(32, 16)
        self.clamp = torch.nn.ReLU6()
        self.after_clamp = torch.nn.Linear(16, 16)
        self.gelu = torch.nn.GELU()
        self.after_gelu = torch.nn.Linear(16, 16)
        self.residual_norm = torch.nn.LayerNorm(16)
        self.head = torch.nn.Linear(16, 4)
        if outliers:
            with torch.no_grad():
                self.norm.weight[list(OUTLIER_CHANNELS)] = 40.0

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits [batch, 4]."""
        hidden = self.down(self.relu(self.up(self.norm(self.embed(features)))))
        hidden = self.after_gelu(self.gelu(self.after_clamp(self.clamp(hidden))))
        normed = self.residual_norm(hidden)
        return self.head(normed) + normed[:, :4]


def _arrays(count: int = 64) -> dict[str, np.ndarray]:
    return {"features": np.random.default_rng(1).normal(size=(count, 8)).astype(np.float32)}


def _outputs(module: torch.nn.Module, arrays: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(arrays["features"])).double().numpy()


def test_smoothing_keeps_the_float_outputs_and_flattens_the_outlier_channels():
    model, arrays = LayerNormMlp(outliers=True).eval(), _arrays()
    smoothing = smooth_quant(model, arrays, ["features"], alpha=0.5)
    before, after = _outputs(model, arrays), _outputs(smoothing.module, arrays)
    assert np.linalg.norm(after - before) / np.linalg.norm(before) < 1e-4
    assert smoothing.output_change < 1e-4
    smoothed = {layer.module: layer for layer in smoothing.smoothed}
    assert smoothed["up"].producer == "norm" and smoothed["down"].producer == "up"  # through the ReLU
    assert smoothed["up"].ratio_before > 8 and smoothed["up"].ratio_after < smoothed["up"].ratio_before / 2
    assert not torch.equal(smoothing.module.norm.weight, model.norm.weight)  # a copy changed, not the model


def test_inexact_migrations_are_skipped_with_their_reason():
    smoothing = smooth_quant(LayerNormMlp(outliers=True).eval(), _arrays(), ["features"], alpha=0.5)
    reasons = {layer.module: layer.reason for layer in smoothing.skipped}
    assert "clamps at fixed bounds" in reasons["after_clamp"] and "ReLU6" in reasons["after_clamp"]
    assert "GELU" in reasons["after_gelu"] and "not positively homogeneous" in reasons["after_gelu"]
    assert "also feeds another path" in reasons["head"]  # residual_norm's output is also added to the logits
    assert "outside modules" in reasons["embed"]  # reads the model's input
    assert set(reasons).isdisjoint(layer.module for layer in smoothing.smoothed)


def test_the_detector_asks_for_smoothing_only_where_there_are_outliers():
    assert smoothing_alphas(LayerNormMlp(outliers=False).eval(), _arrays(), ["features"]) == []
    assert smoothing_alphas(LayerNormMlp(outliers=True).eval(), _arrays(), ["features"]) == [0.5, 0.8]


def test_alpha_zero_and_one_are_exact_too_and_outside_is_refused():
    model, arrays = LayerNormMlp(outliers=True).eval(), _arrays()
    for alpha in (0.0, 1.0):
        assert smooth_quant(model, arrays, ["features"], alpha=alpha).output_change < 1e-4
    with pytest.raises(ValueError):
        smooth_quant(model, arrays, ["features"], alpha=1.5)


def test_a_migration_that_changes_the_outputs_is_an_error():
    model, arrays = LayerNormMlp(outliers=True).eval(), _arrays()
    smoothing = smooth_quant(model, arrays, ["features"], alpha=0.5)
    assert smoothing.smoothed  # the plan below is then wrong on purpose: a residual producer as if it were exact
    from edgepack.tuning.smoothquant import _Group, plan_smoothing

    plan = plan_smoothing(model, arrays, ["features"])
    plan.groups.append(_Group("residual_norm", ["head"]))
    with pytest.raises(ExportError, match="not exact"):
        smooth_quant(model, arrays, ["features"], alpha=0.5, plan=plan)


def test_inserted_scales_smooth_the_layers_no_producer_can_absorb():
    model, arrays = LayerNormMlp(outliers=True).eval(), _arrays()
    smoothing = smooth_quant(model, arrays, ["features"], alpha=0.5, insert_scales=True)
    assert smoothing.output_change < 1e-4 and not smoothing.skipped
    smoothed = {layer.module: layer for layer in smoothing.smoothed}
    assert {"after_clamp", "after_gelu", "head", "embed"} <= {name for name, layer in smoothed.items()
                                                              if layer.producer == "inserted Mul"}
    assert smoothed["up"].producer == "norm"  # still folded where that is exact
    assert all(layer.ratio_after <= layer.ratio_before for layer in smoothed.values() if layer.ratio_before > 2)
    assert isinstance(smoothing.module.after_gelu, torch.nn.Module) and hasattr(smoothing.module.after_gelu, "layer")
