"""What each registered target builds and needs, for `edgepack targets`: read from the same registry
and Target classes that `pack` uses, so entry-point targets appear too."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from edgepack.registry import get_target, target_table


@dataclass(frozen=True)
class OptionInfo:
    """One target option: its name, default and description."""

    name: str
    default: Any
    description: str


@dataclass(frozen=True)
class TargetInfo:
    """A target as a user choosing one sees it."""

    name: str
    description: str
    extra: str
    packages: dict[str, str]  # required module -> installed version, or "" when missing
    calibration_methods: tuple[str, ...]
    options: tuple[OptionInfo, ...]

    @property
    def installed(self) -> bool:
        """Every package the target needs is importable."""
        return all(self.packages.values())

    @property
    def install_command(self) -> str:
        """The pip command that provides the missing packages."""
        return f"pip install 'edgepack[{self.extra}]'"


def _version(module: str) -> str:
    if importlib.util.find_spec(module) is None:
        return ""
    distributions = metadata.packages_distributions().get(module, [module])
    for distribution in distributions:
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return "installed"


def describe_targets() -> list[TargetInfo]:
    """Every registered target, built-in or from an entry point, in name order."""
    found = []
    for name in sorted(target_table()):
        target = get_target(name)
        options = tuple(OptionInfo(name=key, default=field.default, description=field.description or "")
                        for key, field in target.Options.model_fields.items())
        found.append(TargetInfo(name=name, description=target.description, extra=target.extra,
                                packages={module: _version(module) for module in target.required_modules},
                                calibration_methods=tuple(sorted(target.calibration_methods)), options=options))
    return found
