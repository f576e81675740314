"""What `edgepack init` infers from tiny seeded models written in code: inputs, ranges, task, labels, group,
budget, targets, the split, and the commented YAML (which must hold exactly the inferred recipe)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from edgepack.errors import ConfigError, DataError
from edgepack.recipe.scaffold import infer, installed_targets
from edgepack.recipe.scaffold_file import DataPaths, _split, _split_rows, recipe_data, render
from edgepack.recipe.scaffold_model import ModelRef

MODELS = '''
import torch
from torch import nn


class Scorer(nn.Module):
    """One score per row from a user table, a bag of tag ids and float features."""

    def __init__(self):
        super().__init__()
        self.users = nn.Embedding(30, 4)
        self.tags = nn.EmbeddingBag(12, 4, mode="mean")
        self.head = nn.Linear(8 + 3, 1)

    def forward(self, user_id, tags, features, scale=None):
        return self.head(torch.cat([self.users(user_id), self.tags(tags), features], 1))


class Counter(nn.Module):
    """Integer counts used as numbers (no table reads them), two class scores."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(2, 2)

    def forward(self, counts):
        return self.head(counts.float())


class Starred(nn.Module):
    def forward(self, *inputs):
        return inputs[0]


def scorer():
    return Scorer()


def counter():
    return Counter()


def starred():
    return Starred()
