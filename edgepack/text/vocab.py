"""Vocabulary trimming of a Hugging Face encoder: keep the token-embedding rows of the tokens the
distillation and calibration texts use, map every other token id to [UNK].

A small encoder's token table is most of its size (MiniLM-L6: 30,522 x 384 of 22.7M parameters), and a
classifier for one domain reads a fraction of the tokens. The tokenizer is not touched: the model maps
the tokenizer's ids to its own rows with a lookup table inside the graph (`LogitsOnly.token_map`, int32,
one entry per tokenizer id), so an app feeds the ids the bundle's tokenizer gives, as before. Kept ids
stay in ascending order (the pad id, usually 0, keeps its place among the specials).

Self-check: on calibration rows whose tokens are all kept, the trimmed model's logits equal the
untrimmed model's. Held-out texts with a token outside the kept set see [UNK] there: the drift this
costs is measured on the evaluation data like every other change.

The folder keeps the trimmed transformers model (config `vocab_size` rewritten) and `edgepack_vocabulary.json`
(the kept tokenizer ids and the [UNK] id), read back by `edgepack.text.huggingface.load_huggingface`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import torch
from torch import nn

from edgepack.errors import ConfigError, PruningError
from edgepack.text.prune import relative_difference

VOCABULARY_FILE = "edgepack_vocabulary.json"
RELATIVE_TOLERANCE = 1e-5


@dataclass(frozen=True)
class VocabularyTrim:
    """Which tokenizer ids keep a row (ascending; the new id is the position) and where the rest go."""

    kept: tuple[int, ...]
    original_size: int
    unknown_id: int  # tokenizer id that ids outside `kept` are read as

    def token_map(self) -> torch.Tensor:
        """int32 [original_size]: the model row of every tokenizer id."""
        position = {token: index for index, token in enumerate(self.kept)}
        table = torch.full((self.original_size,), position[self.unknown_id], dtype=torch.int32)
        table[torch.tensor(self.kept, dtype=torch.long)] = torch.arange(len(self.kept), dtype=torch.int32)
        return table

    def save(self, folder: Path) -> Path:
        """Write VOCABULARY_FILE into a saved model folder."""
        path = folder / VOCABULARY_FILE
        path.write_text(json.dumps({"original_vocab_size": self.original_size, "unknown_token_id": self.unknown_id,
                                    "kept_token_ids": list(self.kept)}) + "\n")
        return path

    @staticmethod
    def read(folder: Path) -> Optional["VocabularyTrim"]:
        """The trim saved in `folder`, or None when the model keeps its whole vocabulary."""
        path = folder / VOCABULARY_FILE
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        return VocabularyTrim(kept=tuple(int(token) for token in data["kept_token_ids"]),
                              original_size=int(data["original_vocab_size"]),
                              unknown_id=int(data["unknown_token_id"]))


def token_counts(arrays: Iterable[dict[str, np.ndarray]], size: int) -> np.ndarray:
    """How often each tokenizer id occurs (padding excluded) in tokenized `input_ids` / `attention_mask` arrays."""
    counts = np.zeros(size, dtype=np.int64)
    for data in arrays:
        ids = data["input_ids"][data["attention_mask"] > 0]
        counts += np.bincount(ids.astype(np.int64), minlength=size)[:size]
    return counts


def choose_tokens(counts: np.ndarray, *, min_count: int, max_tokens: Optional[int], always: Iterable[int],
                  unknown_id: int) -> VocabularyTrim:
    """Tokens seen at least `min_count` times, the most frequent `max_tokens` of them if set, plus `always`
    (the tokenizer's special tokens)."""
    seen = np.flatnonzero(counts >= min_count)
    if max_tokens is not None and len(seen) > max_tokens:
        seen = seen[np.argsort(-counts[seen], kind="stable")[:max_tokens]]
    kept = sorted({int(token) for token in seen} | {int(token) for token in always} | {unknown_id})
    return VocabularyTrim(kept=tuple(kept), original_size=len(counts), unknown_id=unknown_id)


def trim_embeddings(model: Any, trim: VocabularyTrim) -> None:
    """Keep only the rows of `trim.kept` in `model`'s input embedding and rewrite `vocab_size` and the pad id."""
    old = model.get_input_embeddings()
    if not isinstance(old, nn.Embedding) or old.num_embeddings != trim.original_size:
        raise ConfigError(f"prune.vocabulary: the model's input embedding has "
                          f"{getattr(old, 'num_embeddings', '?')} rows, the tokenizer {trim.original_size} ids")
    if getattr(model, "get_output_embeddings", lambda: None)() is not None:
        raise ConfigError("prune.vocabulary: the model ties its input embedding to an output layer (a language "
                          "model head); only classifiers are trimmed")
    position = {token: index for index, token in enumerate(trim.kept)}
    pad = getattr(model.config, "pad_token_id", None)
    padding_idx = position.get(pad) if pad is not None else None
    rows = nn.Embedding(len(trim.kept), old.embedding_dim, padding_idx=padding_idx)
    with torch.no_grad():
        rows.weight.copy_(old.weight[torch.tensor(trim.kept, dtype=torch.long)])
    model.set_input_embeddings(rows)
    model.config.vocab_size = len(trim.kept)
    if padding_idx is not None:
        model.config.pad_token_id = padding_idx


def check_trim(before: nn.Module, after: nn.Module, batch: tuple[torch.Tensor, torch.Tensor],
               trim: VocabularyTrim) -> dict:
    """Logits of the trimmed model against the untrimmed one on the rows whose tokens are all kept."""
    ids, mask = batch
    kept = torch.zeros(trim.original_size, dtype=torch.bool)
    kept[torch.tensor(trim.kept, dtype=torch.long)] = True
    rows = kept[ids].logical_or(mask == 0).all(1)
    if not bool(rows.any()):
        return {"group": "embeddings.word_embeddings", "checked": False, "max_relative_difference": None,
                "channels": trim.original_size - len(trim.kept), "step": 1}
    with torch.no_grad():
        want, got = before(ids[rows], mask[rows]), after(ids[rows], mask[rows])
    difference = relative_difference(want, got)
    if difference > RELATIVE_TOLERANCE:
        raise PruningError(f"trimming the vocabulary changed the logits of texts whose tokens were all kept by "
                           f"{difference:.3g} (relative): the row mapping is wrong")
    return {"group": "embeddings.word_embeddings", "checked": True, "max_relative_difference": difference,
            "channels": trim.original_size - len(trim.kept), "step": 1}
