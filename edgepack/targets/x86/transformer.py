"""The x86 target's path for transformer encoders (a graph with an additive attention mask).

Candidates, each measured on calibration samples against the fp32 ONNX (relative L2, top-1
agreement) and timed at batch 64 on this host:
- `static-matmul`: static QDQ of MatMul/Gemm only, no QDQ on their outputs (Add, Softmax, LayerNorm
  and the mask stay float), embedding tables per-row INT8, 7-bit weights (portable);
- `fused-dynamic`: TorchScript export, onnxruntime BERT fusion, dynamic per-channel INT8 (portable
  7-bit weights), needs the PyTorch module.
The fastest candidate close in accuracy to the most accurate one is kept (`choose` of the
portable weight schemes, edgepack.targets.x86.portable); the reason and all figures go in the
artifact's details."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, cast

import numpy as np

from edgepack.calibration.dataset import SampleSet
from edgepack.evaluation.drift import collect_outputs
from edgepack.evaluation.latency import make_batch, measure
from edgepack.evaluation.runners import OrtRunner
from edgepack.quantization.ort_qdq import QdqSettings, quantize_qdq
from edgepack.quantization.saturation import integer_layers, summarize, weight_bound
from edgepack.quantization.transformer_int8 import dynamic_int8, dynamic_saturation, fused_float_onnx
from edgepack.targets.base import ExportContext
from edgepack.targets.x86.portable import CHECK_SAMPLES, LATENCY_BATCH, SchemeMeasurement, choose

DESCRIPTIONS = {
    "static-matmul": "static QDQ on MatMul/Gemm inputs only (outputs, mask, softmax, LayerNorm float), per-row "
                     "INT8 embedding tables, 7-bit per-channel weights",
    "fused-dynamic": "TorchScript export + onnxruntime BERT fusion (Attention, SkipLayerNormalization, BiasGelu), "
                     "dynamic INT8 (uint8 activations per call, 7-bit per-channel int8 weights)",
}


@dataclass(frozen=True)
class Candidate(SchemeMeasurement):
    """One transformer INT8 build (`scheme` names it) and how it did on calibration samples."""

    facts: dict[str, Any] = field(default_factory=dict)
    saturation: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (without the scratch path)."""
        return {"scheme": self.scheme, "description": DESCRIPTIONS[self.scheme], "relative_l2": self.relative_l2,
                "top1_agreement": self.top1_agreement, f"median_ms_batch_{LATENCY_BATCH}": self.median_ms,
                **self.facts}


def _measure(name: str, path: Path, reference: np.ndarray, samples: SampleSet, threads: int, facts: dict,
             saturation: dict) -> Candidate:
    runner = OrtRunner(path, threads=threads)
    outputs = collect_outputs(runner, samples)
    error = float(np.linalg.norm(outputs - reference)) / max(float(np.linalg.norm(reference)), 1e-12)
    agreement = float((outputs.argmax(1) == reference.argmax(1)).mean()) if reference.ndim == 2 and \
        reference.shape[1] > 1 else None
    latency = measure(runner, make_batch(samples.arrays, LATENCY_BATCH), warmup=2, repeats=10).median_ms
    return Candidate(name, error, agreement, latency, path, facts=facts, saturation=saturation)


def _static_matmul(context: ExportContext, path: Path) -> tuple[dict, dict]:
    import onnx

    settings = QdqSettings(activation_type="uint8", per_channel=context.quantization.per_channel,
                           keep_input_convs_float=False, embedding_bits=context.quantization.embedding_bits,
                           op_types=("MatMul", "Gemm"), seven_bit_weights=True, float_outputs_of=("MatMul", "Gemm"))
    outcome = quantize_qdq(context.float_onnx, path, calibration=context.calibration,
                           input_names=[spec.name for spec in context.inputs], method=context.method,
                           settings=settings, scratch=context.scratch_dir)
    saturation = summarize(weight_bound(integer_layers(onnx.load(str(path)))))
    return {"embedding_tables": list(outcome.tables)}, saturation


