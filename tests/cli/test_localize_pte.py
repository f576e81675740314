"""`edgepack pack` localizes a failing arm-xnnpack artifact on the graph its export quantized: one quantization and
calibration per artifact, and the tapped re-lowering reproduces the verified .pte."""

from __future__ import annotations

import re

import pytest
import yaml

from edgepack.bundle.files import Bundle
from edgepack.errors import EXIT_DRIFT


def test_a_failing_pte_is_localized_without_quantizing_again(shared_recipe, invoke, tmp_path, monkeypatch):
    pytest.importorskip("executorch")
    from edgepack.targets.arm_xnnpack import target as xnnpack

    calls = []
    quantize = xnnpack.quantize_for_xnnpack
    monkeypatch.setattr(xnnpack, "quantize_for_xnnpack", lambda *args: calls.append(args) or quantize(*args))
    bundle = tmp_path / "bundle"
    recipe = shared_recipe(bundle, "pte.yaml")
    data = yaml.safe_load(recipe.read_text())
    data.update(targets=["arm-xnnpack"], budget={"max_kl": 0.0})  # no INT8 artifact is exact: localization runs
    recipe.write_text(yaml.safe_dump(data))
    result = invoke("pack", recipe, "--no-bench")
    assert result.exit_code == EXIT_DRIFT, result.output
    record = Bundle.open(bundle).manifest.divergence["arm-xnnpack/model.int8.pte"]
    assert len(record.layers) >= 3 and record.first is not None, record.note
    assert float(re.search(r"max \|difference\| (\S+)", record.note).group(1)) == 0.0, record.note
    assert len(calls) == 1, "quantized and calibrated once, by the export"
