"""Good paths of `edgepack pack` and `verify`, drift over budget (exit 3) and tampered bundles."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

INT8 = "x86/model.int8.onnx"
FP32 = "reference/model.fp32.onnx"


@dataclass(frozen=True)
class Packed:
    """A bundle made once by the real console script, shared by the tests that only read it."""

    bundle: Path
    example: Path
    run: subprocess.CompletedProcess

    @property
    def manifest(self) -> dict:
        return json.loads((self.bundle / "manifest.json").read_text())


@pytest.fixture(scope="module")
def packed(trained_example, shared_recipe, tmp_path_factory, console) -> Packed:
    folder = tmp_path_factory.mktemp("packed")
    bundle = folder / "out" / "digits"
    recipe = shared_recipe(bundle, "cli-packed.yaml")
    run = subprocess.run([console, "pack", str(recipe)], capture_output=True, text=True, cwd=folder, timeout=300)
    assert run.returncode == 0, run.stderr
    return Packed(bundle=bundle, example=trained_example, run=run)


def squash(text: str) -> str:
    """Whitespace collapsed, so lines rich wrapped to the console width can be matched."""
    return " ".join(text.split())


def test_pack_prints_a_passing_table(packed):
    out = packed.run.stdout
    rows = [line for line in out.splitlines() if INT8 in line and line.startswith("│")]
    assert len(rows) == 2, out  # drift table and latency table
    assert "x86" in rows[0] and "pass" in rows[0] and "CPUExecutionProvider" in rows[1], out
    assert any("float" in line and "torch eager fp32" in line for line in out.splitlines())
    assert f"all targets passed; bundle: {packed.bundle}" in squash(out)
    # long lines are not wrapped when stdout is not a terminal, so a log stays greppable
    isa_line = next(line for line in out.splitlines() if line.startswith("x86 isa: "))
    assert "Why:" in isa_line and "Saturation:" in isa_line and isa_line.rstrip().endswith(".")
    assert "Traceback" not in packed.run.stderr and "error" not in packed.run.stderr


def test_pack_reports_progress_on_stderr(packed):
    stderr = squash(packed.run.stderr)
    for step in ("reading calibration and evaluation data", "loading the float model",
                 "exporting and checking the fp32 ONNX reference", "x86: building artifacts"):
        assert step in stderr


def test_pack_writes_a_complete_bundle(packed):
    files = sorted(str(p.relative_to(packed.bundle)) for p in packed.bundle.rglob("*") if p.is_file())
    golden = [INT8.replace(".onnx", ".golden.json"), INT8.replace(".onnx", ".golden.npz")]
    assert files == sorted(["manifest.json", "pack.log", FP32, "report.html", "report.md", "verify_on_device.py",
                            INT8, *golden])
    assert not list(packed.bundle.parent.glob(".digits.*"))
    assert "digits" in (packed.bundle / "report.md").read_text()


def test_manifest_records_the_passing_target(packed):
    manifest = packed.manifest
    assert manifest["passed"] is True and manifest["name"] == "digits"
    target = manifest["targets"]["x86"]
    assert target["status"] == "passed" and target["error"] is None
    (artifact,) = target["artifacts"]
    assert artifact["path"] == INT8 and artifact["passed"] is True
    assert artifact["size_bytes"] == (packed.bundle / INT8).stat().st_size
    assert {check["metric"] for check in artifact["drift"]} == {"accuracy_drop", "top1_agreement"}
    assert manifest["reference"]["path"] == FP32
    assert manifest["recipe"]["output"] == str(packed.bundle)


def test_verify_fresh_bundle(packed, invoke):
    result = invoke("verify", packed.bundle, "--data", packed.example / "eval.npz")
    assert result.exit_code == 0, result.output
    line = next(line for line in result.stdout.splitlines() if line.startswith(f"pass {INT8}: accuracy "))
    assert "(float) →" in line and "accuracy_drop" in line and "top1_agreement" in line
    assert ("checksums ok, no unlisted files; drift re-measured on 1000 samples; on the packing data, every "
            "recorded metric was reproduced") in squash(result.stdout)
    assert "budget taken from the bundle's own manifest" in squash(result.stderr)
    assert "Traceback" not in result.output


def test_verify_against_a_budget_kept_outside_the_bundle(packed, invoke, expect_error, tmp_path):
    strict = tmp_path / "strict.yaml"
    strict.write_text("min_top1_agreement: 1.0\nmax_kl: 0.0\n")
    result = invoke("verify", packed.bundle, "--data", packed.example / "eval.npz", "--budget", strict)
    assert result.exit_code == 3, result.output
    assert f"FAIL {INT8}" in result.stdout and "budget taken from" not in result.stderr
    wrong_task = tmp_path / "ctr.yaml"
    wrong_task.write_text("budget: {max_auc_drop: 0.01}\n")
    result = invoke("verify", packed.bundle, "--data", packed.example / "eval.npz", "--budget", wrong_task)
    expect_error(result, "the given budget does not fit this bundle", "max_auc_drop")


def test_verify_refuses_edited_metrics_and_added_files(packed, invoke, expect_error, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(packed.bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["targets"]["x86"]["artifacts"][0]["metrics"]["top1_agreement"] = 0.5
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = invoke("verify", copy, "--data", packed.example / "eval.npz")
    expect_error(result, f"{INT8}: re-measured top1_agreement", "differs from the recorded 0.5")
    shutil.rmtree(copy)
    shutil.copytree(packed.bundle, copy)
    (copy / "x86" / "extra.onnx").write_bytes(b"smuggled")
    result = invoke("verify", copy, "--data", packed.example / "eval.npz")
    expect_error(result, "x86/extra.onnx: not listed in the manifest")


def test_verify_warns_about_a_small_sample(packed, invoke, tmp_path):
    import numpy as np

    with np.load(packed.example / "eval.npz") as archive:
        small = {name: archive[name][:40] for name in archive.files}
    np.savez(tmp_path / "small.npz", **small)
    result = invoke("verify", packed.bundle, "--data", tmp_path / "small.npz")
    assert "warning:" in result.stderr and "only 40 samples; results are unreliable below 100" in squash(result.stderr)
    assert "drift re-measured on 40 samples" in squash(result.stdout)


def test_verify_detects_a_changed_byte(packed, invoke, expect_error, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(packed.bundle, copy)
    artifact = copy / INT8
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))
    result = invoke("verify", copy, "--data", packed.example / "eval.npz")
    expect_error(result, str(copy), f"{INT8}: checksum mismatch")


def test_verify_detects_a_missing_artifact(packed, invoke, expect_error, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(packed.bundle, copy)
    (copy / FP32).unlink()
    expect_error(invoke("verify", copy, "--data", packed.example / "eval.npz"), f"{FP32}: missing")


def test_verify_directory_without_manifest(packed, invoke, expect_error, tmp_path):
    result = invoke("verify", tmp_path, "--data", packed.example / "eval.npz")
    expect_error(result, str(tmp_path), "not an edgepack bundle (no manifest.json)")


def test_verify_unreadable_manifest(packed, invoke, expect_error, tmp_path):
    (tmp_path / "manifest.json").write_text("{ not json")
    result = invoke("verify", tmp_path, "--data", packed.example / "eval.npz")
    expect_error(result, "manifest.json", "unreadable manifest")


def test_verify_with_unknown_label_name(packed, invoke, expect_error):
    result = invoke("verify", packed.bundle, "--data", packed.example / "eval.npz", "--labels", "target")
    expect_error(result, "evaluation data", "no label array named 'target'")


def test_verify_with_missing_data_file(packed, invoke, expect_error, tmp_path):
    data = tmp_path / "absent.npz"
    expect_error(invoke("verify", packed.bundle, "--data", data), str(data), "data file not found")


def test_out_overrides_the_recipe_output(invoke, recipe_factory, tmp_path):
    recipe, write = recipe_factory
    path = write(recipe)
    out = tmp_path / "chosen" / "bundle"
    result = invoke("pack", path, "--out", out)
    assert result.exit_code == 0, result.output
    assert not Path(recipe["output"]).exists()
    assert (out / "manifest.json").is_file() and (out / INT8).is_file()
    assert json.loads((out / "manifest.json").read_text())["recipe"]["output"] == str(out)
    assert f"bundle: {out}" in squash(result.stdout)


def test_impossible_budget_exits_3_and_keeps_the_bundle(invoke, recipe_factory):
    recipe, write = recipe_factory
    recipe["budget"] = {"min_top1_agreement": 1.0, "max_kl": 0.0}
    result = invoke("pack", write(recipe))
    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.output
    # verify honours the recorded verdict even with a budget the artifact meets
    loose = Path(recipe["output"]).parent / "loose.yaml"
    loose.write_text("min_top1_agreement: 0.5\n")
    checked = invoke("verify", recipe["output"], "--data", Path(recipe["evaluation"]["path"]), "--budget", loose)
    assert checked.exit_code == 3, checked.output
    assert "recorded verdict FAILED: x86: failed" in squash(checked.stderr)
    stderr = squash(result.stderr)
    assert f"drift over budget: target x86 ({INT8}): kl" in stderr
    assert "budget max 0" in stderr
    assert "FAILED; bundle:" in squash(result.stdout)
    assert any("x86" in line and "FAIL" in line for line in result.stdout.splitlines())
    bundle = Path(recipe["output"])
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["passed"] is False
    assert manifest["targets"]["x86"]["status"] == "failed"
    (artifact,) = manifest["targets"]["x86"]["artifacts"]
    failed = {check["metric"] for check in artifact["drift"] if not check["passed"]}
    assert "kl" in failed
    assert (bundle / INT8).is_file() and not list(bundle.parent.glob(".bundle.staging-*"))
