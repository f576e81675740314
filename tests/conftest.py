"""Shared fixtures: the example CNN trained briefly on real MNIST digits, and recipe writers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "image_classifier"


@pytest.fixture(scope="session")
def trained_example(tmp_path_factory) -> Path:
    """A folder holding model.py, quick-trained weights and calib/eval/train .npz splits of real MNIST."""
    folder = tmp_path_factory.mktemp("example")
    (folder / "model.py").write_text((EXAMPLE / "model.py").read_text())
    subprocess.run([sys.executable, str(EXAMPLE / "train.py"), "--quick", "--out", str(folder)],
                   check=True, capture_output=True, cwd=EXAMPLE)
    return folder


def base_recipe(example: Path, out: Path) -> dict:
    """A valid recipe for the trained example, as a dict to tweak in tests."""
    return {
        "name": "digits",
        "model": {"factory": "model:build_model", "weights": str(example / "model.safetensors")},
        "inputs": [{"name": "image", "dtype": "float32", "shape": ["batch", 1, 28, 28]}],
        "calibration": {"path": str(example / "calib.npz"), "samples": 256, "batch_size": 32,
                        "method": {"name": "minmax"}},
        "evaluation": {"path": str(example / "eval.npz"), "labels": "label"},
        "targets": ["x86"],
        "budget": {"max_accuracy_drop": 1.0, "min_top1_agreement": 0.98},
        "latency": {"batch_size": 16, "warmup": 1, "repeats": 3},
        "output": str(out),
    }


def write_recipe(folder: Path, recipe: dict, name: str = "recipe.yaml") -> Path:
    """Write `recipe` as YAML next to the example's model.py (so `model:build_model` imports)."""
    path = folder / name
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.fixture
def recipe_factory(trained_example, tmp_path):
    """Returns (recipe dict, writer) where writer(recipe) writes it beside the example and returns the path."""
    recipe = base_recipe(trained_example, tmp_path / "bundle")

    def write(data: dict, name: str = "recipe.yaml") -> Path:
        return write_recipe(trained_example, data, name=f"{tmp_path.name}-{name}")

    return recipe, write
