#!/usr/bin/env python3
"""Re-check an edgepack bundle on the device itself, with numpy and the artifact's runtime alone.

    python verify_on_device.py BUNDLE_OR_TARGET_DIR [--target NAME] [--json OUT.json] [--threads N]

Every artifact with golden files beside it (`<stem>.golden.json` and `<stem>.golden.npz`, written at
packing time) whose runtime is installed here is checked: its sha256 against golden.json (and, in a
bundle, against manifest.json); the golden inputs run in the artifact's runtime (fixed batches in
padded chunks); edgepack's drift metrics against the float model's recorded outputs; the budget
recorded at packing time; and the raw outputs against the packing host's, within a tolerance.

Runtimes: onnxruntime for .onnx, ai-edge-litert (or tflite-runtime) for .tflite, executorch for .pte.
ExecuTorch's Python API takes torch tensors, so torch is imported for .pte files only. This file
imports nothing from edgepack: it is copied into bundles and run where edgepack is not installed.

Exit codes: 0 every artifact that ran passed; 3 drift over budget or outputs off the host's; 1 an
error (checksum mismatch, unreadable golden files), or nothing could run.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib
import importlib.metadata
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

GOLDEN_KIND, GOLDEN_VERSION = "edgepack-golden", 1
REPORT_KIND, REPORT_VERSION = "edgepack-device-report", 1
GOLDEN_JSON, GOLDEN_NPZ = ".golden.json", ".golden.npz"
EXIT_OK, EXIT_ERROR, EXIT_DRIFT = 0, 1, 3
# The metrics this script computes per task; budget bounds on any other metric are not checked here.
DEVICE_METRICS = {
    "classification": ("accuracy", "reference_accuracy", "accuracy_drop", "top1_agreement", "kl", "relative_l2",
                       "max_abs_error", "samples"),
    "ctr": ("auc", "reference_auc", "auc_drop", "logloss", "reference_logloss", "logloss_increase",
            "mean_predicted", "reference_mean_predicted", "calibration_shift", "calibration_shift_abs", "spearman",
            "max_abs_error", "samples"),
    "ranking": ("auc", "reference_auc", "auc_drop", "spearman", "max_abs_error", "samples"),
}
# /proc/cpuinfo flag -> reported name, as edgepack records them (edgepack/isa.py).
X86_FEATURES = {"avx2": "AVX2", "avx512f": "AVX-512F", "avx512_vnni": "AVX512-VNNI", "avx_vnni": "AVX-VNNI",
                "amx_int8": "AMX-INT8"}
ARM_FEATURES = {"asimddp": "DOTPROD", "i8mm": "I8MM", "sve": "SVE", "sve2": "SVE2"}
ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
             "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
             "tensor(bool)": "bool"}
ET_TYPES = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64", 5: "float16", 6: "float32", 7: "float64",
            11: "bool"}
EPS = 1e-12


class SkipArtifact(Exception):
    """The artifact's runtime is not installed here; the message names the pip package."""


class ArtifactError(Exception):
    """The artifact or its golden files cannot be trusted or run."""


# ---- host facts -------------------------------------------------------------------------------------

