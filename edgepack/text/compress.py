"""Structured compression of a Hugging Face encoder: prune layers, heads and FFN channels, then distill
(optionally through a teacher assistant: teacher -> assistant -> student, each step pruned from and
distilled by the one before)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from edgepack.calibration.dataset import SampleSet, load_sample_set
from edgepack.compression.distill import DistillReport
from edgepack.compression.prune import PruneResult
from edgepack.errors import ConfigError
from edgepack.model.tensors import as_tensors, count_macs_and_params
from edgepack.progress import Progress
from edgepack.recipe.schema import PruneConfig, Recipe, VocabularyConfig
from edgepack.text.bundle import recipe_reader, recipe_tokenizer
from edgepack.text.distill import distill_encoder
from edgepack.text.huggingface import LogitsOnly
from edgepack.text.prune import EncoderPruning, EncoderShape, ffn_width, heads_per_layer, layers_of, prune_encoder
from edgepack.text.vocab import VocabularyTrim, check_trim, choose_tokens, token_counts, trim_embeddings

IMPORTANCE_SAMPLES = 128
IMPORTANCE_BATCH = 32


@dataclass(frozen=True)
class EncoderCompression:
    """The distilled student, how it was cut, and the quality of every stage."""

    student: LogitsOnly
    pruning: PruneResult
    distillation: Optional[DistillReport]
    accuracy: dict[str, float]
    macs_after: int
    params_after: int


def _logits(model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return model(input_ids=batch[0], attention_mask=batch[1]).logits


def _importance_batches(calibration: SampleSet, names: list[str]) -> list[tuple[torch.Tensor, ...]]:
    tensors = as_tensors({k: v[:IMPORTANCE_SAMPLES] for k, v in calibration.arrays.items()}, names)
    return [tuple(t[start:start + IMPORTANCE_BATCH] for t in tensors)
            for start in range(0, len(tensors[0]), IMPORTANCE_BATCH)]


def _shape(teacher: torch.nn.Module, parent_layers: tuple[int, ...], *, heads: float, ffn: float,
           layers: Optional[list[int]], field: str) -> EncoderShape:
    """Counts relative to the teacher; layer indices translated into the parent's (teacher or assistant)."""
    teacher_layers = len(layers_of(teacher))
    wanted = list(range(teacher_layers)) if layers is None else layers
    outside = [index for index in wanted if not 0 <= index < teacher_layers]
    if outside:
        raise ConfigError(f"{field}: the encoder has layers 0..{teacher_layers - 1}, got {outside}")
    kept = [index for index in wanted if index in parent_layers]
    return EncoderShape(layers=tuple(parent_layers.index(index) for index in kept),
                        heads=max(1, round(heads_per_layer(teacher) * (1 - heads))),
                        ffn=max(1, round(ffn_width(teacher) * (1 - ffn))))


def _layer_map(recipe: Recipe, cut: EncoderPruning, parent_count: int) -> list[int]:
    """Parent layer matched by each student layer: the recipe's map, else the layer it was cut from."""
    assert recipe.distill is not None, "only called when distilling"
    if recipe.distill.layer_map is None:
        return list(cut.kept_layers)
    if recipe.distill.assistant is not None:
        raise ConfigError("distill.layer_map: not with distill.assistant (each stage learns from the layers it was "
                          "cut from)")
    outside = [index for index in recipe.distill.layer_map if index >= parent_count]
    if outside:
        raise ConfigError(f"distill.layer_map: the teacher has layers 0..{parent_count - 1}, got {outside}")
    return list(recipe.distill.layer_map)


def _trim_vocabulary(student: LogitsOnly, config: VocabularyConfig, texts: list[dict], recipe: Recipe,
                     batch: tuple[torch.Tensor, ...]) -> tuple[LogitsOnly, VocabularyTrim, dict]:
    """The student with only the token rows `texts` use (edgepack.text.vocab), and its self-check."""
    tokenizer = recipe_tokenizer(recipe)
    assert tokenizer is not None, "an encoder recipe has a text section"
    backend = tokenizer.backend
    if backend.unk_token_id is None:
        raise ConfigError("prune.vocabulary: the tokenizer has no unknown token for the ids it drops")
    encoder: Any = student.model
    counts = token_counts(texts, encoder.get_input_embeddings().num_embeddings)
    trim = choose_tokens(counts, min_count=config.min_count, max_tokens=config.max_tokens,
                         always=backend.all_special_ids, unknown_id=int(backend.unk_token_id))
    trimmed = copy.deepcopy(student.model)
    trim_embeddings(trimmed, trim)
    result = LogitsOnly(trimmed, trim).eval()
    return result, trim, check_trim(student.eval(), result, (batch[0], batch[1]), trim)