'''


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """models.py with three factories and seeded weights for each, in a folder named like a project."""
    root = tmp_path_factory.mktemp("scaffold") / "my project"
    root.mkdir()
    (root / "models.py").write_text(MODELS)
    spec = importlib.util.spec_from_file_location("_scaffold_unit_models", root / "models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    for name in ("scorer", "counter"):
        save_file(getattr(module, name)().state_dict(), str(root / f"{name}.safetensors"))
    save_file({}, str(root / "starred.safetensors"))
    return root


def scorer_rows(count: int = 40, seed: int = 0, **changes) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = {"user_id": rng.integers(0, 30, count), "tags": rng.integers(0, 12, (count, 3)),
            "features": rng.normal(size=(count, 3)), "grade": rng.integers(0, 4, count)}
    return {**rows, **changes}


def run_infer(folder: Path, factory: str, arrays: dict, **kwargs):
    model = ModelRef.parse(f"{folder / 'models.py'}:{factory}")
    return infer(model, model.factory(folder), folder / f"{factory}.safetensors", arrays, base_dir=folder,
                 source=folder / "data.npz", **kwargs)


def test_graded_labels_make_a_ranking_task_grouped_by_the_first_id_input(folder):
    inference = run_infer(folder, "scorer", scorer_rows())
    assert inference.name.value == "my_project"
    assert [spec.value for spec in inference.inputs] == [
        {"name": "user_id", "dtype": "int64", "shape": ["batch"], "range": [0, 30]},
        {"name": "tags", "dtype": "int64", "shape": ["batch", 3], "range": [0, 12]},
        {"name": "features", "dtype": "float32", "shape": ["batch", 3]}]
    assert "nn.Embedding 'users': 30 rows" in inference.inputs[0].why
    assert "nn.Embedding 'tags': 12 rows" in inference.inputs[1].why  # an EmbeddingBag counts too
    assert "float64 in the data, read as float32" in inference.inputs[2].why
    assert "scale=..." in inference.inputs_why  # an optional argument absent from the data is left out
    assert (inference.task.value, inference.labels.value) == ("ranking", "grade")
    assert "holds grades 0..3 (all 4)" in inference.task.why
    assert inference.group_by.value == "user_id" and "named like a user id" in inference.group_by.why
    assert inference.budget.value == {"max_auc_drop": 0.003, "max_ndcg_relative_drop": 0.01}


def test_clicks_make_ctr_and_segments_and_unused_arrays_are_named(folder):
    rng = np.random.default_rng(1)
    arrays = scorer_rows(click=rng.integers(0, 2, 40), cold_segment=rng.integers(0, 2, 40), weight=rng.normal(size=40))
    inference = run_infer(folder, "scorer", arrays)
    assert (inference.task.value, inference.labels.value) == ("ctr", "click")
    assert "other candidates: grade" in inference.labels.why
    assert inference.segments.value == ["cold_segment"]
    assert inference.unused == ("grade", "weight")


def test_a_labels_name_beats_other_integer_arrays_and_the_rest_are_named(folder):
    arrays = {**scorer_rows(), "label": np.zeros(40, np.int64)}
    labels = run_infer(folder, "scorer", arrays).labels
    assert labels.value == "label" and labels.why == "named like labels; other candidates: grade (--labels NAME)"
    assert run_infer(folder, "scorer", arrays, labels="grade").labels.why == "given with --labels"


def test_an_int_input_no_table_reads_gets_the_range_seen_in_both_data_files(folder):
    arrays = {"counts": np.array([[3, 5], [7, 2]] * 10, dtype=np.int32), "label": np.array([0, 1] * 10)}
    inference = run_infer(folder, "counter", arrays, calibration={"counts": np.array([[1, 9]], dtype=np.int32)})
    (spec,) = inference.inputs
    assert spec.value == {"name": "counts", "dtype": "int32", "shape": ["batch", 2], "range": [0, 10]}
    assert "no nn.Embedding reads it directly" in spec.why
    assert inference.task.value == "classification" and inference.group_by is None and inference.segments is None
    assert inference.budget.value == {"max_accuracy_drop": 0.5, "min_top1_agreement": 0.99}


@pytest.mark.parametrize("factory, arrays, error, fragment", [
    ("scorer", scorer_rows(user_id=np.full(40, 30)), DataError, "ids 30..30, outside the 30 rows of nn.Embedding"),
    ("scorer", scorer_rows(grade=np.full(40, 0.5)), DataError, "no array can be the labels"),
    ("counter", {"counts": np.ones((4, 2), np.int64), "a": np.zeros(4, np.int64), "b": np.zeros(4, np.int64)},
     DataError, "several arrays could be the labels (a, b); pass --labels"),
    ("starred", {"x": np.ones((4, 2), np.float32), "label": np.zeros(4, np.int64)}, ConfigError,
     "forward(*inputs) does not name its inputs"),
], ids=["ids-beyond-table", "float-labels", "ambiguous-labels", "star-args"])
def test_what_cannot_be_inferred_is_one_error_saying_why(folder, factory, arrays, error, fragment):
    with pytest.raises(error) as caught:
        run_infer(folder, factory, arrays)
    assert fragment in str(caught.value)


def test_the_factory_is_named_from_the_recipe_folder(folder):
    nested = folder / "pkg" / "net.py"
    nested.parent.mkdir(exist_ok=True)
    nested.write_text("")
    assert ModelRef.parse(f"{nested}:build").factory(folder) == "pkg.net:build"
    with pytest.raises(ConfigError, match="must be in .* or a folder above it"):
        ModelRef.parse(f"{nested}:build").factory(folder.parent / "elsewhere")
    bad = folder / "my-model.py"
    bad.write_text("")
    with pytest.raises(ConfigError, match="'my-model' is not an importable module path"):
        ModelRef.parse(f"{bad}:build").factory(folder)


def test_the_split_is_seeded_disjoint_and_covers_every_row(tmp_path):
    arrays = {"x": np.arange(1000)}
    splits = _split(arrays, tmp_path / "c.npz", tmp_path / "e.npz")
    assert list(splits.values()) == [250, 750]
    rows = _split_rows(arrays, splits)
    again = _split_rows(arrays, splits)
    assert all(np.array_equal(first, second) for first, second in zip(rows.values(), again.values()))
    calibration, evaluation = rows.values()
    assert not set(calibration) & set(evaluation) and len(set(calibration) | set(evaluation)) == 1000
    assert list(_split({"x": np.arange(10_000)}, tmp_path / "c", tmp_path / "e").values()) == [512, 9488]


def test_the_commented_yaml_holds_exactly_the_inferred_recipe(folder):
    inference = run_infer(folder, "scorer", scorer_rows())
    targets = installed_targets()
    paths = DataPaths("c.npz", "e.npz", "--calib", "--data", 40)
    content = recipe_data(inference, targets, factory="models:scorer", weights="scorer.safetensors", data=paths)
    text = render(inference, targets, content, paths, sources="models.py:scorer")
    assert yaml.safe_load(text) == content
    for guess in (inference.task, inference.labels, inference.group_by, inference.budget, targets,
                  *inference.inputs[:2]):
        assert f"# {guess.why}" in text


def test_targets_whose_packages_are_missing_are_left_out_and_named(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args, **kwargs: None if name == "executorch" else real(name, *args, **kwargs))
    targets = installed_targets()
    assert "arm-xnnpack" not in targets.value and "x86" in targets.value
    assert "arm-xnnpack (pip install 'edgepack[arm]')" in targets.why