def host_facts(cpuinfo: str | None = None, machine: str | None = None) -> dict:
    """CPU model, machine and the ISA features that decide which integer kernels run (as edgepack records)."""
    machine = machine or platform.machine()
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    cpu, flags = "", set[str]()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not cpu:
            cpu = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    table = ARM_FEATURES if machine.lower() in ("aarch64", "arm64") else X86_FEATURES
    return {"cpu": cpu or platform.processor() or "unknown CPU", "machine": machine,
            "isa": [name for flag, name in table.items() if flag in flags], "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(), "numpy": np.__version__}


def host_line(host: dict) -> str:
    """One line naming the device: CPU, machine, ISA features, Python and numpy."""
    return (f"host: {host['cpu']} ({host['machine']}), ISA: {' '.join(host['isa']) or 'none of the tracked features'}"
            f"; {host['platform']}, python {host['python']}, numpy {host['numpy']}")


# ---- metrics (the definitions of edgepack/evaluation/drift.py and rec_metrics.py) --------------------

def _softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def classification_metrics(reference: np.ndarray, artifact: np.ndarray, labels: np.ndarray | None) -> dict:
    """Top-1 agreement, logit errors, mean KL(float || artifact) and, with labels, accuracy and its drop in points."""
    ref_top1, art_top1 = reference.argmax(axis=1), artifact.argmax(axis=1)
    p, q = _softmax(reference), _softmax(artifact)
    metrics = {"top1_agreement": float((ref_top1 == art_top1).mean()),
               "max_abs_error": float(np.abs(reference - artifact).max()),
               "relative_l2": float(np.linalg.norm(reference - artifact) / max(float(np.linalg.norm(reference)), EPS)),
               "kl": float(np.mean(np.sum(p * (np.log(p + EPS) - np.log(q + EPS)), axis=1))),
               "samples": int(len(reference))}
    if labels is not None:
        metrics["reference_accuracy"] = float((ref_top1 == labels).mean())
        metrics["accuracy"] = float((art_top1 == labels).mean())
        metrics["accuracy_drop"] = 100.0 * (metrics["reference_accuracy"] - metrics["accuracy"])
    return metrics


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    boundaries = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
    starts, ends = np.r_[0, boundaries], np.r_[boundaries, len(values)]
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def auc(relevant: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank formula (ties averaged); NaN with one class or a NaN score."""
    positives = int(relevant.sum())
    negatives = len(relevant) - positives
    if positives == 0 or negatives == 0 or np.isnan(scores).any():
        return math.nan
    rank_sum = float(_average_ranks(scores)[relevant].sum())
    return (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (ties averaged); NaN when either is constant or has a NaN."""
    if len(a) < 2 or np.isnan(a).any() or np.isnan(b).any():
        return math.nan
    ra, rb = _average_ranks(a), _average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum()) / denominator if denominator > 0 else math.nan


def _click_metrics(labels: np.ndarray, logits: np.ndarray) -> tuple[float, float]:
    """Logloss (probabilities clipped to [1e-7, 1 - 1e-7]) and mean predicted probability of click logits."""
    z = np.exp(-np.abs(logits))
    p = np.where(logits >= 0, 1.0 / (1.0 + z), z / (1.0 + z))
    clipped = np.clip(p, 1e-7, 1.0 - 1e-7)
    return float(np.mean(-(labels * np.log(clipped) + (1.0 - labels) * np.log(1.0 - clipped)))), float(p.mean())


def recommender_metrics(reference: np.ndarray, artifact: np.ndarray, labels: np.ndarray, task: str) -> dict:
    """AUC of both against the labels (relevant = label > 0) and its drop, Spearman, max error; ctr: logloss and
    calibration too. Per-group (NDCG, HR, recall, top-K) and per-segment metrics are not computed here."""
    reference, artifact = reference.reshape(len(reference), -1)[:, 0], artifact.reshape(len(artifact), -1)[:, 0]
    labels = labels.astype(np.float64)
    metrics = {"auc": auc(labels > 0, artifact), "reference_auc": auc(labels > 0, reference)}
    metrics["auc_drop"] = metrics["reference_auc"] - metrics["auc"]
    if task == "ctr":
        metrics["logloss"], metrics["mean_predicted"] = _click_metrics(labels, artifact)
        metrics["reference_logloss"], metrics["reference_mean_predicted"] = _click_metrics(labels, reference)
        metrics["logloss_increase"] = metrics["logloss"] - metrics["reference_logloss"]
        metrics["calibration_shift"] = metrics["mean_predicted"] - metrics["reference_mean_predicted"]
        metrics["calibration_shift_abs"] = abs(metrics["calibration_shift"])
    metrics.update(spearman=spearman(reference, artifact), max_abs_error=float(np.abs(reference - artifact).max()),
                   samples=int(len(reference)))
    return metrics


def task_metrics(task: str, reference: np.ndarray, artifact: np.ndarray, labels: np.ndarray | None) -> dict:
    """The task's metrics of the artifact's outputs against the float model's, on the golden rows."""
    if task == "classification":
        return classification_metrics(reference, artifact, labels)
    if labels is None:
        raise ArtifactError(f"task '{task}' needs labels in the golden files")
    return recommender_metrics(reference, artifact, labels, task)


def describe_metrics(metrics: dict) -> str:
    """The headline metrics in one phrase, e.g. 'accuracy 0.9844 (float 0.9844), drop +0.00 pts, ...'."""
    def number(key: str, spec: str) -> str:
        value = metrics.get(key)
        return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)

    if "top1_agreement" in metrics:
        return (f"accuracy {number('accuracy', '.4f')} (float {number('reference_accuracy', '.4f')}), "
                f"drop {number('accuracy_drop', '+.2f')} pts, top-1 agree {number('top1_agreement', '.4f')}, "
                f"KL {number('kl', '.1e')}")
    extra = f", logloss +{number('logloss_increase', '.4f')}" if "logloss_increase" in metrics else ""
    return (f"AUC {number('auc', '.4f')} (float {number('reference_auc', '.4f')}), drop {number('auc_drop', '+.4f')}"
            f", Spearman {number('spearman', '.4f')}{extra}")


