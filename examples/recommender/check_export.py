"""Check that the trained recommender exports (torch.export and ONNX dynamo) and that ONNX Runtime
gives PyTorch's logits on real evaluation rows, at several batch sizes. Run after train.py.

    python check_export.py [--artifacts DIR] [--tolerance 1e-4]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from data import INPUTS
from model import build_model
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=HERE / "artifacts")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()
    model = build_model(**json.loads((args.artifacts / "vocab.json").read_text()))
    model.load_state_dict(load_file(str(args.artifacts / "model.safetensors")))
    model.eval()
    data = np.load(args.artifacts / "eval.npz")
    batch = tuple(torch.from_numpy(data[name][:256]) for name in INPUTS)
    dynamic = tuple({0: torch.export.Dim("batch", min=1, max=65536)} for _ in batch)

    program = torch.export.export(model, batch, dynamic_shapes=dynamic)
    with torch.no_grad():
        diff = (program.module()(*batch) - model(*batch)).abs().max().item()
    print(f"torch.export: max abs diff {diff:.2e}")

    onnx_program = torch.onnx.export(model, batch, dynamo=True, dynamic_shapes=dynamic)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        onnx_program.save(str(path))
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    print("ONNX inputs:", [(i.name, i.type, i.shape) for i in session.get_inputs()],
          "output:", [(o.name, o.shape) for o in session.get_outputs()])
    assert names == list(INPUTS), names
    worst = 0.0
    # Batch sizes other than the traced 256 exercise the symbolic batch dimension; the last case is
    # a row with unknown ids and no genres (all padding), which must give a finite logit.
    cases = [slice(0, 1), slice(0, 256), slice(1000, 4071), slice(0, len(data["click"]))]
    for rows in cases:
        feeds = {name: data[name][rows] for name in INPUTS}
        worst = max(worst, _compare(model, session, feeds, args.tolerance))
    padding = {name: np.zeros_like(data[name][:1]) for name in INPUTS}
    worst = max(worst, _compare(model, session, padding, args.tolerance))
    print(f"ONNX Runtime vs PyTorch: max abs diff {worst:.2e} (tolerance {args.tolerance:g}): OK")


def _compare(model: torch.nn.Module, session: ort.InferenceSession, feeds: dict[str, np.ndarray],
             tolerance: float) -> float:
    """Max abs difference of the logits on one batch; fails above the tolerance or on non-finite output."""
    with torch.no_grad():
        expected = model(*(torch.from_numpy(feeds[name]) for name in INPUTS)).numpy()
    (actual,) = session.run(None, feeds)
    assert actual.shape == expected.shape == (len(feeds["user_id"]),), (actual.shape, expected.shape)
    assert np.isfinite(actual).all()
    diff = float(np.abs(actual - expected).max())
    print(f"  batch {len(expected):>6}: max abs diff {diff:.2e}")
    if diff >= tolerance:
        raise SystemExit(f"ONNX Runtime differs from PyTorch by {diff:.2e} (>= {tolerance:g})")
    return diff


if __name__ == "__main__":
    main()
