"""Golden files (edgepack.device.golden), the device script's metrics and checks against edgepack's own, and the
reader of the device report (edgepack.device.report). No runtime: artifacts are stand-in bytes here."""

from __future__ import annotations

import ast
import json
import math

import numpy as np
import pytest

from edgepack.device import verify_on_device as device_script
from edgepack.device.golden import artifact_inputs, golden_paths, read_golden, write_golden
from edgepack.device.report import read_device_report, summarize
from edgepack.errors import VerificationError
from edgepack.evaluation.drift import classification_metrics
from edgepack.evaluation.rec_metrics import recommender_metrics
from edgepack.isa import parse_cpuinfo
from edgepack.targets.arm_tflite.runner import quantize

IMAGE_IO = {"inputs": [{"name": "image", "dtype": "float32", "shape": ["batch", 1, 8, 8]}],
            "outputs": [{"name": "output", "dtype": "float32", "shape": ["batch", 10],
                         "quantization": {"scale": 0.15, "zero_point": 107, "dtype": "uint8"}}]}
BUDGET = {"max_accuracy_drop": 0.3, "min_top1_agreement": 0.99, "max_kl": None, "max_auc_drop": None,
          "segments": True, "disabled": False}


def classifier_data(rows: int = 400, seed: int = 0):
    """Images, float logits, slightly perturbed 'artifact' logits and labels the float model mostly gets right."""
    rng = np.random.default_rng(seed)
    images = rng.random((rows, 1, 8, 8), dtype=np.float32)
    reference = rng.normal(size=(rows, 10)).astype(np.float32) * 4
    artifact = reference * np.float32(1.02)  # same top-1 everywhere, a small KL
    labels = np.where(rng.random(rows) < 0.9, reference.argmax(axis=1), rng.integers(0, 10, rows))
    return images, reference, artifact, labels


@pytest.fixture
def artifact_file(tmp_path):
    path = tmp_path / "x86" / "model.int8.onnx"
    path.parent.mkdir()
    path.write_bytes(b"stand-in for an ONNX file")
    return path


def write_classifier(artifact, budget=BUDGET, **changes):
    images, reference, artifact_outputs, labels = classifier_data()
    arguments = dict(target="x86", task="classification", io=IMAGE_IO, inputs={"image": images},
                     artifact_outputs=artifact_outputs, reference_outputs=reference, labels=labels, budget=budget)
    return write_golden(artifact, **(arguments | changes))


def test_golden_files_hold_the_first_rows_and_the_host_metrics(artifact_file):
    paths = write_classifier(artifact_file)
    assert paths == list(golden_paths(artifact_file))
    assert [path.name for path in paths] == ["model.int8.golden.json", "model.int8.golden.npz"]
    images, reference, artifact_outputs, labels = classifier_data()
    golden = read_golden(artifact_file)
    info = golden.info
    assert info["kind"] == "edgepack-golden" and info["artifact"] == "model.int8.onnx" and info["target"] == "x86"
    assert info["sha256"] == device_script.sha256_file(artifact_file) and info["samples"] == 256
    assert info["inputs"] == [{"key": "input_0", "dtype": "float32", "shape": [256, 1, 8, 8], "name": "image",
                               "artifact_shape": ["batch", 1, 8, 8], "quantization": None}]
    np.testing.assert_array_equal(golden.inputs["image"], images[:256])
    np.testing.assert_array_equal(golden.artifact_outputs, artifact_outputs[:256])
    np.testing.assert_array_equal(golden.labels, labels[:256])
    expected = classification_metrics(reference[:256].astype(np.float64), artifact_outputs[:256].astype(np.float64),
                                      labels[:256])
    assert info["metrics"] == pytest.approx(expected)
    tolerance = info["outputs"][0]["tolerance"]
    assert tolerance["atol"] >= 2 * 0.15 and "quantization steps" in tolerance["basis"]
    assert {entry["bound"] for entry in info["budget"]} == {"max_accuracy_drop", "min_top1_agreement"}
    assert all(entry["host_passed"] for entry in info["budget"])
    assert sum(path.stat().st_size for path in paths) < 300_000


