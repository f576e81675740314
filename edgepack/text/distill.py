"""MiniLM/TinyBERT-style distillation of a pruned encoder from its parent.

Loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels)     (logits)
       + hidden_states * sum_l MSE(P(student h_l), teacher h_map(l))   over real tokens (TinyBERT)
       + attentions * sum_l KL(teacher attention || student attention)  over real query rows

`P` is a learned projection when the widths differ (identity otherwise). The layer map pairs
student layer l with teacher layer map[l]; hidden state 0 (the embeddings' output) pairs with the
teacher's. A pruned student's heads are a subset of its parent's: head h of student layer l is
matched with the teacher head it was cut from, in the mapped layer (`kept_heads`), so attention
maps compare head by head although the counts differ.

Epochs, time budget, patience and the validation split are DistillConfig's, as for every other
distillation here; epochs are ranked by KL from the teacher on the validation split.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn

from edgepack.compression.distill import (
    DistillReport,
    _predict,
    _validation_score,
    distillation_loss,
    label_loss,
    prepare,
    run_epochs,
)
from edgepack.text.huggingface import LogitsOnly

EPSILON = 1e-12


def uniform_layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """TinyBERT's uniform map: student layer l learns from teacher layer (l + 1) * T / S - 1."""
    return [(index + 1) * teacher_layers // student_layers - 1 for index in range(student_layers)]


def _masked_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(student.dtype)
    return ((student - teacher) ** 2 * weights).sum() / (weights.sum() * student.shape[-1]).clamp_min(1.0)


def _attention_kl(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of attention rows [batch, heads, query, key], averaged over real queries."""
    rows = (teacher * (torch.log(teacher + EPSILON) - torch.log(student + EPSILON))).sum(-1)
    weights = mask[:, None, :].to(rows.dtype).expand_as(rows)
    return (rows * weights).sum() / weights.sum().clamp_min(1.0)


class _Features(nn.Module):
    """Projections of the student's hidden states onto the teacher's width, when they differ."""

    def __init__(self, student_width: int, teacher_width: int, count: int):
        super().__init__()
        self.maps = nn.ModuleList(nn.Identity() if student_width == teacher_width
                                  else nn.Linear(student_width, teacher_width, bias=False) for _ in range(count))


def _trimmed(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The batch cut to its longest text: padding changes neither the logits nor the masked losses, and most
    reviews are far shorter than max_length, so this halves the training time."""
    length = max(1, int(batch[1].sum(1).max()))
    if bool(batch[1][:, length:].any()):  # padded on the left: nothing to cut
        return batch
    return tuple(tensor[:, :length] for tensor in batch)


def _run(model: LogitsOnly, batch: tuple[torch.Tensor, ...], *, features: bool):
    if not features:
        return model(*batch), None, None
    output = model.model(input_ids=model.model_ids(batch[0]), attention_mask=batch[1], output_hidden_states=True,
                         output_attentions=True)
    return output.logits, output.hidden_states, output.attentions


def distill_encoder(student: LogitsOnly, teacher: LogitsOnly, data: dict[str, np.ndarray],
                    labels: Optional[np.ndarray], input_names: list[str], config, *,
                    layer_map: list[int], kept_heads: tuple[tuple[int, ...], ...], seed: int = 0) -> DistillReport:
    """Train `student` in place from `teacher`; restores the best validation epoch's weights."""
    generator, train_inputs, valid_inputs, train_y, valid_y = prepare(data, labels, input_names, config, seed)
    teacher = teacher.eval()
    teacher_valid = _predict(teacher, valid_inputs)
    features = config.hidden_states > 0 or config.attentions > 0
    teacher_train = None if features else _predict(teacher, train_inputs)
    projections = _Features(student.hidden_size, teacher.hidden_size, len(layer_map) + 1)
    head_index = [torch.tensor(heads, dtype=torch.long) for heads in kept_heads]
    optimizer = torch.optim.AdamW(list(student.parameters()) + list(projections.parameters()), lr=config.lr)

    def batch_loss(index: torch.Tensor) -> torch.Tensor:
        batch = _trimmed(tuple(t[index] for t in train_inputs))
        logits, hidden, attentions = _run(student, batch, features=features)
        with torch.no_grad():
            if teacher_train is not None:
                teacher_logits, teacher_hidden, teacher_attentions = teacher_train[index], None, None
            else:
                teacher_logits, teacher_hidden, teacher_attentions = _run(teacher, batch, features=True)
        loss = config.alpha * distillation_loss(logits, teacher_logits, config.temperature)
        if train_y is not None:
            loss = loss + (1 - config.alpha) * label_loss(logits, train_y[index])
        mask = batch[1]
        if config.hidden_states > 0:
            assert hidden is not None and teacher_hidden is not None, "features were asked for"
            pairs = [(0, 0)] + [(layer + 1, mapped + 1) for layer, mapped in enumerate(layer_map)]
            loss = loss + config.hidden_states * torch.stack(
                [_masked_mse(projections.maps[s](hidden[s]), teacher_hidden[t], mask) for s, t in pairs]).sum()
        if config.attentions > 0:
            assert attentions is not None and teacher_attentions is not None, "features were asked for"
            loss = loss + config.attentions * torch.stack(
                [_attention_kl(attentions[layer], teacher_attentions[mapped][:, head_index[layer]], mask)
                 for layer, mapped in enumerate(layer_map)]).sum()
        return loss

    metric = "accuracy" if valid_y is not None else "top-1 agreement with the teacher"
    return run_epochs(student, optimizer, batch_loss, len(train_inputs[0]), config, generator,
                      score_of=lambda: _validation_score(student, teacher_valid, valid_inputs, valid_y), metric=metric)
