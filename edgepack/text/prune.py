"""Structured pruning of a Hugging Face encoder (BERT family): whole layers, attention heads, FFN channels.

Heads and FFN channels are ranked per layer by first-order Taylor importance on calibration text
(|sum of weight x gradient| over a head's or channel's weights, summed over batches: the estimated
loss change when the whole group is removed; Molchanov et al. 2019), or by weight magnitude. Taylor
is the default for encoders: magnitude ignores what the data does, and heads of equal norm differ a
lot in use (Michel et al. 2019). The loss is cross-entropy against the teacher's own predictions,
so no labels are needed and the gradient is not zero at the teacher.

Every layer keeps the same number of heads and FFN channels (which ones differs per layer): the
config then describes the model with `intermediate_size` and `pruned_heads`, and ONNX Runtime's
attention fusion, which takes one head count for the whole graph, stays correct.

The folder keeps transformers' `pruned_heads` convention ({layer: [removed head indices]}, applied
at load time by transformers 4.x itself); transformers 5 dropped head pruning, so `load_pruned`
applies it before the weights are read.

Self-check, as for every other pruning here: the removed heads' value rows and the removed FFN
channels are zeroed first (they then contribute exactly nothing), outputs are recorded, the
structure is removed, and the outputs must not change.
"""

from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.nn import functional as F

from edgepack.errors import ConfigError, PruningError

RELATIVE_TOLERANCE = 1e-4
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "added_tokens.json")


@dataclass(frozen=True)
class EncoderShape:
    """What the pruned encoder keeps: layer indices of its parent, heads and FFN channels per layer."""

    layers: tuple[int, ...]
    heads: int
    ffn: int


@dataclass(frozen=True)
class EncoderPruning:
    """A pruned encoder and where each kept part came from in its parent (the distillation teacher)."""

    model: Any  # the transformers model (not the LogitsOnly wrapper)
    kept_layers: tuple[int, ...]  # parent layer index of each layer
    kept_heads: tuple[tuple[int, ...], ...]  # parent head indices of each layer's heads
    ffn_before: int
    heads_before: int
    checks: tuple[dict, ...]


def layers_of(model: Any) -> list[Any]:
    """The encoder's layer list of a BERT-family model (bert, roberta, electra, ... base models)."""
    encoder = getattr(model.base_model, "encoder", None)
    layers = getattr(encoder, "layer", None)
    if not isinstance(layers, nn.ModuleList) or not layers:
        raise ConfigError(f"prune: {type(model).__name__} is not a BERT-family encoder (no base_model.encoder.layer)")
    first = layers[0]
    for path in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                 "intermediate.dense", "output.dense"):
        try:
            linear = first.get_submodule(path)
        except AttributeError:
            linear = None
        if not isinstance(linear, nn.Linear):
            raise ConfigError(f"prune: encoder layers of {type(model).__name__} have no Linear '{path}'")
    return list(layers)


def head_size(model: Any) -> int:
    """Width of one attention head."""
    return int(layers_of(model)[0].attention.self.attention_head_size)


def heads_per_layer(model: Any) -> int:
    """Attention heads each layer has now (pruned models keep the same count in every layer)."""
    layer = layers_of(model)[0]
    return layer.attention.self.query.out_features // int(layer.attention.self.attention_head_size)


def ffn_width(model: Any) -> int:
    """FFN (intermediate) width of the first layer."""
    return int(layers_of(model)[0].intermediate.dense.out_features)


def shape_for(model: Any, *, heads: float, ffn: float, layers: Optional[list[int]]) -> EncoderShape:
    """Absolute counts from the recipe's fractions to remove (heads, ffn) and kept layer list."""
    count = len(layers_of(model))
    kept = tuple(range(count)) if layers is None else tuple(layers)
    bad = [index for index in kept if not 0 <= index < count]
    if bad:
        raise ConfigError(f"prune.layers: the encoder has layers 0..{count - 1}, got {bad}")
    head_count, width = heads_per_layer(model), ffn_width(model)
    return EncoderShape(layers=kept, heads=max(1, round(head_count * (1 - heads))),
                        ffn=max(1, round(width * (1 - ffn))))


