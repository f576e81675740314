"""Tokenizing raw text into `input_ids` and `attention_mask` exactly as the bundle's spec says."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from edgepack.calibration.readers import load_table
from edgepack.errors import ConfigError, DataError, MissingDependencyError, describe
from edgepack.text.spec import ATTENTION_MASK, INPUT_IDS, TEXT_INPUTS, TextConfig, TokenizerSpec

TOKENIZER_FILE = "tokenizer.json"


@dataclass(frozen=True)
class TextTokenizer:
    """A Hugging Face fast tokenizer with the recipe's settings resolved."""

    folder: Path
    backend: Any  # transformers' fast tokenizer
    spec: TokenizerSpec

    def encode(self, texts: list[str], *, origin: str = "texts") -> dict[str, np.ndarray]:
        """int64 `input_ids` and `attention_mask` [len(texts), max_length]; a text too long for
        `truncation: false` is an error naming its row."""
        if self.spec.lower_case_before_tokenizer:
            texts = [text.lower() for text in texts]
        if not self.spec.truncation:
            lengths = self.backend(texts, truncation=False, padding=False)["input_ids"]
            for row, ids in enumerate(lengths):
                if len(ids) > self.spec.max_length:
                    raise DataError(f"{origin}: text in data row {row + 1} has {len(ids)} tokens, more than "
                                    f"text.max_length {self.spec.max_length} (text.truncation is false)")
        encoded = self.backend(texts, max_length=self.spec.max_length, truncation=True, padding="max_length",
                               return_attention_mask=True)
        return {name: np.asarray(encoded[name], dtype=np.int64).reshape(len(texts), self.spec.max_length)
                for name in TEXT_INPUTS}


def load_tokenizer(folder: Path, config: TextConfig) -> TextTokenizer:
    """The fast tokenizer in `folder` (read offline), checked against the recipe's `text` settings."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    if not (folder / TOKENIZER_FILE).is_file():
        raise ConfigError(f"{folder}: no {TOKENIZER_FILE}; text.tokenizer must be a folder with a Hugging Face "
                          "fast tokenizer (the file an app's tokenizers library reads)")
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise MissingDependencyError("tokenizing text", "transformers", "text") from exc
    try:
        backend = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError... for broken folders
        raise ConfigError(f"{folder}: cannot load the tokenizer: {describe(exc)}") from exc
    if backend.pad_token_id is None:
        raise ConfigError(f"{folder}: the tokenizer has no pad token; padding to text.max_length needs one")
    normalizer_lowers = tokenizer_lower_cases(backend)
    if config.lower_case is False and normalizer_lowers:
        raise ConfigError(f"{folder}: text.lower_case is false but the tokenizer's normalizer lower-cases; "
                          "use null (as the tokenizer does) or a cased tokenizer")
    before = bool(config.lower_case) and not normalizer_lowers
    spec = TokenizerSpec(max_length=config.max_length, truncation=config.truncation, padding=config.padding,
                         lower_case=normalizer_lowers or before, lower_case_before_tokenizer=before,
                         pad_token_id=int(backend.pad_token_id), inputs=list(TEXT_INPUTS),
                         tokenizer_class=type(backend).__name__, vocab_size=len(backend))
    return TextTokenizer(folder=folder, backend=backend, spec=spec)


def tokenizer_lower_cases(backend: Any) -> bool:
    """Whether the fast tokenizer's normalizer lower-cases (BertNormalizer, Lowercase, or inside a Sequence)."""
    return _lowers(json.loads(backend.backend_tokenizer.to_str()).get("normalizer"))


def _lowers(normalizer: Any) -> bool:
    if not isinstance(normalizer, dict):
        return False
    if normalizer.get("type") == "Lowercase" or normalizer.get("lowercase") is True:
        return True
    return any(_lowers(inner) for inner in normalizer.get("normalizers") or [])


def read_text_table(path: Path, column: str, wanted: list[str]) -> tuple[list[str], dict[str, np.ndarray], list[str]]:
    """The text column, the integer columns named in `wanted` that exist, and every column name."""
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        columns = _read_csv_columns(path)
    elif suffix in (".parquet", ".pq"):
        columns = _read_parquet_columns(path)
    else:
        raise DataError(f"{path}: text data must be .csv or .parquet, got '{suffix}'")
    names = list(columns)
    if column not in columns:
        raise DataError(f"{path}: no text column '{column}' (text.column); the table has {', '.join(names[:8])}")
    texts = columns[column]
    bad = next((row for row, value in enumerate(texts) if not isinstance(value, str)), None)
    if bad is not None:
        raise DataError(f"{path}: column '{column}' data row {bad + 1}: expected text, got {texts[bad]!r}")
    arrays = {name: _integers(path, name, columns[name]) for name in wanted if name in columns}
    return list(texts), arrays, names


def _read_csv_columns(path: Path) -> dict[str, list]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read CSV: {describe(exc)}") from exc
    if not rows or not rows[0]:
        raise DataError(f"{path}: CSV has no header row")
    header, body = rows[0], rows[1:]
    if not body:
        raise DataError(f"{path}: CSV has no data rows")
    for index, row in enumerate(body):
        if len(row) != len(header):
            raise DataError(f"{path}: data row {index + 1} has {len(row)} fields, the header has {len(header)}")
    return {name: [row[index] for row in body] for index, name in enumerate(header)}


def _read_parquet_columns(path: Path) -> dict[str, list]:
    return {name: column.tolist() for name, column in load_table(path).items()}


def _integers(path: Path, name: str, values: list) -> np.ndarray:
    try:
        return np.array([int(value) for value in values], dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: column '{name}' must hold integers: {describe(exc)}") from exc


def text_reader(tokenizer: TextTokenizer, config: TextConfig):
    """A reader for `load_sample_set`: (path, wanted, columns) -> the tokenized inputs plus integer columns."""

    def read(path: Path, *, wanted: list[str], columns: Optional[dict] = None) -> tuple[dict, list[str]]:
        texts, arrays, names = read_text_table(path, config.column, [n for n in wanted if n not in TEXT_INPUTS])
        arrays.update(tokenizer.encode(texts, origin=f"{path}: column '{config.column}'"))
        return arrays, [f"columns {', '.join(names[:8])}", f"{INPUT_IDS}/{ATTENTION_MASK} from '{config.column}'"]

    return read
