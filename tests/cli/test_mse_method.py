"""Calibration method `mse` (a range per activation tensor) in recipes: the onnxruntime targets honour and
record it, tune tries it in its first tier, the PT2E targets refuse it before any work."""

from __future__ import annotations

import json

from edgepack.calibration.methods import MinMax, Percentile, PerTensorMse
from edgepack.recipe.schema import Recipe
from edgepack.registry import get_target
from edgepack.tuning.search import methods_to_try


def test_x86_and_cuda_pack_with_mse_and_record_each_tensors_choice(recipe_factory, invoke, tmp_path):
    recipe, write = recipe_factory
    recipe = {**recipe, "targets": ["x86", "cuda"], "target_options": {"x86": {"portable_weights": "int8-7bit"}},
              "calibration": {**recipe["calibration"], "method": {"name": "mse"}}}
    result = invoke("pack", write(recipe), "--no-bench")
    assert result.exit_code in (0, 3), result.output
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    grids = {"x86": "uint8 asymmetric [0, 255]", "cuda": "int8 symmetric [-127, 127]"}
    for target, grid in grids.items():
        artifacts = [item for item in manifest["targets"][target]["artifacts"] if item["precision"].startswith("int8")]
        (artifact,) = artifacts
        facts = artifact["structure"]["calibration"]
        assert artifact["structure"]["calibration_method"]["name"] == "mse"
        assert facts["grid"] == grid
        assert facts["tensors"] > 5 and sum(facts["chosen"].values()) == facts["tensors"]
        assert set(facts["chosen"]) == {"minmax", "percentile 99.999", "percentile 99.99", "percentile 99.9",
                                        "percentile 99"}


def test_tune_tries_mse_after_percentile_where_the_target_honours_it(recipe_factory, trained_example):
    recipe, _ = recipe_factory
    for method, expected in ((MinMax(), [MinMax(), Percentile(percentile=99.99), PerTensorMse()]),
                             (PerTensorMse(), [PerTensorMse(), Percentile(percentile=99.99)])):
        data = {**recipe, "calibration": {**recipe["calibration"], "method": method.model_dump()}}
        parsed = Recipe.model_validate(data, context={"base_dir": trained_example})
        assert methods_to_try(get_target("x86"), parsed) == expected
        assert methods_to_try(get_target("cuda"), parsed)[:len(expected)] == expected
    parsed = Recipe.model_validate(recipe, context={"base_dir": trained_example})
    assert PerTensorMse() not in methods_to_try(get_target("arm-tflite"), parsed)


def test_arm_tflite_refuses_mse_with_one_line_naming_the_field(recipe_factory, invoke, expect_error):
    recipe, write = recipe_factory
    recipe = {**recipe, "targets": ["arm-tflite"], "calibration": {**recipe["calibration"], "method": {"name": "mse"}}}
    expect_error(invoke("pack", write(recipe)), "calibration.method", "'mse'", "arm-tflite", "minmax, percentile")
