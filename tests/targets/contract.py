"""Contract every target must meet, on two models and every option the target declares.

Subclass `TargetContract` once per target (tests/targets/test_*.py): set `target_name`, give test values
for options that are neither bool nor Literal in `option_values`, and check each artifact's content in
`check_structure`. Each test that takes `exported` runs once per model and option set; those are the
defaults and then every declared option at each of its other values, one at a time.
"""

from __future__ import annotations

import importlib.util
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional

import numpy as np
import pytest
from pydantic import BaseModel

from edgepack.calibration.dataset import SampleSet, load_sample_set
from edgepack.calibration.methods import MinMax
from edgepack.errors import ConfigError, MissingDependencyError
from edgepack.model.load import load_model
from edgepack.model.onnx_export import export_float_onnx
from edgepack.recipe.load import parse_recipe
from edgepack.recipe.schema import InputSpec, QuantizationConfig
from edgepack.registry import get_target
from edgepack.targets.base import Artifact, ExportContext, Target
from tests.helpers import (
    CTR_INPUTS,
    TinyCtr,
    base_recipe,
    ctr_feeds,
    float_outputs,
    npz_sample_set,
    relative_rms,
    seeded,
)

MODELS = ("image", "ctr")


@dataclass(frozen=True)
class ModelCase:
    """A float model with its input spec, calibration and evaluation data, its fp32 ONNX, and how close an
    artifact's outputs must stay to its own."""

    name: str
    module: Any  # torch.nn.Module
    inputs: list[InputSpec]
    calibration: SampleSet
    feeds: dict[str, np.ndarray]  # evaluation inputs
    reference: np.ndarray  # the float model's outputs on `feeds`
    float_onnx: Path
    max_relative_rms: float  # bound on tests.helpers.relative_rms(artifact outputs, float outputs)
    min_top1_agreement: Optional[float] = None  # classifiers: share of rows whose top class is unchanged

    @property
    def names(self) -> list[str]:
        """Input names in the model's order."""
        return [spec.name for spec in self.inputs]

    def is_id(self, name: str) -> bool:
        """Whether input `name` holds integer ids (a table lookup) rather than float features."""
        return next(spec for spec in self.inputs if spec.name == name).dtype.startswith("int")


def _model_case(work: Path, *, module, inputs: list[InputSpec], feeds: dict[str, np.ndarray], **fields) -> ModelCase:
    """Export `module` to the fp32 ONNX every target starts from and record its outputs on `feeds`."""
    path = export_float_onnx(module, inputs, {name: array[:2] for name, array in feeds.items()}, work / "float.onnx")
    reference = float_outputs(module, feeds, [spec.name for spec in inputs])
    return ModelCase(module=module, inputs=inputs, feeds=feeds, reference=reference, float_onnx=path, **fields)


# The tolerances leave about 3x the errors measured on every target's INT8 artifacts with these data:
# relative_rms 0.008-0.012 on the image model (top-1 agreement 1.0), 0.033-0.043 on the ctr model.


def image_case(example: Path, work: Path) -> ModelCase:
    """The example CNN quick-trained on real MNIST, its calibration split and 256 evaluation digits."""
    recipe = parse_recipe(base_recipe(example, work / "bundle"), source="contract", base_dir=example)
    calibration = load_sample_set(recipe.calibration, recipe.inputs, role="calibration", base_dir=example)
    with np.load(example / "eval.npz") as data:
        feeds = {"image": data["image"][:256]}
    return _model_case(work, name="image", module=load_model(recipe).module, inputs=list(recipe.inputs),
                       calibration=calibration, feeds=feeds, max_relative_rms=0.03, min_top1_agreement=0.98)


def ctr_case(work: Path) -> ModelCase:
    """TinyCtr (two id tables and a dense input) on seeded rows: 256 to calibrate, 512 to compare."""
    calibration = npz_sample_set(work / "calib.npz", ctr_feeds(256, seed=1), CTR_INPUTS)
    return _model_case(work, name="ctr", module=seeded(TinyCtr), inputs=CTR_INPUTS, calibration=calibration,
                       feeds=ctr_feeds(512, seed=2), max_relative_rms=0.1)


