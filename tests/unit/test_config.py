"""Recipe schema: parsing, defaults, path resolution, overrides and one-line ConfigError messages."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from edgepack.calibration.methods import Entropy, MinMax, Percentile
from edgepack.errors import ConfigError
from edgepack.recipe.load import load_recipe, parse_recipe
from tests.helpers import write_yaml

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "image_classifier"

MINIMAL = {
    "name": "digits",
    "model": {"factory": "netmod:build", "weights": "weights/model.safetensors"},
    "inputs": [{"name": "image", "dtype": "float32", "shape": ["batch", 1, 28, 28]}],
    "calibration": {"path": "data/calib.npz"},
    "evaluation": {"path": "data/eval.npz"},
}


def recipe_data(**changes) -> dict:
    """A deep copy of MINIMAL with top-level keys replaced (None removes the key)."""
    data = copy.deepcopy(MINIMAL)
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def write(folder: Path, data, name: str = "recipe.yaml") -> Path:
    """Write `data` as a recipe file in `folder`."""
    return write_yaml(folder / name, data)


def config_error(tmp_path: Path, data) -> str:
    """Write `data` as a recipe, load it, and return the ConfigError text (failing if it loads)."""
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    text = str(info.value)
    assert text.startswith(str(path)), text
    return text


def test_valid_recipe_parses_with_defaults(tmp_path):
    recipe = load_recipe(write(tmp_path, recipe_data()))
    assert recipe.name == "digits"
    assert recipe.task == "classification"
    assert recipe.quantization.activation_type == "uint8"
    assert recipe.quantization.weight_type == "int8"
    assert recipe.quantization.per_channel is True
    assert isinstance(recipe.calibration.method, MinMax)
    assert recipe.calibration.samples == 512
    assert recipe.calibration.batch_size == 32
    assert recipe.calibration.seed == 0
    assert recipe.evaluation.labels == "label"
    assert recipe.evaluation.batch_size == 256
    assert recipe.targets == ["x86"]
    assert recipe.budget.max_accuracy_drop == 0.5
    assert recipe.budget.min_top1_agreement == 0.99
    assert recipe.budget.max_kl is None
    assert recipe.input_names == ["image"]
    assert recipe.inputs[0].sample_shape == (1, 28, 28)


def test_relative_paths_resolve_against_recipe_folder(tmp_path, monkeypatch):
    folder = tmp_path / "project"
    folder.mkdir()
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    recipe = load_recipe(Path("..") / "project" / write(folder, recipe_data()).name)
    assert recipe.base_dir == folder.resolve()
    assert recipe.model.weights == folder.resolve() / "weights" / "model.safetensors"
    assert recipe.calibration.path == folder.resolve() / "data" / "calib.npz"
    assert recipe.evaluation.path == folder.resolve() / "data" / "eval.npz"
    # output is relative to the working directory, like --out
    assert recipe.output == elsewhere.resolve() / "dist" / "digits"
    data = recipe_data()
    data["calibration"]["path"] = str(tmp_path / "abs" / "calib.npz")
    assert parse_recipe(data, source="r.yaml", base_dir=folder).calibration.path == tmp_path / "abs" / "calib.npz"


def test_example_recipe_parses():
    recipe = load_recipe(EXAMPLE / "recipe.yaml")
    assert recipe.calibration.method == Percentile(percentile=99.999)
    assert recipe.model.weights == EXAMPLE / "artifacts" / "model.safetensors"
    assert recipe.budget.max_accuracy_drop == 0.3


def test_unknown_top_level_key_suggests_close_match(tmp_path):
    data = recipe_data()
    data["calibraton"] = data.pop("calibration")
    text = config_error(tmp_path, data)
    assert "unknown key 'calibraton'" in text
    assert "did you mean 'calibration'?" in text
    assert "missing required key 'calibration'" in text


def test_unknown_nested_key_names_dotted_path_and_suggests(tmp_path):
    data = recipe_data()
    data["calibration"]["methd"] = {"name": "entropy"}
    text = config_error(tmp_path, data)
    assert "unknown key 'calibration.methd'" in text
    assert "did you mean 'method'?" in text


def test_unknown_key_inside_list_item(tmp_path):
    data = recipe_data()
    data["inputs"][0]["dtyp"] = "float32"
    text = config_error(tmp_path, data)
    assert "unknown key 'inputs.0.dtyp'" in text
    assert "did you mean 'dtype'?" in text


def test_unknown_key_without_close_match_lists_allowed_keys(tmp_path):
    data = recipe_data(quantization={"zzzz": 1})
    text = config_error(tmp_path, data)
    assert "unknown key 'quantization.zzzz'" in text
    assert "expected one of" in text and "activation_type" in text and "per_channel" in text


def test_unknown_key_inside_calibration_method_suggests(tmp_path):
    data = recipe_data()
    data["calibration"]["method"] = {"name": "percentile", "percentil": 99.0}
    text = config_error(tmp_path, data)
    assert "did you mean 'percentile'?" in text


@pytest.mark.parametrize("key", ["name", "model", "inputs", "calibration", "evaluation"])
def test_missing_required_top_level_key_named(tmp_path, key):
    text = config_error(tmp_path, recipe_data(**{key: None}))
    assert f"missing required key '{key}'" in text


def test_missing_required_nested_key_named(tmp_path):
    data = recipe_data(inputs=[{"name": "image", "shape": ["batch", 4]}])
    assert "missing required key 'inputs.0.dtype'" in config_error(tmp_path, data)


def test_shape_without_symbolic_batch_rejected(tmp_path):
    data = recipe_data(inputs=[{"name": "image", "dtype": "float32", "shape": [1, 1, 28, 28]}])
    text = config_error(tmp_path, data)
    assert "field 'inputs.0'" in text
    assert "symbolic batch" in text


def test_non_positive_dimension_rejected(tmp_path):
    data = recipe_data(inputs=[{"name": "image", "dtype": "float32", "shape": ["batch", 0, 28]}])
    assert "positive integers" in config_error(tmp_path, data)


def test_bad_dtype_rejected(tmp_path):
    data = recipe_data(inputs=[{"name": "image", "dtype": "float64", "shape": ["batch", 4]}])
    text = config_error(tmp_path, data)
    assert "field 'inputs.0.dtype'" in text
    assert "'float64'" in text and "float32" in text


def test_duplicate_input_names_rejected(tmp_path):
    spec = {"name": "x", "dtype": "float32", "shape": ["batch", 4]}
    assert "input names must be unique" in config_error(tmp_path, recipe_data(inputs=[spec, spec]))


def test_unknown_target_rejected_with_suggestion(tmp_path):
    text = config_error(tmp_path, recipe_data(targets=["x68"]))
    assert "field 'targets'" in text
    assert "unknown target 'x68'" in text
    assert "did you mean 'x86'?" in text


def test_duplicate_target_rejected(tmp_path):
    assert "more than once" in config_error(tmp_path, recipe_data(targets=["x86", "x86"]))


def test_task_ranking_needs_group_by(tmp_path):
    text = config_error(tmp_path, recipe_data(task="ranking", budget={"max_auc_drop": 0.01}))
    assert "task 'ranking' needs evaluation.group_by" in text


def test_group_by_must_name_an_input(tmp_path):
    data = recipe_data(task="ctr", budget={"max_auc_drop": 0.01})
    data["evaluation"]["group_by"] = "user"
    assert "evaluation.group_by 'user' is not an input" in config_error(tmp_path, data)


def test_range_is_for_integer_inputs(tmp_path):
    data = recipe_data()
    data["inputs"][0]["range"] = [0, 10]
    assert "'range' is for integer id inputs" in config_error(tmp_path, data)


def test_unknown_task_is_rejected(tmp_path):
    assert "task" in config_error(tmp_path, recipe_data(task="regression"))


def test_pickle_without_allow_pickle_rejected(tmp_path):
    text = config_error(tmp_path, recipe_data(model={"pickle": "model.pt"}))
    assert "field 'model'" in text
    assert "allow_pickle: true" in text
    recipe = load_recipe(write(tmp_path, recipe_data(model={"pickle": "model.pt", "allow_pickle": True})))
    assert recipe.model.pickle == tmp_path.resolve() / "model.pt"


def test_factory_without_weights_rejected(tmp_path):
    text = config_error(tmp_path, recipe_data(model={"factory": "netmod:build"}))
    assert "'factory' needs 'weights'" in text


def test_two_model_sources_rejected(tmp_path):
    text = config_error(tmp_path, recipe_data(model={"onnx": "m.onnx", "pickle": "m.pt", "allow_pickle": True}))
    assert "exactly one of" in text and "onnx, pickle" in text


@pytest.mark.parametrize("value, words", [(100.0, "less than 100"), (50.0, "greater than 50"), (120, "less than 100")])
def test_percentile_out_of_range_rejected(tmp_path, value, words):
    data = recipe_data()
    data["calibration"]["method"] = {"name": "percentile", "percentile": value}
    text = config_error(tmp_path, data)
    assert "calibration.method" in text and "percentile" in text
    assert words in text


def test_entropy_needs_more_histogram_bins(tmp_path):
    data = recipe_data()
    data["calibration"]["method"] = {"name": "entropy", "num_bins": 128}
    text = config_error(tmp_path, data)
    assert "num_bins" in text
    assert "greater than or equal to 256" in text
    data["calibration"]["method"] = {"name": "entropy", "num_bins": 256}
    assert load_recipe(write(tmp_path, data)).calibration.method == Entropy(num_bins=256)


def test_unknown_calibration_method_rejected(tmp_path):
    data = recipe_data()
    data["calibration"]["method"] = {"name": "kl"}
    text = config_error(tmp_path, data)
    assert "calibration.method" in text and "'minmax'" in text and "'entropy'" in text


def test_columns_for_unknown_input_rejected(tmp_path):
    data = recipe_data()
    data["calibration"]["columns"] = {"pixels": "px*"}
    assert "columns maps unknown input 'pixels'" in config_error(tmp_path, data)


def test_data_source_needs_exactly_one_of_path_or_callable(tmp_path):
    data = recipe_data(evaluation={"path": "e.npz", "callable": "mod:fn"})
    assert "exactly one of 'path' or 'callable'" in config_error(tmp_path, data)


def test_invalid_yaml_is_config_error(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\nmodel: {\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_recipe(path)
    assert f"{path}:2:" in str(info.value)  # file, line and column of the problem


def test_non_string_output_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="output"):
        load_recipe(write(tmp_path, recipe_data(output=123)))


def test_non_mapping_yaml_is_config_error(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_recipe(path)


def test_missing_file_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="recipe not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_output_override(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, recipe_data(output="from_recipe"))
    assert load_recipe(path).output == tmp_path.resolve() / "from_recipe"
    assert load_recipe(path, output=Path("cli_out")).output == tmp_path.resolve() / "cli_out"
    assert load_recipe(path, output=tmp_path / "abs").output == tmp_path / "abs"


def test_targets_override(tmp_path):
    path = write(tmp_path, recipe_data(targets=["x68"]))
    with pytest.raises(ConfigError, match="unknown target 'x68'"):
        load_recipe(path)
    assert load_recipe(path, targets=("x86",)).targets == ["x86"]
    with pytest.raises(ConfigError, match="unknown target 'arm'"):
        load_recipe(write(tmp_path, recipe_data()), targets=("arm",))


def test_parse_recipe_collects_every_problem_in_one_error(tmp_path):
    data = recipe_data(targets=["x68"])
    data["inputs"][0]["dtype"] = "float64"
    with pytest.raises(ConfigError) as info:
        parse_recipe(data, source="inline.yaml", base_dir=tmp_path)
    text = str(info.value)
    assert text.count("inline.yaml:") >= 2
    assert "inputs.0.dtype" in text and "targets" in text


def test_ranking_refuses_probability_budgets(tmp_path):
    data = recipe_data(task="ranking")
    data["evaluation"]["group_by"] = data["inputs"][0]["name"]
    data["budget"] = {"max_logloss_increase": 0.01}
    text = config_error(tmp_path, data)
    assert "budget.max_logloss_increase limits 'logloss_increase', which task 'ranking' does not measure" in text
    assert "(it applies to ctr)" in text and "bounds for task 'ranking': max_auc_drop" in text


@pytest.mark.parametrize("task, bound", [("classification", "max_auc_drop"), ("ctr", "max_accuracy_drop"),
                                         ("ctr", "min_top1_agreement"), ("ranking", "max_kl")])
def test_a_bound_the_task_does_not_measure_is_refused(tmp_path, task, bound):
    data = recipe_data(task=task, budget={bound: 0.5})
    if task == "ranking":
        data["evaluation"]["group_by"] = data["inputs"][0]["name"]
    text = config_error(tmp_path, data)
    assert f"budget.{bound} limits" in text and f"which task '{task}' does not measure" in text


@pytest.mark.parametrize("budget", [{}, {"max_accuracy_drop": None, "min_top1_agreement": None}])
def test_a_budget_without_bounds_is_refused(tmp_path, budget):
    text = config_error(tmp_path, recipe_data(budget=budget))
    assert "the budget sets no bound" in text and "budget: none" in text


def test_budget_none_measures_without_a_verdict(tmp_path):
    recipe = parse_recipe(recipe_data(budget="none"), source="inline", base_dir=tmp_path)
    assert recipe.budget.disabled and recipe.budget.limits() == {}
    text = config_error(tmp_path, recipe_data(budget={"disabled": True, "max_kl": 0.1}))
    assert "budget: none cannot be combined with bounds" in text


def test_recommender_tasks_have_no_default_budget(tmp_path):
    text = config_error(tmp_path, recipe_data(task="ctr"))
    assert "budget" in text and "task 'ctr' has no default budget" in text


def test_an_explicit_budget_holds_exactly_its_bounds(tmp_path):
    recipe = parse_recipe(recipe_data(budget={"max_kl": 0.1}), source="inline", base_dir=tmp_path)
    assert recipe.budget.limits() == {"max_kl": 0.1}


def test_a_budget_file_is_read_with_the_recipes_error_wording(tmp_path):
    from edgepack.recipe.load import load_budget

    path = tmp_path / "bounds.yaml"
    path.write_text("max_auc_drop: 0.01\nmin_spearman: 0.9\n")
    assert load_budget(budget_path=path, recipe_path=None).limits() == {"max_auc_drop": 0.01, "min_spearman": 0.9}
    path.write_text("max_kll: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'budget.max_kll'; did you mean 'max_kl'"):
        load_budget(budget_path=path, recipe_path=None)
    assert load_budget(budget_path=None, recipe_path=None) is None