def test_rows_are_cut_to_keep_the_file_small(artifact_file):
    rng = np.random.default_rng(1)
    io = {"inputs": [{"name": "image", "dtype": "float32", "shape": ["batch", 3, 32, 32]}], "outputs": [{}]}
    images = rng.random((256, 3, 32, 32), dtype=np.float32)  # noise: does not compress
    outputs = rng.normal(size=(256, 10)).astype(np.float32)
    write_golden(artifact_file, target="x86", task="classification", io=io, inputs={"image": images},
                 artifact_outputs=outputs, reference_outputs=outputs, labels=None, budget=BUDGET, max_bytes=100_000)
    golden = read_golden(artifact_file)
    assert 0 < golden.info["samples"] < 256 and golden_paths(artifact_file)[1].stat().st_size <= 100_000
    np.testing.assert_array_equal(golden.inputs["image"], images[:golden.info["samples"]])
    assert golden.labels is None and golden.info["labels"] is None


def test_inputs_must_be_laid_out_as_the_artifact_takes_them(artifact_file):
    io = {"inputs": [{"name": "image", "dtype": "int8", "shape": [1, 8, 8, 1],
                      "quantization": {"scale": 0.0039, "zero_point": -128}},
                     {"name": "ids", "dtype": "int32", "shape": [1, 3]}], "outputs": [{"name": "output_0"}]}
    images, reference, artifact_outputs, _ = classifier_data()
    ids = np.arange(len(images) * 3, dtype=np.int64).reshape(-1, 3)
    with pytest.raises(ValueError, match=r"input 'image' must be laid out as the artifact takes it \(int8"):
        write_golden(artifact_file, target="arm-tflite", task="classification", io=io,
                     inputs={"image": images, "ids": ids}, artifact_outputs=artifact_outputs,
                     reference_outputs=reference, labels=None, budget=BUDGET)
    laid_out = artifact_inputs({"image": images, "ids": ids}, io["inputs"])
    assert laid_out["image"].shape == (len(images), 8, 8, 1) and laid_out["ids"].dtype == np.int32
    np.testing.assert_array_equal(laid_out["image"], quantize(images.transpose(0, 2, 3, 1), 0.0039, -128, np.int8))
    write_golden(artifact_file, target="arm-tflite", task="classification", io=io, inputs=laid_out,
                 artifact_outputs=artifact_outputs, reference_outputs=reference, labels=None, budget=BUDGET)
    assert read_golden(artifact_file).inputs["image"].dtype == np.int8


def test_a_bound_the_host_missed_on_the_golden_rows_is_checked_against_the_host(artifact_file):
    images, reference, artifact_outputs, labels = classifier_data()
    labels = reference.argmax(axis=1)
    artifact_outputs = reference.copy()
    artifact_outputs[3] = np.roll(artifact_outputs[3], 1)  # one flipped row of 256: 0.39 points > 0.3
    write_golden(artifact_file, target="x86", task="classification", io=IMAGE_IO, inputs={"image": images},
                 artifact_outputs=artifact_outputs, reference_outputs=reference, labels=labels, budget=BUDGET)
    info = read_golden(artifact_file).info
    drop = next(entry for entry in info["budget"] if entry["metric"] == "accuracy_drop")
    assert not drop["host_passed"] and drop["host_value"] == pytest.approx(100 / 256)
    same = device_script.budget_checks({"accuracy_drop": 100 / 256, "top1_agreement": 255 / 256}, info)
    assert all(check["passed"] for check in same) and "no worse than the host" in same[0]["note"]
    worse = device_script.budget_checks({"accuracy_drop": 200 / 256, "top1_agreement": 1.0}, info)
    assert [check["passed"] for check in worse] == [False, True]
    strict = device_script.budget_checks({"accuracy_drop": 0.0, "top1_agreement": 0.98}, info)
    assert [check["passed"] for check in strict] == [True, False] and strict[1]["note"] is None