# ---- checks -------------------------------------------------------------------------------------------

def _within(value: float, limit: float, bound: str) -> bool:
    return value <= limit if bound == "max" else value >= limit  # NaN: False either way


def budget_checks(metrics: dict, golden: dict) -> list[dict]:
    """Each recorded bound against the device's metric. A bound the packing host itself missed on these rows
    (`host_passed` false: the golden rows are few, one flipped sample can exceed a budget set for the whole
    evaluation set) is checked as 'no worse than the host on the same rows' and says so."""
    checks = []
    for entry in golden["budget"]:
        value = float(metrics.get(entry["metric"], math.nan))
        limit, note = float(entry["limit"]), None
        passed = _within(value, limit, entry["direction"])
        if not entry["host_passed"]:
            host = float(entry["host_value"]) if entry["host_value"] is not None else math.nan
            note = (f"the packing host measured {host:.4g} on these {golden['samples']} rows, outside the budget: "
                    "checked as no worse than the host")
            passed = (math.isnan(value) and math.isnan(host)) or _within(value, host, entry["direction"])
        checks.append({"kind": "budget", "metric": entry["metric"], "value": value, "limit": limit,
                       "bound": entry["direction"], "passed": passed, "note": note})
    return checks


def output_check(device: np.ndarray, host: np.ndarray, tolerance: dict) -> dict:
    """The largest difference between the device's and the packing host's outputs, against the tolerance."""
    if device.shape != host.shape:
        raise ArtifactError(f"the artifact's output has shape {list(device.shape)}, the golden output "
                            f"{list(host.shape)}")
    difference = np.abs(device.astype(np.float64) - host.astype(np.float64))
    worst = float(np.nanmax(difference)) if difference.size else 0.0
    if np.isnan(difference).any():
        worst = math.nan
    over = int((~(difference <= tolerance["atol"])).sum())
    return {"kind": "outputs", "metric": "max_abs_difference_vs_host", "value": worst,
            "limit": float(tolerance["atol"]), "bound": "max", "passed": over == 0,
            "note": f"{over} of {difference.size} values over the tolerance" if over else None}


def describe_check(check: dict) -> str:
    """'accuracy_drop 0.78 > max 0.3' (with the note, if any)."""
    sign = {("max", True): "<=", ("max", False): ">", ("min", True): ">=", ("min", False): "<"}
    text = f"{check['metric']} {check['value']:.4g} {sign[(check['bound'], check['passed'])]} {check['bound']} " \
           f"{check['limit']:g}"
    return text + (f" ({check['note']})" if check.get("note") else "")


# ---- golden files and checksums -------------------------------------------------------------------------

def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


GOLDEN_KEYS = ("kind", "schema_version", "target", "artifact", "sha256", "task", "samples", "inputs", "outputs",
               "reference", "labels", "budget", "metrics")


def npz_path(golden_json: Path) -> Path:
    """STEM.golden.npz beside STEM.golden.json."""
    return golden_json.with_name(golden_json.name[:-len(GOLDEN_JSON)] + GOLDEN_NPZ)


