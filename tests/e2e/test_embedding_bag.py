"""Table edge cases through every target's export and runtime: a real nn.EmbeddingBag (multi-hot bag),
a table shared by two lookups, 4-bit tables next to an odd-width one."""

from __future__ import annotations

import importlib
import importlib.util

import numpy as np
import pytest
import torch

from edgepack.errors import EXIT_OK
from edgepack.pipeline import pack
from edgepack.recipe.load import load_recipe
from tests.helpers import write_npz, write_yaml

pytestmark = pytest.mark.e2e

MODEL = '''
import torch
from torch import nn


class BagModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.item = nn.Embedding(200, 16)
        self.tags = nn.EmbeddingBag(50, 16, mode="mean", padding_idx=0)
        self.mlp = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, item_id, tags):
        return self.mlp(torch.cat([self.item(item_id), self.tags(tags)], 1)).squeeze(1)


def build_model():
    torch.manual_seed(0)
    return BagModel()
'''


def _targets() -> list[str]:
    targets = ["x86", "cuda"]
    if importlib.util.find_spec("litert_torch"):
        targets.append("arm-tflite")
    if importlib.util.find_spec("executorch"):
        targets.append("arm-xnnpack")
    return targets


SHARED = '''
import torch
from torch import nn


class SharedModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.item = nn.Embedding(200, 32)          # read twice
        self.tags = nn.EmbeddingBag(50, 9, mode="sum", padding_idx=0)   # odd width: never 4-bit
        self.mlp = nn.Sequential(nn.Linear(73, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, item_id, tags):
        # a second read of the same table (ids < 50 here); no arithmetic on ids: the TFLite PT2E
        # quantizer would try to quantize an int64 multiply
        return self.mlp(torch.cat([self.item(item_id), self.item(tags[:, 0]), self.tags(tags)], 1)).squeeze(1)


def build_model():
    torch.manual_seed(0)
    return SharedModel()
'''


def _pack(tmp_path, monkeypatch, source: str, module: str, factory: str, **changes):
    """Write the model, its weights, click data drawn from its own predictions and a recipe; pack."""
    from safetensors.torch import save_file

    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    model = getattr(importlib.import_module(module), factory)().eval()
    save_file(model.state_dict(), str(tmp_path / "model.safetensors"))
    rng = np.random.default_rng(0)

    def rows(count):
        item = rng.integers(1, 200, count).astype(np.int64)
        tags = rng.integers(0, 50, (count, 4)).astype(np.int64)
        tags[: count // 10] = 0  # empty bags
        with torch.no_grad():
            probability = torch.sigmoid(model(torch.from_numpy(item), torch.from_numpy(tags))).numpy()
        return {"item_id": item, "tags": tags, "click": (rng.random(count) < probability).astype(np.int64)}

    write_npz(tmp_path / "calib.npz", rows(400))
    write_npz(tmp_path / "eval.npz", rows(2000))
    recipe = {"name": module, "task": "ctr",
              "model": {"factory": f"{module}:{factory}", "weights": "model.safetensors"},
              "inputs": [{"name": "item_id", "dtype": "int64", "shape": ["batch"], "range": [0, 200]},
                         {"name": "tags", "dtype": "int64", "shape": ["batch", 4], "range": [0, 50]}],
              "calibration": {"path": "calib.npz", "samples": 400, "batch_size": 100},
              "evaluation": {"path": "eval.npz", "labels": "click"},
              "targets": _targets(), "budget": {"max_auc_drop": 0.01},
              "latency": {"batch_size": 32, "warmup": 1, "repeats": 3}, "output": str(tmp_path / "bundle")} | changes
    return pack(load_recipe(write_yaml(tmp_path / "recipe.yaml", recipe)), bench=False)


def _tables(manifest, target):
    return {table.table: table for table in manifest.targets[target].artifacts[0].embedding_tables}


def test_shared_and_odd_width_tables_with_four_bit_in_every_target(tmp_path, monkeypatch):
    result = _pack(tmp_path, monkeypatch, SHARED, "shared_model", "build_model", quantization={"embedding_bits": 4})
    assert result.exit_code == EXIT_OK, [(t.name, t.error) for t in result.targets if t.error]
    manifest = result.manifest
    x86 = _tables(manifest, "x86")
    assert x86["item.weight"].lookups == 2 and x86["item.weight"].bits == 4
    assert x86["tags.weight"].bits == 8  # 9 wide: too narrow (and odd) for 4-bit
    if "arm-tflite" in manifest.targets:
        tflite = _tables(manifest, "arm-tflite")
        assert tflite["item.weight"].lookups == 2 and tflite["item.weight"].bits == 4
        assert tflite["tags.weight"].bits == 8
    if "arm-xnnpack" in manifest.targets:
        pte = _tables(manifest, "arm-xnnpack")
        assert pte["item.weight"].bits == 4 and pte["tags.weight"].bits == 8
        assert set(manifest.targets["arm-xnnpack"].artifacts[0].structure["embedding_kernels"]) == {
            "quantized_decomposed.embedding_4bit.out", "quantized_decomposed.embedding_byte.out"}


def test_embedding_bag_model_packs_for_every_target(tmp_path, monkeypatch):
    result = _pack(tmp_path, monkeypatch, MODEL, "bag_model", "build_model")
    assert result.exit_code == EXIT_OK, [(t.name, t.error) for t in result.targets if t.error]
    manifest = result.manifest
    assert any("tags: nn.EmbeddingBag(mode=mean, padding_idx=0)" in note
               for note in manifest.source_model.rewrites_for_export)
    import onnx

    ops = {node.op_type for node in onnx.load(str(tmp_path / "bundle" / "reference" / "model.fp32.onnx")).graph.node}
    assert "Loop" not in ops
    x86 = manifest.targets["x86"].artifacts[0]
    assert {table.table for table in x86.embedding_tables} >= {"tags.weight", "item.weight"}
    for target in _targets():
        for artifact in manifest.targets[target].artifacts:
            assert artifact.passed and artifact.metrics["samples"] == 2000
