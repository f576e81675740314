"""`edgepack targets`: every registered target with its packages, methods and options."""

from __future__ import annotations

import importlib.util
from importlib.metadata import EntryPoint

from tests.cli.test_sabotage import squash


def test_lists_every_builtin_target_with_methods_and_option_defaults(invoke):
    result = invoke("targets")
    assert result.exit_code == 0, result.output
    out = squash(result.stdout)
    for name in ("x86", "cuda", "arm-tflite", "arm-xnnpack"):
        assert f"{name} " in out
    assert "ONNX INT8 (QDQ) for onnxruntime on x86 CPUs" in out
    assert "calibration methods: entropy, minmax, mse, percentile" in out
    assert "option isa (default 'portable')" in out and "option keep_io_types (default True)" in out
    assert "option weight_bits (default 8)" in out and "option group_size (default 32)" in out
    assert "option sequence_lengths (default ()): text models: also export at these shorter" in out


def test_an_uninstalled_extra_is_shown_with_its_pip_command(invoke, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args, **kwargs: None if name == "executorch" else real(name, *args, **kwargs))
    out = squash(invoke("targets").stdout)
    block = out[out.index("arm-xnnpack "):out.index("cuda ")]
    assert "not installed: pip install 'edgepack[arm]'" in block and "executorch (missing)" in block
    assert "installed; needs onnxruntime" in out[out.index("x86 "):]


def test_an_entry_point_target_appears(invoke, monkeypatch):
    from edgepack import registry

    point = EntryPoint(name="x86-vendor", value="edgepack.targets.x86.target:X86Target", group="edgepack.targets")
    monkeypatch.setattr(registry, "entry_points", lambda group: [point])
    registry.target_table.cache_clear()
    try:
        out = squash(invoke("targets").stdout)
    finally:
        registry.target_table.cache_clear()
    assert "x86-vendor ONNX INT8 (QDQ)" in out
