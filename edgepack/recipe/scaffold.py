"""What `edgepack init` and the one-line `pack` learn from a model and its data.

Input names come from the forward signature matched to the .npz arrays; dtypes and shapes from the
arrays, with the first axis as the symbolic batch; id ranges from the nn.Embedding tables that read
an input (edgepack.recipe.scaffold_model); the task from the output shape and the labels;
the budget from the task; the targets from the registry. Every guess carries its reason, which the
written recipe shows as a comment (edgepack.recipe.scaffold_file).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from edgepack.calibration.readers import read_arrays
from edgepack.errors import ConfigError, DataError, MissingDependencyError
from edgepack.evaluation.tasks import TASKS
from edgepack.model.load import build_factory_model
from edgepack.recipe.scaffold_model import PROBE_ROWS, ModelRef, forward_arguments, probe
from edgepack.recipe.schema import DTYPES
from edgepack.registry import get_target, target_table

# Arrays with these names are labels, in this order of preference (a CTR set often has `click` and `relevance`).
LABEL_NAMES = ("label", "labels", "y", "target", "targets", "class", "click", "clicked", "relevance", "rating")
GROUP_WORDS = ("user", "query", "session", "customer")  # an integer input named like this identifies a group
CALIBRATION_METHOD = "minmax"  # honoured by every built-in target (the ARM targets refuse entropy)
# For tasks without a default budget (ctr, ranking): the README's recommender budget. NDCG needs a group.
SUGGESTED_BOUNDS = {"max_auc_drop": 0.003, "max_ndcg_relative_drop": 0.01}
PER_GROUP_BOUNDS = ("max_ndcg_relative_drop",)


@dataclass(frozen=True)
class Guess:
    """A recipe value and why it was chosen."""

    value: Any
    why: str


@dataclass(frozen=True)
class Inference:
    """Everything inferred from the model and the data, each value with its reason."""

    name: Guess
    inputs: tuple[Guess, ...]  # each value a recipe input spec: name, dtype, shape, optional range
    inputs_why: str
    task: Guess
    labels: Guess
    group_by: Optional[Guess]
    segments: Optional[Guess]
    budget: Guess  # bound name -> value
    unused: tuple[str, ...]  # arrays of the data the recipe does not read


def read_named_arrays(path: Path, *, role: str) -> dict[str, np.ndarray]:
    """Every array of an .npz file, checked to share one row count (the batch axis)."""
    if path.suffix.lower() != ".npz":
        raise DataError(f"{path}: {role} data must be an .npz archive of named arrays for init "
                        "(other formats: write the recipe's inputs by hand)")
    _, names = read_arrays(path, wanted=[])
    arrays, _ = read_arrays(path, wanted=names)
    if not arrays:
        raise DataError(f"{path}: the archive holds no arrays")
    scalars = [name for name, array in arrays.items() if array.ndim == 0]
    if scalars:
        raise DataError(f"{path}: arrays {scalars} are scalars; expected one row per sample")
    rows = {name: len(array) for name, array in arrays.items()}
    if len(set(rows.values())) != 1:
        raise DataError(f"{path}: arrays have different numbers of rows {rows}; axis 0 is the batch in every array")
    if not next(iter(rows.values())):
        raise DataError(f"{path}: no rows")
    return arrays


def recipe_name(model_file: Path) -> Guess:
    """The model's folder name, made valid as a recipe name."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_file.parent.name).strip("_.-") or "model"
    return Guess(name, "the model's folder")


def infer(model: ModelRef, factory: str, weights: Path, arrays: dict[str, np.ndarray], *, base_dir: Path,
          source: Path, labels: Optional[str] = None,
          calibration: Optional[dict[str, np.ndarray]] = None) -> Inference:
    """Load the model as `pack` would, match its forward arguments to `arrays` and guess the rest.

    `calibration` arrays, when given, widen id ranges found from the data alone."""
    module = build_factory_model(factory, {}, weights, base_dir=base_dir)
    required, optional = forward_arguments(module, factory)
    input_names, inputs_why = _match_inputs(required, optional, arrays, labels, source, factory)
    label_name = _choose_labels(arrays, input_names, labels, source)
    specs = {name: _spec(name, arrays[name], source) for name in input_names}
    output_shape, readers = probe(module, {name: arrays[name][:PROBE_ROWS] for name in input_names},
                                  {name: spec.value["dtype"] for name, spec in specs.items()}, factory, source)
    inputs = tuple(_with_range(specs[name], arrays[name], readers[name], source,
                               None if calibration is None else calibration.get(name)) for name in input_names)
    task = _guess_task(output_shape, arrays[label_name.value], label_name.value, source)
    group_by = segments = None
    if task.value != "classification":
        group_by = _guess_group(inputs, task.value)
        found = [name for name in arrays if name not in input_names and name != label_name.value
                 and _is_segment(name, arrays[name])]
        segments = Guess(found, "integer arrays named *segment*: every drift bound is also checked per segment "
                                "value") if found else None
    read = {*input_names, label_name.value, *(segments.value if segments else [])}
    return Inference(name=recipe_name(model.file), inputs=inputs, inputs_why=inputs_why, task=task,
                     labels=label_name, group_by=group_by, segments=segments,
                     budget=_budget(task.value, group_by), unused=tuple(name for name in arrays if name not in read))


