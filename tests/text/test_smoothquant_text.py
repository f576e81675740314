"""SmoothQuant on a tiny BERT: the float outputs stay, the post-LayerNorm skips are named, and a recipe's
`tuned: {smooth_quant}` packs x86 and cuda artifacts from the smoothed model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from edgepack.bundle.files import Bundle
from edgepack.cli.main import main
from edgepack.errors import EXIT_OK
from edgepack.text.huggingface import load_huggingface
from edgepack.tuning.smoothquant import smooth_quant
from tests.text.conftest import text_recipe

NAMES = ["input_ids", "attention_mask"]


def _tokenized(folder, count: int = 48) -> dict[str, np.ndarray]:
    from transformers import AutoTokenizer

    from edgepack.text.tokenize import read_text_table

    texts, _, _ = read_text_table(folder / "calib.csv", "review", [])
    encoded = AutoTokenizer.from_pretrained(str(folder / "model"))(
        texts[:count], max_length=24, truncation=True, padding="max_length", return_tensors="np")
    return {name: encoded[name].astype(np.int64) for name in NAMES}


def test_smoothing_a_bert_keeps_its_logits_and_names_what_it_skipped(tiny_text):
    model, arrays = load_huggingface(tiny_text / "model"), _tokenized(tiny_text)
    smoothing = smooth_quant(model, arrays, NAMES, alpha=0.5)
    with torch.no_grad():
        args = (torch.from_numpy(arrays["input_ids"]), torch.from_numpy(arrays["attention_mask"]))
        before, after = model(*args).double().numpy(), smoothing.module(*args).double().numpy()
    assert np.linalg.norm(after - before) / np.linalg.norm(before) < 1e-4
    producers = {layer.module: layer.producer for layer in smoothing.smoothed}
    for index in range(2):  # attention's token mixing is linear per channel: value -> output.dense is exact
        prefix = f"model.bert.encoder.layer.{index}.attention"
        assert producers[f"{prefix}.output.dense"] == f"{prefix}.self.value"
    assert producers["model.bert.pooler.dense"] == "model.bert.encoder.layer.1.output.LayerNorm"
    reasons = {layer.module: layer.reason for layer in smoothing.skipped}
    assert "also feeds another path" in reasons["model.bert.encoder.layer.0.attention.self.query"]  # post-LN residual
    assert "GELU" in reasons["model.bert.encoder.layer.0.output.dense"]
    assert "Tanh" in reasons["model.classifier"]


@pytest.mark.e2e
def test_tuned_smooth_quant_packs_x86_and_cuda_from_the_smoothed_model(tiny_text, tmp_path):
    out = tmp_path / "bundle"
    recipe = tiny_text / "recipe_smooth.yaml"
    tuned = {"x86": {"smooth_quant": 0.5},
             "cuda": {"smooth_quant": 0.8, "smooth_quant_mul": True, "bias_correction": True}}
    recipe.write_text(yaml.safe_dump(text_recipe(tiny_text, out, ["x86", "cuda"], tuned=tuned)))
    result = CliRunner().invoke(main, ["pack", str(recipe), "--no-bench"])
    assert result.exit_code == EXIT_OK, result.output
    bundle = Bundle.open(out)
    assert bundle.manifest.tuned == tuned
    for name in ("x86", "cuda"):
        artifacts = bundle.manifest.targets[name].artifacts
        assert artifacts and all((bundle.folder / item.path).is_file() and item.passed for item in artifacts)
    # fp16 is fused from the unquantized module: the smoothed one's Mul nodes would stop attention fusion
    fp16 = next(item for item in bundle.manifest.targets["cuda"].artifacts if item.precision == "fp16")
    assert fp16.structure["fused_attention"]["used"] is True, fp16.structure["fused_attention"]
