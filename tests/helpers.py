"""Helpers shared by every test folder: tiny seeded models built in code, their data, recipe and data files."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import yaml
from torch import nn

from edgepack.calibration.dataset import SampleSet, load_sample_set
from edgepack.model.onnx_export import export_float_onnx
from edgepack.recipe.schema import CalibrationConfig, InputSpec

ROOT = Path(__file__).resolve().parents[1]
IMAGE_EXAMPLE = ROOT / "examples" / "image_classifier"


def seeded(build: Callable[..., nn.Module], *args, seed: int = 0) -> nn.Module:
    """`build(*args)` with torch's generator seeded first, in eval mode."""
    torch.manual_seed(seed)
    return build(*args).eval()


class TinyCtr(nn.Module):
    """A tiny click-through-rate model: user and item ids through nn.Embedding tables (per-row quantized by
    every target that quantizes tables) beside a dense input; one click logit per row."""

    USERS, ITEMS, DENSE = 64, 48, 3

    def __init__(self, dim: int = 16):
        super().__init__()
        self.user, self.item = nn.Embedding(self.USERS, dim), nn.Embedding(self.ITEMS, dim)
        self.dense = nn.Linear(self.DENSE, dim)
        self.mlp = nn.Sequential(nn.Linear(3 * dim, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, user_id: torch.Tensor, item_id: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([self.user(user_id), self.item(item_id), self.dense(dense)], 1)).squeeze(1)


CTR_INPUTS = [InputSpec(name="user_id", dtype="int64", shape=["batch"], range=(0, TinyCtr.USERS)),
              InputSpec(name="item_id", dtype="int64", shape=["batch"], range=(0, TinyCtr.ITEMS)),
              InputSpec(name="dense", dtype="float32", shape=["batch", TinyCtr.DENSE])]


def spread_table(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    """An embedding table whose rows differ in magnitude by up to 10,000x, as recommender tables do: one shared
    scale would crush the small rows."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(rows, dim)) * rng.uniform(0.001, 10, size=(rows, 1))).astype(np.float32)


def ctr_feeds(count: int, seed: int = 0) -> dict[str, np.ndarray]:
    """`count` seeded rows for TinyCtr: ids over the whole tables, standard-normal dense features."""
    rng = np.random.default_rng(seed)
    return {"user_id": rng.integers(0, TinyCtr.USERS, count).astype(np.int64),
            "item_id": rng.integers(0, TinyCtr.ITEMS, count).astype(np.int64),
            "dense": rng.normal(size=(count, TinyCtr.DENSE)).astype(np.float32)}


def float_outputs(module: nn.Module, feeds: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    """The float model's (first) output on `feeds`, as numpy."""
    with torch.inference_mode():
        return module(*(torch.from_numpy(feeds[name]) for name in names)).numpy()


def relative_rms(got: np.ndarray, reference: np.ndarray) -> float:
    """RMS of (got - reference) over the RMS spread of the reference between rows (about each output's mean):
    an error on the scale of what the inputs change, not of a constant offset such as a class bias."""
    spread = np.sqrt(np.mean((reference - reference.mean(axis=0)) ** 2))
    return float(np.sqrt(np.mean((got.astype(np.float64) - reference) ** 2)) / spread)


def embedding_onnx(folder: Path, count: int = 32) -> tuple[Path, dict[str, np.ndarray]]:
    """The seeded two-table EmbeddingModel of tests/unit/prune_models.py exported to fp32 ONNX (inputs in0, in1,
    in2), with `count` rows of seeded feeds."""
    from tests.unit.prune_models import EmbeddingModel

    model = seeded(EmbeddingModel, "cat")
    generator = torch.Generator().manual_seed(1)
    example = (torch.randint(0, 50, (count,), generator=generator), torch.randint(0, 40, (count,), generator=generator),
               torch.randn(count, 4, generator=generator))
    feeds = {f"in{index}": tensor.numpy() for index, tensor in enumerate(example)}
    inputs = [InputSpec(name="in0", dtype="int64", shape=["batch"]),
              InputSpec(name="in1", dtype="int64", shape=["batch"]),
              InputSpec(name="in2", dtype="float32", shape=["batch", 4])]
    return export_float_onnx(model, inputs, feeds, folder / "float.onnx"), feeds


def sample_set(arrays: dict[str, np.ndarray], labels: Optional[np.ndarray] = None, *, role: str = "evaluation",
               source: Optional[str] = None, batch_size: int = 32, extras: Optional[dict] = None) -> SampleSet:
    """A SampleSet held in memory, as the readers would return it."""
    return SampleSet(role=role, source=source or f"{role}.npz", arrays=arrays,
                     labels=None if labels is None else np.asarray(labels), batch_size=batch_size, sha256="0" * 64,
                     extras=extras or {})


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Save `arrays` to the .npz file at `path`; returns the path."""
    np.savez(path, **arrays)
    return path


def npz_sample_set(path: Path, arrays: dict[str, np.ndarray], inputs: list[InputSpec], *,
                   batch_size: int = 32) -> SampleSet:
    """Write `arrays` to `path` and read them back through edgepack's checked reader, as calibration data."""
    source = CalibrationConfig(path=write_npz(path, arrays), samples=None, batch_size=batch_size)
    return load_sample_set(source, inputs, role="calibration", base_dir=path.parent)


def write_yaml(path: Path, data) -> Path:
    """Write `data` as YAML (keys in the given order) to `path`; returns the path."""
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def base_recipe(example: Path, out: Path) -> dict:
    """A valid recipe for the trained image example, as a dict to tweak in tests."""
    return {
        "name": "digits",
        "model": {"factory": "model:build_model", "weights": str(example / "model.safetensors")},
        "inputs": [{"name": "image", "dtype": "float32", "shape": ["batch", 1, 28, 28]}],
        "calibration": {"path": str(example / "calib.npz"), "samples": 256, "batch_size": 32,
                        "method": {"name": "minmax"}},
        "evaluation": {"path": str(example / "eval.npz"), "labels": "label"},
        "targets": ["x86"],
        "budget": {"max_accuracy_drop": 1.0, "min_top1_agreement": 0.98},
        "latency": {"batch_size": 16, "warmup": 1, "repeats": 3},
        "output": str(out),
    }


def write_recipe(folder: Path, recipe: dict, name: str = "recipe.yaml") -> Path:
    """Write `recipe` as YAML next to the example's model.py (so `model:build_model` imports)."""
    return write_yaml(folder / name, recipe)


def onnx_constants(model) -> dict[str, np.ndarray]:
    """An ONNX model's initializers by name, as numpy arrays."""
    from onnx import numpy_helper

    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def onnx_io_dtypes(model) -> dict[str, str]:
    """numpy dtype names of an ONNX model's graph inputs and outputs, by tensor name."""
    from onnx import helper

    return {value.name: np.dtype(helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)).name
            for value in [*model.graph.input, *model.graph.output]}


def is_per_channel(dequantize, constants: dict[str, np.ndarray]) -> bool:
    """Whether a DequantizeLinear node of a constant weight has one scale per channel of its `axis`."""
    axis = next((attr.i for attr in dequantize.attribute if attr.name == "axis"), 1)
    scale = constants[dequantize.input[1]]
    return scale.ndim == 1 and scale.size == constants[dequantize.input[0]].shape[axis]


def read_tflite(path: Path):
    """(LiteRT's flatbuffer schema module, the file's ModelT object tree)."""
    from ai_edge_litert import schema_py_generated as fb

    return fb, fb.ModelT.InitFromPackedBuf(path.read_bytes(), 0)


def tflite_op_names(fb, model) -> list[str]:
    """Builtin operator names of the first subgraph's operators, in execution order."""
    names = {value: key for key, value in vars(fb.BuiltinOperator).items() if not key.startswith("_")}
    codes = [model.operatorCodes[op.opcodeIndex] for op in model.subgraphs[0].operators]
    return [names[max(code.builtinCode, code.deprecatedBuiltinCode)] for code in codes]
