"""`edgepack init` and the one-line `pack --model ...`: init then pack passes with the written recipe unedited,
the recipe round-trips through --dump-config, the one-liner hands the pipeline the same recipe, and every wrong
input is one line and exit 1."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgepack.recipe.load import load_recipe
from edgepack.recipe.scaffold_file import recipe_from_files
from tests.helpers import write_npz
from tests.scaffold_models import ExampleFolder, image_example, ratings, recommender_example

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> ExampleFolder:
    return image_example(tmp_path_factory.mktemp("init") / "image_classifier")


@pytest.fixture(scope="module")
def recommender(tmp_path_factory) -> ExampleFolder:
    return recommender_example(tmp_path_factory.mktemp("init") / "recommender")


def _init(invoke, example: ExampleFolder, *args) -> Path:
    result = invoke("init", "--model", example.model, "--weights", example.weights, "--data", example.data, *args)
    assert result.exit_code == 0, result.output
    return Path(result.stdout.split("wrote ")[-1].split(";")[0])


def _pack_unedited(invoke, recipe: Path, out: Path) -> dict:
    result = invoke("pack", recipe, "--target", "x86", "--no-bench", "--out", out)
    assert result.exit_code == 0, result.output
    return json.loads((out / "manifest.json").read_text())


def test_image_example_init_then_pack_passes_unedited(invoke, image, tmp_path):
    recipe_path = _init(invoke, image)
    assert recipe_path == image.folder / "recipe.yaml"
    text = recipe_path.read_text()
    recipe = load_recipe(recipe_path)
    assert recipe.task == "classification" and recipe.evaluation.labels == "label"
    assert [spec.model_dump() for spec in recipe.inputs] == [
        {"name": "image", "dtype": "float32", "shape": ["batch", 1, 28, 28], "range": None}]
    assert recipe.budget.limits() == {"max_accuracy_drop": 0.5, "min_top1_agreement": 0.99}
    assert recipe.model.factory == "model:build_small" and "x86" in recipe.targets
    # the split: seeded, disjoint, written next to the recipe and named in it relative to it
    assert "path: recipe.calib.npz" in text and "path: recipe.eval.npz" in text and "kept apart from evaluation" in text
    with np.load(image.data) as data, np.load(image.folder / "recipe.calib.npz") as calib, \
            np.load(image.folder / "recipe.eval.npz") as held_out:
        assert len(calib["label"]) + len(held_out["label"]) == len(data["label"]) == 240
        rows = {row.tobytes() for row in data["image"]}
        assert {row.tobytes() for row in calib["image"]} | {row.tobytes() for row in held_out["image"]} == rows
        assert not {row.tobytes() for row in calib["image"]} & {row.tobytes() for row in held_out["image"]}
    for why in ("# forward(input) takes one tensor: 'image' is the only array", "# the model outputs [batch, 10]",
                "# the default of task classification", "installed here"):
        assert why in text
    manifest = _pack_unedited(invoke, recipe_path, tmp_path / "bundle")
    assert manifest["targets"]["x86"]["status"] == "passed"


def test_recommender_example_init_then_pack_passes_unedited(invoke, recommender, tmp_path):
    recipe_path = _init(invoke, recommender, "--calib", recommender.calib)
    recipe = load_recipe(recipe_path)
    assert recipe.task == "ctr" and recipe.evaluation.labels == "click"
    assert recipe.evaluation.group_by == "user_id"
    assert recipe.evaluation.segments == ["user_segment", "item_segment"]
    ranges = {spec.name: spec.range for spec in recipe.inputs}
    assert ranges == {"user_id": (0, 944), "item_id": (0, 1683), "occupation": (0, 22), "gender": (0, 3),
                      "age_bucket": (0, 8), "genres": (0, 20), "dense": None}
    assert [spec.shape for spec in recipe.inputs][-2:] == [["batch", 6], ["batch", 2]]
    assert recipe.budget.limits() == {"max_auc_drop": 0.003, "max_ndcg_relative_drop": 0.01}
    assert recipe.calibration.path == recommender.calib
    text = recipe_path.read_text()
    assert "path: calib.npz" in text and "nn.Embedding 'user', 'user_bias': 944 rows" in text
    assert "other candidates: relevance" in text and "# not read: relevance" in text
    manifest = _pack_unedited(invoke, recipe_path, tmp_path / "bundle")
    assert manifest["targets"]["x86"]["status"] == "passed"


def test_the_written_recipe_round_trips_through_dump_config(invoke, image, tmp_path):
    recipe_path = _init(invoke, image, "--out", image.folder / "dumped-from.yaml")
    result = invoke("pack", recipe_path, "--dump-config")
    assert result.exit_code == 0, result.output
    dumped = image.folder / "dumped.yaml"
    dumped.write_text(result.stdout)
    assert load_recipe(dumped).model_dump() == load_recipe(recipe_path).model_dump()


def test_the_one_liner_hands_the_pipeline_the_recipe_init_writes(invoke, recommender, tmp_path, monkeypatch):
    import edgepack.pipeline

    received = []
    monkeypatch.setattr(edgepack.pipeline, "pack", lambda recipe, progress, **kwargs: received.append(recipe) or 1 / 0)
    result = invoke("pack", "--model", recommender.model, "--weights", recommender.weights, "--calib",
                    recommender.calib, "--eval", recommender.data, "--target", "x86", "--out", tmp_path / "bundle")
    assert len(received) == 1, result.output
    written = load_recipe(_init(invoke, recommender, "--calib", recommender.calib, "--out",
                                recommender.folder / "one-liner.yaml"), output=tmp_path / "bundle", targets=("x86",))
    assert received[0].model_dump() == written.model_dump()


def test_the_one_liner_dump_config_loads_back_to_an_equal_recipe(invoke, image):
    args = ["--model", image.model, "--weights", image.weights, "--calib", image.calib, "--eval", image.data]
    result = invoke("pack", *args, "--labels", "label", "--dump-config")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"# the recipe of `pack --model {image.model}`: save it in {image.folder}")
    saved = image.folder / "from-one-liner.yaml"
    saved.write_text(result.stdout)
    reloaded = load_recipe(saved)
    one_liner = recipe_from_files(image.model, image.weights, image.calib, image.data, labels="label")
    assert reloaded.model_dump() == one_liner.model_dump()
    assert reloaded.model.factory == "model:build_small" and reloaded.calibration.path == image.calib
    assert reloaded.evaluation.path == image.data and reloaded.task == "classification"


def _renamed(example: ExampleFolder, folder: Path) -> Path:
    arrays = {("dense_features" if name == "dense" else name): array for name, array in ratings(50, seed=4).items()}
    return write_npz(folder / "renamed.npz", arrays)


def _bad_labels(example: ExampleFolder, folder: Path) -> Path:
    with np.load(example.data) as data:
        return write_npz(folder / "labels.npz", {"image": data["image"], "label": data["label"] + 5})


def _nan_image(example: ExampleFolder, folder: Path) -> Path:
    with np.load(example.data) as data:
        images = data["image"].copy()
        images[-1, 0, 5, 5] = np.nan
        return write_npz(folder / "nan.npz", {"image": images, "label": data["label"]})


def _negative_clicks(example: ExampleFolder, folder: Path) -> Path:
    arrays = ratings(50, seed=4)
    return write_npz(folder / "negative.npz", {**arrays, "click": arrays["click"] - 1})


@pytest.mark.parametrize("which, change, fragments", [
    ("recommender", lambda ex, tmp: ["--data", _renamed(ex, tmp)],
     ["do not match the forward arguments of model:build_model", "needs arrays named ['dense']",
      "'dense_features'"]),
    ("image", lambda ex, tmp: ["--data", _bad_labels(ex, tmp)],
     ["labels 'label' fit no task", "class indices 0..9", "found 5..14 (all 10)"]),
    ("recommender", lambda ex, tmp: ["--data", _negative_clicks(ex, tmp)],
     ["labels 'click' fit no task", "clicks 0/1 (ctr) or relevance grades >= 0 (ranking)", "found {-1, 0}"]),
    ("image", lambda ex, tmp: ["--data", _nan_image(ex, tmp)],
     ["not written, it does not pass pack's own checks", "input 'image': contains 1 NaN/inf value(s)"]),
    ("image", lambda ex, tmp: ["--data", tmp / "absent.npz"], ["absent.npz: data file not found"]),
    ("image", lambda ex, tmp: ["--weights", tmp / "absent.safetensors"],
     ["absent.safetensors: weights file not found"]),
    ("image", lambda ex, tmp: ["--model", f"{ex.folder / 'model.py'}:build_tiny"],
     ["model factory 'model:build_tiny'", "has no attribute 'build_tiny'"]),
    ("image", lambda ex, tmp: ["--model", f"{tmp / 'nothing.py'}:build"], ["--model:", "nothing.py: file not found"]),
    ("image", lambda ex, tmp: ["--model", "model.py"], ["--model: expected PATH.py:FUNCTION"]),
    ("image", lambda ex, tmp: ["--labels", "lable"], ["--labels 'lable' is not an array", "image, label"]),
    ("image", lambda ex, tmp: ["--out", tmp / "elsewhere" / "recipe.yaml"],
     ["--out: the recipe must be in", "or a folder above it"]),
], ids=["arrays-vs-forward", "labels-beyond-classes", "negative-labels", "nan-in-data", "missing-data",
        "missing-weights", "missing-factory", "missing-model-file", "malformed-model", "unknown-labels",
        "recipe-outside-model-folder"])
def test_a_wrong_input_is_one_line_and_exit_1(invoke, expect_error, image, recommender, tmp_path, which, change,
                                               fragments):
    example = image if which == "image" else recommender
    options = {"--model": example.model, "--weights": example.weights, "--data": example.data,
               "--out": example.folder / f"{tmp_path.name}.yaml"}
    changed = change(example, tmp_path)
    options.update(zip(changed[::2], changed[1::2]))
    result = invoke("init", *[part for pair in options.items() for part in pair])
    expect_error(result, *fragments)
    assert not list(example.folder.glob(f"*{tmp_path.name}*"))  # neither the recipe nor split files


def test_an_existing_recipe_is_kept_without_force(invoke, expect_error, image, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(image.folder, folder)
    (folder / "recipe.yaml").write_text("# mine\n")
    args = ["init", "--model", f"{folder / 'model.py'}:build_small", "--weights", image.weights, "--data", image.data]
    expect_error(invoke(*args), "recipe.yaml: exists; pass --force to replace it")
    assert (folder / "recipe.yaml").read_text() == "# mine\n"
    assert invoke(*args, "--force").exit_code == 0 and "task: classification" in (folder / "recipe.yaml").read_text()


def test_the_one_liner_reports_wrong_inputs_in_one_line(invoke, expect_error, image, tmp_path):
    base = ["pack", "--model", image.model, "--weights", image.weights, "--calib", image.calib]
    expect_error(invoke(*base, "--eval", tmp_path / "absent.npz"), "absent.npz: data file not found")
    result = invoke(*base)
    assert result.exit_code == 2 and "--model needs --eval" in result.output
    result = invoke("pack", image.folder / "recipe.yaml", "--weights", image.weights)
    assert result.exit_code == 2 and "--weights without --model" in result.output
