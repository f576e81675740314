"""`edgepack init` writes the inferred recipe (edgepack.recipe.scaffold) as commented YAML, and the one-line
`pack` builds the same recipe in memory. Both go through one dict, `recipe_data`, and the real loader."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import yaml

from edgepack.errors import ConfigError, EdgepackError
from edgepack.recipe.load import load_recipe, parse_recipe
from edgepack.recipe.scaffold import CALIBRATION_METHOD, Guess, Inference, infer, installed_targets, read_named_arrays
from edgepack.recipe.scaffold_model import ModelRef
from edgepack.recipe.schema import Recipe

CALIBRATION_ROWS = 512  # rows split off for calibration when no --calib is given (at most a quarter of the data)
SPLIT_SEED = 0
COMMENT_COLUMN = 44


@dataclass(frozen=True)
class DataPaths:
    """Calibration and evaluation files as the recipe names them, with what each holds."""

    calibration: str
    evaluation: str
    calibration_why: str
    evaluation_why: str
    calibration_rows: int


@dataclass(frozen=True)
class ScaffoldResult:
    """What `edgepack init` wrote, and the guesses to show on the terminal."""

    recipe: Path
    data_files: tuple[Path, ...]
    guesses: tuple[str, ...]


def recipe_data(inference: Inference, targets: Guess, *, factory: str, weights: str, data: DataPaths) -> dict:
    """The recipe as plain data: what `init` writes and what the one-line `pack` validates."""
    evaluation: dict[str, Any] = {"path": data.evaluation, "labels": inference.labels.value}
    if inference.group_by is not None:
        evaluation["group_by"] = inference.group_by.value
    if inference.segments is not None:
        evaluation["segments"] = inference.segments.value
    return {"name": inference.name.value, "task": inference.task.value,
            "model": {"factory": factory, "weights": weights},
            "inputs": [spec.value for spec in inference.inputs],
            "calibration": {"path": data.calibration, "samples": CALIBRATION_ROWS,
                            "seed": SPLIT_SEED, "method": {"name": CALIBRATION_METHOD}},
            "evaluation": evaluation, "targets": targets.value, "budget": inference.budget.value}


def write_scaffold(model: str, weights: Path, data: Path, *, calib: Optional[Path] = None,
                   labels: Optional[str] = None, out: Optional[Path] = None, force: bool = False) -> ScaffoldResult:
    """Inspect the model and the data and write a commented recipe that `pack` accepts as it is.

    Without `calib`, a seeded split of `data` is written next to the recipe (calibration rows are kept
    out of evaluation). The recipe is moved into place only after the real loader, the data checks
    and the target checks of `pack` accept it."""
    from edgepack.pipeline import load_data, resolve_targets

    reference = ModelRef.parse(model)
    path = (out or reference.file.parent / "recipe.yaml").expanduser().resolve()
    folder = path.parent
    factory = reference.factory(folder)
    data, weights = data.expanduser().resolve(), weights.expanduser().resolve()
    arrays = read_named_arrays(data, role="evaluation")
    calibration = read_named_arrays(calib.expanduser().resolve(), role="calibration") if calib else None
    inference = infer(reference, factory, weights, arrays, base_dir=folder, source=data, labels=labels,
                      calibration=calibration)
    targets = installed_targets()
    splits = {} if calib else _split(arrays, folder / f"{path.stem}.calib.npz", folder / f"{path.stem}.eval.npz")
    for target_path in [path, *splits]:
        if target_path == data:
            raise ConfigError(f"{target_path}: would overwrite the input data; choose another --out")
        if target_path.exists() and not force:
            raise ConfigError(f"{target_path}: exists; pass --force to replace it")
    if calib:
        rows = len(next(iter(calibration.values()))) if calibration else 0
        paths = DataPaths(_relative(calib.expanduser().resolve(), folder), _relative(data, folder),
                          f"--calib ({rows} rows)", "--data", rows)
    else:
        (calibration_path, calibration_rows), (evaluation_path, evaluation_rows) = splits.items()
        paths = DataPaths(calibration_path.name, evaluation_path.name,
                          f"a seeded split of {data.name} ({calibration_rows} rows, seed {SPLIT_SEED}), kept apart "
                          "from evaluation", f"the other {evaluation_rows} rows of {data.name}", calibration_rows)
    content = recipe_data(inference, targets, factory=factory, weights=_relative(weights, folder), data=paths)
    text = render(inference, targets, content, paths, sources=f"{reference.file.name}:{reference.function}, "
                  f"{weights.name} and {data.name}")
    if yaml.safe_load(text) != content:
        raise ConfigError(f"{path}: the commented YAML does not hold the inferred recipe (an edgepack bug)")
    staging = path.with_name(f".{path.name}.staging")
    written = list(splits)
    try:
        for split_path, indices in _split_rows(arrays, splits).items():
            np.savez(split_path, **{name: array[indices] for name, array in arrays.items()})
        staging.write_text(text)
        recipe = load_recipe(staging)
        load_data(recipe)
        resolve_targets(recipe)
    except BaseException as exc:
        for leftover in [staging, *written]:
            leftover.unlink(missing_ok=True)
        if isinstance(exc, EdgepackError):
            raise ConfigError(f"{path}: not written, it does not pass pack's own checks: {exc}") from exc
        raise
    os.replace(staging, path)
    guesses = [f"{key}: {_shown(guess.value)} ({guess.why})" for key, guess in
               (("task", inference.task), ("labels", inference.labels), ("group_by", inference.group_by),
                ("segments", inference.segments), ("targets", targets)) if guess is not None]
    return ScaffoldResult(path, tuple(written), (*guesses, f"calibration: {paths.calibration_why}"))


def recipe_from_files(model: str, weights: Path, calibration: Path, evaluation: Path, *,
                      labels: Optional[str] = None, targets: tuple[str, ...] = (),
                      output: Optional[Path] = None) -> Recipe:
    """The recipe of the one-line `pack --model ...`: the same inference as `init`, validated by the same loader.

    The recipe's folder is the model file's, where the factory is imported from."""
    reference = ModelRef.parse(model)
    folder = reference.file.parent
    factory = reference.factory(folder)
    calibration, evaluation = calibration.expanduser().resolve(), evaluation.expanduser().resolve()
    calibration_arrays = read_named_arrays(calibration, role="calibration")
    inference = infer(reference, factory, weights.expanduser().resolve(),
                      read_named_arrays(evaluation, role="evaluation"), base_dir=folder, source=evaluation,
                      labels=labels, calibration=calibration_arrays)
    chosen = Guess(list(targets), "--target") if targets else installed_targets()
    rows = len(next(iter(calibration_arrays.values())))
    paths = DataPaths(str(calibration), str(evaluation), "--calib", "--eval", rows)
    content = recipe_data(inference, chosen, factory=factory, weights=str(weights.expanduser().resolve()),
                          data=paths)
    content["output"] = str((output or Path("dist") / inference.name.value).resolve())
    return parse_recipe(content, source="pack --model", base_dir=folder)


def render(inference: Inference, targets: Guess, content: dict, paths: DataPaths, *, sources: str) -> str:
    """`content` as YAML, every guess beside its value as a comment."""
    lines = [f"# edgepack recipe written by `edgepack init` from {sources}.",
             "# Each guess is explained in a comment: check them, then run `edgepack pack` on this file.",
             "# Paths are relative to this file."]
    add = _adder(lines)
    add(f"name: {_flow(content['name'])}", inference.name.why)
    add(f"task: {_flow(content['task'])}", inference.task.why)
    add("model:")
    add(f"  factory: {_flow(content['model']['factory'])}", "imported from this folder, called without arguments")
    add(f"  weights: {_flow(content['model']['weights'])}")
    add("inputs:", inference.inputs_why)
    for spec in inference.inputs:
        add(f"  - {_flow(spec.value)}", spec.why)
    add("calibration:")
    section = content["calibration"]
    add(f"  path: {_flow(section['path'])}", paths.calibration_why)
    add(f"  samples: {section['samples']}", f"at most this many rows, a seeded subset (the file holds "
        f"{paths.calibration_rows})")
    add(f"  seed: {section['seed']}")
    add(f"  method: {_flow(section['method'])}", "honoured by every target; percentile or entropy may clip better")
    add("evaluation:")
    section = content["evaluation"]
    add(f"  path: {_flow(section['path'])}", paths.evaluation_why)
    add(f"  labels: {_flow(section['labels'])}", inference.labels.why)
    for key in ("group_by", "segments"):
        guess = getattr(inference, key)
        if guess is not None:
            add(f"  {key}: {_flow(section[key])}", guess.why)
    if inference.unused:
        lines.append(f"  # not read: {', '.join(inference.unused)}")
    add(f"targets: {_flow(content['targets'])}", targets.why)
    add("budget:", inference.budget.why)
    for key, value in content["budget"].items():
        add(f"  {key}: {_flow(value)}")
    lines.append(f"# output: dist/{content['name']}    (the default, relative to the working directory; or pack --out)")
    return "\n".join(lines) + "\n"


def _adder(lines: list[str]):
    def add(text: str, comment: str = "") -> None:
        lines.append(f"{text.ljust(COMMENT_COLUMN - 1)} # {comment}" if comment else text)
    return add


def _flow(value: Any) -> str:
    """One YAML value on one line (flow style)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=2 ** 30, sort_keys=False).strip()
    return text.removesuffix("...").strip()


