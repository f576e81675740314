"""Structured compression of a Hugging Face encoder on the tiny BERT: heads, FFN channels and layers really
removed, the folder reloads alone, distillation helps, bad fields are named."""

from __future__ import annotations

import json

import pytest
import torch

from edgepack.compression.distill import divergence
from edgepack.errors import ConfigError
from edgepack.recipe.load import parse_recipe
from edgepack.recipe.schema import DistillConfig
from edgepack.text.distill import distill_encoder, uniform_layer_map
from edgepack.text.huggingface import LogitsOnly, load_huggingface, reload_difference
from edgepack.text.prune import prune_encoder, save_encoder, shape_for
from edgepack.text.spec import TextConfig
from edgepack.text.tokenize import load_tokenizer
from tests.text.conftest import text_recipe
from tests.text.tiny_bert import texts_and_labels


def _logits(model, batch):
    return model(input_ids=batch[0], attention_mask=batch[1]).logits


@pytest.fixture(scope="module")
def encoded(tiny_text):
    """Tokenized texts: 256 to train on, 128 held out."""
    tokenizer = load_tokenizer(tiny_text / "model", TextConfig.model_validate({"max_length": 24}))
    texts, labels = texts_and_labels(384, seed=5)
    arrays = tokenizer.encode(texts, origin="generated")
    return {name: array[:256] for name, array in arrays.items()}, {name: array[256:] for name, array in arrays.items()}


def _batches(arrays, size=32):
    ids, mask = torch.from_numpy(arrays["input_ids"]), torch.from_numpy(arrays["attention_mask"])
    return [(ids[i:i + size], mask[i:i + size]) for i in range(0, len(ids), size)]


@pytest.fixture(scope="module")
def teacher(tiny_text):
    return load_huggingface(tiny_text / "model")


def test_heads_and_ffn_channels_are_removed_and_the_config_says_so(teacher, encoded):
    shape = shape_for(teacher.model, heads=0.5, ffn=0.5, layers=None)
    cut = prune_encoder(teacher.model, shape, importance="taylor", batches=_batches(encoded[0])[:2], forward=_logits)
    layer = cut.model.bert.encoder.layer[0]
    assert tuple(layer.attention.self.query.weight.shape) == (16, 32)  # 1 head of 16 kept of 2
    assert tuple(layer.attention.output.dense.weight.shape) == (32, 16)
    assert tuple(layer.intermediate.dense.weight.shape) == (32, 32)
    assert tuple(layer.output.dense.weight.shape) == (32, 32)
    assert cut.model.config.intermediate_size == 32
    assert {key: len(value) for key, value in cut.model.config.pruned_heads.items()} == {"0": 1, "1": 1}
    assert all(check["checked"] and check["max_relative_difference"] < 1e-4 for check in cut.checks)
    assert sum(p.numel() for p in cut.model.parameters()) < sum(p.numel() for p in teacher.model.parameters())
    assert LogitsOnly(cut.model).num_heads == 1


def test_the_pruned_folder_reloads_alone_with_the_same_outputs(teacher, encoded, tiny_text, tmp_path):
    cut = prune_encoder(teacher.model, shape_for(teacher.model, heads=0.5, ffn=0.25, layers=None),
                        importance="l2", batches=_batches(encoded[0])[:1], forward=_logits)
    files = save_encoder(cut.model, tmp_path / "pruned", tiny_text / "model")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {path.name for path in files}
    config = json.loads((tmp_path / "pruned" / "config.json").read_text())
    assert config["intermediate_size"] == 48 and set(config["pruned_heads"]) == {"0", "1"}
    batch = _batches(encoded[1])[0]
    assert reload_difference(tmp_path / "pruned", LogitsOnly(cut.model), batch) < 1e-5
    reloaded = load_huggingface(tmp_path / "pruned")  # the recipe's loader: model.huggingface pointing at it
    with torch.no_grad():
        assert torch.allclose(reloaded(*batch), _logits(cut.model, batch), atol=1e-5)
    assert reloaded.num_heads == 1