def _group_scores(layers: list[Any], size: int, importance: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer: (score of each head, score of each FFN channel) from weights and, for taylor, .grad."""
    def term(parameter: torch.Tensor) -> torch.Tensor:
        if importance == "taylor":
            assert parameter.grad is not None, "taylor importance needs a backward pass first"
            return parameter.detach() * parameter.grad
        return parameter.detach().abs() ** (1 if importance == "l1" else 2)

    scores = []
    for layer in layers:
        attention, out = layer.attention.self, layer.attention.output.dense
        rows = torch.stack([term(linear.weight).sum(1) + term(linear.bias)
                            for linear in (attention.query, attention.key, attention.value)]).sum(0)
        per_head = rows.view(-1, size).sum(1) + term(out.weight).sum(0).view(-1, size).sum(1)
        ffn = (term(layer.intermediate.dense.weight).sum(1) + term(layer.intermediate.dense.bias)
               + term(layer.output.dense.weight).sum(0))
        scores.append((per_head, ffn))
    return scores


def importance_scores(model: Any, importance: str, batches: list[tuple[torch.Tensor, ...]],
                      forward: Callable[[nn.Module, tuple[torch.Tensor, ...]], torch.Tensor]):
    """Per layer (head scores, FFN channel scores); higher means more important."""
    layers, size = layers_of(model), head_size(model)
    if importance not in ("taylor", "l1", "l2"):
        raise ConfigError(f"prune.importance: encoders take 'taylor', 'l1' or 'l2', not '{importance}'")
    if importance != "taylor":
        return [(heads.clone(), ffn.clone()) for heads, ffn in _group_scores(layers, size, importance)]
    totals: Optional[list[tuple[torch.Tensor, torch.Tensor]]] = None
    was_training = model.training
    model.eval()
    for batch in batches:
        model.zero_grad()
        logits = forward(model, batch)
        F.cross_entropy(logits, logits.detach().argmax(1)).backward()
        scores = [(heads.abs(), ffn.abs()) for heads, ffn in _group_scores(layers, size, "taylor")]
        totals = scores if totals is None else [(a + c, b + d) for (a, b), (c, d) in zip(totals, scores)]
    model.zero_grad()
    model.train(was_training)
    assert totals is not None, "importance needs at least one calibration batch"
    return totals


def _rows(linear: nn.Linear, keep: torch.Tensor) -> nn.Linear:
    result = nn.Linear(linear.in_features, len(keep), bias=linear.bias is not None)
    with torch.no_grad():
        result.weight.copy_(linear.weight[keep])
        if linear.bias is not None:
            result.bias.copy_(linear.bias[keep])
    return result


def _columns(linear: nn.Linear, keep: torch.Tensor) -> nn.Linear:
    result = nn.Linear(len(keep), linear.out_features, bias=linear.bias is not None)
    with torch.no_grad():
        result.weight.copy_(linear.weight[:, keep])
        if linear.bias is not None:
            result.bias.copy_(linear.bias)
    return result


def _head_rows(heads: list[int], size: int) -> torch.Tensor:
    return torch.tensor([head * size + offset for head in heads for offset in range(size)], dtype=torch.long)


def remove_heads(layer: Any, keep: list[int], size: int) -> None:
    """Keep only heads `keep` (indices into the layer's current heads) of one encoder layer."""
    attention = layer.attention.self
    rows = _head_rows(sorted(keep), size)
    attention.query, attention.key, attention.value = (
        _rows(attention.query, rows), _rows(attention.key, rows), _rows(attention.value, rows))
    layer.attention.output.dense = _columns(layer.attention.output.dense, rows)
    attention.num_attention_heads = len(keep)
    attention.all_head_size = len(keep) * size


def remove_ffn(layer: Any, keep: torch.Tensor) -> None:
    """Keep only FFN channels `keep` of one encoder layer."""
    layer.intermediate.dense = _rows(layer.intermediate.dense, keep)
    layer.output.dense = _columns(layer.output.dense, keep)


def _zero_removed(layer: Any, heads_keep: list[int], ffn_keep: torch.Tensor, size: int) -> None:
    """Zero what is about to be removed so that it contributes exactly nothing (the self-check's premise)."""
    with torch.no_grad():
        value = layer.attention.self.value
        heads = value.out_features // size
        removed = _head_rows([h for h in range(heads) if h not in heads_keep], size)
        value.weight[removed] = 0.0
        value.bias[removed] = 0.0
        dropped = torch.ones(layer.intermediate.dense.out_features, dtype=torch.bool)
        dropped[ffn_keep] = False
        layer.intermediate.dense.weight[dropped] = 0.0
        layer.intermediate.dense.bias[dropped] = 0.0
        # gelu(0) = 0, but other activations need not vanish at 0: remove the column's effect downstream too
        layer.output.dense.weight[:, dropped] = 0.0


def drop_layers(model: Any, keep: tuple[int, ...]) -> None:
    """Keep encoder layers `keep` (in order) and rewrite num_hidden_layers."""
    layers = layers_of(model)
    kept = nn.ModuleList([layers[index] for index in keep])
    for index, layer in enumerate(kept):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                setattr(module, "layer_idx", index)  # the cache's index of this layer
    model.base_model.encoder.layer = kept
    model.config.num_hidden_layers = len(keep)


def relative_difference(before: torch.Tensor, after: torch.Tensor) -> float:
    """Largest absolute change of `after` from `before`, relative to the largest magnitude of `before`."""
    return float((before - after).abs().max()) / max(float(before.abs().max()), 1e-6)


def prune_encoder(model: Any, shape: EncoderShape, *, importance: str,
                  batches: list[tuple[torch.Tensor, ...]],
                  forward: Callable[[nn.Module, tuple[torch.Tensor, ...]], torch.Tensor]) -> EncoderPruning:
    """A pruned copy of `model` (a transformers encoder classifier), checked: see the module docstring."""
    model = copy.deepcopy(model).eval()
    heads_before, ffn_before, size = heads_per_layer(model), ffn_width(model), head_size(model)
    if shape.heads > heads_before or shape.ffn > ffn_before:
        raise ConfigError(f"prune: cannot keep {shape.heads} heads and {shape.ffn} FFN channels of a model that has "
                          f"{heads_before} and {ffn_before}")
    drop_layers(model, shape.layers)
    scores = importance_scores(model, importance, batches, forward)
    plan = [(sorted(torch.topk(heads, shape.heads).indices.tolist()), torch.topk(ffn, shape.ffn).indices.sort().values)
            for heads, ffn in scores]
    for layer, (heads_keep, ffn_keep) in zip(layers_of(model), plan):
        _zero_removed(layer, heads_keep, ffn_keep, size)
    example = batches[0]
    with torch.no_grad():
        before = forward(model, example)
    checks = []
    for index, (layer, (heads_keep, ffn_keep)) in enumerate(zip(layers_of(model), plan)):
        remove_heads(layer, heads_keep, size)
        remove_ffn(layer, ffn_keep)
        with torch.no_grad():
            difference = relative_difference(before, forward(model, example))
        checks.append({"step": 1, "group": f"encoder.layer.{index} (from {shape.layers[index]})",
                       "channels": (heads_before - len(heads_keep)) * size + ffn_before - len(ffn_keep),
                       "max_relative_difference": difference, "checked": True})
        if difference > RELATIVE_TOLERANCE:
            raise PruningError(f"pruning encoder layer {index} changed the outputs by {difference:.3g} (relative) "
                               "although the removed heads and channels were zeroed: the structural edit is wrong")
    model.config.intermediate_size = shape.ffn
    model.config.pruned_heads = {str(index): [h for h in range(heads_before) if h not in heads_keep]
                                 for index, (heads_keep, _) in enumerate(plan) if len(heads_keep) < heads_before}
    return EncoderPruning(model=model, kept_layers=shape.layers, kept_heads=tuple(tuple(h) for h, _ in plan),
                          ffn_before=ffn_before, heads_before=heads_before, checks=tuple(checks))


def _original_heads(config) -> int:
    return int(config.num_attention_heads)


def apply_pruned_heads(model: Any) -> None:
    """Shape `model`'s attention like its config's `pruned_heads` says (weights are read afterwards)."""
    pruned = getattr(model.config, "pruned_heads", None) or {}
    size = head_size(model)
    for index, layer in enumerate(layers_of(model)):
        removed = {int(head) for head in pruned.get(str(index), pruned.get(index, []))}
        if removed:
            remove_heads(layer, [h for h in range(_original_heads(model.config)) if h not in removed], size)


def _pruned_class(base: Any) -> Any:
    """A subclass of a transformers classifier that applies `config.pruned_heads` before weights load."""
    def __init__(self, config, *args, **kwargs):
        base.__init__(self, config, *args, **kwargs)
        apply_pruned_heads(self)

    return type(f"HeadPruned{base.__name__}", (base,), {"__init__": __init__})


def load_pruned(folder: Path) -> nn.Module:
    """A head-pruned sequence classifier from its folder alone, offline, eager attention."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    base: Any = AutoModelForSequenceClassification._model_mapping[type(config)]
    model = _pruned_class(base).from_pretrained(str(folder), local_files_only=True, attn_implementation="eager",
                                                use_safetensors=True)
    return model.eval()


def save_encoder(model: Any, folder: Path, tokenizer_source: Optional[Path]) -> list[Path]:
    """save_pretrained plus the tokenizer files of `tokenizer_source`: a complete Hugging Face folder."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    for name in TOKENIZER_FILES:
        if tokenizer_source is not None and (tokenizer_source / name).is_file():
            shutil.copyfile(tokenizer_source / name, folder / name)
    return sorted(path for path in folder.iterdir() if path.is_file())
