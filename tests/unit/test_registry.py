"""The target registry: built-ins by name from a lazy table, third-party targets from entry points, a close-match
hint for unknown names, and a duplicate name refused."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

from edgepack import registry
from edgepack.errors import ConfigError
from edgepack.targets.base import NoOptions, Target
from edgepack.targets.x86.target import X86Target


class PluginTarget(Target):
    """A third party's target, as an installed package would register it."""

    name = "my-npu"
    description = "a vendor NPU"
    extra = "my-npu"
    required_modules = ("numpy",)
    calibration_methods = frozenset({"minmax"})
    Options = NoOptions

    def export(self, context):
        """Not called here."""
        raise NotImplementedError

    def runner(self, path, *, threads):
        """Not called here."""
        raise NotImplementedError


def entry_point(name: str, value: str = f"{__name__}:PluginTarget") -> importlib.metadata.EntryPoint:
    """An entry point in edgepack's target group."""
    return importlib.metadata.EntryPoint(name=name, value=value, group=registry.ENTRY_POINT_GROUP)


@pytest.fixture
def installed(monkeypatch):
    """Installs the given entry points in place of the environment's; the registry's cache is cleared around."""

    def install(*points: importlib.metadata.EntryPoint) -> None:
        def entry_points(**selection):
            return [point for point in points if point.group == selection.get("group")]

        monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
        monkeypatch.setattr(registry, "entry_points", entry_points, raising=False)  # a name imported at load
        registry.target_table.cache_clear()

    yield install
    registry.target_table.cache_clear()


def test_builtin_targets_by_name(installed):
    installed()
    assert set(registry.target_table()) == {"x86", "cuda", "arm-tflite", "arm-xnnpack"}
    target = registry.get_target("x86")
    assert isinstance(target, X86Target) and target.name == "x86"
    assert registry.get_target("x86") is not target, "a fresh instance per lookup"


def test_every_builtin_is_registered_under_its_own_name(installed):
    installed()
    for name in registry.BUILTIN_TARGETS:
        assert registry.get_target(name).name == name


def test_an_unknown_name_suggests_the_closest_and_lists_the_known(installed):
    installed()
    with pytest.raises(ConfigError, match=r"unknown target 'arm-tflit'; did you mean 'arm-tflite'\? "
                                          r"\(known: arm-tflite, arm-xnnpack, cuda, x86\)$"):
        registry.get_target("arm-tflit")
    with pytest.raises(ConfigError) as info:
        registry.check_target_name("quantum")
    assert "did you mean" not in str(info.value) and "(known: arm-tflite, arm-xnnpack, cuda, x86)" in str(info.value)


def test_a_third_party_target_is_found_through_its_entry_point(installed):
    installed(entry_point("my-npu"))
    registry.check_target_name("my-npu")
    target = registry.get_target("my-npu")
    assert isinstance(target, PluginTarget)
    with pytest.raises(ConfigError, match=r"did you mean 'my-npu'\?"):
        registry.get_target("my-nup")


def test_an_entry_point_taking_a_builtin_name_is_an_error(installed):
    installed(entry_point("x86"))
    with pytest.raises(ConfigError, match=rf"target name 'x86' from entry point {__name__}:PluginTarget is already "
                                          r"registered by edgepack\.targets\.x86\.target:X86Target"):
        registry.get_target("cuda")


def test_two_entry_points_with_one_name_are_an_error(installed):
    installed(entry_point("my-npu"), entry_point("my-npu", "other_vendor.targets:Npu"))
    with pytest.raises(ConfigError, match=r"target name 'my-npu' from entry point other_vendor\.targets:Npu is "
                                          rf"already registered by {__name__}:PluginTarget"):
        registry.target_table()


def test_checking_a_name_imports_no_target_module():
    code = ("import sys; from edgepack.registry import BUILTIN_TARGETS, check_target_name; "
            "check_target_name('arm-xnnpack'); modules = [v.partition(':')[0] for v in BUILTIN_TARGETS.values()]; "
            "print(sorted(m for m in modules if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert run.stdout.strip() == "[]", "target modules are imported only when the target is used"
