"""Targets found by name: built-ins from a lazy table, third-party ones from entry points."""

from __future__ import annotations

import difflib
import importlib
from functools import lru_cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from edgepack.errors import ConfigError

if TYPE_CHECKING:
    from edgepack.targets.base import Target

ENTRY_POINT_GROUP = "edgepack.targets"

# name -> "module:Class"; modules are imported only when the target is used.
BUILTIN_TARGETS = {
    "x86": "edgepack.targets.x86.target:X86Target",
    "cuda": "edgepack.targets.cuda.target:CudaTarget",
    "arm-tflite": "edgepack.targets.arm_tflite.target:TfliteArmTarget",
    "arm-xnnpack": "edgepack.targets.arm_xnnpack.target:XnnpackArmTarget",
}


@lru_cache(maxsize=1)
def target_table() -> dict[str, str]:
    """All known target names mapped to their import paths; a duplicate name is an error."""
    table = dict(BUILTIN_TARGETS)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in table:
            raise ConfigError(
                f"target name '{entry.name}' from entry point {entry.value} "
                f"is already registered by {table[entry.name]}"
            )
        table[entry.name] = entry.value
    return table


def check_target_name(name: str) -> None:
    """Raise a ConfigError naming the closest known target when `name` is unknown."""
    table = target_table()
    if name not in table:
        close = difflib.get_close_matches(name, list(table), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown target '{name}'{hint} (known: {', '.join(sorted(table))})")


def get_target(name: str) -> "Target":
    """Instantiate the target registered under `name`."""
    check_target_name(name)
    module_name, _, class_name = target_table()[name].partition(":")
    target_cls = getattr(importlib.import_module(module_name), class_name)
    return target_cls()