def other_values(annotation, default) -> tuple:
    """The values of a bool or Literal option other than its default; () for any other type."""
    if annotation is bool:
        return (not default,)
    if typing.get_origin(annotation) is typing.Literal:
        return tuple(value for value in typing.get_args(annotation) if value != default)
    return ()


def option_sets(options: type[BaseModel], values: dict[str, tuple]) -> list[dict]:
    """The defaults, then every declared option at each of its other values (from `values` when given)."""
    sets: list[dict] = [{}]
    for name, field in options.model_fields.items():
        sets += [{name: value} for value in values.get(name) or other_values(field.annotation, field.default)]
    return sets


def option_id(options: dict) -> str:
    """A test id for an option set: 'defaults' or 'name=value'."""
    return ",".join(f"{name}={value}" for name, value in options.items()) or "defaults"


@dataclass(frozen=True)
class Exported:
    """One export of one model with one option set."""

    target: Target
    options: BaseModel
    case: ModelCase
    artifacts: list[Artifact]
    out_dir: Path

    def runner(self, artifact: Artifact):
        """A runner for `artifact`, from its target."""
        return self.target.runner(artifact.path, threads=2)


class TargetContract:
    """Subclasses set `target_name` and check artifact content in `check_structure`."""

    target_name: ClassVar[str] = ""
    # test values of options whose type has no finite set of values (e.g. a batch size)
    option_values: ClassVar[dict[str, tuple]] = {}
    # option id -> reason: a known bug in edgepack/ makes the tests in `runs_on_data` fail for that option set
    known_failures: ClassVar[dict[str, str]] = {}
    runs_on_data: ClassVar[tuple[str, ...]] = ("test_runner_matches_the_float_model",
                                               "test_runner_handles_any_batch_size")
    # "model-option id" -> the test that covers it instead (a combination too slow to repeat here)
    covered_elsewhere: ClassVar[dict[str, str]] = {}

    def pytest_generate_tests(self, metafunc):
        """Parametrize every test that takes `combination` over (model, option set), one export per class."""
        if "combination" not in metafunc.fixturenames:
            return
        params = []
        for model in MODELS:
            for options in option_sets(get_target(self.target_name).Options, self.option_values):
                name = f"{model}-{option_id(options)}"
                if name in self.covered_elsewhere:
                    continue
                reason = self.known_failures.get(option_id(options))
                marks = ([pytest.mark.xfail(strict=True, reason=reason)]
                         if reason and metafunc.definition.originalname in self.runs_on_data else [])
                params.append(pytest.param((model, options), id=name, marks=marks))
        metafunc.parametrize("combination", params, scope="class")

    @pytest.fixture(scope="class")
    def exported(self, combination, model_cases, tmp_path_factory) -> Exported:
        """Export one model with one option set; skipped, naming the extra, when the target's runtime is missing."""
        model, raw_options = combination
        target = get_target(self.target_name)
        try:
            target.check_available()
        except MissingDependencyError as exc:
            pytest.skip(str(exc))
        case = model_cases[model]
        work = tmp_path_factory.mktemp(f"{self.target_name}-{model}")
        out_dir, scratch = work / self.target_name, work / "scratch"
        out_dir.mkdir()
        scratch.mkdir()
        options = target.parse_options(raw_options)
        context = ExportContext(float_onnx=case.float_onnx, module=case.module, inputs=list(case.inputs),
                                calibration=case.calibration, method=MinMax(), quantization=QuantizationConfig(),
                                out_dir=out_dir, scratch_dir=scratch, options=options)
        return Exported(target=target, options=options, case=case, artifacts=target.export(context), out_dir=out_dir)

    def test_declares_its_needs(self):
        target = get_target(self.target_name)
        assert target.name == self.target_name and target.description
        assert target.extra and target.required_modules and target.calibration_methods
        assert "minmax" in target.calibration_methods

    def test_a_missing_required_module_names_the_extra(self, monkeypatch):
        target = get_target(self.target_name)
        missing, real = target.required_modules[0], importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *args: None if name == missing else real(name, *args))
        with pytest.raises(MissingDependencyError, match=rf"edgepack\[{target.extra}\]"):
            target.check_available()

    def test_every_declared_option_is_exercised(self):
        target = get_target(self.target_name)
        exercised = {name for options in option_sets(target.Options, self.option_values) for name in options}
        assert exercised == set(target.Options.model_fields), "give option_values for the options left out"

    def test_an_unknown_option_is_refused_naming_the_valid_ones(self):
        target = get_target(self.target_name)
        with pytest.raises(ConfigError, match=rf"target_options\.{self.target_name}: no_such_option") as info:
            target.parse_options({"no_such_option": 1})
        assert all(name in str(info.value) for name in target.Options.model_fields)

    def test_exports_artifacts_into_its_folder(self, exported):
        assert exported.artifacts and all(isinstance(a, Artifact) for a in exported.artifacts)
        for artifact in exported.artifacts:
            assert artifact.path.is_file() and artifact.path.parent == exported.out_dir
            assert artifact.path.stat().st_size > 0
            assert artifact.target == self.target_name and artifact.runtime and artifact.runtime_version

    def test_io_description_names_the_model_inputs_and_their_dtypes(self, exported):
        case = exported.case
        for artifact in exported.artifacts:
            inputs = {entry["name"]: entry for entry in artifact.details["inputs"]}
            assert sorted(inputs) == sorted(case.names), artifact.path.name
            for name, entry in inputs.items():
                if case.is_id(name):
                    assert entry["dtype"] in ("int32", "int64"), f"{artifact.path.name}: ids {name}: {entry}"
                elif entry["dtype"] in ("int8", "uint8"):
                    assert entry["quantization"]["scale"] > 0, f"{artifact.path.name}: {name} without a scale"
                else:
                    assert entry["dtype"] in ("float32", "float16"), f"{artifact.path.name}: {name}: {entry}"
            assert len(artifact.details["outputs"]) == 1, "one output per model output"

    def test_runner_declares_the_model_io(self, exported):
        for artifact in exported.artifacts:
            runner = exported.runner(artifact)
            assert sorted(runner.input_names) == sorted(exported.case.names), artifact.path.name
            assert len(runner.output_names) == 1
            assert runner.output_names == [entry["name"] for entry in artifact.details["outputs"]]
            assert runner.device and runner.arithmetic and runner.fixed_batch >= 1

    def test_runner_matches_the_float_model(self, exported):
        case = exported.case
        for artifact in exported.artifacts:
            got = exported.runner(artifact)(case.feeds)
            assert len(got) == 1 and got[0].shape == case.reference.shape and got[0].dtype == np.float32
            error = relative_rms(got[0], case.reference)
            assert error <= case.max_relative_rms, f"{artifact.path.name}: relative RMS error {error:.4f}"
            if case.min_top1_agreement is not None:
                agreement = float((got[0].argmax(1) == case.reference.argmax(1)).mean())
                assert agreement >= case.min_top1_agreement, f"{artifact.path.name}: top-1 agreement {agreement}"

    def test_runner_handles_any_batch_size(self, exported):
        case = exported.case
        for artifact in exported.artifacts:
            runner = exported.runner(artifact)
            (whole,) = runner({name: array[:17] for name, array in case.feeds.items()})
            tolerance = self.batch_tolerance(artifact)
            for size in (1, 3):
                (part,) = runner({name: array[:size] for name, array in case.feeds.items()})
                assert part.shape == (size, *case.reference.shape[1:]) and part.dtype == np.float32
                # a row's result does not depend on the rows batched with it
                np.testing.assert_allclose(part, whole[:size], rtol=tolerance,
                                           atol=tolerance * float(np.abs(whole).max()))

    def batch_tolerance(self, artifact: Artifact) -> float:
        """How far (relative) a row's outputs may move with the batch it runs in: CPU kernels compute each row alike."""
        return 1e-5

    def test_structure(self, exported):
        for artifact in exported.artifacts:
            self.check_structure(artifact, exported)

    def check_structure(self, artifact: Artifact, exported: Exported) -> None:
        """Target-specific checks of the artifact's content for this model and these options."""
        raise NotImplementedError
