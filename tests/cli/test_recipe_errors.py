"""`edgepack pack` on bad recipes: one `error:` line naming file and field, exit 1, nothing written."""

from __future__ import annotations

import subprocess
import traceback
from pathlib import Path

import pytest
import yaml

from edgepack.errors import ConfigError


def test_missing_recipe_file(invoke, expect_error, tmp_path):
    missing = tmp_path / "nope.yaml"
    result = invoke("pack", missing)
    expect_error(result, str(missing), "recipe not found")
    assert list(tmp_path.iterdir()) == []


def test_invalid_yaml(invoke, expect_error, tmp_path):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("name: [unclosed\n  model: :\n")
    result = invoke("pack", recipe)
    expect_error(result, str(recipe), "not valid YAML")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.yaml"]


def test_unreadable_recipe_bytes(invoke, expect_error, tmp_path):
    recipe = tmp_path / "binary.yaml"
    recipe.write_bytes(b"\xff\xfe\x00\x81 not text")
    result = invoke("pack", recipe)
    expect_error(result, str(recipe), "cannot read recipe")


@pytest.mark.parametrize("text", ["- name: digits\n- model: {}\n", "", "just a string\n"],
                         ids=["list", "empty", "scalar"])
def test_recipe_not_a_mapping(invoke, expect_error, tmp_path, text):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    result = invoke("pack", recipe)
    expect_error(result, str(recipe), "expected a mapping")
    assert [p.name for p in tmp_path.iterdir()] == ["recipe.yaml"]


def test_unknown_top_level_key(invoke, expect_error, recipe_factory):
    recipe, write = recipe_factory
    recipe["tragets"] = recipe.pop("targets")
    path = write(recipe)
    expect_error(invoke("pack", path), str(path), "unknown key 'tragets'", "did you mean 'targets'",
                 bundle=Path(recipe["output"]))


def test_unknown_nested_key(invoke, expect_error, recipe_factory):
    recipe, write = recipe_factory
    recipe["calibration"]["sampels"] = recipe["calibration"].pop("samples")
    path = write(recipe)
    expect_error(invoke("pack", path), str(path), "unknown key 'calibration.sampels'", "did you mean 'samples'",
                 bundle=Path(recipe["output"]))


def test_unknown_key_in_list_item(invoke, expect_error, recipe_factory):
    recipe, write = recipe_factory
    recipe["inputs"][0]["dtpye"] = recipe["inputs"][0].pop("dtype")
    path = write(recipe)
    expect_error(invoke("pack", path), str(path), "unknown key 'inputs.0.dtpye'", "did you mean 'dtype'",
                 bundle=Path(recipe["output"]))


@pytest.mark.parametrize("method, typo, suggestion", [
    ({"name": "percentile", "percentil": 99.9}, "percentil", "percentile"),
    ({"name": "entropy", "num_binz": 2048}, "num_binz", "num_bins"),
], ids=["percentile", "entropy"])
def test_unknown_key_in_calibration_method(invoke, expect_error, recipe_factory, method, typo, suggestion):
    recipe, write = recipe_factory
    recipe["calibration"]["method"] = dict(method)
    path = write(recipe)
    expect_error(invoke("pack", path), str(path), "unknown key", typo, f"did you mean '{suggestion}'",
                 bundle=Path(recipe["output"]))


def test_invalid_field_value_names_field(invoke, expect_error, recipe_factory):
    recipe, write = recipe_factory
    recipe["budget"]["max_kl"] = -1
    path = write(recipe)
    expect_error(invoke("pack", path), str(path), "budget.max_kl", "greater than or equal to 0",
                 bundle=Path(recipe["output"]))


def test_unknown_target_in_recipe(invoke, expect_error, recipe_factory):
    recipe, write = recipe_factory
    recipe["targets"] = ["x68"]
    path = write(recipe)
    expect_error(invoke("pack", path), str(path), "unknown target 'x68'", "did you mean 'x86'", "(known: ",
                 bundle=Path(recipe["output"]))


def test_unknown_target_on_command_line(invoke, expect_error, recipe_factory):
    recipe, write = recipe_factory
    path = write(recipe)
    result = invoke("pack", path, "--target", "arm64")
    assert result.exit_code == 2, result.output  # a usage error, like any bad option value
    assert "Invalid value for --target" in result.stderr and "unknown target 'arm64'" in result.stderr
    assert "did you mean 'arm-tflite'" in result.stderr or "(known: " in result.stderr
    assert "Traceback" not in result.output and not Path(recipe["output"]).exists()


def test_debug_lets_the_exception_through(invoke, tmp_path):
    missing = tmp_path / "nope.yaml"
    result = invoke("--debug", "pack", missing)
    assert result.exit_code == 1
    assert isinstance(result.exception, ConfigError)
    assert "recipe not found" in str(result.exception)
    shown = "".join(traceback.format_exception(*result.exc_info))
    assert shown.startswith("Traceback") and "load_recipe" in shown


@pytest.mark.parametrize("args", [["pack"], ["verify", "."], ["pack", "r.yaml", "--bogus"], ["frobnicate"]],
                         ids=["pack-no-recipe", "verify-no-data", "unknown-option", "unknown-command"])
def test_usage_errors_exit_2(invoke, args):
    result = invoke(*args)
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "Usage:" in result.stderr


def test_dump_config_prints_defaults_and_writes_nothing(invoke, recipe_factory, tmp_path):
    recipe, write = recipe_factory
    del recipe["latency"], recipe["budget"]
    path = write(recipe)
    result = invoke("pack", path, "--dump-config")
    assert result.exit_code == 0, result.output
    dumped = yaml.safe_load(result.stdout)
    assert dumped["name"] == "digits" and dumped["task"] == "classification"
    expected = {"quantization": {"per_channel": True, "activation_type": "uint8", "weight_type": "int8"},
                "budget": {"max_accuracy_drop": 0.5, "min_top1_agreement": 0.99, "max_kl": None,
                           "max_relative_l2": None},
                "latency": {"batch_size": 64, "warmup": 3, "repeats": 20, "threads": 2}}
    for section, defaults in expected.items():
        assert {key: dumped[section][key] for key in defaults} == defaults, section
    assert dumped["calibration"]["method"] == {"name": "minmax"}
    assert dumped["evaluation"]["batch_size"] == 256 and dumped["targets"] == ["x86"]
    assert dumped["output"] == recipe["output"]
    assert list(tmp_path.iterdir()) == []


def test_dump_config_applies_overrides(invoke, recipe_factory, tmp_path):
    recipe, write = recipe_factory
    path = write(recipe)
    result = invoke("pack", path, "--dump-config", "--out", tmp_path / "elsewhere", "--target", "x86")
    assert result.exit_code == 0, result.output
    dumped = yaml.safe_load(result.stdout)
    assert dumped["output"] == str(tmp_path / "elsewhere") and dumped["targets"] == ["x86"]
    assert list(tmp_path.iterdir()) == []


def test_console_script_errors_and_debug(console, tmp_path):
    missing = tmp_path / "nope.yaml"
    plain = subprocess.run([console, "pack", str(missing)], capture_output=True, text=True, cwd=tmp_path)
    assert plain.returncode == 1 and plain.stdout == ""
    assert plain.stderr.strip() == f"error: {missing}: recipe not found"
    debug = subprocess.run([console, "--debug", "pack", str(missing)], capture_output=True, text=True,
                           cwd=tmp_path)
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert "ConfigError" in debug.stderr and "recipe not found" in debug.stderr
    assert list(tmp_path.iterdir()) == []

