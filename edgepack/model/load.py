"""Model loading: a factory plus weights (safe default), an ONNX file, or an opted-in pickle."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from edgepack.calibration.readers import import_object
from edgepack.errors import ModelLoadError, describe
from edgepack.recipe.schema import Recipe


@dataclass(frozen=True)
class LoadedModel:
    """The float model: a torch module, or (for ONNX sources) only a file."""

    kind: str
    module: Optional[torch.nn.Module]
    onnx_path: Optional[Path]
    description: str


def load_model(recipe: Recipe) -> LoadedModel:
    """Load the recipe's model source; every failure is a ModelLoadError naming the file."""
    source = recipe.model
    if source.onnx is not None:
        return LoadedModel("onnx", None, _check_onnx(source.onnx, recipe), f"ONNX file {source.onnx}")
    if source.pickle is not None:
        return LoadedModel("pickle", _load_pickle(source.pickle), None, f"pickled module {source.pickle}")
    if source.huggingface is not None:
        from edgepack.text.huggingface import load_huggingface

        return LoadedModel("huggingface", load_huggingface(source.huggingface), None,
                           f"Hugging Face folder {source.huggingface} (logits only)")
    assert source.factory is not None and source.weights is not None, "the schema requires factory and weights"
    module = build_factory_model(source.factory, source.factory_kwargs, source.weights, base_dir=recipe.base_dir)
    return LoadedModel("factory", module, None, f"{source.factory} with weights {source.weights}")


def build_factory_model(factory_spec: str, factory_kwargs: dict, weights: Path, *, base_dir: Path) -> torch.nn.Module:
    """Call `module:function` (imported from `base_dir` first) and load the weights into it, in eval mode."""
    factory = import_object(factory_spec, base_dir=base_dir, what="model factory")
    try:
        module = factory(**factory_kwargs)
    except Exception as exc:
        raise ModelLoadError(f"model factory '{factory_spec}' raised {describe(exc)}") from exc
    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(f"model factory '{factory_spec}' returned {type(module).__name__}, "
                             "expected a torch.nn.Module")
    _load_weights(module, weights)
    return module.eval()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file or a plain state dict read with weights_only=True."""
    if not path.is_file():
        raise ModelLoadError(f"{path}: weights file not found")
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise ModelLoadError(f"{path}: not a readable safetensors file: {exc}") from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelLoadError(f"{path}: not a plain state dict (weights_only loading refused it; a whole pickled "
                             "module needs model.pickle with allow_pickle: true)") from exc
    except Exception as exc:
        raise ModelLoadError(f"{path}: cannot read weights: {describe(exc)}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{path}: expected a mapping of parameter names to tensors")
    return state


def _load_weights(module: torch.nn.Module, path: Path) -> None:
    state = read_state_dict(path)
    expected = module.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    mismatched = [f"{key}: file {list(state[key].shape)} vs model {list(expected[key].shape)}"
                  for key in expected if key in state and state[key].shape != expected[key].shape]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", mismatched)):
        if items:
            shown = ", ".join(items[:3]) + (f" (+{len(items) - 3} more)" if len(items) > 3 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise ModelLoadError(f"{path}: weights do not fit the model: " + "; ".join(problems))
    module.load_state_dict(state, strict=True)


def _load_pickle(path: Path) -> torch.nn.Module:
    if not path.is_file():
        raise ModelLoadError(f"{path}: pickled model not found")
    try:
        module = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ModelLoadError(f"{path}: cannot unpickle model: {describe(exc)}") from exc
    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(f"{path}: unpickled a {type(module).__name__}, expected a torch.nn.Module")
    return module.eval()


def _check_onnx(path: Path, recipe: Recipe) -> Path:
    import onnx

    if not path.is_file():
        raise ModelLoadError(f"{path}: ONNX model not found")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ModelLoadError(f"{path}: not a valid ONNX model: {exc}") from exc
    graph_inputs = [value.name for value in model.graph.input]
    if sorted(graph_inputs) != sorted(recipe.input_names):
        raise ModelLoadError(f"{path}: ONNX inputs are {graph_inputs}, the recipe declares {recipe.input_names}")
    return path
