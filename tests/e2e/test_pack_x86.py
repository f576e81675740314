"""End to end: real MNIST data, real onnxruntime; asserts on the bundle, measured drift and exit codes."""

from __future__ import annotations

import json

import onnx
import pytest
import torch

from edgepack.bundle.check import verify_bundle
from edgepack.bundle.files import sha256_file
from edgepack.bundle.manifest import SCHEMA_VERSION
from edgepack.errors import EXIT_DRIFT, EXIT_OK
from edgepack.recipe.load import parse_recipe
from tests.e2e.conftest import pack_example
from tests.helpers import base_recipe

pytestmark = pytest.mark.e2e


def test_bundle_layout_and_checksums(packed):
    bundle = packed.bundle
    assert packed.exit_code == EXIT_OK
    for name in ("manifest.json", "report.md", "reference/model.fp32.onnx", "x86/model.int8.onnx"):
        assert (bundle / name).is_file(), name
    manifest = json.loads((bundle / "manifest.json").read_text())
    artifact = manifest["targets"]["x86"]["artifacts"][0]
    assert artifact["sha256"] == sha256_file(bundle / artifact["path"])
    assert artifact["size_bytes"] == (bundle / artifact["path"]).stat().st_size
    assert manifest["reference"]["sha256"] == sha256_file(bundle / "reference/model.fp32.onnx")
    assert not list(bundle.parent.glob(".bundle.staging-*"))


def test_manifest_records_what_an_app_developer_needs(packed):
    manifest = packed.manifest
    assert manifest.schema_version == SCHEMA_VERSION == 3
    assert manifest.name == "digits" and manifest.task == "classification"
    source = manifest.source_model
    assert source.params > 100_000 and source.macs > source.params and source.size_bytes > 0
    assert 0.9 < source.metrics["accuracy"] <= 1.0
    artifact = manifest.targets["x86"].artifacts[0]
    assert artifact.runtime == "onnxruntime" and artifact.runtime_version
    assert artifact.io.inputs[0].shape == ["batch", 1, 28, 28]
    assert artifact.io.outputs[0].quantization.dtype == "uint8"
    assert set(artifact.latency) == {"batch_1", "batch_16"}
    assert all(entry.median_ms > 0 for entry in artifact.latency.values())
    assert artifact.budget["min_top1_agreement"] == 0.98 and artifact.passed is True
    assert {check.metric for check in artifact.drift} == {"accuracy_drop", "top1_agreement"}
    calibration = manifest.calibration
    assert calibration.method.name == "minmax" and calibration.samples_used == 256
    assert len(calibration.sha256) == 64
    assert {"torch", "onnx", "onnxruntime", "numpy"} <= set(manifest.toolchain)
    assert manifest.recipe["targets"] == ["x86"]
    assert json.loads((packed.bundle / "manifest.json").read_text()) == manifest.to_json_dict()


def test_int8_artifact_is_smaller_and_drift_is_small(packed):
    artifact = packed.manifest.targets["x86"].artifacts[0]
    assert artifact.size_ratio_vs_fp32_onnx < 0.35
    metrics = artifact.metrics
    assert metrics["top1_agreement"] >= 0.98 and abs(metrics["accuracy_drop"]) <= 1.0
    assert 0 < metrics["relative_l2"] < 0.1 and metrics["kl"] >= 0


@pytest.mark.parametrize("method", [{"name": "percentile", "percentile": 99.99},
                                    {"name": "entropy", "num_bins": 1024, "num_quantized_bins": 128}])
def test_calibration_methods_give_different_valid_artifacts(trained_example, tmp_path, packed, method):
    calibration = base_recipe(trained_example, tmp_path)["calibration"] | {"method": method}
    result = pack_example(trained_example, tmp_path / "bundle", calibration=calibration)
    assert result.exit_code == EXIT_OK
    artifact = result.manifest.targets["x86"].artifacts[0]
    assert artifact.sha256 != packed.manifest.targets["x86"].artifacts[0].sha256
    assert artifact.structure["calibration_method"]["name"] == method["name"]
    assert artifact.metrics["top1_agreement"] >= 0.98


def test_drift_over_budget_fails_with_a_bundle_saying_so(trained_example, tmp_path):
    result = pack_example(trained_example, tmp_path / "bundle", budget={"min_top1_agreement": 1.0, "max_kl": 0.0})
    assert result.exit_code == EXIT_DRIFT
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["passed"] is False and manifest["targets"]["x86"]["status"] == "failed"
    failed = [c["metric"] for c in manifest["targets"]["x86"]["artifacts"][0]["drift"] if not c["passed"]]
    assert "kl" in failed
    assert "Failures" in (tmp_path / "bundle" / "report.md").read_text()


def test_verify_rechecks_a_bundle_from_the_bundle_alone(packed, trained_example):
    check = verify_bundle(packed.bundle, trained_example / "eval.npz")
    assert check.exit_code == EXIT_OK and check.samples == 1000
    (report,) = check.reports.values()
    assert report.metrics["top1_agreement"] >= 0.98


def test_onnx_source_model_is_quantized_and_verified(packed, trained_example, tmp_path):
    model = {"onnx": str(packed.bundle / "reference" / "model.fp32.onnx")}
    result = pack_example(trained_example, tmp_path / "bundle", model=model)
    assert result.exit_code == EXIT_OK
    assert result.manifest.source_model.kind == "onnx"
    assert result.manifest.source_model.runtime == "onnxruntime fp32"
    int8 = onnx.load(str(tmp_path / "bundle" / "x86" / "model.int8.onnx"))
    assert any(node.op_type == "QuantizeLinear" for node in int8.graph.node)


def test_pickled_module_loads_only_when_allowed(trained_example, tmp_path):
    from edgepack.model.load import load_model

    recipe = parse_recipe(base_recipe(trained_example, tmp_path / "b"), source="t", base_dir=trained_example)
    pickled = tmp_path / "whole.pt"
    torch.save(load_model(recipe).module, pickled)
    result = pack_example(trained_example, tmp_path / "bundle", model={"pickle": str(pickled), "allow_pickle": True})
    assert result.exit_code == EXIT_OK and result.manifest.source_model.kind == "pickle"


def test_budget_none_measures_drift_without_a_verdict(trained_example, tmp_path):
    result = pack_example(trained_example, tmp_path / "bundle", budget="none")
    assert result.exit_code == EXIT_OK
    artifact = result.manifest.targets["x86"].artifacts[0]
    assert artifact.drift == [] and artifact.metrics["top1_agreement"] > 0.9
    assert "not checked against any bound" in (tmp_path / "bundle" / "report.md").read_text()


def test_repacking_replaces_an_intact_bundle_but_not_a_tampered_one(trained_example, tmp_path):
    from edgepack.errors import ConfigError

    bundle = tmp_path / "bundle"
    pack_example(trained_example, bundle)
    pack_example(trained_example, bundle)  # an intact bundle is replaced
    (bundle / "my-notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="holds files the bundle does not list"):
        pack_example(trained_example, bundle)
    assert (bundle / "my-notes.txt").read_text() == "keep me"