def load_golden(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """golden.json and the arrays of its golden.npz, checked against each other; ArtifactError when malformed."""
    try:
        golden = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: unreadable golden file: {exc}") from exc
    if not isinstance(golden, dict) or golden.get("kind") != GOLDEN_KIND:
        raise ArtifactError(f"{path}: not an edgepack golden file (kind {GOLDEN_KIND!r} expected)")
    if golden.get("schema_version") != GOLDEN_VERSION:
        raise ArtifactError(f"{path}: golden schema_version {golden.get('schema_version')!r} is not supported "
                            f"(this script reads {GOLDEN_VERSION})")
    missing = [key for key in GOLDEN_KEYS if key not in golden]
    if missing:
        raise ArtifactError(f"{path}: golden file lacks {', '.join(missing)}")
    npz = npz_path(Path(path))
    try:
        with np.load(npz, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{npz}: unreadable golden arrays: {exc}") from exc
    entries = golden["inputs"] + golden["outputs"] + [golden["reference"]] + ([golden["labels"]] if golden["labels"]
                                                                              else [])
    for entry in entries:
        array = arrays.get(entry["key"])
        if array is None or str(array.dtype) != entry["dtype"] or list(array.shape) != entry["shape"]:
            found = "missing" if array is None else f"{array.dtype} {list(array.shape)}"
            raise ArtifactError(f"{npz}: array '{entry['key']}' should be {entry['dtype']} {entry['shape']}, "
                                f"found {found}")
    return golden, arrays


def manifest_checksums(bundle: Path | None) -> dict[str, str]:
    """path -> sha256 of every file the bundle's manifest.json vouches for (empty outside a bundle)."""
    if bundle is None:
        return {}
    found: dict[str, str] = {}

    def walk(node) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("path"), str) and isinstance(node.get("sha256"), str):
                found[node["path"]] = node["sha256"]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads((bundle / "manifest.json").read_text()))
    return found


# ---- runtimes -------------------------------------------------------------------------------------------

class Runtime:
    """One loaded artifact: input (name, dtype, shape), a fixed batch (None when dynamic), run -> first output."""

    name: str
    version: str
    provider: str
    inputs: list[tuple[str, str, list]]
    batch: int | None

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Run one chunk; the first output as float32."""
        raise NotImplementedError


class OrtRuntime(Runtime):
    """onnxruntime; for target 'cuda' the CUDA provider when present, else the CPU with Q/DQ kept unfused
    (fake-quant), as edgepack validates it without a GPU."""

    def __init__(self, path: Path, target: str, threads: int | None, host: dict):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise SkipArtifact("no ONNX runtime: pip install " + ("onnxruntime-gpu (onnxruntime for the CPU)"
                                                                  if target == "cuda" else "onnxruntime")) from exc
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        gpu = target == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers()
        if target == "cuda" and not gpu:
            options.add_session_config_entry("session.disable_quant_qdq", "1")
        providers = ["CUDAExecutionProvider"] if gpu else ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        needs = [name for name in self.session.get_modelmeta().custom_metadata_map.get(
            "edgepack.requires_isa", "").split("|") if name]
        if needs and not set(needs) & set(host["isa"]):
            raise ArtifactError(f"built for {' or '.join(needs)} (isa: vnni); this CPU has none, so its integer "
                                "kernels would saturate: run it on a VNNI host or re-pack with isa: portable")
        self.name, self.version = "onnxruntime", ort.__version__
        self.provider = self.session.get_providers()[0] + ("" if gpu or target != "cuda" else
                                                           " (no CUDA provider: Q/DQ unfused, as edgepack validates)")
        first = self.session.get_inputs()
        self.inputs = [(node.name, ORT_TYPES.get(node.type, node.type), list(node.shape)) for node in first]
        self.batch = first[0].shape[0] if first and isinstance(first[0].shape[0], int) else None

    def run(self, feeds):
        return np.asarray(self.session.run(None, feeds)[0], dtype=np.float32)


class TfliteRuntime(Runtime):
    """ai-edge-litert's interpreter (else tflite-runtime's) through the model's first signature; integer outputs
    are dequantized with the tensor's (scale, zero point)."""

    def __init__(self, path: Path, threads: int | None):
        try:
            from ai_edge_litert.interpreter import Interpreter
            self.name = "ai-edge-litert"
        except ImportError:
            try:
                from tflite_runtime.interpreter import Interpreter
            except ImportError as exc:
                raise SkipArtifact("no TFLite runtime: pip install ai-edge-litert") from exc
            if int(np.__version__.split(".")[0]) >= 2:  # tflite-runtime 2.14 crashes under numpy 2
                raise SkipArtifact(f"tflite-runtime needs numpy<2 (numpy {np.__version__} here): "
                                   "pip install ai-edge-litert")
            self.name = "tflite-runtime"
        self.version = importlib.metadata.version(self.name)
        self.interpreter = Interpreter(model_path=str(path), num_threads=threads or None)
        self.interpreter.allocate_tensors()
        signatures = self.interpreter.get_signature_list()
        key = next(iter(signatures))
        self.runner = self.interpreter.get_signature_runner(key)
        details = self.runner.get_input_details()
        self.inputs = [(name, np.dtype(item["dtype"]).name, [int(d) for d in item["shape"]])
                       for name, item in details.items()]
        self.batch = self.inputs[0][2][0] if self.inputs and self.inputs[0][2] else None
        self.output = signatures[key]["outputs"][0]
        self.quantization = self.runner.get_output_details()[self.output]["quantization"]
        self.provider = "LiteRT interpreter (CPU)"

    def run(self, feeds):
        value = np.asarray(self.runner(**feeds)[self.output])
        scale, zero_point = self.quantization
        if value.dtype.kind in "iu" and scale:
            return ((value.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)).astype(np.float32)
        return value.astype(np.float32)