def _fused_dynamic(context: ExportContext, path: Path) -> tuple[dict, dict]:
    module = context.module
    example = {name: array[:2] for name, array in next(context.calibration.batches()).items()}
    fused = fused_float_onnx(module, context.inputs, example, path.with_suffix(".fused.onnx"),
                             num_heads=int(getattr(module, "num_heads", 0)),
                             hidden_size=int(getattr(module, "hidden_size", 0)))
    dynamic_int8(path.with_suffix(".fused.onnx"), path)
    return {"fused_ops": fused}, dynamic_saturation(path)


BUILDERS: dict[str, Callable[[ExportContext, Path], tuple[dict, dict]]] = {
    "static-matmul": _static_matmul, "fused-dynamic": _fused_dynamic}


def build_candidates(context: ExportContext) -> tuple[list[Candidate], list[str]]:
    """Every candidate this model allows, measured; and why a candidate was skipped or failed."""
    samples = dataclasses.replace(context.calibration, labels=None, extras={},
                                  arrays={name: array[:CHECK_SAMPLES]
                                          for name, array in context.calibration.arrays.items()})
    reference = collect_outputs(OrtRunner(context.float_onnx, threads=context.threads), samples)
    candidates, notes = [], []
    for name, builder in BUILDERS.items():
        if name == "fused-dynamic" and not getattr(context.module, "num_heads", 0):
            notes.append(f"{name}: skipped, needs a PyTorch transformer with a known head count "
                         "(model.huggingface)")
            continue
        path = context.scratch_dir / f"transformer.{name}.onnx"
        try:
            facts, saturation = builder(context, path)
        except Exception as exc:  # one failing candidate leaves the others; the reason is recorded
            notes.append(f"{name}: failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            continue
        candidates.append(_measure(name, path, reference, samples, context.threads, facts, saturation))
    return candidates, notes


def export_transformer(context: ExportContext, path: Path, mask_value: float) -> dict[str, Any]:
    """Build the candidates, keep the chosen one at `path` (debug info stripped), return the artifact's details."""
    from edgepack.errors import ExportError
    from edgepack.isa import host_isa
    from edgepack.model.onnx_export import strip_debug_info
    from edgepack.model.onnx_inspect import describe_onnx

    if getattr(context.options, "isa", "portable") != "portable":
        raise ExportError("target_options.x86.isa: vnni is not available for transformer encoders yet (their "
                          "INT8 path stores portable 7-bit weights); use isa: portable")
    candidates, notes = build_candidates(context)
    if not candidates:
        raise ExportError("no transformer INT8 candidate could be built: " + "; ".join(notes))
    picked, reason = choose(list(candidates))
    chosen = cast(Candidate, picked)
    chosen.path.replace(path)
    strip_debug_info(path, compact_names=context.quantization.compact_names)
    if chosen.saturation["layers_that_can_saturate_without_vnni"]:
        raise ExportError(f"the portable x86 transformer artifact can saturate: {chosen.saturation['proof']}")
    details = describe_onnx(path)
    details.update(
        layout="token ids [batch, sequence]", float_nodes=[], calibration_method=context.method.model_dump(),
        embedding_tables=chosen.facts.get("embedding_tables", []),
        transformer={"attention_mask_constant": mask_value, "chosen": chosen.scheme,
                     "why_not_full_static_qdq": f"the graph adds a constant of {mask_value:.3g} (an attention mask): "
                     "full static QDQ gives that tensor a scale near |constant|/255 and flattens attention",
                     "skipped": notes, **({"fused_ops": chosen.facts["fused_ops"]} if "fused_ops" in chosen.facts
                                         else {})},
        isa={"option": "portable", "weights": chosen.scheme, "description": DESCRIPTIONS[chosen.scheme],
             "requires_isa": [], "reason": reason, "candidates": [item.to_dict() for item in candidates],
             "measured_on": host_isa().line(), "saturation": chosen.saturation})
    return details