def test_dropping_layers_rewrites_num_hidden_layers(teacher, encoded, tmp_path):
    cut = prune_encoder(teacher.model, shape_for(teacher.model, heads=0.0, ffn=0.0, layers=[1]), importance="taylor",
                        batches=_batches(encoded[0])[:1], forward=_logits)
    assert cut.model.config.num_hidden_layers == 1 and len(cut.model.bert.encoder.layer) == 1
    assert cut.kept_layers == (1,)
    assert not getattr(cut.model.config, "pruned_heads", None)
    save_encoder(cut.model, tmp_path / "one", None)
    assert json.loads((tmp_path / "one" / "config.json").read_text())["num_hidden_layers"] == 1
    assert reload_difference(tmp_path / "one", LogitsOnly(cut.model), _batches(encoded[1])[0]) < 1e-5


def test_distillation_brings_the_student_closer_to_the_teacher_on_held_out_text(teacher, encoded):
    shape = shape_for(teacher.model, heads=0.5, ffn=0.75, layers=[1])
    cut = prune_encoder(teacher.model, shape, importance="taylor", batches=_batches(encoded[0])[:2], forward=_logits)
    student = LogitsOnly(cut.model)
    # The tiny teacher is saturated (logits near +-2.9): a merely pruned student already agrees with it. Scramble
    # the kept layer so that there is something to learn back.
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in cut.model.bert.encoder.layer[0].parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, 0.5)
    held_out = _batches(encoded[1], size=128)[0]
    with torch.no_grad():
        want = teacher(*held_out)
        before = divergence(student(*held_out), want)
    settings = DistillConfig.model_validate({"path": "unused.csv", "epochs": 6, "lr": 3e-3, "batch_size": 32,
                                             "hidden_states": 1.0, "attentions": 1.0, "patience": 6})
    report = distill_encoder(student, teacher, encoded[0], None, ["input_ids", "attention_mask"], settings,
                             layer_map=list(cut.kept_layers), kept_heads=cut.kept_heads)
    with torch.no_grad():
        after = divergence(student(*held_out), want)
    assert report.epochs_run >= 1 and after < 0.7 * before, (before, after, report.history)
    assert uniform_layer_map(2, 6) == [2, 5] and uniform_layer_map(3, 6) == [1, 3, 5]


@pytest.mark.parametrize("changes, field", [
    ({"prune": {"ratio": 0.5}}, "prune.ratio: a Hugging Face encoder is pruned by"),
    ({"prune": {"heads": 1.5}}, r"prune.heads\b"),
    ({"prune": {"layers": [1, 0]}}, r"prune.layers\b.*distinct, ascending"),
    ({"prune": {"heads": 0.5}, "distill": {"path": "calib.csv", "assistant": {"heads": 0.75}}},
     "distill.assistant: must be larger than the student"),
    ({"prune": {"heads": 0.5, "layers": [0]}, "distill": {"path": "calib.csv", "assistant": {"layers": [1]}}},
     r"distill.assistant.layers: must include the student's prune.layers; missing \[0\]"),
    ({"prune": {"heads": 0.5}, "distill": {"path": "calib.csv", "features": [["a", "b"]]}}, "distill.features: not"),
    ({"prune": {"heads": 0.5}, "distill": {"path": "calib.csv", "hidden_states": -1}}, r"distill.hidden_states\b"),
])
def test_bad_encoder_compression_fields_are_named_in_one_line(tiny_text, changes, field):
    with pytest.raises(ConfigError, match=field) as caught:
        parse_recipe(text_recipe(tiny_text, tiny_text / "out", ["x86"], **changes), source="recipe.yaml",
                     base_dir=tiny_text)
    assert "\n" not in str(caught.value)


def test_encoder_fields_are_refused_for_other_models(tmp_path):
    recipe = {"name": "m", "model": {"factory": "m:f", "weights": "w.pt"},
              "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}],
              "calibration": {"path": "c.npz"}, "evaluation": {"path": "e.npz"}, "prune": {"heads": 0.5}}
    with pytest.raises(ConfigError, match="prune.layers, prune.vocabulary: only for model.huggingface"):
        parse_recipe(recipe, source="recipe.yaml", base_dir=tmp_path)