def _shown(value: Any) -> str:
    return ", ".join(value) if isinstance(value, list) else str(value)


def _relative(path: Path, folder: Path) -> str:
    return Path(os.path.relpath(path, folder)).as_posix()


def _split(arrays: dict[str, np.ndarray], calibration_path: Path, evaluation_path: Path) -> dict[Path, int]:
    """Row counts of the calibration and evaluation split files (in that order); at least one row each."""
    total = len(next(iter(arrays.values())))
    if total < 2:
        raise ConfigError(f"the data has {total} row: too few to split into calibration and evaluation; give --calib")
    calibration_rows = max(1, min(CALIBRATION_ROWS, total // 4))
    return {calibration_path: calibration_rows, evaluation_path: total - calibration_rows}


def _split_rows(arrays: dict[str, np.ndarray], splits: dict[Path, int]) -> dict[Path, np.ndarray]:
    """Seeded, disjoint row indices (each kept in file order) for each split file."""
    if not splits:
        return {}
    order = np.random.default_rng(SPLIT_SEED).permutation(len(next(iter(arrays.values()))))
    (calibration_path, calibration_rows), (evaluation_path, _) = splits.items()
    return {calibration_path: np.sort(order[:calibration_rows]), evaluation_path: np.sort(order[calibration_rows:])}