def installed_targets() -> Guess:
    """Registered targets (built-in and entry points) whose packages are installed and that honour MinMax."""
    chosen, skipped = [], []
    for name in target_table():
        target = get_target(name)
        try:
            target.check_available()
        except MissingDependencyError:
            skipped.append(f"{name} (pip install 'edgepack[{target.extra}]')")
            continue
        if CALIBRATION_METHOD not in target.calibration_methods:
            skipped.append(f"{name} (no {CALIBRATION_METHOD} calibration)")
            continue
        chosen.append(name)
    if not chosen:
        raise ConfigError(f"no target is installed here: {', '.join(skipped)}")
    return Guess(chosen, f"installed here; left out: {', '.join(skipped)}" if skipped
                 else "every registered target is installed here (edgepack targets)")


def _is_label_name(name: str) -> bool:
    return name.lower() in LABEL_NAMES


def _is_segment(name: str, array: np.ndarray) -> bool:
    return "segment" in name.lower() and array.ndim == 1 and array.dtype.kind in "iu"


def _match_inputs(required: list[str], optional: list[str], arrays: dict[str, np.ndarray], labels: Optional[str],
                  source: Path, factory: str) -> tuple[list[str], str]:
    signature = f"forward({', '.join(required + [f'{name}=...' for name in optional])})"
    if all(name in arrays for name in required):
        return required + [name for name in optional if name in arrays], f"{signature} matched by name to the arrays"
    candidates = [name for name, array in arrays.items()
                  if name != labels and not _is_label_name(name) and not _is_segment(name, array)]
    if len(required) == 1 and len(candidates) == 1:
        return candidates, f"{signature} takes one tensor: '{candidates[0]}' is the only array that is not labels"
    missing = [name for name in required if name not in arrays]
    raise DataError(f"{source}: arrays {list(arrays)} do not match the forward arguments of {factory}: {signature} "
                    f"needs arrays named {missing}")


def _choose_labels(arrays: dict[str, np.ndarray], inputs: list[str], given: Optional[str], source: Path) -> Guess:
    if given is not None:
        if given not in arrays:
            raise DataError(f"{source}: --labels '{given}' is not an array of the data (it holds: {', '.join(arrays)})")
        if given in inputs:
            raise DataError(f"{source}: --labels '{given}' is an argument of the model's forward, not labels")
        chosen = Guess(given, "given with --labels")
    else:
        candidates = [name for name, array in arrays.items() if name not in inputs and array.ndim == 1
                      and array.dtype.kind in "iub" and not _is_segment(name, array)]
        named = [name for label in LABEL_NAMES for name in candidates if name.lower() == label]
        if not candidates:
            others = [name for name in arrays if name not in inputs]
            raise DataError(f"{source}: no array can be the labels (a 1-D integer array, one per row): besides the "
                            f"inputs {inputs} the data holds {others or 'nothing'}")
        if not named and len(candidates) > 1:
            raise DataError(f"{source}: several arrays could be the labels ({', '.join(candidates)}); pass --labels")
        pick = named[0] if named else candidates[0]
        others = [name for name in candidates if name != pick]
        chosen = Guess(pick, ("named like labels" if named else "the only 1-D integer array that is not an input")
                       + (f"; other candidates: {', '.join(others)} (--labels NAME)" if others else ""))
    array = arrays[chosen.value]
    if array.ndim != 1 or array.dtype.kind not in "iub":
        raise DataError(f"{source}: labels '{chosen.value}' must be a 1-D integer array (one per row), got shape "
                        f"{list(array.shape)} dtype {array.dtype}")
    return chosen


def _spec(name: str, array: np.ndarray, source: Path) -> Guess:
    """dtype and shape of one input; the value of a float64 array is read as float32."""
    why = ""
    dtype = array.dtype.name
    if dtype not in DTYPES:
        if array.dtype.kind not in "iuf":
            raise DataError(f"{source}: input '{name}' has dtype {array.dtype}; expected one of {', '.join(DTYPES)}")
        dtype = "float32" if array.dtype.kind == "f" else "int64"
        why = f"{array.dtype} in the data, read as {dtype}"
    return Guess({"name": name, "dtype": dtype, "shape": ["batch", *array.shape[1:]]}, why)


