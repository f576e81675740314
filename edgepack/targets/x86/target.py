"""Target `x86`: static INT8 ONNX (QDQ, per-channel weights, uint8 activations) for onnxruntime on x86 CPUs.

Option `isa`:
- `portable` (default): weights chosen so that no integer sum can saturate on any x86 CPU, with or
  without VNNI (edgepack.quantization.saturation proves it from the weights); the scheme is picked by measurement
  (edgepack/targets/x86/portable.py).
- `vnni`: full 8-bit int8 weights for hosts with AVX512-VNNI, AVX-VNNI or AMX-INT8, whose kernels
  accumulate in int32. On other CPUs onnxruntime adds u8 x s8 pairs in saturating int16, so the
  artifact records that it needs VNNI; validating it on a host without VNNI runs it as fake-quant
  (the VNNI arithmetic) and says so, and `edgepack verify` there refuses it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, cast

import onnx
from pydantic import BaseModel, ConfigDict, Field

from edgepack.bundle.manifest import ArtifactEntry
from edgepack.errors import ExportError
from edgepack.evaluation.runners import OrtRunner
from edgepack.isa import INT32_DOT_PRODUCT, host_isa
from edgepack.model.onnx_export import strip_debug_info
from edgepack.model.onnx_inspect import describe_onnx, onnx_summary
from edgepack.quantization.ort_qdq import QdqSettings, quantize_qdq
from edgepack.quantization.saturation import data_check, integer_layers, summarize, weight_bound
from edgepack.quantization.transformer_int8 import additive_mask_constant
from edgepack.targets.base import Artifact, ExportContext, Summary, Target, basic_summary
from edgepack.targets.x86.portable import SCHEMES, portable_int8, scheme_settings
from edgepack.targets.x86.transformer import export_transformer

REQUIRES_KEY = "edgepack.requires_isa"
VNNI_REQUIREMENT = sorted(INT32_DOT_PRODUCT)
PORTABLE_ARITHMETIC = "integer kernels; no int16 pair sum can saturate, so every x86 CPU computes the same"
VNNI_ARITHMETIC = "integer kernels with int32 dot products (VNNI/AMX)"
VNNI_EMULATION = "fake-quant (QDQ unfused, float between Q/DQ): emulates VNNI int32 accumulation on a host without VNNI"
LISTED_NODES = 6  # float nodes named in the report; the rest are counted


class X86Options(BaseModel):
    """Options under `target_options.x86` in the recipe."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    isa: Literal["portable", "vnni"] = Field(
        "portable", description="portable: exact on every x86 CPU (no int16 saturation); vnni: full 8-bit weights, "
                                "needs AVX512-VNNI, AVX-VNNI or AMX-INT8")
    portable_weights: Literal["auto", "int8-7bit", "uint8"] = Field(
        "auto", description="isa portable: auto measures both schemes on calibration data and keeps the better "
                            "(accuracy first, then speed on this host); or pin one for builds that do not depend "
                            "on the build host")


def required_isa(path: Path) -> list[str]:
    """The ISA features an x86 artifact needs (any one of them), from its ONNX metadata."""
    model = onnx.load(str(path), load_external_data=False)
    value = next((prop.value for prop in model.metadata_props if prop.key == REQUIRES_KEY), "")
    return [name for name in value.split("|") if name]