def test_bounds_the_device_cannot_measure_are_listed(tmp_path):
    artifact = tmp_path / "model.int8.onnx"
    artifact.write_bytes(b"x")
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 50, 300)
    reference = rng.normal(size=300).astype(np.float32)
    clicks = (rng.random(300) < 1 / (1 + np.exp(-reference))).astype(np.int64)
    io = {"inputs": [{"name": "user_id", "dtype": "int64", "shape": ["batch"]}], "outputs": [{"name": "output"}]}
    budget = {"max_auc_drop": 0.003, "max_ndcg_relative_drop": 0.01, "max_calibration_shift": 0.01,
              "segments": True, "disabled": False}
    write_golden(artifact, target="x86", task="ctr", io=io, inputs={"user_id": ids}, artifact_outputs=reference + 0.01,
                 reference_outputs=reference, labels=clicks, budget=budget)
    info = read_golden(artifact).info
    assert [entry["metric"] for entry in info["budget"]] == ["auc_drop", "calibration_shift_abs"]
    assert [entry["bound"] for entry in info["budget_not_checked"]] == ["max_ndcg_relative_drop", "segments"]
    assert set(info["metrics"]) <= set(device_script.DEVICE_METRICS["ctr"]) and info["metrics"]["auc_drop"] == 0.0
    write_golden(artifact, target="x86", task="ctr", io=io, inputs={"user_id": ids}, artifact_outputs=reference,
                 reference_outputs=reference, labels=clicks, budget={"disabled": True, "segments": True})
    assert read_golden(artifact).info["budget"] == []


def test_a_golden_file_that_does_not_match_its_arrays_is_refused(artifact_file):
    json_path, npz_path = write_classifier(artifact_file)
    info = json.loads(json_path.read_text())
    info["inputs"][0]["dtype"] = "int8"
    json_path.write_text(json.dumps(info))
    with pytest.raises(VerificationError, match="array 'input_0' should be int8"):
        read_golden(artifact_file)
    json_path.write_text("{not json")
    with pytest.raises(VerificationError, match="unreadable golden file"):
        read_golden(artifact_file)


def test_device_metrics_are_edgepack_metrics():
    rng = np.random.default_rng(3)
    reference = rng.normal(size=(500, 7))
    artifact = reference + rng.normal(scale=0.3, size=reference.shape)
    labels = rng.integers(0, 7, 500)
    assert device_script.classification_metrics(reference, artifact, labels) == \
        pytest.approx(classification_metrics(reference, artifact, labels))
    scores = np.round(rng.normal(size=500), 1)  # ties, as quantized scores have
    shifted = np.round(scores + rng.normal(scale=0.2, size=500), 1)
    for task, grades in (("ctr", rng.integers(0, 2, 500)), ("ranking", rng.integers(0, 4, 500))):
        ours = device_script.task_metrics(task, scores, shifted, grades)
        theirs = recommender_metrics(scores, shifted, grades, probabilistic=task == "ctr")
        theirs |= {"calibration_shift_abs": abs(theirs["calibration_shift"])} if task == "ctr" else {}
        assert set(ours) == set(device_script.DEVICE_METRICS[task])
        assert ours == pytest.approx({key: theirs[key] for key in ours}), task


@pytest.mark.parametrize("machine, text", [
    ("x86_64", "processor: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n"),
    ("aarch64", "processor: 0\nFeatures\t: fp asimd asimddp i8mm\nCPU part\t: 0xd0c\n"),
    ("x86_64", "")])
def test_device_isa_facts_are_edgepack_isa_facts(machine, text):
    facts = device_script.host_facts(text, machine)
    isa = parse_cpuinfo(text, machine)
    assert facts["isa"] == list(isa.features) and facts["cpu"] == isa.cpu and facts["machine"] == machine
    assert "ISA:" in device_script.host_line(facts)


def test_the_device_script_imports_only_the_standard_library_and_numpy():
    tree = ast.parse(open(device_script.__file__).read())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                 and node.module}
    # executorch needs torch tensors: torch is imported only when a .pte runs (importlib, in PteRuntime)
    assert imported - {"__future__", "numpy", "onnxruntime", "ai_edge_litert", "tflite_runtime", "executorch"} <= \
        {"argparse", "datetime", "hashlib", "importlib", "json", "math", "os", "platform", "sys", "time", "pathlib",
         "typing"}


# ---- the device report ---------------------------------------------------------------------------------

SHA = "a" * 64
MANIFEST_FILES = {"x86/model.int8.onnx": SHA, "reference/model.fp32.onnx": "b" * 64}