class PteRuntime(Runtime):
    """executorch.runtime, `forward`; the batch edgepack planned for (a maximum) is fed in padded chunks."""

    def __init__(self, path: Path, golden_names: list[str]):
        try:
            importlib.import_module("executorch.kernels.quantized")  # per-row table kernels (embedding_byte)
            from executorch.runtime import Runtime as EtRuntime
            self.torch = importlib.import_module("torch")  # ExecuTorch's Python API takes torch tensors
        except ImportError as exc:
            raise SkipArtifact("no ExecuTorch runtime: pip install executorch") from exc
        self.name, self.version = "executorch", importlib.metadata.version("executorch")
        program = EtRuntime.get().load_program(Path(path))
        self.method = program.load_method("forward")
        meta = self.method.metadata
        names = golden_names
        if "edgepack_io" in program.method_names:  # the input names edgepack stored in the program
            blob = program.load_method("edgepack_io").execute([])[0]
            names = json.loads(bytes(blob.numpy().astype(np.uint8).tolist()).decode())["inputs"]
        self.inputs = []
        for index, name in enumerate(names):
            tensor = meta.input_tensor_meta(index)
            self.inputs.append((name, ET_TYPES.get(int(tensor.dtype()), str(tensor.dtype())), list(tensor.sizes())))
        self.batch = self.inputs[0][2][0] if self.inputs and self.inputs[0][2] else None
        self.provider = "ExecuTorch (XNNPACK delegate)"

    def run(self, feeds):
        tensors = [self.torch.from_numpy(np.ascontiguousarray(feeds[name])) for name, _, _ in self.inputs]
        return self.method.execute(tensors)[0].numpy().astype(np.float32)


def open_runtime(path: Path, golden: dict, threads: int | None, host: dict) -> Runtime:
    """The runtime for the artifact's file type; SkipArtifact when it is not installed."""
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return OrtRuntime(path, golden["target"], threads, host)
    if suffix == ".tflite":
        return TfliteRuntime(path, threads)
    if suffix == ".pte":
        return PteRuntime(path, [entry["name"] for entry in golden["inputs"]])
    raise SkipArtifact(f"no runtime known for '{suffix}' files")


