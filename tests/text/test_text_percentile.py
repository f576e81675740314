"""Histogram calibration (percentile) on a transformer: only the quantized ops' tensors are calibrated,
so the additive attention mask (-3.4e38) never reaches a histogram."""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from edgepack.bundle.files import Bundle
from edgepack.cli.main import main
from tests.text.conftest import text_recipe

pytestmark = pytest.mark.e2e


def test_percentile_calibration_packs_a_transformer_for_cuda(tiny_text, tmp_path):
    out = tmp_path / "bundle"
    recipe = text_recipe(tiny_text, out, ["cuda"], budget={"max_accuracy_drop": 100.0})
    recipe["calibration"]["method"] = {"name": "percentile", "percentile": 99.99}
    path = tiny_text / "recipe_percentile.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(main, ["pack", str(path), "--no-bench"])
    assert result.exit_code == 0, result.output
    artifacts = Bundle.open(out).manifest.targets["cuda"].artifacts
    int8 = next(artifact for artifact in artifacts if "int8" in artifact.precision)
    assert int8.structure["calibration_method"] == {"name": "percentile", "percentile": 99.99}