class X86Target(Target):
    """INT8 QDQ ONNX; uint8 activations because int8 ones leave Convs unfused on x86 (U8S8 kernels)."""

    name = "x86"
    description = "ONNX INT8 (QDQ) for onnxruntime on x86 CPUs"
    extra = "x86"
    required_modules = ("onnxruntime", "onnxscript")
    calibration_methods = frozenset({"minmax", "percentile", "entropy", "mse"})
    Options = X86Options
    runs_on_host = True

    def export(self, context: ExportContext) -> list[Artifact]:
        """Quantize the checked fp32 ONNX with the recipe's calibration set and method."""
        import onnxruntime

        path = context.out_dir / "model.int8.onnx"
        mask_value = additive_mask_constant(context.float_onnx)
        if mask_value is not None:  # a transformer's attention mask: edgepack.targets.x86.transformer
            return [Artifact(target=self.name, path=path, format="onnx", precision="int8-transformer",
                             runtime="onnxruntime", runtime_version=onnxruntime.__version__,
                             details=export_transformer(context, path, mask_value))]
        base = QdqSettings(activation_type=context.quantization.activation_type,
                           per_channel=context.quantization.per_channel,
                           keep_input_convs_float=context.quantization.keep_input_convs_float,
                           embedding_bits=context.quantization.embedding_bits,
                           op_types=tuple(context.quantization.op_types or ()) or None,
                           float_modules=context.float_modules)
        outcomes = {}

        def quantize(scheme: str, destination: Path) -> None:
            outcomes[scheme] = quantize_qdq(context.float_onnx, destination, calibration=context.calibration,
                                            input_names=[spec.name for spec in context.inputs],
                                            method=context.method, settings=scheme_settings(base, scheme),
                                            scratch=context.scratch_dir)

        isa = self._isa_section(context, quantize, path)
        outcome = outcomes[isa["weights"]]
        strip_debug_info(path, compact_names=context.quantization.compact_names)
        model = onnx.load(str(path))
        layers = integer_layers(model)
        measured = None if isa["option"] == "portable" else data_check(path, context.calibration.batches())
        isa["saturation"] = summarize(weight_bound(layers), measured)
        if isa["option"] == "portable" and isa["saturation"]["layers_that_can_saturate_without_vnni"]:
            raise ExportError(f"the portable x86 artifact can saturate: {isa['saturation']['proof']}")
        if isa["requires_isa"]:
            model.metadata_props.add(key=REQUIRES_KEY, value="|".join(isa["requires_isa"]))
            onnx.save(model, str(path))
        details = describe_onnx(path)
        details["layout"] = "as exported (NCHW for images)"
        details["float_nodes"] = list(outcome.float_nodes)
        details["embedding_tables"] = list(outcome.tables)
        details["calibration_method"] = context.method.model_dump()
        if outcome.calibration:  # a per-tensor method: how many tensors chose each candidate range
            details["calibration"] = outcome.calibration
        details["isa"] = isa
        return [Artifact(target=self.name, path=path, format="onnx", precision="int8-qdq",
                         runtime="onnxruntime", runtime_version=onnxruntime.__version__, details=details)]

    def _isa_section(self, context: ExportContext, quantize, path: Path) -> dict:
        """Quantize into `path` with the weights the `isa` option calls for; describe the choice."""
        options = cast(X86Options, context.options)
        option = options.isa
        if option == "vnni":
            quantize("int8", path)
            return {"option": option, "weights": "int8", "description": "full 8-bit int8 weights; U8S8 kernels",
                    "requires_isa": VNNI_REQUIREMENT,
                    "reason": "isa: vnni asked for full 8-bit weights; CPUs without VNNI/AMX would saturate int16 "
                              "pair sums, so the artifact needs one of " + ", ".join(VNNI_REQUIREMENT)}
        if context.quantization.activation_type == "int8":
            quantize("int8", path)
            return {"option": option, "weights": "int8", "description": "int8 activations and weights; S8S8 kernels",
                    "requires_isa": [],
                    "reason": "int8 activations: onnxruntime's S8S8 kernels accumulate in int32 on every x86 CPU"}
        pinned = options.portable_weights
        if pinned != "auto":
            quantize(pinned, path)
            return {"option": option, "weights": pinned, "description": SCHEMES[pinned], "requires_isa": [],
                    "reason": f"portable_weights: {pinned} in the recipe"}
        chosen, measurements, reason = portable_int8(quantize, context.float_onnx, context.calibration,
                                                     context.scratch_dir, threads=context.threads)
        chosen.path.replace(path)
        return {"option": option, "weights": chosen.scheme, "description": SCHEMES[chosen.scheme],
                "requires_isa": [], "reason": reason, "candidates": [item.to_dict() for item in measurements],
                "measured_on": host_isa().line()}

    def summarize(self, artifact: ArtifactEntry) -> Summary:
        """ONNX facts (opset, Q/DQ nodes, weights by dtype), the weight scheme and the nodes kept float."""
        nodes = artifact.structure.get("float_nodes", [])
        kept = f"{len(nodes)}: {', '.join(nodes[:LISTED_NODES])}{', ...' if len(nodes) > LISTED_NODES else ''}"
        isa = artifact.isa
        return [*basic_summary(artifact), *onnx_summary(artifact.structure),
                *([("weight scheme", isa.weights)] if isa is not None else []),
                ("nodes kept float", kept if nodes else "none")]

    def runner(self, path: Path, *, threads: int) -> OrtRunner:
        """onnxruntime CPU session; an artifact that needs VNNI runs as fake-quant on a host without it."""
        needs = required_isa(path)
        if not needs:
            return OrtRunner(path, threads=threads, arithmetic=PORTABLE_ARITHMETIC)
        if set(needs) & set(host_isa().features):
            return OrtRunner(path, threads=threads, arithmetic=VNNI_ARITHMETIC)
        return OrtRunner(path, threads=threads, emulation=VNNI_EMULATION)
