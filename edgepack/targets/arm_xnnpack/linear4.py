"""A transformer's linear layers with 4-bit groupwise weights and int8 activations quantized per call (8da4w),
for XNNPACK's `qd8-f32-qb4w` GEMMs.

ExecuTorch's XNNPACKQuantizer (PT2E) has no groupwise weights: its configs give int8 weights, or int4 (qmin -8,
qmax 7) with one scale per output channel. Groupwise weights come from torchao instead, as ExecuTorch's own XNNPACK
recipe `TORCHAO_INT8_DYNAMIC_ACT_INT4_WEIGHT_PER_TENSOR` builds them: `quantize_` with
`Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(group_size))` on the
eager module, then `torch.export` and `XnnpackPartitioner`, which matches `choose_qparams_affine -> quantize_affine
-> dequantize_affine -> linear` and its weight's `dequantize_affine` into one delegated fully-connected node.
XNNPACK packs the int4 values two a byte and stores the group scales as bfloat16. Found by trying (executorch 1.5.1,
torchao 0.18): its partitioner refuses a group size that is not a multiple of 32 ("Delegation to XNNPACK requires
group_size to be a multiple of 32"), and torchao needs the group to divide the layer's input width. A layer whose
width the group does not divide gets int8 weights per output channel (same dynamic activations) instead.
"""

from __future__ import annotations

import copy
from typing import Any

from edgepack.errors import ConfigError


def _inside(name: str, modules: tuple[str, ...]) -> bool:
    return any(name == module or name.startswith(module + ".") for module in modules)


def quantize_linears_4bit(module, *, group_size: int, float_modules: tuple[str, ...] = ()) -> tuple[Any, dict]:
    """A copy of `module` whose nn.Linear layers have int4 weights (symmetric, a scale per `group_size` input
    channels) and dynamic int8 activations; layers whose input width `group_size` does not divide get int8
    weights per output channel; layers inside `float_modules` stay float. Returns (module, what each got)."""
    import torch
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup

    copied = copy.deepcopy(module).eval()
    linears = {name: child for name, child in copied.named_modules() if isinstance(child, torch.nn.Linear)}
    kept_float = sorted(name for name in linears if _inside(name, float_modules))
    four_bit = sorted(name for name, child in linears.items()
                      if name not in kept_float and child.in_features % group_size == 0)
    eight_bit = sorted(name for name in linears if name not in kept_float and name not in four_bit)
    if not four_bit:
        raise ConfigError(f"target_options.arm-xnnpack.group_size: {group_size} divides the input width of none of "
                          f"the model's {len(linears) - len(kept_float)} quantized linear layers (of {len(linears)}); "
                          "use a smaller multiple of 32")
    for dtype, granularity, chosen in ((torch.int4, PerGroup(group_size), set(four_bit)),  # type: ignore[attr-defined]
                                       (torch.int8, PerAxis(0), set(eight_bit))):
        if chosen:
            quantize_(copied, Int8DynamicActivationIntxWeightConfig(weight_dtype=dtype, weight_granularity=granularity),
                      lambda child, name, chosen=chosen: name in chosen)
    return copied, {"int4_layers": len(four_bit), "int8_layers": eight_bit, "float_layers": kept_float}


def weight_scheme(group_size: int, layers: dict) -> str:
    """One line for the manifest: how the linear layers' weights and activations are stored and computed."""
    text = (f"int4 weights, symmetric, a scale per group of {group_size} input channels (stored bfloat16 by XNNPACK), "
            f"on {layers['int4_layers']} linear layers; int8 activations quantized per token at run time")
    if layers["int8_layers"]:
        text += (f"; int8 weights per output channel on {len(layers['int8_layers'])} layers whose input width "
                 f"{group_size} does not divide")
    if layers["float_layers"]:
        text += f"; {len(layers['float_layers'])} linear layers kept float"
    return text
