"""Embedding tables of an ExecuTorch program stored per-row INT8 (or 4-bit), read by `embedding_byte`.

ExecuTorch's XNNPACK quantizer does not annotate embeddings and XNNPACK has no gather, so the
tables would stay float32 outside the delegate. torchao's weight-only quantization of the eager
`nn.Embedding` modules (a symmetric scale per row) exports as `dequantize_affine -> embedding`;
`to_executorch` with `do_quant_fusion_and_const_prop` fuses that into
`quantized_decomposed::embedding_byte` (`embedding_4bit`), a kernel of ExecuTorch's quantized
library that dequantizes only the rows it gathers. The program then needs that library at run
time (`import executorch.kernels.quantized` in Python; libquantized_kernels in a C++ runtime).

Tables must be quantized on the eager module, before export: afterwards there is no nn.Embedding
left to match. Found by trying (executorch 1.5.1, torchao 0.18):
- `padding_idx` must be cleared (it becomes a third `aten.embedding` argument the fusion pattern
  does not match, and `to_executorch` fails with "Missing out variants"); the forward output is
  the same, since padding_idx only changes the gradient.
- Scales stay float32: float16 scales make `embedding_byte` return float16 into a delegate that
  expects float32 (max error 15 instead of 0.01, silently).
"""

from __future__ import annotations

import copy

from edgepack.quantization.embedding_tables import MIN_ROWS, four_bit_width, row_scales, table_report


def _is_table(module, _name: str = "") -> bool:
    import torch

    return (isinstance(module, torch.nn.Embedding) and module.weight.shape[0] >= MIN_ROWS
            and row_scales(8, module.weight.shape[1]))


def quantize_embeddings(module, *, bits: int = 8):
    """A copy of `module` whose embedding tables (>= MIN_ROWS rows, >= MIN_PER_ROW_DIM wide) are
    per-row symmetric INT8 (or INT4 with `bits` 4 where the width allows), with a report per table;
    (module, []) if none. Narrower tables stay float here (no shared-scale kernel to fuse into)."""
    import torch
    from torchao.quantization import IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerAxis

    if not any(_is_table(child) for child in module.modules()):
        return module, []
    copied = copy.deepcopy(module).eval()
    originals = {}
    for name, child in copied.named_modules():
        if _is_table(child):
            child.padding_idx = None
            originals[name] = child.weight.detach().cpu().numpy().copy()
    # 4-bit values are packed two a byte along a row: odd or narrow rows stay INT8 (as in the other targets)
    def table_bits(dim):
        return 4 if bits == 4 and four_bit_width(dim) else 8

    def four_bit(child, name=""):
        return _is_table(child) and table_bits(child.weight.shape[1]) == 4

    def eight_bit(child, name=""):
        return _is_table(child) and table_bits(child.weight.shape[1]) == 8

    for dtype, chosen in ((torch.int4, four_bit), (torch.int8, eight_bit)):  # type: ignore[attr-defined]
        if any(chosen(child) for child in copied.modules()):
            quantize_(copied, IntxWeightOnlyConfig(weight_dtype=dtype, granularity=PerAxis(0)), chosen)
    reports = []
    for name, child in copied.named_modules():
        if name not in originals:
            continue
        weight = child.weight
        table = originals[name]
        scales = weight.scale.detach().float().cpu().numpy().reshape(-1)
        used = table_bits(table.shape[1])
        packed_bytes = table.size // 2 if used == 4 else table.size  # the .pte stores 4-bit values two a byte
        # zero points are all 0 (symmetric) and not stored: the fused kernel takes None for them
        reports.append(table_report(f"{name}.weight", table, weight.dequantize().detach().cpu().numpy(),
                                    bits=used, stored_bytes=packed_bytes + scales.nbytes, steps=scales))
    return copied, reports


def fused_table_ops(program) -> dict[str, int]:
    """Counts of the quantized embedding kernels in the final ExecuTorch program."""
    counts: dict[str, int] = {}
    for node in program.exported_program().graph.nodes:
        target = str(node.target)
        if node.op == "call_function" and "quantized_decomposed" in target and "embedding" in target:
            key = target.split("::")[-1] if "::" in target else target
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))

