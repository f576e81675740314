"""`edgepack pack` with a valid recipe but a bad model, bad data or a missing runtime."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from edgepack.errors import ModelLoadError

CONV = "0.0.weight"  # first conv of the example CNN: [16, 1, 3, 3]


@pytest.fixture
def images(trained_example) -> np.ndarray:
    """The calibration images of the trained example, float32 [N, 1, 28, 28]."""
    with np.load(trained_example / "calib.npz") as archive:
        return archive["image"]


def pack_with(invoke, recipe_factory, change, *args):
    """Apply `change` to the base recipe, write it, run `pack` on it; returns (result, recipe path, bundle)."""
    recipe, write = recipe_factory
    change(recipe)
    path = write(recipe)
    return invoke("pack", path, *args), path, Path(recipe["output"])


def save_npz(path: Path, **arrays) -> str:
    np.savez(path, **arrays)
    return str(path)


def test_factory_module_missing(invoke, expect_error, recipe_factory):
    result, _, bundle = pack_with(invoke, recipe_factory,
                                  lambda r: r["model"].update(factory="no_such_module:build_model"))
    expect_error(result, "model factory 'no_such_module:build_model'", "No module named 'no_such_module'",
                 bundle=bundle)


def test_factory_attribute_missing(invoke, expect_error, recipe_factory):
    result, _, bundle = pack_with(invoke, recipe_factory, lambda r: r["model"].update(factory="model:build_modle"))
    expect_error(result, "model factory 'model:build_modle'", "has no attribute 'build_modle'", bundle=bundle)


def test_weights_file_missing(invoke, expect_error, recipe_factory, tmp_path):
    weights = tmp_path / "absent.safetensors"
    result, _, bundle = pack_with(invoke, recipe_factory, lambda r: r["model"].update(weights=str(weights)))
    expect_error(result, str(weights), "weights file not found", bundle=bundle)


@pytest.mark.parametrize("edit, expected", [
    (lambda state: state.pop(CONV), f"missing keys: {CONV}"),
    (lambda state: state.update({"head.extra": torch.zeros(3)}), "unexpected keys: head.extra"),
    (lambda state: state.update({CONV: torch.zeros(8, 1, 3, 3)}),
     f"shape mismatch: {CONV}: file [8, 1, 3, 3] vs model [16, 1, 3, 3]"),
], ids=["missing-keys", "unexpected-keys", "shape-mismatch"])
def test_weights_do_not_fit(invoke, expect_error, recipe_factory, trained_example, tmp_path, edit, expected):
    state = dict(load_file(str(trained_example / "model.safetensors")))
    edit(state)
    weights = tmp_path / "edited.safetensors"
    save_file(state, str(weights))
    result, _, bundle = pack_with(invoke, recipe_factory, lambda r: r["model"].update(weights=str(weights)))
    expect_error(result, str(weights), "weights do not fit the model", expected, bundle=bundle)


def test_weights_not_safetensors(invoke, expect_error, recipe_factory, tmp_path):
    weights = tmp_path / "garbage.safetensors"
    weights.write_bytes(b"not a safetensors file at all")
    result, _, bundle = pack_with(invoke, recipe_factory, lambda r: r["model"].update(weights=str(weights)))
    expect_error(result, str(weights), "not a readable safetensors file", bundle=bundle)


def _nan(images):
    bad = images.copy()
    bad[7, 0, 3, 3] = np.nan
    return bad


def _inf(images):
    bad = images.copy()
    bad[7, 0, 3, 3] = -np.inf
    return bad


@pytest.mark.parametrize("make, expected", [
    (lambda x: x[:, :, :, :27], "expected shape ['N', 1, 28, 28], got [500, 1, 28, 27]"),
    (lambda x: x[:, 0], "expected shape ['N', 1, 28, 28], got [500, 28, 28]"),
    (lambda x: x > 0.5, "expected dtype float32, got bool"),
    (_nan, "contains 1 NaN/inf value(s)"),
    (_inf, "contains 1 NaN/inf value(s)"),
    (lambda x: x[:0], "no samples"),
], ids=["trailing-shape", "missing-channel-dim", "bool-dtype", "nan", "inf", "empty"])
def test_bad_calibration_array(invoke, expect_error, recipe_factory, images, tmp_path, make, expected):
    data = save_npz(tmp_path / "calib_bad.npz", image=make(images))
    result, _, bundle = pack_with(invoke, recipe_factory, lambda r: r["calibration"].update(path=data))
    where = f"calibration data {data}" + ("" if expected == "no samples" else ": input 'image'")
    expect_error(result, where, expected, bundle=bundle)


def test_float_data_for_int64_input_is_refused(invoke, expect_error, recipe_factory):
    result, _, bundle = pack_with(invoke, recipe_factory, lambda r: r["inputs"][0].update(dtype="int64"))
    expect_error(result, "calibration data", "input 'image'", "expected dtype int64, got float32", bundle=bundle)


def test_calibration_array_name_missing(invoke, expect_error, recipe_factory, images, tmp_path):
    data = save_npz(tmp_path / "calib_renamed.npz", pixels=images)
    result, _, bundle = pack_with(invoke, recipe_factory, lambda r: r["calibration"].update(path=data))
    expect_error(result, f"calibration data {data}", "no array(s) named 'image'", bundle=bundle)


def test_calibration_array_name_missing_lists_file_contents(invoke, expect_error, recipe_factory, images, tmp_path):
    data = save_npz(tmp_path / "calib_renamed.npz", pixels=images)
    result, _, bundle = pack_with(invoke, recipe_factory, lambda r: r["calibration"].update(path=data))
    expect_error(result, "no array(s) named 'image'", "pixels", bundle=bundle)


def test_calibration_file_missing(invoke, expect_error, recipe_factory, tmp_path):
    data = tmp_path / "absent.npz"
    result, _, bundle = pack_with(invoke, recipe_factory, lambda r: r["calibration"].update(path=str(data)))
    expect_error(result, str(data), "data file not found", bundle=bundle)


def test_evaluation_labels_missing(invoke, expect_error, recipe_factory, images, tmp_path):
    data = save_npz(tmp_path / "eval_nolabels.npz", image=images)
    result, _, bundle = pack_with(invoke, recipe_factory, lambda r: r["evaluation"].update(path=data))
    expect_error(result, f"evaluation data {data}", "no label array named 'label'", bundle=bundle)


@pytest.mark.parametrize("bad", [10, -1])
def test_labels_outside_the_models_classes_are_refused(invoke, expect_error, recipe_factory, images, tmp_path, bad):
    labels = np.zeros(len(images), np.int64)
    labels[3] = bad
    data = save_npz(tmp_path / "eval_bad_labels.npz", image=images, label=labels)
    result, _, bundle = pack_with(invoke, recipe_factory, lambda r: r["evaluation"].update(path=data))
    expect_error(result, f"evaluation data {data}", "must be class indices 0..9 (the model has 10 outputs)",
                 f"found [{bad}]", bundle=bundle)


def test_missing_runtime_names_the_extra(invoke, expect_error, recipe_factory, monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name.split(".")[0] == "onnxruntime":
            return None
        return real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    result, _, bundle = pack_with(invoke, recipe_factory, lambda r: None)
    expect_error(result, "target 'x86'", "'onnxruntime'", "not installed", "pip install 'edgepack[x86]'",
                 bundle=bundle)


def test_output_that_is_a_foreign_directory_is_left_alone(invoke, expect_error, recipe_factory, tmp_path):
    foreign = tmp_path / "my_documents"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("precious")
    result, _, _ = pack_with(invoke, recipe_factory, lambda r: None, "--out", foreign)
    expect_error(result, str(foreign), "not an edgepack bundle", "refusing to replace it")
    assert [p.name for p in foreign.iterdir()] == ["keep.txt"]
    assert not list(tmp_path.glob(".my_documents.staging-*"))


def test_debug_shows_model_error_with_its_cause(invoke, recipe_factory):
    recipe, write = recipe_factory
    recipe["model"]["factory"] = "no_such_module:build_model"
    result = invoke("--debug", "pack", write(recipe))
    assert result.exit_code == 1
    assert isinstance(result.exception, ModelLoadError)
    assert isinstance(result.exception.__cause__, ModuleNotFoundError)
    assert "error:" not in result.stderr
    assert not Path(recipe["output"]).exists()


@pytest.fixture
def three_channel_recipe(recipe_factory, images, tmp_path):
    """A recipe declaring [batch, 3, 28, 28] (with matching data) for a model whose first conv takes 1 channel."""
    recipe, write = recipe_factory
    data = save_npz(tmp_path / "rgb.npz", image=np.repeat(images, 3, axis=1),
                    label=np.zeros(len(images), dtype=np.int64))
    recipe["inputs"][0]["shape"] = ["batch", 3, 28, 28]
    recipe["calibration"]["path"] = recipe["evaluation"]["path"] = data
    return write(recipe), Path(recipe["output"])


def test_export_failure_cleans_up_staging(invoke, expect_error, three_channel_recipe):
    path, bundle = three_channel_recipe
    expect_error(invoke("pack", path), "the model fails on inputs", bundle=bundle)


def test_export_failure_explains_the_shape_problem(invoke, expect_error, three_channel_recipe):
    path, bundle = three_channel_recipe
    line = expect_error(invoke("pack", path), "the model fails on inputs", bundle=bundle)
    assert "channels" in line or "[1, 3, 28, 28]" in line or "[2, 3, 28, 28]" in line
