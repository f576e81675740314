"""Shared fixtures: the example CNN trained briefly on real MNIST digits, and a recipe writer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# tests/cli/conftest.py reads base_recipe and write_recipe from this module
from tests.helpers import IMAGE_EXAMPLE, base_recipe, write_recipe


@pytest.fixture(scope="session")
def trained_example(tmp_path_factory) -> Path:
    """A folder holding model.py, quick-trained weights and calib/eval/train .npz splits of real MNIST."""
    folder = tmp_path_factory.mktemp("example")
    (folder / "model.py").write_text((IMAGE_EXAMPLE / "model.py").read_text())
    subprocess.run([sys.executable, str(IMAGE_EXAMPLE / "train.py"), "--quick", "--out", str(folder)],
                   check=True, capture_output=True, cwd=IMAGE_EXAMPLE)
    return folder


@pytest.fixture
def recipe_factory(trained_example, tmp_path):
    """Returns (recipe dict, writer) where writer(recipe) writes it beside the example and returns the path."""
    recipe = base_recipe(trained_example, tmp_path / "bundle")

    def write(data: dict, name: str = "recipe.yaml") -> Path:
        return write_recipe(trained_example, data, name=f"{tmp_path.name}-{name}")

    return recipe, write
