"""Train the example DeepFM on MovieLens 100K clicks (rating >= 4) and write weights and data splits.

Data: MovieLens 100K from the recbole 1.2.1 wheel, read directly (see data.py); nothing is
downloaded. Split per user by time: 78,000 train, 2,000 calibration (train period, not trained
on), 20,000 evaluation (each user's last 20%).

    python train.py [--out DIR] [--epochs N] [--quick]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from data import INPUTS, build
from model import build_model
from safetensors.torch import save_file
from torch import nn

HERE = Path(__file__).resolve().parent
BATCH = 256


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula; tied scores share their average rank."""
    values, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0      # 1-based rank of each distinct score
    ranks = average_rank[inverse]
    positives = labels == 1
    p, n = positives.sum(), (~positives).sum()
    return float((ranks[positives].sum() - p * (p + 1) / 2.0) / (p * n))


def logloss(labels: np.ndarray, logits: np.ndarray) -> float:
    """Mean binary cross-entropy of the logits, computed stably."""
    return float(np.mean(np.logaddexp(0.0, logits) - labels * logits))


def ndcg_at_k(groups: np.ndarray, labels: np.ndarray, scores: np.ndarray, k: int = 10) -> float:
    """Mean NDCG@k over groups (users) with at least one click, ranking each group's rows by score."""
    values = []
    for group in np.unique(groups):
        rows = groups == group
        gains, order = labels[rows], np.argsort(-scores[rows], kind="stable")
        ideal = np.sort(gains)[::-1][:k]
        if ideal.sum() == 0:
            continue
        discount = 1.0 / np.log2(np.arange(2, k + 2))
        values.append((gains[order][:k] * discount[:len(ideal)]).sum() / (ideal * discount[:len(ideal)]).sum())
    return float(np.mean(values))


def tensors(arrays: dict[str, np.ndarray]) -> list[torch.Tensor]:
    """The model's inputs in forward order."""
    return [torch.from_numpy(arrays[name]) for name in INPUTS]


@torch.no_grad()
def predict(model: nn.Module, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Logits for every row, in evaluation mode."""
    model.eval()
    inputs = tensors(arrays)
    return torch.cat([model(*(x[s:s + 4096] for x in inputs)) for s in range(0, len(inputs[0]), 4096)]).numpy()


def train(model: nn.Module, arrays: dict[str, np.ndarray], *, epochs: int, seed: int = 0,
          eval_arrays: dict[str, np.ndarray] | None = None) -> None:
    """Adam with BCE-with-logits and a one-cycle schedule; prints the loss (and eval AUC) per epoch."""
    torch.manual_seed(seed)
    inputs, labels = tensors(arrays), torch.from_numpy(arrays["click"]).to(torch.float32)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps_per_epoch = (len(labels) + BATCH - 1) // BATCH
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=epochs * steps_per_epoch)
    for epoch in range(epochs):
        model.train()
        order, total = torch.randperm(len(labels)), 0.0
        for start in range(0, len(labels), BATCH):
            index = order[start:start + BATCH]
            loss = nn.functional.binary_cross_entropy_with_logits(model(*(x[index] for x in inputs)), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(index)
        line = f"epoch {epoch + 1}/{epochs}: train loss {total / len(labels):.4f}"
        if eval_arrays is not None:
            line += f", eval AUC {auc(eval_arrays['click'], predict(model, eval_arrays)):.4f}"
        print(line, flush=True)
    model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "artifacts")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--quick", action="store_true", help="1 epoch, for tests")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    # One thread: the matmuls are tiny (batch 256 x 336), and a second thread made each step 10x
    # slower on a busy 2-core machine (spin-waits); subnormal Adam moments made sqrt crawl too.
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    started = time.perf_counter()
    splits = build(args.out, seed=args.seed)
    vocab = json.loads((args.out / "vocab.json").read_text())
    torch.manual_seed(args.seed)     # seeds the initial weights too, not only the batch order
    model = build_model(**vocab)
    parameters = sum(p.numel() for p in model.parameters())
    tables = model.user.weight.numel() + model.item.weight.numel()
    print(f"model: {parameters:,} parameters, {tables / parameters:.0%} in the user and item tables")
    train(model, splits["train"], epochs=1 if args.quick else args.epochs, seed=args.seed,
          eval_arrays=None if args.quick else splits["eval"])
    ev = splits["eval"]
    logits = predict(model, ev)
    print(f"eval AUC {auc(ev['click'], logits):.4f}, logloss {logloss(ev['click'], logits):.4f}, "
          f"NDCG@10 per user {ndcg_at_k(ev['user_id'], ev['click'], logits):.4f}")
    for segment in ("user_segment", "item_segment"):
        parts = [f"{name} AUC {auc(ev['click'][ev[segment] == value], logits[ev[segment] == value]):.4f} "
                 f"({(ev[segment] == value).sum():,} rows)" for value, name in ((0, "cold"), (1, "warm"))]
        print(f"  by {segment}: " + ", ".join(parts))
    save_file(model.state_dict(), str(args.out / "model.safetensors"))
    print(f"wrote {args.out} in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
