"""End to end: the golden files the pipeline writes into real bundles, then the bundle's own
verify_on_device.py run where edgepack is not installed: fresh venvs holding only numpy and one runtime
(onnxruntime for x86, ai-edge-litert for .tflite), created once per session. The .pte runs in the project's
venv under `python -I` (executorch imports torch itself), checked not to import edgepack."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgepack.device.golden import golden_paths
from edgepack.device.report import read_device_report, summarize
from edgepack.errors import VerificationError
from tests.e2e.conftest import pack_example

pytestmark = pytest.mark.e2e
SCRIPT = "verify_on_device.py"
X86_ARTIFACT = "x86/model.int8.onnx"


def check_golden_listed(bundle: Path) -> None:
    """The pipeline wrote golden files beside every artifact and the script at the top, all in the manifest."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["device_script"]["path"] == SCRIPT and (bundle / SCRIPT).is_file()
    for target in manifest["targets"].values():
        for item in target["artifacts"]:
            assert sorted(entry["path"] for entry in item["golden"]) == sorted(
                str(path.relative_to(bundle)) for path in golden_paths(bundle / item["path"]))


def manifest_files(bundle: Path) -> dict[str, str]:
    manifest = json.loads((bundle / "manifest.json").read_text())
    return {item["path"]: item["sha256"] for target in manifest["targets"].values() for item in target["artifacts"]}


def fresh_venv(tmp_path_factory, *packages: str) -> Path:
    """The python of a new venv holding only `packages` (and their dependencies); skips when pip cannot install."""
    folder = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, capture_output=True, timeout=300)
    python = folder / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], capture_output=True, text=True,
                             timeout=900)
    if install.returncode != 0:
        pytest.skip(f"pip install {' '.join(packages)} failed in a fresh venv: "
                    f"{(install.stderr.strip().splitlines() or ['no output'])[-1]}")
    return python


@pytest.fixture(scope="session")
def ort_python(tmp_path_factory) -> Path:
    return fresh_venv(tmp_path_factory, "numpy", "onnxruntime")


@pytest.fixture(scope="session")
def litert_python(tmp_path_factory) -> Path:
    return fresh_venv(tmp_path_factory, "numpy", "ai-edge-litert")


@pytest.fixture(scope="module")
def golden_bundle(packed, trained_example, tmp_path_factory) -> Path:
    bundle = tmp_path_factory.mktemp("device") / "bundle"
    shutil.copytree(packed.bundle, bundle)
    check_golden_listed(bundle)
    return bundle


@pytest.fixture(scope="module")
def arm_bundle(trained_example, tmp_path_factory) -> Path:
    for module in ("litert_torch", "ai_edge_litert", "executorch"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"the arm extra is not installed ({module})")
    bundle = tmp_path_factory.mktemp("device-arm") / "bundle"
    result = pack_example(trained_example, bundle, targets=["arm-tflite", "arm-xnnpack"])
    assert result.exit_code == 0, [target.error for target in result.targets]
    check_golden_listed(bundle)
    return bundle


def run_script(python: Path, script: Path, folder: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    """Run the bundle's script as a device would, outside the repository; returns the process and its JSON report."""
    report = folder.parent / f"{folder.name}-device.json"
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    result = subprocess.run([str(python), str(script), str(folder), "--json", str(report), *args], capture_output=True,
                            text=True, cwd=folder.parent, env=env, timeout=600)
    return result, (json.loads(report.read_text()) if report.is_file() else {})


def test_the_venv_does_not_hold_edgepack(ort_python):
    probe = subprocess.run([str(ort_python), "-c", "import edgepack"], capture_output=True, text=True,
                           cwd=ort_python.parent)
    assert probe.returncode != 0 and "No module named 'edgepack'" in probe.stderr


def test_an_x86_bundle_verifies_itself_with_numpy_and_onnxruntime(golden_bundle, ort_python):
    result, report = run_script(ort_python, golden_bundle / SCRIPT, golden_bundle)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("host: ") and ", ISA: " in lines[0] and "numpy " in lines[0]
    assert lines[1].startswith(f"PASSED  {X86_ARTIFACT}  onnxruntime ")
    assert "(CPUExecutionProvider), 256 golden samples: accuracy " in lines[1] and "top-1 agree" in lines[1]
    assert lines[-1] == "1 passed, 0 failed, 0 skipped, 0 error -> exit 0"
    assert report["kind"] == "edgepack-device-report" and report["exit_code"] == 0
    (entry,) = report["artifacts"]
    assert entry["file"] == X86_ARTIFACT and entry["sha256"] == manifest_files(golden_bundle)[X86_ARTIFACT]
    assert entry["runtime"] == "onnxruntime" and entry["status"] == "passed" and entry["samples"] == 256
    golden = json.loads(golden_paths(golden_bundle / X86_ARTIFACT)[0].read_text())
    assert entry["metrics"] == pytest.approx(golden["metrics"], abs=1e-6)  # same host: the host's figures
    assert {check["metric"] for check in entry["checks"]} == {"accuracy_drop", "top1_agreement",
                                                              "max_abs_difference_vs_host"}
    device = read_device_report(golden_bundle.parent / "bundle-device.json", manifest_files(golden_bundle))
    assert device.verdict_exit_code == 0
    assert summarize(device)[1].startswith(f"  {X86_ARTIFACT}: passed on the device (onnxruntime ")


def test_a_changed_artifact_is_an_error(golden_bundle, ort_python, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(golden_bundle, bundle)
    artifact = bundle / X86_ARTIFACT
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))
    result, report = run_script(ort_python, bundle / SCRIPT, bundle)
    assert result.returncode == 1
    assert f"ERROR   {X86_ARTIFACT}: sha256 mismatch" in result.stdout
    assert report["artifacts"][0]["status"] == "error" and report["exit_code"] == 1
    with pytest.raises(VerificationError, match="the device ran another file"):
        read_device_report(tmp_path / "bundle-device.json", manifest_files(golden_bundle))


