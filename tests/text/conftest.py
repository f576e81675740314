"""A tiny random BERT (2 layers, hidden 32) with its own WordPiece tokenizer, saved as a Hugging Face
folder, plus CSV files of labelled review-like texts: built once per session, no network."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.text.tiny_bert import build_tiny_bert, texts_and_labels, write_csv


@pytest.fixture(scope="session")
def tiny_text(tmp_path_factory) -> Path:
    """A folder with model/ (the Hugging Face folder), calib.csv and eval.csv."""
    folder = tmp_path_factory.mktemp("tiny_text")
    build_tiny_bert(folder / "model")
    write_csv(folder / "calib.csv", *texts_and_labels(128, seed=1))
    write_csv(folder / "eval.csv", *texts_and_labels(200, seed=2))
    return folder


def text_recipe(folder: Path, out: Path, targets: list[str], **changes) -> dict:
    """A recipe packing the tiny BERT from raw text for `targets`."""
    recipe = {"name": "tiny_text", "model": {"huggingface": "model"},
              "text": {"column": "review", "max_length": 24, "golden_examples": 4},
              "calibration": {"path": "calib.csv", "samples": 96, "batch_size": 32},
              "evaluation": {"path": "eval.csv", "labels": "label"},
              "targets": targets, "budget": {"max_accuracy_drop": 3.0, "min_top1_agreement": 0.95},
              "latency": {"batch_size": 8, "warmup": 1, "repeats": 3}, "output": str(out)}
    recipe.update(changes)
    return recipe
