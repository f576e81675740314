"""A pruned and distilled tiny BERT packed for x86: the bundle carries the pruned Hugging Face folder and the
manifest says what was cut."""

from __future__ import annotations

import json

import numpy as np

from edgepack.pipeline import pack
from edgepack.recipe.load import parse_recipe
from tests.text.conftest import text_recipe


def test_a_pruned_and_distilled_encoder_packs_for_x86(tiny_text, tmp_path):
    recipe = parse_recipe(text_recipe(
        tiny_text, tmp_path / "bundle", ["x86"],
        prune={"heads": 0.5, "ffn": 0.5, "layers": [1], "importance": "taylor"},
        distill={"path": "calib.csv", "epochs": 4, "lr": 3e-3, "batch_size": 32, "hidden_states": 1.0,
                 "attentions": 1.0, "time_budget_s": 60, "assistant": {"ffn": 0.25, "epochs": 2}},
        budget={"max_accuracy_drop": 25.0, "min_top1_agreement": 0.7}), source="recipe.yaml", base_dir=tiny_text)
    result = pack(recipe, bench=False)
    pruning = result.manifest.pruning
    assert pruning is not None and pruning.params.after < pruning.params.before
    assert pruning.layers["encoder.layers"].after == 1 and pruning.reload_max_abs_difference < 1e-5
    assert {"float", "assistant", "pruned", "distilled"} <= set(pruning.accuracy)
    assert any(entry.path.endswith("huggingface/config.json") for entry in pruning.files)
    config = json.loads((tmp_path / "bundle" / "pruned" / "huggingface" / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and config["intermediate_size"] == 32 and config["pruned_heads"]
    assert [target.status for target in result.targets] == ["passed"]
    assert np.isfinite(pruning.distillation.best_validation)
