"""Reading a recipe or budget file: YAML errors with line and column, schema errors naming file and field."""

from __future__ import annotations

import difflib
import re
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from edgepack.errors import ConfigError
from edgepack.recipe.budget import Budget
from edgepack.recipe.schema import Recipe
from edgepack.registry import check_target_name


def _walk(model: Any, loc: tuple) -> tuple[list[str], tuple]:
    """Field names valid at `loc` inside `model`, and `loc` without discriminator tags.

    Follows lists (integer parts) and unions; pydantic puts a discriminated union's tag (for example
    'percentile' in calibration.method.percentile.x) into the location, which selects one member.
    """
    candidates, shown = [model], []
    for part in loc:
        members = [cls for candidate in candidates for cls in _model_classes(candidate)]
        tagged = [cls for cls in members if "name" in cls.model_fields and cls.model_fields["name"].default == part]
        if len(members) > 1 and tagged:
            candidates = tagged
            continue
        shown.append(part)
        next_candidates = []
        for candidate in candidates:
            for cls in _model_classes(candidate):
                if isinstance(part, str) and part in cls.model_fields:
                    next_candidates.append(cls.model_fields[part].annotation)
            if isinstance(part, int) or not _model_classes(candidate):
                next_candidates.extend(typing.get_args(candidate))
        candidates = next_candidates
    keys = [key for candidate in candidates for cls in _model_classes(candidate) for key in cls.model_fields]
    return keys, tuple(shown)


def _model_classes(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found.extend(_model_classes(arg))
    return found


def _format_error(source: str, error: Any) -> str:
    loc = tuple(error["loc"])
    where = ".".join(str(p) for p in _walk(Recipe, loc)[1]) or "(top level)"
    if error["type"] == "extra_forbidden":
        allowed, _ = _walk(Recipe, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; expected one of {', '.join(sorted(set(allowed)))}"
        return f"{source}: unknown key '{where}'{hint}"
    message = re.sub(r"^Value error, ", "", error["msg"])
    if error["type"] == "missing":
        return f"{source}: missing required key '{where}'"
    got = error.get("input")
    got_text = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
    return f"{source}: field '{where}': {message}{got_text}"


def parse_recipe(data: Any, *, source: str, base_dir: Path) -> Recipe:
    """Validate recipe data; every problem becomes one ConfigError naming the file and field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of recipe keys at the top level")
    try:
        recipe = Recipe.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        lines = [_format_error(source, err) for err in exc.errors()]
        raise ConfigError("; ".join(lines)) from exc
    recipe._base_dir = base_dir
    return recipe


def load_recipe(path: Path | str, *, output: Path | None = None, targets: tuple[str, ...] = ()) -> Recipe:
    """Read, validate and resolve a recipe file, applying command-line overrides."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: recipe not found")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read recipe: {exc}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML: {problem}") from exc
    if isinstance(data, dict):
        data = dict(data)
        if output is not None:
            data["output"] = output
        if targets:
            for name in targets:
                try:
                    check_target_name(name)
                except ConfigError as exc:
                    raise ConfigError(f"--target: {exc}") from None
            data["targets"] = list(targets)
        output_value = data.get("output") or f"dist/{data.get('name', 'bundle')}"
        if not isinstance(output_value, (str, Path)):
            raise ConfigError(f"{path}: field 'output': expected a directory path, got {output_value!r}")
        data["output"] = str(Path(output_value).resolve())
    return parse_recipe(data, source=str(path), base_dir=path.parent.resolve())


def load_budget(*, budget_path: Path | None, recipe_path: Path | None) -> Budget | None:
    """A budget kept outside the bundle: a YAML file of bounds, or a recipe's budget; None when neither."""
    if budget_path is not None and recipe_path is not None:
        raise ConfigError("give --budget or --recipe, not both")
    if recipe_path is not None:
        return load_recipe(recipe_path).budget
    if budget_path is None:
        return None
    path = Path(budget_path)
    if not path.is_file():
        raise ConfigError(f"{path}: budget file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read budget: {str(exc).splitlines()[0]}") from exc
    if isinstance(data, dict) and "budget" in data and len(data) == 1:
        data = data["budget"]
    try:
        return Budget.model_validate(data)
    except ValidationError as exc:
        # the recipe's error wording (field path, did-you-mean), with the bounds placed under `budget`
        raise ConfigError("; ".join(_format_error(str(path), {**error, "loc": ("budget", *error["loc"])})
                                    for error in exc.errors())) from exc
