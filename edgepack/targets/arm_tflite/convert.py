"""One PT2E quantization and litert-torch conversion to a .tflite, and the bucketed model set of a text
model built from it: the same conversion at each shorter sequence length."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, cast

from edgepack.bundle.buckets import SequenceBucket, SequenceBuckets
from edgepack.bundle.files import sha256_file
from edgepack.calibration.dataset import SampleSet
from edgepack.errors import ExportError, describe
from edgepack.quantization.pt2e import QuantizedGraph, calibrated_pt2e, example_batch, with_activation_observer
from edgepack.targets.arm_tflite.buckets import (
    OPTION,
    ROUTING,
    calibration_for_length,
    companion_name,
    write_bucket_metadata,
)
from edgepack.targets.arm_tflite.flatbuffer import add_float_io
from edgepack.targets.arm_tflite.lookup_tables import dequantize_asymmetric_lookup_tables
from edgepack.targets.arm_tflite.options import TfliteOptions
from edgepack.targets.arm_tflite.tables import quantize_tflite_tables
from edgepack.targets.base import ExportContext


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



def float_arithmetic_ops(path: Path, names: tuple[str, ...] = ("ADD", "MUL")) -> dict[str, int]:
    """How many of the builtin ops `names` compute in float (some input is float32), read from the flatbuffer."""
    from ai_edge_litert import schema_py_generated as fb

    model = fb.ModelT.InitFromPackedBuf(path.read_bytes(), 0)
    codes = {getattr(fb.BuiltinOperator, name): name for name in names}
    counts = dict.fromkeys(names, 0)
    for graph in model.subgraphs:
        for operator in graph.operators:
            code = model.operatorCodes[operator.opcodeIndex]
            name = codes.get(max(code.builtinCode, code.deprecatedBuiltinCode))
            if name and any(index >= 0 and graph.tensors[index].type == fb.TensorType.FLOAT32
                            for index in operator.inputs):
                counts[name] += 1
    return counts


@dataclass(frozen=True)
class Converted:
    """What one conversion did besides writing its file."""

    quantized: QuantizedGraph
    tables: list[dict[str, Any]]  # embedding tables stored per-row INT8/INT4
    float_arithmetic: dict[str, int]  # ADD/MUL ops left computing in float
    restored_tables: list[str]  # tables the converter had quantized asymmetrically, requantized


def convert_int8(context: ExportContext, calibration: SampleSet, path: Path, *, dynamic: bool) -> Converted:
    """Quantize `context.module` with litert-torch's PT2E quantizer on `calibration` (whose arrays fix the
    sequence length), convert it to `path`, and apply the table and I/O passes the options ask for.

    `dynamic`: dynamic-range INT8 (a transformer whose additive attention mask would flatten static ranges)."""
    import litert_torch
    from litert_torch.quantize import pt2e_quantizer, quant_config

    assert context.module is not None, "the target refuses ONNX-only models before converting"
    options = cast(TfliteOptions, context.options)
    names = [spec.name for spec in context.inputs]
    config = pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True) if dynamic \
        else with_activation_observer(pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True),
                                      context.method)
    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(config)
    calibration_size = min(calibration.batch_size, calibration.num_samples)
    quantized = calibrated_pt2e(context.module, example_batch(calibration, names, calibration_size), calibration,
                                quantizer, fold_quantize=False, strict=True, float_modules=context.float_modules)
    nhwc_inputs = [options.nhwc and len(spec.shape) == 4 for spec in context.inputs]
    wrapped = named_io_module(quantized.module, names, nhwc_inputs)
    sample = {name: tensor.permute(0, 2, 3, 1).contiguous() if channel_last else tensor
              for name, tensor, channel_last in zip(names, example_batch(calibration, names, options.batch),
                                                    nhwc_inputs)}
    try:
        edge = litert_torch.convert(wrapped, sample_kwargs=sample,
                                    quant_config=quant_config.QuantConfig(pt2e_quantizer=quantizer))
        edge.export(str(path))
    except Exception as exc:  # the converter raises jax/MLIR errors of many types
        raise ExportError(f"litert-torch could not convert the quantized model: {describe(exc)}") from exc
    parameters = {name: value.detach().cpu().numpy() for name, value in context.module.state_dict().items()
                  if value.ndim == 2}
    float_arithmetic = float_arithmetic_ops(path)
    restored_tables = dequantize_asymmetric_lookup_tables(path) if dynamic else []
    tables = quantize_tflite_tables(path, bits=context.quantization.embedding_bits, parameters=parameters)
    if options.float_io:
        add_float_io(path)
    return Converted(quantized=quantized, tables=tables, float_arithmetic=float_arithmetic,
                     restored_tables=restored_tables)


def export_buckets(context: ExportContext, lengths: Sequence[int], main: Path, *, dynamic: bool) -> dict[str, Any]:
    """Convert the model at each length shorter than the main file's (the last of `lengths`), each on the
    calibration rows that fit it, name the set in the main file, and return its `sequence_buckets` record."""
    buckets = []
    for length in lengths[:-1]:
        calibration, note = calibration_for_length(context.calibration, lengths, length)
        path = main.parent / companion_name(main, length)
        convert_int8(context, calibration, path, dynamic=dynamic)
        buckets.append((length, path, len(calibration.arrays[next(iter(calibration.arrays))]), note))
    write_bucket_metadata(main, {length: path.name for length, path, _, _ in buckets} | {lengths[-1]: main.name})
    buckets.append((lengths[-1], main, context.calibration.num_samples,
                    f"{context.calibration.num_samples} rows (every row fits the longest)"))
    record = SequenceBuckets(
        option=OPTION, routing=ROUTING,
        latency="each timed batch is routed like the evaluation rows: the latency figures are those of the mix "
                "of lengths in the timed rows (batch 1: the first held-out row's length), not of the longest model",
        buckets=[SequenceBucket(length=length, file=path.name, sha256=sha256_file(path),
                                size_bytes=path.stat().st_size, calibration_rows=rows, calibration=note)
                 for length, path, rows, note in buckets])
    return record.to_json_dict()