def device_report(tmp_path, **artifact_changes):
    """A report as verify_on_device.py writes it, with the artifact entry's fields replaced."""
    metrics = {"accuracy": 0.98, "reference_accuracy": 0.98, "accuracy_drop": 0.0, "top1_agreement": 1.0,
               "kl": 2e-5, "relative_l2": 0.01, "max_abs_error": 1.2, "samples": 256}
    checks = [{"kind": "budget", "metric": "accuracy_drop", "value": 0.0, "limit": 0.3, "bound": "max",
               "passed": True, "note": None},
              {"kind": "outputs", "metric": "max_abs_difference_vs_host", "value": 0.0, "limit": 0.6,
               "bound": "max", "passed": True, "note": None}]
    artifact = {"target": "x86", "file": "x86/model.int8.onnx", "sha256": SHA, "runtime": "onnxruntime",
                "runtime_version": "1.32.0", "execution_provider": "CPUExecutionProvider", "samples": 256,
                "status": "passed", "passed": True, "metrics": metrics, "checks": checks, "message": None,
                "seconds": 0.1} | artifact_changes
    report = {"kind": "edgepack-device-report", "schema_version": 1, "created_utc": "2026-11-30T12:00:00+00:00",
              "root": "/data/bundle", "exit_code": 0, "host": device_script.host_facts("", "aarch64"),
              "artifacts": [artifact]}
    path = tmp_path / "device.json"
    path.write_text(json.dumps(report))
    return path


def test_a_device_report_is_read_and_summarized(tmp_path):
    report = read_device_report(device_report(tmp_path), MANIFEST_FILES)
    assert report.verdict_exit_code == 0 and report.artifacts[0].metrics["samples"] == 256
    lines = summarize(report)
    assert lines[0].startswith("device report of 2026-11-30") and "(aarch64)" in lines[0]
    assert "x86/model.int8.onnx: passed on the device (onnxruntime 1.32.0" in lines[1]
    assert "accuracy 0.9800 (float 0.9800)" in lines[1] and lines[-1].startswith("device verdict: passed")


def test_a_failed_check_and_a_skipped_artifact_are_summarized(tmp_path):
    failing = {"kind": "budget", "metric": "accuracy_drop", "value": 0.8, "limit": 0.3, "bound": "max",
               "passed": False, "note": None}
    report = read_device_report(device_report(tmp_path, status="failed", passed=False, checks=[failing]),
                                MANIFEST_FILES)
    assert report.verdict_exit_code == 3 and "failed: accuracy_drop 0.8 > max 0.3" in summarize(report)[1]
    skipped = read_device_report(device_report(tmp_path, status="skipped", passed=None, metrics={}, checks=[],
                                               message="no ONNX runtime: pip install onnxruntime"), MANIFEST_FILES)
    assert skipped.verdict_exit_code == 1 and "pip install onnxruntime" in summarize(skipped)[1]


def test_a_report_of_another_file_is_refused(tmp_path):
    with pytest.raises(VerificationError, match=r"x86/model.int8.onnx on the device has sha256 cccccccccccc\.\.\., "
                                                r"the bundle's manifest records aaaaaaaaaaaa"):
        read_device_report(device_report(tmp_path, sha256="c" * 64), MANIFEST_FILES)
    with pytest.raises(VerificationError, match="reports x86/other.onnx, which this bundle does not list"):
        read_device_report(device_report(tmp_path, file="x86/other.onnx"), MANIFEST_FILES)


@pytest.mark.parametrize("text, message", [
    ('{"kind": "edgepack-device-report", ', "not a JSON device report: Expecting property name enclosed in double "
                                            "quotes at line 1 column 36"),
    ('{"kind": "something-else"}', "not a device report of verify_on_device.py"),
    ('{"kind": "edgepack-device-report", "schema_version": 7}', "schema_version 7 is not supported"),
])
def test_a_bad_report_is_one_line(tmp_path, text, message):
    path = tmp_path / "device.json"
    path.write_text(text)
    with pytest.raises(VerificationError) as caught:
        read_device_report(path, MANIFEST_FILES)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_malformed_report_names_the_field(tmp_path):
    with pytest.raises(VerificationError, match=r"malformed device report: artifacts\.0\.status: Input should be"):
        read_device_report(device_report(tmp_path, status="fine"), MANIFEST_FILES)
    with pytest.raises(VerificationError, match="cannot read the device report"):
        read_device_report(tmp_path / "absent.json", MANIFEST_FILES)


def test_nan_metrics_are_written_as_null():
    assert device_script.json_ready({"auc": math.nan, "rows": [1.0, math.inf]}) == {"auc": None, "rows": [1.0, None]}
