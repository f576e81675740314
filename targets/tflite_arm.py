"""Target `arm-tflite`: full-integer INT8 TFLite (LiteRT) for ARM CPUs, built by litert-torch's PT2E path.

No TensorFlow is involved: the float torch module is exported, annotated by litert-torch's
`PT2EQuantizer` (symmetric int8, per-channel weights), calibrated on the recipe's calibration set,
converted by torchao's `convert_pt2e` and lowered to a .tflite flatbuffer by `litert_torch.convert`.

The converted graph has a fixed batch (`batch`, 1 by default): litert-torch could not lower `flatten`
with a dynamic batch dimension (jax bridge: "Shapes must be 1D sequences of concrete values"), and
resizing the input of the fixed-shape model fails inside the XNNPACK delegate. Batch 1 is the usual
shape of a phone image model; a recommender scoring candidates wants a larger fixed batch. The
runner feeds chunks of the artifact's batch, padding the last one.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import time
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgepack.errors import EdgepackError, ExportError, MissingDependencyError
from edgepack.runners import X86_BUILD_OF_ARM_KERNELS
from edgepack.targets.base import Artifact, ExportContext, Target
from edgepack.tflite_tables import quantize_tflite_tables, write_tflite

FLOAT_DTYPES = ("float32", "float16", "float64")


class TfliteOptions(BaseModel):
    """Options under `target_options.arm-tflite` in the recipe."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    float_io: bool = False  # float32 inputs/outputs, with QUANTIZE/DEQUANTIZE ops added at the boundary
    nhwc: bool = False  # channel-last I/O for 4-D (image) inputs, as Android camera pipelines deliver
    batch: int = Field(1, ge=1, le=4096)  # the artifact's fixed batch; a recommender scoring candidates wants > 1


# ---------------------------------------------------------------- PT2E helpers (shared with arm-xnnpack)

@lru_cache(maxsize=1)
def _percentile_observer_class():
    """A HistogramObserver whose range is the p-th percentile of |x| instead of its L2-error search.

    Built lazily so this module imports without torchao (check_available must be able to name the extra).
    """
    import torch
    from torchao.quantization.pt2e.observer import HistogramObserver

    class PercentileObserver(HistogramObserver):
        def __init__(self, percentile: float = 99.999, **kwargs):
            super().__init__(**kwargs)
            self.percentile = percentile

        def _non_linear_param_search(self):
            # Bin centres of the value histogram, weighted by counts, give the distribution of |x|.
            edges = torch.linspace(float(self.min_val), float(self.max_val), self.bins + 1)
            centres = ((edges[:-1] + edges[1:]) / 2).abs()
            order = torch.argsort(centres)
            cumulative = torch.cumsum(self.histogram[order], 0)
            total = float(cumulative[-1]) if len(cumulative) else 0.0
            if total <= 0:
                return self.min_val, self.max_val
            index = int(torch.searchsorted(cumulative, torch.tensor(total * self.percentile / 100.0)))
            threshold = float(centres[order][min(index, len(order) - 1)])
            low = torch.clamp(self.min_val, min=-threshold)
            high = torch.clamp(self.max_val, max=threshold)
            return low, high

    return PercentileObserver


def activation_observer(method):
    """Observer constructor honouring the recipe's calibration method (minmax or percentile)."""
    from torchao.quantization.pt2e.observer import MinMaxObserver

    if method.name == "minmax":
        return MinMaxObserver.with_args(eps=2**-12)
    if method.name == "percentile":
        return _percentile_observer_class().with_args(percentile=method.percentile, eps=2**-12)
    raise ExportError(f"calibration method '{method.name}' is not available for PT2E targets")


def with_activation_observer(config, method):
    """A copy of a PT2E QuantizationConfig whose activation observers follow `method`.

    Both quantizers default to torchao's HistogramObserver, which picks an L2-optimal range: that
    is neither MinMax nor Percentile, so the recipe's method would silently not be honoured.
    """
    import dataclasses

    observer = activation_observer(method)
    replace = {}
    for field in ("input_activation", "output_activation"):
        spec = getattr(config, field)
        if spec is not None:
            replace[field] = dataclasses.replace(spec, observer_or_fake_quant_ctr=observer)
    return dataclasses.replace(config, **replace)


