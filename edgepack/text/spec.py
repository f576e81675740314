"""The recipe's `text` section: how raw text becomes the model's token inputs, and the bundle section
that records it. Light on imports: the recipe schema and the manifest read this module."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from edgepack.bundle.entries import FileEntry, _Strict

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
TEXT_INPUTS = (INPUT_IDS, ATTENTION_MASK)


class TextConfig(BaseModel):
    """Raw text in calibration and evaluation data, tokenized with the model's tokenizer.

    Every artifact has a fixed sequence length (`max_length`): sequences are padded to it, so an
    app feeds the same shape every call."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    column: str = Field("text", description="table column (CSV or parquet) holding the raw text")
    max_length: int = Field(64, ge=2, le=4096, description="tokens per sequence, special tokens included")
    truncation: bool = Field(True, description="cut longer texts to max_length; false: a longer text is an error "
                                               "naming its row")
    padding: Literal["max_length"] = Field("max_length", description="pad every sequence to max_length (the "
                                           "artifacts have a fixed sequence length)")
    lower_case: Optional[bool] = Field(None, description="null: as the tokenizer does; true: lower-case the text "
                                       "before tokenizing; false: refuse a tokenizer that lower-cases")
    tokenizer: Optional[str] = Field(None, description="folder with tokenizer.json (default: the model's "
                                                       "Hugging Face folder), relative to the recipe")
    golden_examples: int = Field(8, ge=1, le=256, description="evaluation texts written with their token ids "
                                                              "into the bundle")



def text_input_specs(max_length: int) -> list[dict]:
    """The two model inputs a `text` section produces: int64 [batch, max_length]."""
    return [{"name": name, "dtype": "int64", "shape": ["batch", max_length]} for name in TEXT_INPUTS]


class TokenizerSpec(_Strict):
    """What an app needs to reproduce the inputs exactly (written as tokenizer/spec.json too)."""

    max_length: int
    truncation: bool
    padding: Literal["max_length"]
    lower_case: bool  # the effective setting: the tokenizer's normalizer or edgepack's lower-casing
    lower_case_before_tokenizer: bool  # the app must lower-case the text itself before the tokenizer
    pad_token_id: int
    inputs: list[str]
    tokenizer_class: str
    vocab_size: int


class TextSection(_Strict):
    """The bundle's tokenizer folder: tokenizer files, the spec and golden tokenized examples."""

    spec: TokenizerSpec
    column: str
    golden_examples: int
    files: list[FileEntry]
