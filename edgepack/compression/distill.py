"""Knowledge distillation: the float model (teacher) trains the pruned student.

Loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels)   (Hinton et al. 2015)
       + feature_weight * MSE(projection(student feature), teacher feature)        (FitNets, optional)
Without labels the label term is dropped (pure distillation on unlabelled data). Early stopping
watches a validation split carved from the distillation data, never the evaluation set, which is
kept for measuring drift.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from edgepack.errors import ConfigError
from edgepack.model.tensors import as_tensors


@dataclass(frozen=True)
class DistillReport:
    """What the recovery training did."""

    epochs_run: int
    best_epoch: int
    best_validation: float
    validation_metric: str
    stopped: str
    seconds: float
    history: tuple[dict, ...]


def split(arrays: dict[str, np.ndarray], labels: Optional[np.ndarray], fraction: float, seed: int):
    """Seeded train/validation split of the distillation data."""
    count = len(next(iter(arrays.values())))
    order = np.random.default_rng(seed).permutation(count)
    cut = max(1, int(round(count * fraction)))

    def pick(index):
        return ({k: v[index] for k, v in arrays.items()}, None if labels is None else labels[index])

    return pick(order[cut:]), pick(order[:cut])


class _FeatureTap:
    """Records a named submodule's output during forward."""

    def __init__(self, model: nn.Module, name: str, role: str):
        modules = dict(model.named_modules())
        if name not in modules:
            raise ConfigError(f"distill.features: the {role} has no module named '{name}'")
        self.value: torch.Tensor | None = None
        self.handle = modules[name].register_forward_hook(self._store)

    def _store(self, module, inputs, output):
        self.value = output

    @property
    def tensor(self) -> torch.Tensor:
        """The last recorded output; a forward pass must have run."""
        assert self.value is not None, "no forward pass has run through the tapped module"
        return self.value

    def close(self) -> None:
        self.handle.remove()


def _projection(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> nn.Module:
    """A learned map from the student's (narrower) feature to the teacher's (FitNets regressor)."""
    if student_feature.dim() == 4:
        return nn.Conv2d(student_feature.shape[1], teacher_feature.shape[1], 1, bias=False)
    return nn.Linear(student_feature.shape[-1], teacher_feature.shape[-1], bias=False)


def _batches(count: int, size: int, generator: torch.Generator):
    order = torch.randperm(count, generator=generator)
    for start in range(0, count, size):
        yield order[start:start + size]


def _predict(model: nn.Module, inputs: tuple[torch.Tensor, ...], size: int = 512) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(*(t[i:i + size] for t in inputs)) for i in range(0, len(inputs[0]), size)])


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2-scaled divergence of softened outputs: softmax over classes, or a sigmoid for 1-D binary logits."""
    if student_logits.dim() == 1:
        soft_target = torch.sigmoid(teacher_logits / temperature)
        return temperature ** 2 * F.binary_cross_entropy_with_logits(student_logits / temperature, soft_target)
    return temperature ** 2 * F.kl_div(F.log_softmax(student_logits / temperature, 1),
                                       F.log_softmax(teacher_logits / temperature, 1),
                                       reduction="batchmean", log_target=True)


def label_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against class labels, or binary cross-entropy for 1-D logits and 0/1 labels."""
    if logits.dim() == 1:
        return F.binary_cross_entropy_with_logits(logits, labels.float())
    return F.cross_entropy(logits, labels)


def top1(logits: torch.Tensor) -> torch.Tensor:
    return (logits > 0).long() if logits.dim() == 1 else logits.argmax(1)


def divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> float:
    """KL(teacher || student) at T=1 per sample: 0 when the student reproduces the teacher (no entropy floor)."""
    if student_logits.dim() == 1:
        p, log_q1, log_q0 = torch.sigmoid(teacher_logits), F.logsigmoid(student_logits), F.logsigmoid(-student_logits)
        log_p1, log_p0 = F.logsigmoid(teacher_logits), F.logsigmoid(-teacher_logits)
        return float((p * (log_p1 - log_q1) + (1 - p) * (log_p0 - log_q0)).mean())
    return float(F.kl_div(F.log_softmax(student_logits, 1), F.log_softmax(teacher_logits, 1),
                          reduction="batchmean", log_target=True))


SELECTION = "lowest KL divergence from the teacher (T=1) on the validation split"


def _validation_score(student, teacher_logits, inputs, labels) -> tuple[float, float]:
    """(minus divergence from the teacher, quality) on the validation split.

    Fidelity ranks the epochs, not labels: the distillation data is usually the teacher's own training
    data, where a label metric (AUC, accuracy) rewards the memorisation that the freshly pruned student
    inherited from the teacher, so it picks epoch 0 and throws the recovery away; and a deployed model
    is judged by its drift from the teacher anyway. Quality (AUC for binary logits with labels, else
    accuracy or agreement) breaks ties and is what the history reports."""
    logits = _predict(student.eval(), inputs)
    fidelity = -divergence(logits, teacher_logits)
    if logits.dim() == 1 and labels is not None:
        from edgepack.evaluation.rec_metrics import auc

        return fidelity, float(auc(labels.numpy(), logits.numpy()))
    target = labels if labels is not None else top1(teacher_logits)
    return fidelity, float((top1(logits) == target).float().mean())