def run_golden(runtime: Runtime, golden: dict, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Feed the golden inputs, checked against what the model takes, in chunks of its fixed batch (the last chunk
    padded by repeating its rows); returns the first output for the golden rows only."""
    feeds = {entry["name"]: arrays[entry["key"]] for entry in golden["inputs"]}
    for name, dtype, shape in runtime.inputs:
        if name not in feeds:
            raise ArtifactError(f"the model takes input '{name}', the golden files hold {', '.join(feeds)}")
        value = feeds[name]
        fixed = [dim if isinstance(dim, int) and dim >= 0 else None for dim in shape[1:]]
        if str(value.dtype) != dtype or len(fixed) != value.ndim - 1 or \
                any(dim is not None and dim != have for dim, have in zip(fixed, value.shape[1:])):
            raise ArtifactError(f"golden input '{name}' is {value.dtype} {list(value.shape)}, the model takes "
                                f"{dtype} {shape}")
    count = golden["samples"]
    chunk = runtime.batch if runtime.batch and runtime.batch > 0 else count
    parts = []
    for start in range(0, count, chunk):
        rows = np.arange(start, min(start + chunk, count))
        take = np.resize(rows, chunk)
        parts.append(runtime.run({name: np.ascontiguousarray(feeds[name][take]) for name, _, _ in runtime.inputs})
                     [:len(rows)])
    return np.concatenate(parts)


# ---- one artifact ----------------------------------------------------------------------------------------

def verify_artifact(golden_path: Path, bundle: Path | None, checksums: dict[str, str], threads: int | None,
                    host: dict) -> dict:
    """Check, run and measure one artifact; the report entry, whatever happened."""
    started = time.perf_counter()
    folder = golden_path.parent
    entry: dict[str, Any] = {
        "target": folder.name, "file": f"{folder.name}/{golden_path.name[:-len(GOLDEN_JSON)]}", "sha256": None,
        "runtime": None, "runtime_version": None, "execution_provider": None, "samples": None, "status": "error",
        "passed": None, "metrics": {}, "checks": [], "message": None, "seconds": None}
    try:
        golden, arrays = load_golden(golden_path)
        artifact = folder / golden["artifact"]
        name = str(artifact.relative_to(bundle)) if bundle is not None else f"{folder.name}/{artifact.name}"
        entry.update(target=golden["target"], file=name, samples=golden["samples"])
        if not artifact.is_file():
            raise ArtifactError(f"{artifact.name} is missing")
        entry["sha256"] = sha256_file(artifact)
        if entry["sha256"] != golden["sha256"]:
            raise ArtifactError(f"sha256 mismatch: the file is {entry['sha256'][:12]}..., golden.json records "
                                f"{golden['sha256'][:12]}...: the artifact changed since packing")
        if bundle is not None:
            _check_listed(bundle, [artifact, golden_path, npz_path(golden_path)], checksums)
        runtime = open_runtime(artifact, golden, threads, host)
        entry.update(runtime=runtime.name, runtime_version=runtime.version, execution_provider=runtime.provider)
        outputs = run_golden(runtime, golden, arrays)
        reference = arrays[golden["reference"]["key"]].astype(np.float64)
        labels = arrays[golden["labels"]["key"]] if golden["labels"] else None
        metrics = task_metrics(golden["task"], reference, outputs.astype(np.float64), labels)
        checks = budget_checks(metrics, golden) + [output_check(outputs, arrays[golden["outputs"][0]["key"]],
                                                                golden["outputs"][0]["tolerance"])]
        passed = all(check["passed"] for check in checks)
        entry.update(metrics=metrics, checks=checks, passed=passed, status="passed" if passed else "failed")
    except SkipArtifact as exc:
        entry.update(status="skipped", message=str(exc))
    except ArtifactError as exc:
        entry["message"] = str(exc)
    except Exception as exc:  # a runtime's own failure: report it and go on with the other artifacts
        entry["message"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    entry["seconds"] = round(time.perf_counter() - started, 3)
    return entry


def _check_listed(bundle: Path, paths: list[Path], checksums: dict[str, str]) -> None:
    """The artifact must be one the manifest lists with this checksum; golden files too, when it lists them."""
    for index, path in enumerate(paths):
        relative = str(path.relative_to(bundle))
        recorded = checksums.get(relative)
        if recorded is None and index == 0:
            raise ArtifactError(f"{relative} is not listed in the bundle's manifest.json")
        if recorded is not None and (not path.is_file() or sha256_file(path) != recorded):
            raise ArtifactError(f"{relative} does not match the sha256 in manifest.json: changed since packing")


def result_line(entry: dict) -> str:
    """One terminal line per artifact: verdict, file, runtime, samples, metrics, failed checks or the reason."""
    head = f"{entry['status'].upper():7} {entry['file']}"
    if entry["status"] in ("skipped", "error"):
        return f"{head}: {entry['message']}"
    outputs = next(check for check in entry["checks"] if check["kind"] == "outputs")
    line = (f"{head}  {entry['runtime']} {entry['runtime_version']} ({entry['execution_provider']}), "
            f"{entry['samples']} golden samples: {describe_metrics(entry['metrics'])}; outputs vs packing host "
            f"max {outputs['value']:.3g} (tolerance {outputs['limit']:.3g})")
    failed = [describe_check(check) for check in entry["checks"] if not check["passed"]]
    return line + (f"; FAILED: {'; '.join(failed)}" if failed else "")


def exit_code(entries: list[dict]) -> int:
    """1 on any error or when nothing ran, 3 when any artifact failed its checks, else 0."""
    statuses = {entry["status"] for entry in entries}
    if "error" in statuses or not statuses & {"passed", "failed"}:
        return EXIT_ERROR
    return EXIT_DRIFT if "failed" in statuses else EXIT_OK


def json_ready(value):
    """NaN and infinities as null: the report is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_ready(item) for item in value]
    return value


