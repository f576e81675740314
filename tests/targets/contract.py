"""Contract every target must meet; subclass `TargetContract` once per target."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from edgepack.calibration.dataset import load_sample_set
from edgepack.errors import MissingDependencyError
from edgepack.model.onnx_export import export_float_onnx
from edgepack.recipe.load import parse_recipe
from edgepack.registry import get_target
from edgepack.targets.base import Artifact, ExportContext
from tests.conftest import base_recipe


class TargetContract:
    """Subclasses set `target_name` and may add structure checks in `check_structure`."""

    target_name: str = ""

    @pytest.fixture(scope="class")
    def exported(self, trained_example, tmp_path_factory):
        """Export the quick-trained example for this target; returns (target, artifacts, recipe, eval set)."""
        work = tmp_path_factory.mktemp(f"contract-{self.target_name}")
        data = base_recipe(trained_example, work / "bundle")
        data["targets"] = [self.target_name]
        recipe = parse_recipe(data, source="contract", base_dir=trained_example)
        calibration = load_sample_set(recipe.calibration, recipe.inputs, role="calibration", base_dir=trained_example)
        evaluation = load_sample_set(recipe.evaluation, recipe.inputs, role="evaluation", base_dir=trained_example,
                                     labels="label")
        from edgepack.model.load import load_model

        module = load_model(recipe).module
        float_onnx = export_float_onnx(module, recipe.inputs, {"image": evaluation.arrays["image"][:2]},
                                       work / "float.onnx")
        out_dir, scratch = work / self.target_name, work / "scratch"
        out_dir.mkdir()
        scratch.mkdir()
        target = get_target(self.target_name)
        context = ExportContext(float_onnx=float_onnx, module=module, inputs=list(recipe.inputs),
                                calibration=calibration, method=recipe.calibration.method,
                                quantization=recipe.quantization, out_dir=out_dir, scratch_dir=scratch,
                                options=target.parse_options({}))
        return target, target.export(context), module, evaluation, out_dir

    def test_declares_its_needs(self):
        target = get_target(self.target_name)
        assert target.name == self.target_name
        assert target.extra and target.required_modules and target.calibration_methods
        target.check_available()

    def test_a_missing_required_module_names_the_extra(self, monkeypatch):
        target = get_target(self.target_name)
        missing, real = target.required_modules[0], importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *args: None if name == missing else real(name, *args))
        with pytest.raises(MissingDependencyError, match=rf"edgepack\[{target.extra}\]"):
            target.check_available()

    def test_exports_artifacts_into_its_folder(self, exported):
        _, artifacts, _, _, out_dir = exported
        assert artifacts and all(isinstance(a, Artifact) for a in artifacts)
        for artifact in artifacts:
            assert artifact.path.is_file() and artifact.path.parent == out_dir
            assert artifact.path.stat().st_size > 0
            assert artifact.target == self.target_name and artifact.runtime and artifact.runtime_version

    def test_io_description_names_the_model_inputs(self, exported):
        _, artifacts, _, _, _ = exported
        for artifact in artifacts:
            assert [entry["name"] for entry in artifact.details["inputs"]] == ["image"]
            assert artifact.details["outputs"], "outputs must be described"

    def test_runner_matches_the_float_model(self, exported):
        target, artifacts, module, evaluation, _ = exported
        batch = {"image": evaluation.arrays["image"][:64]}
        with torch.inference_mode():
            expected = module(torch.from_numpy(batch["image"])).numpy()
        for artifact in artifacts:
            runner = target.runner(artifact.path, threads=2)
            (got,) = runner(batch)[:1]
            assert got.shape == expected.shape and got.dtype == np.float32
            agreement = (got.argmax(1) == expected.argmax(1)).mean()
            assert agreement >= 0.95, f"{artifact.path.name}: top-1 agreement {agreement}"

    def test_structure(self, exported):
        _, artifacts, _, _, _ = exported
        for artifact in artifacts:
            self.check_structure(artifact)

    def check_structure(self, artifact: Artifact) -> None:
        """Target-specific checks of the artifact's content."""
        raise NotImplementedError