def test_a_target_folder_alone_over_an_impossible_budget_exits_3(golden_bundle, ort_python, tmp_path):
    folder = tmp_path / "x86"  # the target folder copied to the device without the rest of the bundle
    shutil.copytree(golden_bundle / "x86", folder)
    golden_json = golden_paths(folder / "model.int8.onnx")[0]
    golden = json.loads(golden_json.read_text())
    for bound in golden["budget"]:
        bound["limit"] = 1.5 if bound["direction"] == "min" else -1.0
    golden_json.write_text(json.dumps(golden))
    result, report = run_script(ort_python, golden_bundle / SCRIPT, folder)
    assert result.returncode == 3, result.stdout + result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("FAILED"))
    # the measured values depend on the quick-trained model; the bounds are the impossible ones set above
    assert re.search(r"top1_agreement [0-9.]+ < min 1\.5", line)
    assert re.search(r"accuracy_drop -?[0-9.]+ > max -1", line)
    assert report["artifacts"][0]["file"] == X86_ARTIFACT and report["artifacts"][0]["passed"] is False


def test_an_artifact_without_its_runtime_is_skipped_naming_the_package(golden_bundle, litert_python):
    result, report = run_script(litert_python, golden_bundle / SCRIPT, golden_bundle)
    assert result.returncode == 1  # nothing could run
    assert f"SKIPPED {X86_ARTIFACT}: no ONNX runtime: pip install onnxruntime" in result.stdout
    assert report["artifacts"][0]["status"] == "skipped"


def test_a_tflite_artifact_verifies_itself_with_numpy_and_litert(arm_bundle, litert_python):
    result, report = run_script(litert_python, arm_bundle / SCRIPT, arm_bundle, "--target", "arm-tflite")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASSED  arm-tflite/model.int8.tflite  ai-edge-litert " in result.stdout
    (entry,) = report["artifacts"]
    golden = json.loads(golden_paths(arm_bundle / entry["file"])[0].read_text())
    assert golden["inputs"][0]["dtype"] == "int8" and golden["inputs"][0]["artifact_shape"][0] == 1  # batch 1
    assert entry["metrics"] == pytest.approx(golden["metrics"], abs=1e-6)


def test_a_pte_artifact_verifies_itself_without_importing_edgepack(arm_bundle):
    # executorch needs torch, so this runs in the project's venv; -I keeps the repository off sys.path
    probe = ("import json, runpy, sys\n"
             f"sys.argv = [{SCRIPT!r}, {str(arm_bundle)!r}, '--target', 'arm-xnnpack']\n"
             "try:\n"
             f"    runpy.run_path({str(arm_bundle / SCRIPT)!r}, run_name='__main__')\n"
             "except SystemExit as exc:\n"
             "    code = exc.code\n"
             "print(json.dumps({'exit': code, 'edgepack': sorted(m for m in sys.modules if m.split('.')[0] == "
             "'edgepack'), 'torch': 'torch' in sys.modules}))\n")
    result = subprocess.run([sys.executable, "-I", "-c", probe], capture_output=True, text=True, cwd=arm_bundle.parent,
                            timeout=600)
    outcome = json.loads(result.stdout.splitlines()[-1])
    assert outcome == {"exit": 0, "edgepack": [], "torch": True}, result.stdout + result.stderr
    assert "PASSED  arm-xnnpack/model.int8.pte  executorch " in result.stdout