def prepare(data: dict[str, np.ndarray], labels: Optional[np.ndarray], input_names: list[str], config, seed: int):
    """Seeded generator, train and validation input tensors, train labels (None when alpha is 1) and validation
    labels: what every distillation here starts from."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    (train, train_labels), (valid, valid_labels) = split(data, labels, config.validation_fraction, seed)
    train_inputs, valid_inputs = as_tensors(train, input_names), as_tensors(valid, input_names)
    train_y = None if train_labels is None or config.alpha >= 1.0 else torch.from_numpy(train_labels)
    valid_y = None if valid_labels is None else torch.from_numpy(valid_labels)
    return generator, train_inputs, valid_inputs, train_y, valid_y


def distill(student: nn.Module, teacher: nn.Module, data: dict[str, np.ndarray], labels: Optional[np.ndarray],
            input_names: list[str], config, *, seed: int = 0) -> DistillReport:
    """Train `student` in place from `teacher`; restores the best validation epoch's weights."""
    generator, train_inputs, valid_inputs, train_y, valid_y = prepare(data, labels, input_names, config, seed)
    teacher = teacher.eval()
    teacher_train, teacher_valid = _predict(teacher, train_inputs), _predict(teacher, valid_inputs)
    taps = [(_FeatureTap(student, s, "student"), _FeatureTap(teacher, t, "teacher")) for s, t in config.features]
    projections = nn.ModuleList()
    if taps:
        with torch.no_grad():
            student(*(t[:2] for t in train_inputs))
            teacher(*(t[:2] for t in train_inputs))
        projections.extend(_projection(s.tensor, t.tensor) for s, t in taps)
    optimizer = torch.optim.Adam(list(student.parameters()) + list(projections.parameters()), lr=config.lr)
    temperature = config.temperature

    def batch_loss(index: torch.Tensor) -> torch.Tensor:
        batch = tuple(t[index] for t in train_inputs)
        logits = student(*batch)
        with torch.no_grad():
            teacher_logits = teacher_train[index] if not taps else teacher(*batch)
        loss = config.alpha * distillation_loss(logits, teacher_logits, temperature)
        if train_y is not None:
            loss = loss + (1 - config.alpha) * label_loss(logits, train_y[index])
        for (s_tap, t_tap), projection in zip(taps, projections):
            loss = loss + config.feature_weight * F.mse_loss(projection(s_tap.tensor), t_tap.tensor.detach())
        return loss

    binary = teacher_valid.dim() == 1
    metric = ("AUC" if binary else "accuracy") if valid_y is not None else "top-1 agreement with the teacher"
    report = run_epochs(student, optimizer, batch_loss, len(train_inputs[0]), config, generator,
                        score_of=lambda: _validation_score(student, teacher_valid, valid_inputs, valid_y),
                        metric=metric)
    for s_tap, t_tap in taps:
        s_tap.close()
        t_tap.close()
    return report


WARMUP_FRACTION = 0.06  # of all steps, as BERT fine-tuning recipes do


def learning_rate_schedule(optimizer: torch.optim.Optimizer, config, *, steps_per_epoch: int):
    """None for a constant rate; for `lr_schedule: linear`, a warm-up over the first 6% of the steps the epochs
    allow, then a linear decay to zero at the last one (a time budget that stops early leaves it above zero)."""
    if getattr(config, "lr_schedule", "constant") == "constant":
        return None
    total = max(1, config.epochs * steps_per_epoch)
    warmup = max(1, round(WARMUP_FRACTION * total))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (total - step) / max(1, total - warmup))))


def run_epochs(student: nn.Module, optimizer: torch.optim.Optimizer, batch_loss: Callable[[torch.Tensor], torch.Tensor],
               count: int, config, generator: torch.Generator, *, score_of: Callable[[], tuple[float, float]],
               metric: str) -> DistillReport:
    """The training loop every distillation here shares: shuffled batches of `count` samples, `batch_loss(rows)`,
    validation after each epoch, patience, a time budget (checked after every batch), and the best epoch's
    weights restored at the end."""
    best = (score_of(), 0, copy.deepcopy(student.state_dict()))
    history, started, stopped, epoch = [], time.perf_counter(), "epochs done", 0
    scheduler = learning_rate_schedule(optimizer, config, steps_per_epoch=-(-count // config.batch_size))
    for epoch in range(1, config.epochs + 1):
        student.train()
        total = 0.0
        for index in _batches(count, config.batch_size, generator):
            loss = batch_loss(index)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total += loss.item() * len(index)
            if time.perf_counter() - started > config.time_budget_s:
                break
        score = score_of()
        history.append({"epoch": epoch, "loss": total / count, "validation": score[1], "validation_kl": -score[0]})
        if score > best[0]:
            best = (score, epoch, copy.deepcopy(student.state_dict()))
        if epoch - best[1] >= config.patience and epoch < config.epochs:
            stopped = f"early stop: no validation gain for {config.patience} epochs"
            break
        if time.perf_counter() - started > config.time_budget_s:
            stopped = f"time budget of {config.time_budget_s:g} s reached"
            break
    student.load_state_dict(best[2])
    student.eval()
    return DistillReport(epochs_run=epoch, best_epoch=best[1], best_validation=best[0][1], validation_metric=metric,
                         stopped=stopped, seconds=time.perf_counter() - started, history=tuple(history))