def _with_range(spec: Guess, array: np.ndarray, tables: list[tuple[str, int]], source: Path,
                calibration: Optional[np.ndarray]) -> Guess:
    """An integer input gets `range`: [0, rows of the tables that read it], else the ids seen in the data."""
    if np.dtype(spec.value["dtype"]).kind not in "iu":
        return spec
    name, low, high = spec.value["name"], int(array.min()), int(array.max())
    if tables:
        rows = min(count for _, count in tables)
        names = ", ".join(f"'{table}'" for table, _ in tables)
        if low < 0 or high >= rows:
            raise DataError(f"{source}: input '{name}' holds ids {low}..{high}, outside the {rows} rows of "
                            f"nn.Embedding {names} that reads it")
        bounds, why = [0, rows], f"nn.Embedding {names}: {rows} rows (ids in the data {low}..{high})"
    else:
        if calibration is not None and calibration.size:
            low, high = min(low, int(calibration.min())), max(high, int(calibration.max()))
        bounds = [min(low, 0), high + 1]
        why = f"ids seen in the data {low}..{high}: no nn.Embedding reads it directly; widen to every valid id"
    return Guess({**spec.value, "range": bounds}, "; ".join(part for part in (spec.why, why) if part))


def _few(values: np.ndarray) -> str:
    """Distinct label values in a few characters: '{0, 1}', '0..9 (all 10)', '{0, 3, 7, 12, 15, 20, ...}'."""
    listed = values.tolist()
    if len(listed) > 2 and listed == list(range(listed[0], listed[-1] + 1)):
        return f"{listed[0]}..{listed[-1]} (all {len(listed)})"
    return f"{{{', '.join(str(value) for value in listed[:6])}{', ...' if len(listed) > 6 else ''}}}"


def _guess_task(output_shape: tuple[int, ...], labels: np.ndarray, label_name: str, source: Path) -> Guess:
    values = np.unique(labels)
    shape = f"[batch{''.join(f', {size}' for size in output_shape)}]"
    if len(output_shape) == 1 and output_shape[0] >= 2:
        classes = output_shape[0]
        if values.min() < 0 or values.max() >= classes:
            raise DataError(f"{source}: labels '{label_name}' fit no task: the model outputs {shape}, so labels must "
                            f"be class indices 0..{classes - 1} (classification), found {_few(values)}")
        return Guess("classification", f"the model outputs {shape} (class scores) and '{label_name}' holds class "
                                       f"indices {_few(values)}")
    if output_shape not in ((), (1,)):
        raise DataError(f"{source}: the model's output {shape} fits no task: expected [batch, classes] "
                        "(classification) or one score per row, [batch] or [batch, 1] (ctr, ranking)")
    if set(values.tolist()) <= {0, 1}:
        return Guess("ctr", f"the model outputs one score per row {shape} and '{label_name}' holds only "
                            f"{_few(values)}: clicks")
    if values.min() >= 0:
        return Guess("ranking", f"the model outputs one score per row {shape} and '{label_name}' holds grades "
                                f"{_few(values)}: relevance ranked per group")
    raise DataError(f"{source}: labels '{label_name}' fit no task: the model outputs one score per row {shape}, so "
                    f"labels must be clicks 0/1 (ctr) or relevance grades >= 0 (ranking), found {_few(values)}")


def _guess_group(inputs: tuple[Guess, ...], task: str) -> Optional[Guess]:
    """The integer [batch] input that identifies a user: per-group NDCG, HR and recall (ranking needs it)."""
    ids = [spec.value["name"] for spec in inputs if "range" in spec.value and spec.value["shape"] == ["batch"]]
    named = [name for name in ids if any(word in name.lower() for word in GROUP_WORDS)]
    if named:
        return Guess(named[0], f"named like a {next(w for w in GROUP_WORDS if w in named[0].lower())} id: "
                               "ranking metrics per group")
    if TASKS[task].recipe_problems(None) and ids:
        return Guess(ids[0], f"the first integer [batch] input (none is named {'/'.join(GROUP_WORDS)}); task "
                             f"{task} ranks rows within a group")
    if TASKS[task].recipe_problems(None):
        raise DataError(f"task '{task}' needs an integer [batch] input to group rows by (a user id); the inputs are "
                        f"{[spec.value['name'] for spec in inputs]}")
    return None


def _budget(task: str, group_by: Optional[Guess]) -> Guess:
    default = TASKS[task].default_budget()
    if default is not None:
        return Guess(default.limits(), f"the default of task {task} (edgepack/recipe/budget.py)")
    accepted = TASKS[task].bounds()
    bounds = {key: value for key, value in SUGGESTED_BOUNDS.items()
              if key in accepted and (group_by is not None or key not in PER_GROUP_BOUNDS)}
    return Guess(bounds, f"task {task} has no default budget: a suggestion (AUC drop"
                         + (f", NDCG relative drop per {group_by.value}" if group_by else "")
                         + "); set what you tolerate")
