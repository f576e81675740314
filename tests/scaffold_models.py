"""The two examples' own model factories, trained for seconds on seeded synthetic data, for `edgepack init`
tests: folders holding model.py, model.safetensors and .npz data shaped like the examples' (no make demo)."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from tests.helpers import ROOT, write_npz

IMAGE_MODEL = ROOT / "examples" / "image_classifier" / "model.py"
RECOMMENDER_MODEL = ROOT / "examples" / "recommender" / "model.py"
# The example CNN at width 4 (16x fewer MACs): its factory, called as the recipe calls it, with no arguments.
SMALL_IMAGE_FACTORY = '''

def build_small() -> nn.Module:
    """The example CNN at width 4, for tests."""
    return build_model(width=4)
'''
USERS, ITEMS = 60, 300  # ids used by the synthetic ratings (the tables keep ML-100K's sizes)


@dataclass(frozen=True)
class ExampleFolder:
    """A model file with trained weights and data beside it."""

    folder: Path
    model: str  # PATH.py:FUNCTION for --model
    weights: Path
    data: Path  # evaluation data (init's --data, pack's --eval)
    calib: Path


def _import(path: Path) -> object:
    spec = importlib.util.spec_from_file_location(f"_scaffold_{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _train(model: nn.Module, loss, feeds: dict[str, np.ndarray], target: np.ndarray, steps: int, lr: float) -> None:
    """Adam on random batches of 64, one thread (on a shared 2-core machine two OpenMP threads run 10x slower)."""
    torch.manual_seed(0)
    tensors = [torch.from_numpy(array) for array in feeds.values()]
    labels = torch.from_numpy(target)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model.train()
    try:
        for _ in range(steps):
            index = torch.randint(0, len(labels), (64,))
            optimizer.zero_grad()
            loss(model(*(tensor[index] for tensor in tensors)), labels[index]).backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()


def digits(count: int, seed: int) -> dict[str, np.ndarray]:
    """28x28 images in [0, 1], class k a bright 6x6 patch at its own place plus noise; labels 0..9."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, count).astype(np.int64)
    images = rng.uniform(0, 0.2, (count, 1, 28, 28)).astype(np.float32)
    for row, label in enumerate(labels):
        top, left = 3 + 12 * (label // 5), 1 + 5 * (label % 5)
        images[row, 0, top:top + 6, left:left + 6] += 0.8
    return {"image": images, "label": labels}


def image_example(folder: Path, *, rows: int = 240) -> ExampleFolder:
    """The example CNN (width 4) trained on synthetic digits; data.npz and calib.npz hold `image` and `label`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.py").write_text(IMAGE_MODEL.read_text() + SMALL_IMAGE_FACTORY)
    torch.manual_seed(0)
    model = _import(folder / "model.py").build_small()
    train = digits(2000, seed=1)
    _train(model, nn.functional.cross_entropy, {"image": train["image"]}, train["label"], steps=40, lr=1e-2)
    save_file(model.state_dict(), str(folder / "model.safetensors"))
    return ExampleFolder(folder, f"{folder / 'model.py'}:build_small", folder / "model.safetensors",
                         write_npz(folder / "data.npz", digits(rows, seed=2)),
                         write_npz(folder / "calib.npz", digits(128, seed=3)))


def ratings(count: int, seed: int) -> dict[str, np.ndarray]:
    """Rows shaped like the recommender example's eval.npz: the seven inputs, `click` (a function of the user and
    item ids), graded `relevance`, and `user_segment` / `item_segment`."""
    rng = np.random.default_rng(seed)
    user, item = rng.integers(1, USERS + 1, count), rng.integers(1, ITEMS + 1, count)
    click = ((item % 3 == 0) ^ (user % 2 == 0)).astype(np.int64)
    return {"user_id": user, "item_id": item, "occupation": rng.integers(1, 22, count),
            "gender": rng.integers(1, 3, count), "age_bucket": rng.integers(1, 8, count),
            "genres": rng.integers(0, 20, (count, 6)), "dense": rng.normal(size=(count, 2)).astype(np.float32),
            "click": click, "relevance": click * rng.integers(1, 3, count),
            "user_segment": (user % 2).astype(np.int64), "item_segment": (item % 2).astype(np.int64)}


def recommender_example(folder: Path, *, rows: int = 1200) -> ExampleFolder:
    """The example DeepFM (ML-100K table sizes) trained on synthetic ratings."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.py").write_text(RECOMMENDER_MODEL.read_text())
    torch.manual_seed(0)
    model = _import(folder / "model.py").build_model()
    train = ratings(6000, seed=1)
    inputs = {name: train[name] for name in ("user_id", "item_id", "occupation", "gender", "age_bucket", "genres",
                                             "dense")}
    _train(model, nn.functional.binary_cross_entropy_with_logits, inputs, train["click"].astype(np.float32),
           steps=150, lr=1e-2)
    save_file(model.state_dict(), str(folder / "model.safetensors"))
    calib = {name: array for name, array in ratings(400, seed=3).items() if name in inputs}
    return ExampleFolder(folder, f"{folder / 'model.py'}:build_model", folder / "model.safetensors",
                         write_npz(folder / "data.npz", ratings(rows, seed=2)), write_npz(folder / "calib.npz", calib))
