"""Vocabulary trimming of the tiny BERT: only the rows the texts use stay, other ids read as [UNK], the tokenizer
is untouched, the folder reloads alone and the packed x86 artifact carries the smaller table."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgepack.errors import PruningError
from edgepack.pipeline import pack
from edgepack.recipe.load import parse_recipe
from edgepack.text.huggingface import LogitsOnly, load_huggingface, reload_difference
from edgepack.text.prune import save_encoder
from edgepack.text.spec import TextConfig
from edgepack.text.tokenize import load_tokenizer
from edgepack.text.vocab import VOCABULARY_FILE, check_trim, choose_tokens, token_counts, trim_embeddings
from tests.text.conftest import text_recipe
from tests.text.tiny_bert import texts_and_labels


@pytest.fixture(scope="module")
def setting(tiny_text):
    tokenizer = load_tokenizer(tiny_text / "model", TextConfig.model_validate({"max_length": 24}))
    arrays = tokenizer.encode(texts_and_labels(200, seed=7)[0], origin="generated")
    return load_huggingface(tiny_text / "model"), tokenizer.backend, arrays


def _trimmed(teacher, backend, arrays, **limits):
    counts = token_counts([arrays], teacher.model.get_input_embeddings().num_embeddings)
    trim = choose_tokens(counts, min_count=limits.get("min_count", 1), max_tokens=limits.get("max_tokens"),
                         always=backend.all_special_ids, unknown_id=backend.unk_token_id)
    model = copy.deepcopy(teacher.model)
    trim_embeddings(model, trim)
    return LogitsOnly(model, trim).eval(), trim, counts


def test_rows_of_unused_tokens_go_and_texts_of_kept_tokens_keep_their_logits(setting):
    teacher, backend, arrays = setting
    student, trim, counts = _trimmed(teacher, backend, arrays)
    used = set(np.flatnonzero(counts).tolist())
    assert set(trim.kept) == used | set(backend.all_special_ids)
    assert student.model.get_input_embeddings().num_embeddings == len(trim.kept) < len(counts)
    assert student.model.config.vocab_size == len(trim.kept)
    batch = (torch.from_numpy(arrays["input_ids"][:64]), torch.from_numpy(arrays["attention_mask"][:64]))
    with torch.no_grad():
        assert torch.allclose(student(*batch), teacher(*batch), atol=1e-6)
    assert check_trim(teacher, student, batch, trim)["checked"] is True


def test_an_id_outside_the_kept_set_reads_as_unknown(setting):
    teacher, backend, arrays = setting
    student, trim, counts = _trimmed(teacher, backend, arrays, max_tokens=12)
    assert len(trim.kept) <= 12 + len(backend.all_special_ids)
    ids, mask = torch.from_numpy(arrays["input_ids"][:32]), torch.from_numpy(arrays["attention_mask"][:32])
    kept = torch.zeros(len(counts), dtype=torch.bool)
    kept[list(trim.kept)] = True
    assert not bool(kept[ids[mask > 0]].all()), "the test needs dropped tokens"
    as_unknown = torch.where(kept[ids], ids, torch.full_like(ids, backend.unk_token_id))
    with torch.no_grad():
        assert torch.allclose(student(ids, mask), teacher(as_unknown, mask), atol=1e-6)
        assert not torch.allclose(student(ids, mask), teacher(ids, mask), atol=1e-3)


def test_a_wrong_row_mapping_fails_the_self_check(setting):
    teacher, backend, arrays = setting
    student, trim, counts = _trimmed(teacher, backend, arrays)
    common = [trim.kept.index(int(token)) for token in np.argsort(-counts)[:2]]
    with torch.no_grad():  # swap the rows of the two commonest tokens: the map now points at the wrong ones
        weight = student.model.get_input_embeddings().weight
        weight[common] = weight[common[::-1]]
    batch = (torch.from_numpy(arrays["input_ids"][:64]), torch.from_numpy(arrays["attention_mask"][:64]))
    with pytest.raises(PruningError, match="trimming the vocabulary changed the logits"):
        check_trim(teacher, student, batch, trim)


def test_the_trimmed_folder_reloads_alone(setting, tmp_path):
    teacher, backend, arrays = setting
    student, trim, _ = _trimmed(teacher, backend, arrays, max_tokens=30)
    save_encoder(student.model, tmp_path / "small", None)
    trim.save(tmp_path / "small")
    batch = (torch.from_numpy(arrays["input_ids"][:16]), torch.from_numpy(arrays["attention_mask"][:16]))
    assert reload_difference(tmp_path / "small", student, batch) < 1e-6
    assert load_huggingface(tmp_path / "small").vocabulary == trim


def test_a_recipe_with_prune_vocabulary_packs_a_smaller_token_table(tiny_text, tmp_path):
    recipe = parse_recipe(text_recipe(tiny_text, tmp_path / "bundle", ["x86"], prune={"vocabulary": {"min_count": 2}},
                                      budget={"max_accuracy_drop": 25.0, "min_top1_agreement": 0.7}),
                          source="recipe.yaml", base_dir=tiny_text)
    result = pack(recipe, bench=False)
    assert [target.status for target in result.targets] == ["passed"], [t.error for t in result.targets]
    pruning = result.manifest.pruning
    rows = pruning.layers["embeddings.word_embeddings.rows"]
    assert rows.after < rows.before and pruning.reload_max_abs_difference < 1e-5
    assert any(check.group == "embeddings.word_embeddings" and check.checked for check in pruning.self_check)
    folder = tmp_path / "bundle" / "pruned" / "huggingface"
    saved = json.loads((folder / VOCABULARY_FILE).read_text())
    assert len(saved["kept_token_ids"]) == rows.after and saved["original_vocab_size"] == rows.before
    assert json.loads((folder / "config.json").read_text())["vocab_size"] == rows.after
    bundle_tokenizer = json.loads((tmp_path / "bundle" / "tokenizer" / "spec.json").read_text())
    assert bundle_tokenizer["vocab_size"] == rows.before  # the app's tokenizer is unchanged
    artifact = result.manifest.targets["x86"].artifacts[0]
    graph = onnx.load(str(tmp_path / "bundle" / artifact.path)).graph
    tables = [init for init in graph.initializer if "word_embeddings" in init.name and len(init.dims) == 2]
    assert tables and {init.dims[0] for init in tables} == {rows.after}
    maps = [numpy_helper.to_array(init) for init in graph.initializer
            if init.data_type == onnx.TensorProto.INT32 and list(init.dims) == [rows.before]]
    assert maps and int(maps[0].max()) == rows.after - 1
