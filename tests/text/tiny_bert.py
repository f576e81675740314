"""A tiny random BERT sequence classifier saved as a Hugging Face folder, with a WordPiece tokenizer
trained in place, and small CSV files of labelled texts: no network, a few seconds."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

WORDS_POSITIVE = ["great", "superb", "moving", "funny", "brilliant", "charming", "fresh", "warm"]
WORDS_NEGATIVE = ["dull", "awful", "boring", "tedious", "clumsy", "stale", "flat", "weak"]
FILLER = ["the", "film", "story", "cast", "plot", "is", "and", "a", "with", "its", "ending", "Movie", "really"]


def texts_and_labels(count: int, seed: int) -> tuple[list[str], list[int]]:
    """Short reviews whose label is carried by a few sentiment words among filler, mixed case and commas."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(count):
        label = int(rng.integers(0, 2))
        pool = WORDS_POSITIVE if label else WORDS_NEGATIVE
        words = [str(rng.choice(FILLER)) for _ in range(int(rng.integers(3, 12)))]
        for _ in range(int(rng.integers(1, 3))):
            words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(pool)))
        texts.append(" ".join(words).capitalize() + (", \"really\"" if rng.random() < 0.2 else "."))
        labels.append(label)
    return texts, labels


def write_csv(path: Path, texts: list[str], labels: list[int]) -> Path:
    """A CSV with a quoted `review` column and an integer `label` column."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["review", "label"])
        writer.writerows(zip(texts, labels))
    return path


def build_tiny_bert(folder: Path, *, seed: int = 0, train_steps: int = 60) -> Path:
    """Train a WordPiece tokenizer on generated texts, build a 2-layer BERT (hidden 32), fit it for a few
    steps so it beats chance, and save both as a Hugging Face folder."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    texts, labels = texts_and_labels(400, seed)
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=120, special_tokens=specials))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[(name, tokenizer.token_to_id(name)) for name in ("[CLS]", "[SEP]")])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]", do_lower_case=True)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=fast.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=2)
    model = BertForSequenceClassification(config)
    encoded = fast(texts, max_length=24, truncation=True, padding="max_length", return_tensors="pt")
    targets = torch.tensor(labels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(train_steps):
        rows = torch.arange(step * 32, step * 32 + 32) % len(texts)
        loss = model(input_ids=encoded["input_ids"][rows], attention_mask=encoded["attention_mask"][rows],
                     labels=targets[rows]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder
