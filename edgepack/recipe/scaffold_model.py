"""What `edgepack init` reads from the model: the factory as the recipe names it, the forward signature, the
output shape and which nn.Embedding tables read each input (forward pre-hooks on a few rows)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgepack.errors import ConfigError, ModelLoadError, describe

PROBE_ROWS = 4  # rows run through the model to see its output shape and which tables read which input


@dataclass(frozen=True)
class ModelRef:
    """`--model PATH.py:FUNCTION`: a factory function in a Python file."""

    file: Path
    function: str

    @classmethod
    def parse(cls, text: str) -> "ModelRef":
        """Read PATH.py:FUNCTION; a ConfigError when malformed or the file is missing."""
        path_text, colon, function = text.rpartition(":")
        if not colon or not path_text.endswith(".py") or not function.isidentifier():
            raise ConfigError(f"--model: expected PATH.py:FUNCTION (e.g. model.py:build), got {text!r}")
        file = Path(path_text).expanduser().resolve()
        if not file.is_file():
            raise ConfigError(f"--model: {path_text}: file not found")
        return cls(file, function)

    def factory(self, recipe_dir: Path) -> str:
        """The recipe's `factory`: the file as a module path from `recipe_dir`, where `pack` imports it from."""
        try:
            relative = self.file.with_suffix("").relative_to(recipe_dir.resolve())
        except ValueError:
            raise ConfigError(f"--out: the recipe must be in {self.file.parent} or a folder above it, since pack "
                              f"imports the factory from the recipe's folder; got {recipe_dir}") from None
        if not all(part.isidentifier() for part in relative.parts):
            raise ConfigError(f"--model: {self.file}: '{'/'.join(relative.parts)}' is not an importable module path "
                              "from the recipe's folder (letters, digits and _ only)")
        return f"{'.'.join(relative.parts)}:{self.function}"


def forward_arguments(module: torch.nn.Module, factory: str) -> tuple[list[str], list[str]]:
    """(required, optional) positional arguments of `module.forward`; *args or a required keyword-only
    argument is a ConfigError (edgepack passes inputs by position, in the recipe's order)."""
    required: list[str] = []
    optional: list[str] = []
    for parameter in inspect.signature(module.forward).parameters.values():
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            raise ConfigError(f"{factory}: forward(*{parameter.name}) does not name its inputs; write the recipe's "
                              "inputs by hand")
        optional_keyword = parameter.kind is inspect.Parameter.KEYWORD_ONLY and parameter.default is not parameter.empty
        if parameter.kind is inspect.Parameter.VAR_KEYWORD or optional_keyword:
            continue
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY:
            raise ConfigError(f"{factory}: forward needs keyword-only argument '{parameter.name}'; edgepack passes "
                              "inputs by position")
        (required if parameter.default is inspect.Parameter.empty else optional).append(parameter.name)
    return required, optional


Readers = dict[str, list[tuple[str, int]]]  # input name -> (embedding module name, rows) that read it directly


def probe(module: torch.nn.Module, rows: dict[str, np.ndarray], dtypes: dict[str, str], factory: str,
          source: Path) -> tuple[tuple[int, ...], Readers]:
    """The first output's shape after the batch on a few rows, and which nn.Embedding tables read each input.

    Integer inputs are fed zeros (a valid id of every table): ids beyond a table are then reported by the
    caller, naming the input and the table, instead of surfacing as an IndexError from inside the model."""
    tensors = {name: torch.from_numpy(np.ascontiguousarray(array.astype(dtypes[name])))
               for name, array in rows.items()}
    tensors = {name: torch.zeros_like(tensor) if not tensor.is_floating_point() else tensor
               for name, tensor in tensors.items()}
    readers: Readers = {name: [] for name in tensors}

    def watch(table_name: str, table: torch.nn.Module):
        def hook(_module: torch.nn.Module, args: tuple) -> None:
            ids = args[0] if args else None
            for name, tensor in tensors.items():
                if isinstance(ids, torch.Tensor) and (ids is tensor or ids.shape == tensor.shape
                                                      and ids.data_ptr() == tensor.data_ptr()):
                    readers[name].append((table_name, int(getattr(table, "num_embeddings"))))
        return hook

    handles = [table.register_forward_pre_hook(watch(name, table)) for name, table in module.named_modules()
               if isinstance(table, (torch.nn.Embedding, torch.nn.EmbeddingBag))]
    try:
        with torch.inference_mode():
            result = module(*tensors.values())
    except Exception as exc:
        raise ModelLoadError(f"{factory}: forward on {len(next(iter(rows.values())))} rows of {source} raised "
                             f"{describe(exc)}") from exc
    finally:
        for handle in handles:
            handle.remove()
    output = result[0] if isinstance(result, (tuple, list)) and result else result
    if not isinstance(output, torch.Tensor):
        raise ModelLoadError(f"{factory}: forward returned {type(output).__name__}, expected a tensor")
    return tuple(output.shape[1:]), readers
