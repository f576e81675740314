"""Running a .tflite artifact: ai-edge-litert's interpreter (or tflite-runtime), numpy in and out,
int8 I/O quantized with each tensor's (scale, zero point), fixed batches fed in padded chunks."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from edgepack.bundle.buckets import route
from edgepack.errors import EdgepackError, MissingDependencyError
from edgepack.evaluation.runners import X86_BUILD_OF_ARM_KERNELS
from edgepack.text.spec import ATTENTION_MASK

FLOAT_DTYPES = ("float32", "float16", "float64")


def runtime_info() -> tuple[str, str]:
    """(package, version) of the TFLite interpreter that will be used."""
    for package, module in (("ai-edge-litert", "ai_edge_litert"), ("tflite-runtime", "tflite_runtime")):
        if importlib.util.find_spec(module) is not None:
            return package, importlib.metadata.version(package)
    return "none", "none"


def interpreter_class():
    """ai-edge-litert's Interpreter, else tflite-runtime's; a clear error when neither can run."""
    if importlib.util.find_spec("ai_edge_litert") is not None:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    if importlib.util.find_spec("tflite_runtime") is not None:
        # tflite-runtime 2.14 (its last release) imports under numpy 2 but crashes creating an Interpreter.
        if int(np.__version__.split(".")[0]) >= 2:
            raise EdgepackError(f"tflite-runtime needs numpy<2 (installed: numpy {np.__version__}); install "
                                "ai-edge-litert instead (pip install 'edgepack[arm]') or pin numpy<2")
        from tflite_runtime.interpreter import Interpreter

        return Interpreter
    raise MissingDependencyError("running TFLite models", "ai_edge_litert", "arm")


def quantize(values: np.ndarray, scale: float, zero_point: int, dtype) -> np.ndarray:
    """Float -> integer with a tensor's (scale, zero_point), rounding to nearest and saturating."""
    info = np.iinfo(dtype)
    return np.clip(np.round(values / scale) + zero_point, info.min, info.max).astype(dtype)


