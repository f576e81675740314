"""Bad text recipes and data: one line naming the file or field and what was expected."""

from __future__ import annotations

import pytest

from edgepack.errors import ConfigError, DataError, ModelLoadError
from edgepack.recipe.load import parse_recipe
from edgepack.text.huggingface import load_huggingface
from edgepack.text.spec import TextConfig
from edgepack.text.tokenize import load_tokenizer, read_text_table
from tests.text.conftest import text_recipe
from tests.text.tiny_bert import write_csv


def _parse(folder, **changes):
    return parse_recipe(text_recipe(folder, folder / "out", ["x86"], **changes), source="recipe.yaml",
                        base_dir=folder)


def test_text_inputs_are_derived_and_checked(tiny_text):
    recipe = _parse(tiny_text)
    assert [(spec.name, spec.dtype, spec.shape) for spec in recipe.inputs] == [
        ("input_ids", "int64", ["batch", 24]), ("attention_mask", "int64", ["batch", 24])]
    wrong = [{"name": "input_ids", "dtype": "int64", "shape": ["batch", 32]}]
    with pytest.raises(ConfigError, match=r"with 'text', inputs must be \['input_ids', 'attention_mask'\]"):
        _parse(tiny_text, inputs=wrong)


def test_text_needs_a_tokenizer_and_one_model_source(tiny_text):
    model = {"onnx": "model.onnx"}
    with pytest.raises(ConfigError, match="'text' needs a tokenizer"):
        _parse(tiny_text, model=model)
    with pytest.raises(ConfigError, match="give exactly one of"):
        _parse(tiny_text, model={"huggingface": "model", "onnx": "model.onnx"})


def test_lower_case_false_is_refused_for_a_lower_casing_tokenizer(tiny_text):
    with pytest.raises(ConfigError, match="text.lower_case is false but the tokenizer's normalizer lower-cases"):
        load_tokenizer(tiny_text / "model", TextConfig.model_validate({"lower_case": False}))


def test_a_text_too_long_without_truncation_names_its_row(tiny_text, tmp_path):
    tokenizer = load_tokenizer(tiny_text / "model", TextConfig.model_validate({"max_length": 8, "truncation": False}))
    with pytest.raises(DataError, match=r"data row 2 has \d+ tokens, more than text.max_length 8"):
        tokenizer.encode(["short", "the film is great and the cast is warm and funny"], origin="eval.csv")


def test_table_errors_name_the_file_and_column(tiny_text, tmp_path):
    path = write_csv(tmp_path / "eval.csv", ["a, \"quoted\" text", "b"], [0, 1])
    texts, arrays, _ = read_text_table(path, "review", ["label"])
    assert texts == ["a, \"quoted\" text", "b"] and arrays["label"].tolist() == [0, 1]
    with pytest.raises(DataError, match=r"eval.csv: no text column 'comment' \(text.column\)"):
        read_text_table(path, "comment", [])
    with pytest.raises(DataError, match="eval.csv: column 'review' must hold integers"):
        read_text_table(path, "label", ["review"])


def test_a_folder_without_config_is_not_a_model(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_huggingface(tmp_path)
