"""A first run shows edgepack's own lines only: the toolchains' chatter goes to the bundle's pack.log."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import base_recipe, write_recipe

pytestmark = pytest.mark.e2e
# What litert-torch, torchao, absl/cpuinfo, XNNPACK and torch print when left alone.
CHATTER = ("LiteRT-Torch Convert", "Failed to load", "cpuinfo", "XNNPACK delegate", "FutureWarning",
           "copyreg", "absl", "WARNING:root")


@pytest.mark.skipif(importlib.util.find_spec("litert_torch") is None, reason="needs the arm extra")
def test_arm_pack_prints_only_edgepack_lines_and_logs_the_rest(trained_example, tmp_path):
    console = Path(sys.executable).with_name("edgepack")
    recipe = base_recipe(trained_example, tmp_path / "bundle")
    recipe["targets"] = ["arm-tflite"]
    path = write_recipe(trained_example, recipe, name=f"{tmp_path.name}-quiet.yaml")
    run = subprocess.run([str(console), "pack", str(path), "--no-bench"], capture_output=True, text=True,
                         cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stderr
    terminal = run.stdout + run.stderr
    assert not [marker for marker in CHATTER if marker in terminal], terminal
    log = (tmp_path / "bundle" / "pack.log").read_text()
    assert "LiteRT-Torch Convert" in log
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["library_log"]["path"] == "pack.log"

    verbose = subprocess.run([str(console), "--verbose", "pack", str(path), "--no-bench", "--out",
                              str(tmp_path / "verbose")], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert verbose.returncode == 0, verbose.stderr
    assert "LiteRT-Torch Convert" in verbose.stdout + verbose.stderr
    assert not (tmp_path / "verbose" / "pack.log").exists()
