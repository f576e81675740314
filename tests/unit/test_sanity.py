"""Warnings for a float model at chance level and for calibration data unlike the evaluation data."""

from __future__ import annotations

import numpy as np

from edgepack.evaluation.sanity import calibration_warnings, float_model_warnings
from tests.helpers import sample_set

RNG = np.random.default_rng(0)
IMAGES = RNG.random((500, 1, 8, 8)).astype(np.float32)
LABELS = RNG.integers(0, 10, 500)


def test_a_float_model_at_chance_is_reported():
    evaluation = sample_set({"image": IMAGES}, LABELS)
    (warning,) = float_model_warnings("classification", {"accuracy": 0.113}, evaluation)
    assert "accuracy 0.113" in warning and "chance level" in warning
    assert float_model_warnings("classification", {"accuracy": 0.98}, evaluation) == []
    assert "AUC is 0.502" in float_model_warnings("ctr", {"auc": 0.502}, evaluation)[0]
    assert float_model_warnings("ctr", {"auc": 0.79}, evaluation) == []


def test_noise_as_calibration_data_is_reported():
    evaluation = sample_set({"image": IMAGES * 0.3})
    uniform = sample_set({"image": RNG.random((200, 1, 8, 8)).astype(np.float32)}, role="calibration")
    gaussian = sample_set({"image": RNG.normal(size=(200, 1, 8, 8)).astype(np.float32)}, role="calibration")
    scaled = sample_set({"image": IMAGES * 30}, role="calibration")
    for calibration in (uniform, gaussian, scaled):
        (warning,) = calibration_warnings(calibration, evaluation)
        assert "calibration data for input 'image' does not look like the evaluation data" in warning


def test_a_held_out_split_of_the_same_data_is_not_reported():
    evaluation = sample_set({"image": IMAGES[:300], "ids": np.arange(300)})
    calibration = sample_set({"image": IMAGES[300:], "ids": np.arange(200)}, role="calibration")
    assert calibration_warnings(calibration, evaluation) == []


def test_raw_pixels_and_huge_inputs_are_reported_as_unnormalized():
    from edgepack.evaluation.sanity import input_scale_warnings

    raw = sample_set({"image": np.round(IMAGES * 255)})
    (warning,) = input_scale_warnings(raw)
    assert "input 'image' holds whole numbers up to 255, like raw 8-bit pixels" in warning
    (warning,) = input_scale_warnings(sample_set({"features": RNG.normal(size=(50, 4)).astype(np.float32) * 1e4}))
    assert "input 'features' reaches" in warning and "preprocessed as in training" in warning
    assert input_scale_warnings(sample_set({"image": IMAGES, "ids": np.arange(500)})) == []


def _small_cnn():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 6 * 6, 10)).eval()


def test_activation_coverage_flags_calibration_that_does_not_cover_real_inputs():
    from edgepack.evaluation.sanity import OUTSIDE_SHARE, activation_coverage

    model = _small_cnn()
    evaluation = sample_set({"image": IMAGES[:200]})
    same_kind = sample_set({"image": IMAGES[200:]}, role="calibration")
    tiny = sample_set({"image": IMAGES[200:] * 0.05}, role="calibration")
    good = activation_coverage(model, same_kind, evaluation, ["image"])
    bad = activation_coverage(model, tiny, evaluation, ["image"])
    assert good.layers == 4 and good.samples == 200
    assert good.worst_share <= OUTSIDE_SHARE and good.warnings() == []
    assert bad.worst_share > 0.5 and bad.share_outside > good.share_outside
    (warning,) = bad.warnings()
    assert f"of layer '{bad.worst_layer}' fall outside the range calibrated for it" in warning
    assert set(bad.as_dict()) == {"share_outside", "worst_layer", "worst_share", "layers", "samples"}