def compress_encoder(teacher: LogitsOnly, recipe: Recipe, calibration: SampleSet,
                     quality: Callable[[torch.nn.Module], float], progress: Progress) -> EncoderCompression:
    """Prune (and distill) `teacher` as the recipe's `prune` and `distill` sections say."""
    prune: PruneConfig = recipe.prune  # type: ignore[assignment]
    assert prune is not None and prune.encoder, "the recipe schema sends only encoder pruning here"
    names = recipe.input_names
    batches = _importance_batches(calibration, names)
    distill = recipe.distill
    data = None
    if distill is not None:
        data = load_sample_set(distill, recipe.inputs, role="distillation", base_dir=recipe.base_dir,
                               labels=distill.labels, reader=recipe_reader(recipe))
        for warning in data.warnings:
            progress.warn(warning)
    accuracy = {"float": quality(teacher)}
    notes: list[str] = []
    parent, parent_layers = teacher, tuple(range(len(layers_of(teacher.model))))
    assistant = distill.assistant if distill is not None else None
    if assistant is not None and data is not None and distill is not None:
        shape = _shape(teacher.model, parent_layers, heads=assistant.heads, ffn=assistant.ffn,
                       layers=assistant.layers, field="distill.assistant.layers")
        with progress.step(f"pruning the assistant to {len(shape.layers)} layers, {shape.heads} heads, "
                           f"FFN {shape.ffn}, and distilling it from the float model"):
            cut = prune_encoder(teacher.model, shape, importance=prune.importance, batches=batches, forward=_logits)
            helper = LogitsOnly(cut.model)
            settings = distill.model_copy(update={"epochs": assistant.epochs or distill.epochs})
            trained = distill_encoder(helper, teacher, data.arrays, data.labels, names, settings,
                                     layer_map=_layer_map(recipe, cut, len(parent_layers)), kept_heads=cut.kept_heads,
                                     seed=distill.seed)
        accuracy["assistant"] = quality(helper)
        notes.append(f"assistant: teacher layers {list(shape.layers)}, {shape.heads} heads and FFN {shape.ffn} per "
                     f"layer, distilled {trained.epochs_run} epochs ({trained.stopped}, {trained.seconds:.0f} s)")
        parent, parent_layers = helper, shape.layers
    shape = _shape(teacher.model, parent_layers, heads=prune.heads, ffn=prune.ffn, layers=prune.layers,
                   field="prune.layers")
    with progress.step(f"pruning the encoder to {len(shape.layers)} layers, {shape.heads} heads and FFN "
                       f"{shape.ffn} per layer ({prune.importance} importance), self-checking every layer"):
        cut = prune_encoder(parent.model, shape, importance=prune.importance, batches=batches, forward=_logits)
    student = LogitsOnly(cut.model)
    vocabulary = None
    if prune.vocabulary is not None:
        texts = [calibration.arrays] + ([data.arrays] if data is not None else [])
        with progress.step("trimming the token table to the tokens the distillation and calibration texts use"):
            student, vocabulary, check = _trim_vocabulary(student, prune.vocabulary, texts, recipe, batches[0])
        checks = (*cut.checks, check)
        notes.append(f"vocabulary: kept {len(vocabulary.kept):,} of {vocabulary.original_size:,} token rows (seen at "
                     f"least {prune.vocabulary.min_count}x in the " + ("distillation and " if data is not None else "")
                     + "calibration texts, plus the special tokens); other ids read as [UNK] "
                     f"(id {vocabulary.unknown_id}) through a lookup table in the model")
    else:
        checks = cut.checks
    accuracy["pruned"] = quality(student)
    report: Optional[DistillReport] = None
    if distill is not None and data is not None:
        with progress.step("distilling the pruned encoder (logits" + (", hidden states" if distill.hidden_states
                                                                      else "")
                           + (", attention maps" if distill.attentions else "") + ")"):
            report = distill_encoder(student, parent, data.arrays, data.labels, names, distill,
                                     layer_map=_layer_map(recipe, cut, len(parent_layers)), kept_heads=cut.kept_heads,
                                     seed=distill.seed)
        accuracy["distilled"] = quality(student)
    example = as_tensors({k: v[:1] for k, v in calibration.arrays.items()}, names)
    macs_before, params_before = count_macs_and_params(teacher, example)
    macs_after, params_after = count_macs_and_params(student, example)
    teacher_layers = [parent_layers[index] for index in cut.kept_layers]
    heads_before, ffn_before = heads_per_layer(teacher.model), ffn_width(teacher.model)
    layers = {"encoder.layers": (len(layers_of(teacher.model)), len(teacher_layers))}
    for index, origin in enumerate(teacher_layers):
        layers[f"encoder.layer.{index}.attention.heads"] = (heads_before, shape.heads)
        layers[f"encoder.layer.{index}.intermediate"] = (ffn_before, shape.ffn)
    if vocabulary is not None:
        layers["embeddings.word_embeddings.rows"] = (vocabulary.original_size, len(vocabulary.kept))
    notes.insert(0, f"encoder: kept teacher layers {teacher_layers}; per layer {shape.heads} of {heads_before} heads "
                 f"and {shape.ffn} of {ffn_before} FFN channels; config num_hidden_layers, intermediate_size and "
                 "pruned_heads rewritten")
    notes.append("heads kept (teacher indices of the parent layer): "
                 + "; ".join(f"layer {index}: {list(heads)}" for index, heads in enumerate(cut.kept_heads)))
    pruning = PruneResult(module=student, params_before=params_before, params_after=params_after,
                          macs_before=macs_before, macs_after=macs_after, layers=layers, checks=checks,
                          notes=tuple(notes))
    return EncoderCompression(student=student, pruning=pruning, distillation=report, accuracy=accuracy,
                              macs_after=macs_after, params_after=params_after)
