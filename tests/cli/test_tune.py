"""`edgepack tune` and `pack` with `tune.auto`: the search, its fragment, and what pack builds from it."""

from __future__ import annotations

import json

import onnx
import yaml

from edgepack.bundle.files import Bundle


def _with(recipe: dict, **changes) -> dict:
    """`recipe` with sections replaced; x86 weights pinned, so a trial builds one scheme, not two to compare."""
    return {**recipe, "target_options": {"x86": {"portable_weights": "int8-7bit"}}, **changes}


def test_tune_writes_a_fragment_that_pack_builds_without_searching(recipe_factory, invoke, tmp_path):
    recipe, write = recipe_factory
    recipe = _with(recipe, budget={"min_top1_agreement": 0.98})
    fragment = tmp_path / "tuned.yaml"
    result = invoke("tune", write(recipe), "--fragment", fragment)
    assert result.exit_code == 0, result.output
    assert "meets budget ← chosen" in result.stdout
    assert "most sensitive layers to weight rounding" in result.stdout
    tuned = yaml.safe_load(fragment.read_text())["tuned"]
    assert set(tuned) == {"x86"} and tuned["x86"]["method"]["name"] in ("minmax", "percentile", "mse")
    # the fragment pasted into the recipe reproduces the choice: pack records it and does not search
    result = invoke("pack", write({**recipe, "tuned": tuned}, "with-fragment.yaml"), "--no-bench")
    assert result.exit_code == 0, result.output
    assert "trying" not in result.output
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["tuned"]["x86"]["method"] == tuned["x86"]["method"]
    assert manifest["tuning"] == {}


def test_a_target_that_cannot_meet_the_budget_says_so_with_its_best_candidate(recipe_factory, invoke, tmp_path):
    recipe, write = recipe_factory
    recipe = _with(recipe, budget={"max_kl": 0.0}, tune={"max_float_layers": 2})
    fragment = tmp_path / "tuned.yaml"
    result = invoke("tune", write(recipe), "--fragment", fragment)
    assert result.exit_code == 3, result.output
    assert "x86 cannot meet the budget with the candidates tried; best:" in result.stderr
    labels = [line for line in result.stdout.splitlines() if "over budget" in line]
    text = "\n".join(labels)
    assert "bias correction" in text and "layer(s) float" in text and "minmax" in text
    assert "no candidate meets the budget; the closest is kept" in result.stdout
    # the closest candidate is still written, so the user can pack it and see its figures
    assert "x86" in yaml.safe_load(fragment.read_text())["tuned"]


def test_pack_auto_searches_records_every_trial_and_builds_the_choice(recipe_factory, invoke, tmp_path):
    recipe, write = recipe_factory
    recipe = _with(recipe, budget={"min_top1_agreement": 0.98, "max_accuracy_drop": 1.0}, tune={"auto": True})
    result = invoke("pack", write(recipe), "--no-bench")
    assert result.exit_code == 0, result.output
    assert "x86: trying" in result.stderr
    bundle = Bundle.open(tmp_path / "bundle")
    record = bundle.manifest.tuning["x86"]
    assert record.met_budget and record.chosen_trial is not None
    assert record.fit_samples + record.holdout_samples == bundle.manifest.calibration.samples_available_after_selection
    assert record.bounds_checked == ["min_top1_agreement"] and record.bounds_not_checked == ["max_accuracy_drop"]
    assert all(trial.latency_ms and trial.latency_ms > 0 for trial in record.trials if trial.error is None)
    assert record.sensitivity and record.sensitivity[0].target_names["x86"]
    assert bundle.manifest.tuned["x86"] == record.chosen_trial.config
    html = (tmp_path / "bundle" / "report.html").read_text()
    assert "<h2>Tuning</h2>" in html and "Pareto view of x86" in html


def test_float_modules_in_the_recipe_stay_float_in_the_artifact(recipe_factory, invoke, tmp_path):
    recipe, write = recipe_factory
    recipe = _with(recipe, tuned={"x86": {"float_modules": ["1.0"], "bias_correction": True}})
    result = invoke("pack", write(recipe), "--no-bench")
    assert result.exit_code in (0, 3), result.output
    model = onnx.load(str(tmp_path / "bundle" / "x86" / "model.int8.onnx"))
    floats = {init.name for init in model.graph.initializer if init.data_type == onnx.TensorProto.FLOAT}
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    assert sum(node.input[1] in floats for node in convs) >= 2  # the narrow input conv, and module 1.0
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["tuned"]["x86"] == {"bias_correction": True, "float_modules": ["1.0"]}


def test_tuned_entries_are_checked_before_any_work(recipe_factory, invoke, expect_error):
    recipe, write = recipe_factory
    expect_error(invoke("pack", write(_with(recipe, tuned={"x68": {}}))), "x68", "x86")
    expect_error(invoke("pack", write(_with(recipe, targets=["arm-xnnpack"],
                                            tuned={"arm-xnnpack": {"method": {"name": "entropy"}}}))),
                 "tuned.arm-xnnpack.method", "entropy")
    result = invoke("pack", write(_with(recipe, tuned={"x86": {"float_modules": ["no.such.layer"]}})), "--no-bench")
    assert result.exit_code == 1
    assert "float_modules" in result.stderr and "no.such.layer" in result.stderr


def test_a_failing_onnx_artifact_is_localized_layer_by_layer(failed_bundle):
    bundle, _ = failed_bundle
    manifest = Bundle.open(bundle).manifest
    record = manifest.divergence["x86/model.int8.onnx"]
    assert record.samples == 16 and len(record.layers) >= 5 and record.first is not None
    assert all(layer.relative_error >= 0 for layer in record.layers)
    assert record.layers[0].module == "0.0"  # named after the torch module that holds the weight
    assert "the error first jumps at module" in (bundle / "report.md").read_text()
    assert "Error per layer of x86/model.int8.onnx" in (bundle / "report.html").read_text()
