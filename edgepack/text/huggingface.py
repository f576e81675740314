"""A sequence classifier from a local Hugging Face folder, wrapped to take `input_ids` and
`attention_mask` and return logits only (what every exporter and runner here expects)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch

from edgepack.errors import MissingDependencyError, ModelLoadError, describe
from edgepack.text.vocab import VOCABULARY_FILE, VocabularyTrim


class LogitsOnly(torch.nn.Module):
    """forward(input_ids, attention_mask) -> logits [batch, classes] of a transformers classifier.

    `num_heads` and `hidden_size` come from the model's config: the x86 target's attention fusion
    needs them. A head-pruned encoder (edgepack.text.prune) keeps the same head count in every layer:
    the config's count minus the heads its `pruned_heads` removed from a layer."""

    def __init__(self, model: torch.nn.Module, vocabulary: Optional[VocabularyTrim] = None):
        super().__init__()
        self.model = model
        # a trimmed vocabulary (edgepack.text.vocab): tokenizer id -> embedding row, int32
        self.vocabulary = vocabulary
        self.token_map: Optional[torch.Tensor]
        self.register_buffer("token_map", None if vocabulary is None else vocabulary.token_map(), persistent=False)
        config = model.config
        pruned = getattr(config, "pruned_heads", None) or {}
        removed = len(next(iter(pruned.values()))) if pruned else 0
        self.num_heads = int(getattr(config, "num_attention_heads", 0) or 0) - removed
        self.hidden_size = int(getattr(config, "hidden_size", 0) or 0)
        self.model_type = str(getattr(config, "model_type", ""))

    def model_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The wrapped model's token ids for the tokenizer's `input_ids` (the same unless the vocabulary was
        trimmed)."""
        return input_ids if self.token_map is None else self.token_map[input_ids].long()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits of the wrapped model."""
        return self.model(input_ids=self.model_ids(input_ids), attention_mask=attention_mask).logits


def load_huggingface(folder: Path) -> LogitsOnly:
    """AutoModelForSequenceClassification from `folder`, offline, eager attention (exportable everywhere)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    if not folder.is_dir():
        raise ModelLoadError(f"{folder}: model.huggingface must be a folder with config.json and weights")
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{folder}: no config.json; expected a folder written by save_pretrained")
    try:
        from transformers import AutoModelForSequenceClassification
    except ImportError as exc:
        raise MissingDependencyError("loading a Hugging Face model", "transformers", "text") from exc
    try:
        if "pruned_heads" in json.loads((folder / "config.json").read_text()):
            from edgepack.text.prune import load_pruned

            model = load_pruned(folder)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(
                str(folder), local_files_only=True, attn_implementation="eager", use_safetensors=True)
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError... for broken folders
        raise ModelLoadError(f"{folder}: cannot load a sequence classifier: {describe(exc)}") from exc
    try:
        vocabulary = VocabularyTrim.read(folder)
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{folder}: unreadable {VOCABULARY_FILE}: {describe(exc)}") from exc
    return LogitsOnly(model.eval(), vocabulary).eval()


def reload_difference(folder: Path, student: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> float:
    """Max abs difference between `student` (a LogitsOnly) and the classifier this loader reads back from
    `folder` on `inputs`."""
    reloaded = load_huggingface(folder)
    with torch.no_grad():
        want, got = student(*inputs[:2]), reloaded(*inputs[:2])
    if want.shape != got.shape:
        return float("inf")
    return float((want - got).abs().max())
