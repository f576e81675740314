"""The tuning search's SmoothQuant tier: tried when activations have outlier channels, and only then."""

from __future__ import annotations

import numpy as np
import torch
import yaml
from safetensors.torch import save_file

from edgepack.bundle.files import Bundle

MODEL = '''
import torch
from torch import nn


class Net(nn.Module):
    """A LayerNorm whose channel 3 is scaled by `outlier`, read by a Linear: an activation outlier."""

    def __init__(self, outlier: float = 60.0):
        super().__init__()
        self.inp = nn.Linear(16, 32)
        self.norm = nn.LayerNorm(32)
        self.fc = nn.Linear(32, 32)
        self.head = nn.Linear(32, 5)
        with torch.no_grad():
            self.norm.weight[3] = outlier

    def forward(self, x):
        return self.head(torch.relu(self.fc(self.norm(self.inp(x)))))


def build():
    return Net()


def build_plain():
    return Net(outlier=1.0)
'''


def _recipe(folder, factory: str) -> dict:
    return {"name": "outliers", "task": "classification",
            "model": {"factory": f"model:{factory}", "weights": f"{factory}.safetensors"},
            "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 16]}],
            "calibration": {"path": "calib.npz", "samples": 160, "batch_size": 32, "method": {"name": "minmax"}},
            "evaluation": {"path": "eval.npz", "labels": "label"},
            "quantization": {"per_channel": True, "activation_type": "uint8", "weight_type": "int8"},
            "targets": ["x86"], "target_options": {"x86": {"portable_weights": "int8-7bit"}},
            "budget": {"max_kl": 0.0},  # nothing meets it: every tier is tried
            "tune": {"auto": True, "max_float_layers": 1},
            "latency": {"batch_size": 8, "warmup": 1, "repeats": 2, "threads": 1},
            "output": str(folder / f"bundle-{factory}")}


def _pack(folder, invoke, factory: str):
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"_outlier_model_{factory}", folder / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    save_file(getattr(module, factory)().state_dict(), str(folder / f"{factory}.safetensors"))
    path = folder / f"recipe-{factory}.yaml"
    path.write_text(yaml.safe_dump(_recipe(folder, factory)))
    result = invoke("pack", path, "--no-bench")
    assert result.exit_code == 3, result.output  # over the impossible budget, with a bundle written
    return Bundle.open(folder / f"bundle-{factory}").manifest.tuning["x86"]


def _folder(tmp_path):
    rng = np.random.default_rng(0)
    for name, count in (("calib", 160), ("eval", 64)):
        np.savez(tmp_path / f"{name}.npz", x=rng.normal(size=(count, 16)).astype(np.float32),
                 label=rng.integers(0, 5, size=count))
    (tmp_path / "model.py").write_text(MODEL)
    return tmp_path


def test_outlier_channels_get_smoothquant_candidates_that_lower_the_error(tmp_path, invoke):
    record = _pack(_folder(tmp_path), invoke, "build")
    smoothed = [trial for trial in record.trials if "SmoothQuant" in trial.label]
    assert smoothed, [trial.label for trial in record.trials]
    # every candidate builds, the float prefix of a layer wrapped by explicit scales included
    assert [trial.error for trial in record.trials] == [None] * len(record.trials)
    assert any(trial.config.get("smooth_quant_mul") for trial in smoothed)
    assert all(trial.config.get("smooth_quant") in (0.5, 0.8) for trial in smoothed)
    plain = record.trials[0]  # the recipe's method, nothing else
    assert plain.label == "minmax" and plain.error is None
    best = min(trial.metrics["relative_l2"] for trial in smoothed if trial.error is None)
    assert best < plain.metrics["relative_l2"], (best, plain.metrics)


def test_no_outliers_no_smoothquant_candidate(tmp_path, invoke):
    record = _pack(_folder(tmp_path), invoke, "build_plain")
    labels = [trial.label for trial in record.trials]
    assert not any("SmoothQuant" in label for label in labels), labels
    assert any("bias correction" in label for label in labels)