def find_golden(root: Path) -> list[Path]:
    """Golden files in `root` itself (a target folder) or else in its subfolders (a bundle)."""
    here = sorted(root.glob("*" + GOLDEN_JSON))
    return here or sorted(root.glob("*/*" + GOLDEN_JSON))


def main(argv: list[str] | None = None) -> int:
    """Verify every artifact with golden files under the given folder; print a line each; exit code as documented."""
    parser = argparse.ArgumentParser(description="Re-check an edgepack bundle's artifacts on this device.")
    parser.add_argument("folder", type=Path, help="a bundle, or one target folder of it")
    parser.add_argument("--target", action="append", help="only this target (repeatable)")
    parser.add_argument("--json", type=Path, help="also write a machine-readable report here")
    parser.add_argument("--threads", type=int, help="runtime threads (default: the runtime's own)")
    args = parser.parse_args(argv)
    root = args.folder.resolve()
    host = host_facts()
    print(host_line(host), flush=True)
    if not root.is_dir():
        print(f"error: {args.folder} is not a folder", file=sys.stderr)
        return EXIT_ERROR
    bundle = next((folder for folder in (root, root.parent) if (folder / "manifest.json").is_file()), None)
    try:
        checksums = manifest_checksums(bundle)
    except (OSError, ValueError) as exc:
        print(f"error: {bundle}/manifest.json is unreadable: {exc}", file=sys.stderr)
        return EXIT_ERROR
    goldens = [path for path in find_golden(root) if not args.target or path.parent.name in args.target]
    if not goldens:
        wanted = f" for target {', '.join(args.target)}" if args.target else ""
        print(f"error: no golden files (*{GOLDEN_JSON}){wanted} in {root} or its target folders", file=sys.stderr)
        return EXIT_ERROR
    entries = []
    for path in goldens:
        entries.append(verify_artifact(path, bundle, checksums, args.threads, host))
        print(result_line(entries[-1]), flush=True)
    code = exit_code(entries)
    counts = {status: sum(entry["status"] == status for entry in entries)
              for status in ("passed", "failed", "skipped", "error")}
    print(", ".join(f"{count} {status}" for status, count in counts.items()) + f" -> exit {code}")
    if args.json is not None:
        report = {"kind": REPORT_KIND, "schema_version": REPORT_VERSION,
                  "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "root": str(root), "exit_code": code, "host": host, "artifacts": entries}
        try:
            args.json.write_text(json.dumps(json_ready(report), indent=1, allow_nan=False) + "\n")
        except OSError as exc:
            print(f"error: cannot write {args.json}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_ERROR
    return code


if __name__ == "__main__":
    sys.exit(main())
