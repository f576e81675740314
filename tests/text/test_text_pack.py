"""End to end: a tiny BERT from a Hugging Face folder, packed from raw text; the bundle carries the
tokenizer, its spec and golden token ids; every artifact runs in its runtime on held-out text."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import yaml
from click.testing import CliRunner
from onnx import numpy_helper

from edgepack.bundle.check import verify_bundle
from edgepack.bundle.files import Bundle
from edgepack.cli.main import main
from edgepack.errors import EXIT_OK
from edgepack.quantization.transformer_int8 import additive_mask_constant
from edgepack.text.bundle import check_golden_tokens
from edgepack.text.tokenize import read_text_table
from tests.text.conftest import text_recipe

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def packed(tiny_text, tmp_path_factory):
    """`edgepack pack` through the CLI for x86 and cuda."""
    out = tmp_path_factory.mktemp("text_bundle") / "bundle"
    recipe = tiny_text / "recipe_x86_cuda.yaml"
    recipe.write_text(yaml.safe_dump(text_recipe(tiny_text, out, ["x86", "cuda"])))
    result = CliRunner().invoke(main, ["pack", str(recipe), "--no-bench"])
    assert result.exit_code == EXIT_OK, result.output
    return Bundle.open(out)


def test_bundle_carries_tokenizer_spec_and_golden_tokens(packed, tiny_text):
    folder, manifest = packed.folder, packed.manifest
    for name in ("tokenizer.json", "tokenizer_config.json", "spec.json", "golden_tokens.json"):
        assert (folder / "tokenizer" / name).is_file(), name
    assert {entry.path for entry in manifest.text.files} >= {"tokenizer/tokenizer.json", "tokenizer/spec.json"}
    spec = json.loads((folder / "tokenizer" / "spec.json").read_text())
    assert spec["max_length"] == 24 and spec["padding"] == "max_length" and spec["truncation"] is True
    assert spec["lower_case"] is True and spec["lower_case_before_tokenizer"] is False  # the normalizer lowers
    golden = json.loads((folder / "tokenizer" / "golden_tokens.json").read_text())["examples"]
    texts, _, _ = read_text_table(tiny_text / "eval.csv", "review", [])
    assert [example["text"] for example in golden] == texts[:4]
    assert all(len(example["input_ids"]) == 24 and example["input_ids"][0] == 2 for example in golden)  # [CLS]
    assert check_golden_tokens(folder) == (4, [])


def test_x86_artifact_is_int8_runs_and_drift_is_measured(packed):
    import onnxruntime

    artifact = packed.manifest.targets["x86"].artifacts[0]
    path = packed.folder / artifact.path
    model = onnx.load(str(path))
    int8_weights = [init for init in model.graph.initializer if numpy_helper.to_array(init).dtype == np.int8]
    assert sum(numpy_helper.to_array(init).size for init in int8_weights) > 10_000
    golden = json.loads((packed.folder / "tokenizer" / "golden_tokens.json").read_text())["examples"]
    feeds = {name: np.array([example[name] for example in golden], dtype=np.int64)
             for name in ("input_ids", "attention_mask")}
    logits = onnxruntime.InferenceSession(str(path)).run(None, feeds)[0]
    assert logits.shape == (4, 2) and np.isfinite(logits).all()
    structure = artifact.structure
    assert structure["transformer"]["attention_mask_constant"] < -1e30
    assert {item["scheme"] for item in structure["isa"]["candidates"]} == {"static-matmul", "fused-dynamic"}
    assert structure["isa"]["weights"] in ("static-matmul", "fused-dynamic") and structure["isa"]["reason"]
    drift = {check.metric: check for check in artifact.drift}
    assert drift["top1_agreement"].value >= 0.95 and drift["accuracy_drop"].passed
    assert packed.manifest.source_model.metrics["accuracy"] > 0.9
    assert packed.manifest.evaluation.samples == 200


def test_cuda_int8_keeps_the_mask_out_of_quantized_ranges(packed):
    artifacts = {item.precision: item for item in packed.manifest.targets["cuda"].artifacts}
    assert set(artifacts) == {"fp16", "int8-qdq-symmetric"}
    for artifact in artifacts.values():
        assert {check.metric: check.value for check in artifact.drift}["top1_agreement"] >= 0.95


def test_verify_reads_text_and_checks_golden_tokens(packed, tiny_text):
    check = verify_bundle(packed.folder, tiny_text / "eval.csv")
    assert check.samples == 200 and check.same_data
    assert all(report.passed for report in check.reports.values())


def test_reference_graph_has_the_additive_mask(packed):
    assert additive_mask_constant(packed.folder / "reference" / "model.fp32.onnx") < -1e30