def calibrated_pt2e(module, example: tuple, calibration, quantizer, *, fold_quantize: bool):
    """Export `module` with a dynamic batch, insert observers, run the calibration set, convert.

    Calibration batches come in the set's batch size, hence the dynamic batch dimension here
    even when the final artifact has a fixed batch.
    """
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    batch = torch.export.Dim("batch", min=1, max=65536)
    dynamic = tuple({0: batch} for _ in example)
    graph = torch.export.export(module.eval(), example, dynamic_shapes=dynamic).module()
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for feeds in calibration.batches():
            prepared(*(torch.from_numpy(array) for array in feeds.values()))
    # litert-torch's converter wants explicit weight Q/DQ (fold_quantize=False); ExecuTorch wants them
    # folded (it has no out-variant for quantize_per_channel and fails to_executorch otherwise).
    return convert_pt2e(prepared, fold_quantize=fold_quantize)


def example_batch(calibration, names: list[str], size: int) -> tuple:
    """The first `size` calibration samples as torch tensors, in input order (repeated if the set is smaller)."""
    from edgepack.prune import as_tensors

    rows = np.resize(np.arange(calibration.num_samples), size)
    return as_tensors({name: calibration.arrays[name][rows] for name in names}, names)


# ---------------------------------------------------------------- the target

def named_io_module(inner, names: list[str], nhwc_inputs: list[bool]):
    """The module litert-torch converts: keyword inputs, so the TFLite signature carries the recipe's
    input names (not args_0), and optional channel-last image inputs."""
    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner

        def forward(self, **feeds):
            return self.inner(*(feeds[name].permute(0, 3, 1, 2) if channel_last else feeds[name]
                                for name, channel_last in zip(names, nhwc_inputs)))

    wrapped = Wrapped()
    # Not .eval(): exported PT2E graphs refuse train()/eval(); the inner graph is already inference-only.
    wrapped.training = False
    return wrapped


def add_float_io(path: Path) -> None:
    """Rewrite a full-integer .tflite to float32 I/O: a QUANTIZE op after each int8 input and a
    DEQUANTIZE op before each int8 output.

    litert-torch 0.10 always folds the boundary Q/DQ into int8 I/O and has no flag against it (a
    float op placed in front of the model was quantized too), so the boundary ops are added here.
    """
    from ai_edge_litert import schema_py_generated as fb

    model = fb.ModelT.InitFromPackedBuf(path.read_bytes(), 0)
    graph = model.subgraphs[0]

    def opcode(code: int) -> int:
        for index, existing in enumerate(model.operatorCodes):
            if max(existing.builtinCode, existing.deprecatedBuiltinCode) == code:
                return index
        new = fb.OperatorCodeT()
        new.builtinCode, new.deprecatedBuiltinCode, new.version = code, code, 1
        model.operatorCodes.append(new)
        return len(model.operatorCodes) - 1

    def float_twin(index: int) -> int:
        original = graph.tensors[index]
        twin = fb.TensorT()
        twin.shape, twin.shapeSignature = original.shape, original.shapeSignature
        twin.type, twin.name = fb.TensorType.FLOAT32, original.name
        original.name = (original.name or b"") + b"_int8"
        model.buffers.append(fb.BufferT())
        twin.buffer = len(model.buffers) - 1
        graph.tensors.append(twin)
        return len(graph.tensors) - 1

    def boundary_op(code: int, source: int, target: int):
        op = fb.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = opcode(code), [source], [target]
        return op

    remap: dict[int, int] = {}
    graph.inputs, graph.outputs = [int(i) for i in graph.inputs], [int(i) for i in graph.outputs]  # numpy views are read-only
    for position, index in enumerate(graph.inputs):
        if graph.tensors[index].type == fb.TensorType.INT8:
            remap[index] = float_twin(index)
            graph.operators.insert(0, boundary_op(fb.BuiltinOperator.QUANTIZE, remap[index], index))
            graph.inputs[position] = remap[index]
    for position, index in enumerate(graph.outputs):
        if graph.tensors[index].type == fb.TensorType.INT8:
            remap[index] = float_twin(index)
            graph.operators.append(boundary_op(fb.BuiltinOperator.DEQUANTIZE, index, remap[index]))
            graph.outputs[position] = remap[index]
    for signature in model.signatureDefs or []:
        for entry in list(signature.inputs or []) + list(signature.outputs or []):
            entry.tensorIndex = remap.get(entry.tensorIndex, entry.tensorIndex)
    write_tflite(model, path)