def dequantize(values: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Integer -> float32 with a tensor's (scale, zero_point)."""
    return ((values.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)).astype(np.float32)


class TfliteRunner:
    """Runs a .tflite through the signature's named tensors in chunks of the artifact's fixed batch.

    Feeds come in the recipe's layout (NCHW for images); an NHWC artifact gets them transposed.
    Feeds already in the artifact's own layout are passed as they are.
    """

    def __init__(self, path: Path, *, threads: int):
        self.interpreter = interpreter_class()(model_path=str(path), num_threads=threads)
        self.interpreter.allocate_tensors()
        signature = self.interpreter.get_signature_list()
        key = next(iter(signature))
        runner = self.interpreter.get_signature_runner(key)
        self._inputs = runner.get_input_details()
        self._outputs = runner.get_output_details()
        self._runner = runner
        self.input_names = list(signature[key]["inputs"])
        self.input_shapes = {name: tuple(int(d) for d in detail["shape"]) for name, detail in self._inputs.items()}
        self.fixed_batch = int(next(iter(self._inputs.values()))["shape"][0])
        self.output_names = list(signature[key]["outputs"])
        self.device = "LiteRT interpreter, XNNPACK CPU kernels (x86 emulation of ARM kernels)"
        self.arithmetic = X86_BUILD_OF_ARM_KERNELS
        if self.fixed_batch > 1:
            self.device += f", fixed batch {self.fixed_batch} (smaller batches padded)"

    def _prepare(self, name: str, value: np.ndarray) -> np.ndarray:
        detail = self._inputs[name]
        wanted = tuple(int(d) for d in detail["shape"])
        if value.shape != wanted and value.ndim == 4 and value.transpose(0, 2, 3, 1).shape == wanted:
            value = value.transpose(0, 2, 3, 1)
        dtype = np.dtype(detail["dtype"])
        scale, zero_point = detail["quantization"]
        if dtype.kind == "i" and np.issubdtype(value.dtype, np.floating) and scale:
            return quantize(value, scale, zero_point, dtype)
        return np.ascontiguousarray(value.astype(dtype, copy=False))  # int64 indices -> int32, float as is

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        count = len(next(iter(feeds.values())))
        results: list[list[np.ndarray]] = [[] for _ in self.output_names]
        for start in range(0, count, self.fixed_batch):
            rows = np.arange(start, min(start + self.fixed_batch, count))
            padded = np.resize(rows, self.fixed_batch)  # the last chunk repeats its rows up to the fixed batch
            sample = {name: self._prepare(name, feeds[name][padded]) for name in self.input_names}
            out = self._runner(**sample)
            for position, name in enumerate(self.output_names):
                results[position].append(out[name][:len(rows)])
        outputs = []
        for name, parts in zip(self.output_names, results):
            value = np.concatenate(parts)
            scale, zero_point = self._outputs[name]["quantization"]
            outputs.append(dequantize(value, scale, zero_point) if value.dtype.kind in "iu" and scale
                           else value.astype(np.float32))
        return outputs


class BucketedTfliteRunner:
    """Runs a bucketed model set (edgepack.bundle.buckets): each row on the shortest model that holds its
    tokens, its 2-D inputs cut to that model's length; outputs come back in the rows' order.

    `routed_rows` counts, per length, the rows run so far."""

    def __init__(self, files: dict[int, Path], *, threads: int):
        self.lengths = sorted(files)
        self.runners = {length: TfliteRunner(files[length], threads=threads) for length in self.lengths}
        longest = self.runners[self.lengths[-1]]
        self.input_names, self.output_names = longest.input_names, longest.output_names
        self.fixed_batch, self.arithmetic = longest.fixed_batch, longest.arithmetic
        self.device = (f"{longest.device}; sequence buckets {'/'.join(map(str, self.lengths))}, each row on the "
                       "shortest that holds its tokens")
        self.routed_rows: Counter[int] = Counter()

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        chosen = route(feeds[ATTENTION_MASK], self.lengths)
        outputs: list[np.ndarray] = []
        for length in self.lengths:
            rows = np.flatnonzero(chosen == length)
            if not rows.size:
                continue
            runner = self.runners[length]
            part = runner({name: _cut(feeds[name][rows], runner.input_shapes[name]) for name in self.input_names})
            if not outputs:
                outputs = [np.empty((len(chosen), *value.shape[1:]), dtype=value.dtype) for value in part]
            for whole, value in zip(outputs, part):
                whole[rows] = value
            self.routed_rows[length] += int(rows.size)
        return outputs


def _cut(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A [rows, max_length] input cut to a shorter model's [batch, length]; other inputs as they are."""
    return value[:, :shape[1]] if value.ndim == 2 == len(shape) and value.shape[1] > shape[1] else value


def _io_entry(name: str, detail: dict) -> dict[str, Any]:
    scale, zero_point = detail["quantization"]
    entry = {"name": name, "shape": [int(d) for d in detail["shape"]], "dtype": np.dtype(detail["dtype"]).name}
    if scale:
        entry["quantization"] = {"scale": float(scale), "zero_point": int(zero_point)}
    return entry


def describe_tflite(path: Path) -> dict[str, Any]:
    """I/O with quantization, op counts by builtin name, tensor dtypes, and every tensor left in float."""
    interpreter = interpreter_class()(model_path=str(path))
    try:  # private API of both interpreters; read before allocate_tensors, which folds ops into a DELEGATE node
        ops = interpreter._get_ops_details()
    except AttributeError:
        ops = []
    interpreter.allocate_tensors()
    signature = interpreter.get_signature_list()
    key = next(iter(signature))
    runner = interpreter.get_signature_runner(key)
    inputs = [_io_entry(name, detail) for name, detail in runner.get_input_details().items()]
    outputs = [_io_entry(name, detail) for name, detail in runner.get_output_details().items()]
    io_index = {d["index"]: "input" for d in interpreter.get_input_details()}
    io_index.update({d["index"]: "output" for d in interpreter.get_output_details()})
    produced = {int(i) for op in ops for i in op["outputs"]}
    tensors = interpreter.get_tensor_details()
    floats = []
    for tensor in tensors:
        dtype = np.dtype(tensor["dtype"]).name
        if dtype not in FLOAT_DTYPES:
            continue
        role = io_index.get(tensor["index"]) or ("activation" if tensor["index"] in produced else "constant")
        shape = [int(d) for d in tensor["shape"]]
        floats.append({"name": tensor["name"], "dtype": dtype, "shape": shape, "role": role,
                       "bytes": int(np.prod(shape or [1])) * np.dtype(dtype).itemsize})
    return {"inputs": inputs, "outputs": outputs,
            "op_counts": dict(sorted(Counter(op["op_name"] for op in ops).items())),
            "tensor_dtypes": dict(sorted(Counter(np.dtype(t["dtype"]).name for t in tensors).items())),
            "float_tensors": floats, "float_tensor_bytes": sum(entry["bytes"] for entry in floats),
            "float_tensor_bytes_excluding_io": sum(e["bytes"] for e in floats if e["role"] not in ("input", "output"))}
