"""The sabotage suite: bad input a new user could give, damaged models, wrong preprocessing and
tampered bundles. Each case asserts the exit code, its one error line (or its warning), no
traceback, no partial output, and that the user's files are untouched.

The cases are rows of tables (one per kind of sabotage), so the suite reads as the list of what
edgepack refuses and why; other files in tests/cli hold further cases of the same kind.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml
from safetensors.torch import load_file, save_file

from tests.cli.conftest import leftovers

INT8 = "x86/model.int8.onnx"
FP32 = "reference/model.fp32.onnx"
CONV = "0.0.weight"  # first conv of the example CNN


def squash(text: str) -> str:
    """Whitespace collapsed, so lines rich wrapped to the console width can be matched."""
    return " ".join(text.split())


@dataclass(frozen=True)
class RecipeCase:
    """A recipe edit refused before any work: exit 1, one line holding every fragment."""

    edit: Callable[[dict], None]
    fragments: tuple[str, ...]
    code: int = 1


def _set(path: str, value) -> Callable[[dict], None]:
    keys = path.split(".")

    def edit(recipe: dict) -> None:
        target = recipe
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return edit


RECIPE_CASES = {
    "bound-the-task-does-not-measure": RecipeCase(
        _set("budget", {"max_auc_drop": 0.001}),
        ("budget.max_auc_drop limits 'auc_drop'", "task 'classification' does not measure")),
    "empty-budget": RecipeCase(_set("budget", {}), ("the budget sets no bound", "budget: none")),
    "all-null-budget": RecipeCase(_set("budget", {"max_accuracy_drop": None, "min_top1_agreement": None}),
                                  ("the budget sets no bound",)),
    "none-with-bounds": RecipeCase(_set("budget", {"disabled": True, "max_kl": 0.1}), ("cannot be combined",)),
    "negative-bound": RecipeCase(_set("budget.max_accuracy_drop", -1), ("budget.max_accuracy_drop",)),
    "ctr-without-budget": RecipeCase(lambda r: (r.update(task="ctr"), r.pop("budget")),
                                     ("task 'ctr' has no default budget",)),
    "ranking-without-group-by": RecipeCase(lambda r: r.update(task="ranking", budget={"max_auc_drop": 0.01}),
                                           ("task 'ranking' needs evaluation.group_by",)),
    "unknown-task": RecipeCase(_set("task", "detection"), ("field 'task'",)),
    "pickle-without-opt-in": RecipeCase(lambda r: r.update(model={"pickle": "model.safetensors"}),
                                        ("allow_pickle",)),
    "unknown-calibration-method": RecipeCase(_set("calibration.method", {"name": "magic"}),
                                             ("calibration.method",)),
    "duplicate-targets": RecipeCase(_set("targets", ["x86", "x86"]), ("listed more than once",)),
    "unknown-target-in-recipe": RecipeCase(_set("targets", ["x87"]), ("x87", "did you mean 'x86'")),
}


@pytest.mark.parametrize("case", RECIPE_CASES.values(), ids=RECIPE_CASES.keys())
def test_recipe_sabotage_is_refused_before_any_work(case, invoke, expect_error, recipe_factory):
    recipe, write = recipe_factory
    case.edit(recipe)
    expect_error(invoke("pack", write(recipe)), *case.fragments, bundle=Path(recipe["output"]), code=case.code)


def _corrupt_npz(example: Path, tmp: Path, recipe: dict) -> str:
    broken = tmp / "calib.npz"
    broken.write_bytes((example / "calib.npz").read_bytes()[:5000])
    recipe["calibration"]["path"] = str(broken)
    return str(broken)


def _nhwc(example: Path, tmp: Path, recipe: dict) -> str:
    with np.load(example / "calib.npz") as archive:
        np.savez(tmp / "nhwc.npz", image=archive["image"].transpose(0, 2, 3, 1), label=archive["label"])
    recipe["calibration"]["path"] = str(tmp / "nhwc.npz")
    return "expected shape ['N', 1, 28, 28], got [500, 28, 28, 1]"


def _nan(example: Path, tmp: Path, recipe: dict) -> str:
    with np.load(example / "calib.npz") as archive:
        images = archive["image"].copy()
    images[3, 0, 0, 0] = np.nan
    np.savez(tmp / "nan.npz", image=images)
    recipe["calibration"]["path"] = str(tmp / "nan.npz")
    return "nan.npz"


def _labels(value: int) -> Callable[[Path, Path, dict], str]:
    def make(example: Path, tmp: Path, recipe: dict) -> str:
        with np.load(example / "eval.npz") as archive:
            labels = archive["label"].copy()
            images = archive["image"]
        labels[0] = value
        np.savez(tmp / "eval.npz", image=images, label=labels)
        recipe["evaluation"]["path"] = str(tmp / "eval.npz")
        return "must be class indices 0..9"
    return make


def _truncated_weights(example: Path, tmp: Path, recipe: dict) -> str:
    weights = tmp / "model.safetensors"
    weights.write_bytes((example / "model.safetensors").read_bytes()[:1000])
    recipe["model"]["weights"] = str(weights)
    return str(weights)


def _renamed_weight(example: Path, tmp: Path, recipe: dict) -> str:
    tensors = load_file(example / "model.safetensors")
    tensors["features.0.weight"] = tensors.pop(CONV)
    save_file(tensors, tmp / "renamed.safetensors")
    recipe["model"]["weights"] = str(tmp / "renamed.safetensors")
    return "features.0.weight"


DATA_CASES = {
    "corrupt-npz-names-the-file": _corrupt_npz,
    "nhwc-data-for-an-nchw-model": _nhwc,
    "nan-in-calibration-data": _nan,
    "label-10-of-10-classes": _labels(10),
    "label-minus-1": _labels(-1),
    "truncated-weights": _truncated_weights,
    "weights-of-another-model": _renamed_weight,
}


@pytest.mark.parametrize("make", DATA_CASES.values(), ids=DATA_CASES.keys())
def test_data_and_model_sabotage_is_one_line(make, invoke, expect_error, recipe_factory, trained_example, tmp_path):
    recipe, write = recipe_factory
    fragment = make(trained_example, tmp_path, recipe)
    expect_error(invoke("pack", write(recipe)), fragment, bundle=Path(recipe["output"]))


# --- the output folder: only an intact edgepack bundle is replaced ----------------------------------


def _web_app(folder: Path) -> None:
    (folder / "src").mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"name": "my-app", "start_url": "/"}))
    (folder / "src" / "index.js").write_text("console.log('precious')")


def _edited_bundle_copy(folder: Path, packed_bundle: Path) -> None:
    shutil.copytree(packed_bundle, folder)
    with open(folder / INT8, "r+b") as handle:
        handle.seek(200)
        handle.write(b"\x00\x01\x02")


def _bundle_with_user_file(folder: Path, packed_bundle: Path) -> None:
    shutil.copytree(packed_bundle, folder)
    (folder / "notes.txt").write_text("my notes")


OUTPUT_CASES = {
    "web-app-with-a-manifest-json": (lambda folder, _: _web_app(folder), "not a valid edgepack manifest"),
    "bundle-whose-artifact-was-edited": (_edited_bundle_copy, "whose files changed since packing"),
    "bundle-holding-a-user-file": (_bundle_with_user_file, "notes.txt"),
}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("case", OUTPUT_CASES.values(), ids=OUTPUT_CASES.keys())
def test_an_output_folder_that_is_not_an_intact_bundle_is_refused(case, invoke, expect_error, recipe_factory,
                                                                 packed_bundle, tmp_path):
    make, fragment = case
    folder = tmp_path / "out"
    make(folder, packed_bundle)
    before = _snapshot(folder)
    recipe, write = recipe_factory
    line = expect_error(invoke("pack", write(recipe), "--out", folder), str(folder), fragment)
    assert "--force" in line
    assert _snapshot(folder) == before
    assert not list(tmp_path.glob(".out.staging-*"))


def test_an_output_path_that_is_a_file_is_a_usage_error(invoke, recipe_factory, tmp_path):
    target = tmp_path / "bundle.txt"
    target.write_text("mine")
    recipe, write = recipe_factory
    result = invoke("pack", write(recipe), "--out", target)
    assert result.exit_code == 2 and f"'{target}' is a file" in result.output
    assert "Traceback" not in result.output and target.read_text() == "mine"


def test_leftovers_of_a_killed_run_are_cleaned_and_reported(invoke, recipe_factory, tmp_path):
    recipe, write = recipe_factory
    bundle = Path(recipe["output"])
    dead = 2 ** 22 + 12345  # above the default pid_max: no such process
    stale = bundle.parent / f".{bundle.name}.staging-{dead}-abc"
    stale.mkdir(parents=True)
    (stale / "half.onnx").write_bytes(b"\0" * 1000)
    old = bundle.parent / f".{bundle.name}.old-{dead}-abc"
    old.mkdir()
    past = 1_000_000_000
    for path in (stale, old):
        os.utime(path, (past, past))
    result = invoke("pack", write(recipe))
    assert result.exit_code == 0, result.output
    assert not stale.exists() and not old.exists()
    assert "removed" in squash(result.stderr) and stale.name in squash(result.stderr)
    assert leftovers(bundle) == [bundle]


# --- verify trusts nothing in the bundle -------------------------------------------------------------


def _edit_manifest(bundle: Path, change: Callable[[dict], None]) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    change(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))


def _artifact(manifest: dict) -> dict:
    return manifest["targets"]["x86"]["artifacts"][0]


def _flip(bundle: Path) -> None:
    with open(bundle / INT8, "r+b") as handle:
        handle.seek(300)
        byte = handle.read(1)
        handle.seek(300)
        handle.write(bytes([byte[0] ^ 0xFF]))


def _swap_in_damaged_pair(bundle: Path) -> None:
    """A reference and an artifact both replaced by a damaged model, their checksums updated."""
    import hashlib

    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(bundle / FP32))
    for initializer in model.graph.initializer:
        if initializer.name.endswith("weight") and len(initializer.dims) == 4:
            array = numpy_helper.to_array(initializer)
            initializer.CopyFrom(numpy_helper.from_array(np.zeros_like(array), initializer.name))
            break
    onnx.save(model, str(bundle / FP32))
    shutil.copyfile(bundle / FP32, bundle / INT8)

    def rewrite(manifest: dict) -> None:
        for entry in (manifest["reference"], _artifact(manifest)):
            data = (bundle / entry["path"]).read_bytes()
            entry["sha256"], entry["size_bytes"] = hashlib.sha256(data).hexdigest(), len(data)

    _edit_manifest(bundle, rewrite)


VERIFY_CASES = {
    "flipped-byte": (_flip, (INT8, "checksum mismatch")),
    "truncated-artifact": (lambda b: (b / INT8).write_bytes((b / INT8).read_bytes()[:100]), (INT8,)),
    "deleted-artifact": (lambda b: (b / INT8).unlink(), (INT8, "missing")),
    "smuggled-file": (lambda b: (b / "x86" / "extra.onnx").write_bytes(b"x"), ("x86/extra.onnx", "not listed")),
    "edited-metric": (lambda b: _edit_manifest(b, lambda m: _artifact(m)["metrics"].update(top1_agreement=0.5)),
                      ("re-measured top1_agreement", "recorded 0.5")),
    "manifest-not-json": (lambda b: (b / "manifest.json").write_text("{"), ("manifest.json",)),
    "manifest-unknown-key": (lambda b: _edit_manifest(b, lambda m: m.update(trusted=True)), ("trusted",)),
    "manifest-deleted": (lambda b: (b / "manifest.json").unlink(), ("manifest.json",)),
    "damaged-reference-and-artifact-with-new-checksums": (_swap_in_damaged_pair, ("re-measured",)),
}


@pytest.mark.parametrize("case", VERIFY_CASES.values(), ids=VERIFY_CASES.keys())
def test_verify_catches_a_tampered_bundle(case, invoke, expect_error, packed_bundle, trained_example, tmp_path):
    tamper, fragments = case
    copy = tmp_path / "copy"
    shutil.copytree(packed_bundle, copy)
    tamper(copy)
    before = _snapshot(copy)
    expect_error(invoke("verify", copy, "--data", trained_example / "eval.npz"), *fragments)
    assert _snapshot(copy) == before  # verify never writes


def test_a_loosened_budget_in_the_manifest_does_not_pass(invoke, failed_bundle, trained_example, tmp_path):
    bundle, recipe_path = failed_bundle
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)

    def loosen(manifest: dict) -> None:
        manifest["passed"] = True
        manifest["targets"]["x86"]["status"] = "passed"
        for entry in manifest["targets"]["x86"]["artifacts"]:
            entry["budget"] = {"max_kl": 10.0}
            entry["passed"] = True
            for check in entry["drift"]:
                check.update(limit=10.0, passed=True)

    _edit_manifest(copy, loosen)
    result = invoke("verify", copy, "--data", trained_example / "eval.npz", "--recipe", recipe_path)
    assert result.exit_code == 3, result.output
    assert f"FAIL {INT8}" in result.stdout and "Traceback" not in result.output


def test_a_recorded_failure_is_honoured(invoke, failed_bundle, trained_example):
    bundle, _ = failed_bundle
    result = invoke("verify", bundle, "--data", trained_example / "eval.npz")
    assert result.exit_code == 3, result.output
    assert "budget taken from the bundle" in squash(result.stderr)


# --- float model and data that a drift figure alone would not question ------------------------------


def _zeroed_conv(example: Path, tmp: Path, recipe: dict) -> None:
    tensors = load_file(example / "model.safetensors")
    tensors[CONV] = tensors[CONV] * 0
    save_file(tensors, tmp / "zeroed.safetensors")
    recipe["model"]["weights"] = str(tmp / "zeroed.safetensors")


def _noise_calibration(example: Path, tmp: Path, recipe: dict) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp / "noise.npz", image=rng.normal(size=(256, 1, 28, 28)).astype(np.float32))
    recipe["calibration"]["path"] = str(tmp / "noise.npz")


def _raw_pixels(example: Path, tmp: Path, recipe: dict) -> None:
    with np.load(example / "eval.npz") as archive:
        np.savez(tmp / "raw.npz", image=np.round(archive["image"] * 255), label=archive["label"])
    recipe["evaluation"]["path"] = str(tmp / "raw.npz")


@dataclass(frozen=True)
class WarningCase:
    make: Callable[[Path, Path, dict], None]
    warning: str
    code: int = 0
    failed_metric: str = ""
    budget: dict = field(default_factory=dict)


WARNING_CASES = {
    "float-model-at-chance": WarningCase(_zeroed_conv, "at chance level"),
    "float-model-below-its-floor": WarningCase(_zeroed_conv, "at chance level", code=3,
                                               failed_metric="reference_accuracy",
                                               budget={"min_reference_accuracy": 0.9}),
    "noise-as-calibration-data": WarningCase(_noise_calibration, "does not look like the evaluation data"),
    "unnormalized-evaluation-data": WarningCase(_raw_pixels, "like raw 8-bit pixels", code=3),
}


@pytest.mark.parametrize("case", WARNING_CASES.values(), ids=WARNING_CASES.keys())
def test_suspicious_model_or_data_is_reported(case, invoke, recipe_factory, trained_example, tmp_path):
    recipe, write = recipe_factory
    case.make(trained_example, tmp_path, recipe)
    recipe["budget"].update(case.budget)
    result = invoke("pack", write(recipe))
    assert result.exit_code == case.code, result.output
    assert "Traceback" not in result.output
    assert case.warning in squash(result.stderr)
    manifest = json.loads((Path(recipe["output"]) / "manifest.json").read_text())
    assert any(case.warning in warning for warning in manifest["warnings"])
    if case.failed_metric:
        assert case.failed_metric in squash(result.stdout + result.stderr)


def test_usage_errors_exit_2(invoke, recipe_factory):
    recipe, write = recipe_factory
    result = invoke("pack", write(recipe), "--target", "x87")
    assert result.exit_code == 2 and "did you mean 'x86'" in result.output
    assert not Path(recipe["output"]).exists()


def test_a_yaml_error_names_line_and_column(invoke, expect_error, tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"name": "x"}) + "inputs: [\n  - {name: image\n")
    expect_error(invoke("pack", path), f"{path}:", "not valid YAML")


# --- signed bundles and device reports ----------------------------------------------------------------


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    from edgepack.bundle.signing import generate_keypair

    folder = tmp_path_factory.mktemp("keys")
    generate_keypair(folder / "key.pem", folder / "key.pub.pem")
    generate_keypair(folder / "other.pem", folder / "other.pub.pem")
    return folder


@pytest.fixture
def signed_copy(packed_bundle, keys, invoke, tmp_path):
    copy = tmp_path / "signed"
    shutil.copytree(packed_bundle, copy)
    result = invoke("sign", copy, "--key", keys / "key.pem")
    assert result.exit_code == 0, result.output
    return copy


def test_a_signed_bundle_verifies_with_its_key(signed_copy, keys, invoke, trained_example):
    result = invoke("verify", signed_copy, "--data", trained_example / "eval.npz", "--key", keys / "key.pub.pem")
    assert result.exit_code == 0, result.output
    assert "signature: valid, ed25519 key" in result.stdout


def test_an_unsigned_bundle_says_what_its_checksums_prove(packed_bundle, invoke, trained_example):
    result = invoke("verify", packed_bundle, "--data", trained_example / "eval.npz")
    assert result.exit_code == 0, result.output
    assert "signature: none (unsigned bundle); checksums only detect accidental change" in squash(result.stdout)


def _re_sum_and_loosen(bundle: Path) -> None:
    """What a tamperer can do without the key: loosen the budget, keep the manifest self-consistent."""
    _edit_manifest(bundle, lambda m: _artifact(m)["budget"].update(max_accuracy_drop=50.0))


SIGNATURE_CASES = {
    "manifest-edited-after-signing": (_re_sum_and_loosen, "key.pub.pem", "signature does not match"),
    "verified-with-another-key": (lambda b: None, "other.pub.pem", "not by"),
    "signature-file-deleted": (lambda b: (b / "signature.json").unlink(), "key.pub.pem", "bundle is not signed"),
    "signature-file-garbled": (lambda b: (b / "signature.json").write_text("{}"), "key.pub.pem",
                               "not an edgepack signature file"),
    "private-key-given-to-verify": (lambda b: None, "key.pem", "this is a private key"),
}


@pytest.mark.parametrize("case", SIGNATURE_CASES.values(), ids=SIGNATURE_CASES.keys())
def test_a_signature_that_does_not_hold_fails_verify(case, signed_copy, keys, invoke, expect_error, trained_example):
    tamper, key, fragment = case
    tamper(signed_copy)
    result = invoke("verify", signed_copy, "--data", trained_example / "eval.npz", "--key", keys / key)
    expect_error(result, fragment)


def test_a_bad_signing_key_fails_before_any_work(invoke, expect_error, recipe_factory, keys):
    recipe, write = recipe_factory
    expect_error(invoke("pack", write(recipe), "--sign", keys / "key.pub.pem"), "not a PEM private key",
                 bundle=Path(recipe["output"]))


def _device_report(bundle: Path, tmp: Path) -> Path:
    import subprocess
    import sys

    report = tmp / "device.json"
    run = subprocess.run([sys.executable, "-I", str(bundle / "verify_on_device.py"), str(bundle), "--json",
                          str(report)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    return report


def test_a_device_report_is_read_back_by_verify(packed_bundle, invoke, tmp_path):
    report = _device_report(packed_bundle, tmp_path)
    result = invoke("verify", packed_bundle, "--device-report", report)
    assert result.exit_code == 0, result.output
    out = squash(result.stdout)
    assert "x86/model.int8.onnx: passed on the device" in out and "device verdict: passed" in out
    assert "no --data: drift not re-measured here" in out


def test_a_device_report_of_another_file_is_refused(packed_bundle, invoke, expect_error, tmp_path):
    report = _device_report(packed_bundle, tmp_path)
    data = json.loads(report.read_text())
    data["artifacts"][0]["sha256"] = "0" * 64
    report.write_text(json.dumps(data))
    expect_error(invoke("verify", packed_bundle, "--device-report", report), "the device ran another file")


def test_verify_needs_data_or_a_device_report(packed_bundle, invoke):
    result = invoke("verify", packed_bundle)
    assert result.exit_code == 2 and "--device-report" in result.output