class TfliteArmTarget(Target):
    """Full-integer INT8 .tflite (int8 I/O by default) for the LiteRT interpreter on ARM CPUs."""

    name = "arm-tflite"
    description = "TFLite full-integer INT8 (litert-torch PT2E) for LiteRT on ARM CPUs"
    extra = "arm"
    required_modules = ("litert_torch", "ai_edge_litert", "torchao")
    # Percentile through a histogram observer; no KL-entropy observer exists in torchao's PT2E.
    calibration_methods = frozenset({"minmax", "percentile"})
    Options = TfliteOptions

    def export(self, context: ExportContext) -> list[Artifact]:
        """Quantize the float torch module with PT2E on the calibration set and write model.int8.tflite."""
        if context.module is None:
            raise ExportError("target 'arm-tflite' needs a PyTorch model (model.factory or model.pickle); "
                              "it cannot start from an ONNX file")
        import litert_torch
        from litert_torch.quantize import pt2e_quantizer, quant_config

        options: TfliteOptions = context.options
        names = [spec.name for spec in context.inputs]
        started = time.perf_counter()
        config = with_activation_observer(pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True),
                                          context.method)
        quantizer = pt2e_quantizer.PT2EQuantizer().set_global(config)
        calibration_size = min(context.calibration.batch_size, context.calibration.num_samples)
        quantized = calibrated_pt2e(context.module, example_batch(context.calibration, names, calibration_size),
                                    context.calibration, quantizer, fold_quantize=False)
        nhwc_inputs = [options.nhwc and len(spec.shape) == 4 for spec in context.inputs]
        wrapped = named_io_module(quantized, names, nhwc_inputs)
        sample = {name: tensor.permute(0, 2, 3, 1).contiguous() if channel_last else tensor
                  for name, tensor, channel_last in zip(names, example_batch(context.calibration, names, options.batch),
                                                        nhwc_inputs)}
        path = context.out_dir / "model.int8.tflite"
        try:
            edge = litert_torch.convert(wrapped, sample_kwargs=sample,
                                        quant_config=quant_config.QuantConfig(pt2e_quantizer=quantizer))
            edge.export(str(path))
        except Exception as exc:  # the converter raises jax/MLIR errors of many types
            raise ExportError(f"litert-torch could not convert the quantized model: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
        parameters = {name: value.detach().cpu().numpy() for name, value in context.module.state_dict().items()
                      if value.ndim == 2}
        tables = quantize_tflite_tables(path, bits=context.quantization.embedding_bits, parameters=parameters)
        if options.float_io:
            add_float_io(path)
        seconds = time.perf_counter() - started
        runtime_name, version = runtime_info()
        details = describe_tflite(path)
        for entry, channel_last in zip(details["inputs"], nhwc_inputs):
            entry["layout"] = "NHWC" if channel_last else "as exported (NCHW for images)"
        details.update(layout="NHWC image I/O" if any(nhwc_inputs) else "as exported (NCHW for images)",
                       float_io=options.float_io,
                       batch=f"fixed batch {options.batch} (the runner feeds chunks of {options.batch}, padding the last)",
                       calibration_method=context.method.model_dump(), conversion_seconds=round(seconds, 1),
                       quantizer="litert-torch PT2EQuantizer, symmetric int8, per-channel weights",
                       embedding_tables=tables)
        if tables:
            details["embedding_lookup"] = ("hybrid EMBEDDING_LOOKUP (int8/int4 table, float rows out); per-row "
                                           "scales make it op version 4, which the phone's LiteRT must register")
        return [Artifact(target=self.name, path=path, format="tflite",
                         precision="int8-float-io" if options.float_io else "int8-full-integer",
                         runtime=runtime_name, runtime_version=version, details=details)]

    def runner(self, path: Path, *, threads: int) -> "TfliteRunner":
        """LiteRT interpreter (ai-edge-litert, else tflite-runtime) with float I/O around int8 tensors."""
        return TfliteRunner(path, threads=threads)


# ---------------------------------------------------------------- runtime

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


# ---------------------------------------------------------------- inspection

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
