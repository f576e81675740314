"""Structured pruning with torch-pruning's dependency graph, checked group by group.

The self-check: before a group is removed, the channels it removes are zeroed at their source
(output rows of convs/linears, batch-norm scale and shift, embedding columns), so they contribute
nothing downstream; the model's outputs are recorded, the group is pruned, and the outputs must
not change. A dependency graph that removes the wrong consumer columns (a real torch-pruning bug
with torch.stack + flatten) changes them and stops the run.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field

import torch
from torch import nn

from edgepack.errors import ConfigError, PruningError
from edgepack.model.tensors import count_macs_and_params

EXACT_ZERO_TYPES = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.Embedding)
NOT_ZERO_CHECKABLE = (nn.LayerNorm, nn.GroupNorm, nn.MultiheadAttention)
RELATIVE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class PruneResult:
    """The pruned model and what happened to it."""

    module: nn.Module
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    layers: dict[str, tuple[int, int]]
    checks: tuple[dict, ...]
    notes: tuple[str, ...] = field(default=())


def _importance(name: str):
    import torch_pruning as tp

    return {"l1": lambda: tp.importance.MagnitudeImportance(p=1),
            "l2": lambda: tp.importance.MagnitudeImportance(p=2),
            "taylor": lambda: tp.importance.TaylorImportance(),
            "group_magnitude": lambda: tp.importance.GroupMagnitudeImportance(p=2)}[name]()


def _widths(module: nn.Module) -> dict[str, int]:
    """Output width of every prunable layer, by module name."""
    widths = {}
    for name, layer in module.named_modules():
        if isinstance(layer, nn.modules.conv._ConvNd):
            widths[name] = layer.out_channels
        elif isinstance(layer, nn.Linear):
            widths[name] = layer.out_features
        elif isinstance(layer, nn.Embedding):
            widths[name] = layer.embedding_dim
        elif isinstance(layer, nn.MultiheadAttention):
            widths[name] = layer.embed_dim
    return widths


def _outputs(module: nn.Module, example: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """Copies of the outputs, safe to keep while the module is changed in place."""
    return [t.detach().clone() for t in _outputs_raw(module, example)]


def output_heads(module: nn.Module, example: tuple[torch.Tensor, ...]) -> list[nn.Module]:
    """Layers whose output is a model output (classification heads): never pruned."""
    produced: dict[int, nn.Module] = {}
    order: list[nn.Module] = []
    alive: list = []  # keeps every recorded output referenced: a freed tensor's id() can be reused by the
    # final output (seen once in CI: a random layer was taken for the head and the real heads were pruned)

    def record(layer, inputs, output):
        produced[id(output)] = layer
        alive.append(output)
        order.append(layer)

    hooks = [layer.register_forward_hook(record)
             for layer in module.modules() if isinstance(layer, (nn.Linear, nn.modules.conv._ConvNd, nn.Embedding))]
    try:
        outputs = _outputs_raw(module, example)
    finally:
        for hook in hooks:
            hook.remove()
    heads = [produced[id(output)] for output in outputs if id(output) in produced]
    if heads:
        return heads
    # An output computed after its layers (a logit squeezed to [batch], a sum of several terms) is
    # no tensor a layer produced: protect every layer as wide as an output (e.g. all width-1 logit
    # and bias layers of a CTR model) and the last layer that ran.
    widths = {output.shape[-1] if output.dim() > 1 else 1 for output in outputs}
    width_of = _widths(module)
    names = {id(layer): name for name, layer in module.named_modules()}
    matching = [layer for layer in dict.fromkeys(order) if width_of.get(names[id(layer)]) in widths]
    return list(dict.fromkeys(matching + order[-1:]))


def _outputs_raw(module, example, *, grad: bool = False):
    with torch.set_grad_enabled(grad):
        result = module(*example)
    return list(result) if isinstance(result, (tuple, list)) else [result]


def resolve_ignored(module: nn.Module, names: list[str]) -> list[nn.Module]:
    """Modules named in `prune.ignore`; an unknown name is a ConfigError with the closest names."""
    named = dict(module.named_modules())
    ignored = []
    for name in names:
        if name not in named:
            close = difflib.get_close_matches(name, [n for n in named if n], n=3)
            raise ConfigError(f"prune.ignore: no module named '{name}'"
                              + (f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""))
        ignored.append(named[name])
    return ignored


def risky_patterns(module: nn.Module, example: tuple[torch.Tensor, ...]) -> set[str]:
    """Autograd op names in the forward pass that torch-pruning is known to mishandle."""
    found: set[str] = set()
    with torch.enable_grad():
        params = [p for p in module.parameters()]
        flags = [p.requires_grad for p in params]
        for param in params:
            param.requires_grad_(True)
        try:
            roots = [t.grad_fn for t in _outputs_raw(module, example, grad=True) if t.grad_fn is not None]
        finally:
            for param, flag in zip(params, flags):
                param.requires_grad_(flag)
    seen, stack = set(), list(roots)
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        name = type(node).__name__
        if name.startswith(("StackBackward", "BmmBackward")):
            found.add(name.rstrip("0123456789"))
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return found


def _zero_group(group) -> bool:
    """Zero what the group removes at its source; False when the group cannot be checked exactly."""
    checkable = True
    with torch.no_grad():
        for dep, idxs in group:
            layer = dep.target.module
            handler = getattr(dep.handler, "__name__", "")
            if isinstance(layer, NOT_ZERO_CHECKABLE):
                checkable = False
            if handler != "prune_out_channels" or not isinstance(layer, EXACT_ZERO_TYPES):
                continue
            index = torch.as_tensor(list(idxs), dtype=torch.long)
            if isinstance(layer, nn.Embedding):
                layer.weight[:, index] = 0
                continue
            layer.weight[index] = 0
            bias = getattr(layer, "bias", None)
            if bias is not None:
                bias[index] = 0
    return checkable


def _group_name(group, names: dict[int, str]) -> str:
    dep, _ = group[0]
    return names.get(id(dep.target.module), str(dep.target.name))


def _compare(before: list[torch.Tensor], after: list[torch.Tensor]) -> float:
    worst = 0.0
    for want, got in zip(before, after):
        if want.shape != got.shape:
            return float("inf")
        scale = max(float(want.abs().max()), 1e-6)
        worst = max(worst, float((want - got).abs().max()) / scale)
    return worst


def _taylor_gradients(module, config, taylor_loss) -> None:
    """Taylor importance reads .grad: backpropagate the loss into `module` (a fresh copy has none)."""
    if config.importance != "taylor":
        return
    if taylor_loss is None:
        raise PruningError("Taylor importance needs data to compute gradients")
    module.zero_grad()
    taylor_loss(module).backward()


def _ratio_for_target(module, example, config, ignored_names, heads, macs0, params0, taylor_loss=None) -> float:
    """Per-layer channel ratio that removes `config.ratio` of MACs (or params): bisection on copies."""
    low, high, best = 0.0, config.max_layer_ratio, config.max_layer_ratio
    goal = config.ratio
    for _ in range(12):
        middle = (low + high) / 2
        trial = copy.deepcopy(module)
        _taylor_gradients(trial, config, taylor_loss)   # deepcopy drops .grad; Taylor trials need it
        head_dims = _head_dims(trial, config)
        _pruner(trial, example, config, middle, ignored_names, heads, steps=1).step()
        _update_head_counts(trial, config, head_dims)
        macs, params = count_macs_and_params(trial, example)
        removed = 1 - (macs / macs0 if config.by == "macs" else params / params0)
        if removed >= goal:
            best, high = middle, middle
        else:
            low = middle
        if high - low < 0.005:
            break
    return best


def _attention_heads(module: nn.Module, config) -> dict:
    """{q/k/v Linear: head count} for the recipe's attention modules, checked against the model."""
    named = dict(module.named_modules())
    num_heads = {}
    for spec in config.attention:
        for name in (spec.module, spec.q, spec.k, spec.v):
            if name not in named:
                raise ConfigError(f"prune.attention: no module named '{name}'")
        heads = getattr(named[spec.module], spec.heads_attribute, None)
        if not isinstance(heads, int):
            raise ConfigError(f"prune.attention: module '{spec.module}' has no integer attribute "
                              f"'{spec.heads_attribute}' holding its head count")
        num_heads.update({named[spec.q]: heads, named[spec.k]: heads, named[spec.v]: heads})
    return num_heads


def _head_dims(module: nn.Module, config) -> dict[str, int]:
    """Per attention module, the width of one head (constant: only whole heads are removed)."""
    named = dict(module.named_modules())
    return {spec.module: named[spec.q].out_features // getattr(named[spec.module], spec.heads_attribute)
            for spec in config.attention}


def _update_head_counts(module: nn.Module, config, head_dims: dict[str, int]) -> None:
    """After whole heads are removed, each attention module must know its new head count to run."""
    named = dict(module.named_modules())
    for spec in config.attention:
        setattr(named[spec.module], spec.heads_attribute, named[spec.q].out_features // head_dims[spec.module])


def _pruner(module, example, config, ratio, ignored_names, heads, *, steps):
    import torch_pruning as tp

    named = dict(module.named_modules())
    ignored = [named[name] for name in ignored_names] + [named[name] for name in heads]
    num_heads = _attention_heads(module, config)
    return tp.pruner.MetaPruner(
        module, example if len(example) > 1 else example[0], importance=_importance(config.importance),
        global_pruning=config.global_pruning, pruning_ratio=ratio, max_pruning_ratio=config.max_layer_ratio,
        iterative_steps=steps, ignored_layers=ignored, round_to=None if num_heads else config.round_to,
        root_module_types=[nn.modules.conv._ConvNd, nn.Linear, nn.Embedding, nn.MultiheadAttention],
        num_heads=num_heads, prune_num_heads=bool(num_heads), prune_head_dims=not num_heads,
        head_pruning_ratio=ratio if num_heads else 0.0,
    )


def prune_model(module: nn.Module, example: tuple[torch.Tensor, ...], config, *, between_steps=None,
                taylor_loss=None) -> PruneResult:
    """Prune a copy of `module` to the recipe's target in `config.steps` steps, self-checking every group.

    `between_steps(model, step)` runs after each step but the last (distillation between steps);
    `taylor_loss(model)` returns a loss to backpropagate before each step for Taylor importance.
    """
    module = copy.deepcopy(module).eval()
    names = {id(layer): name for name, layer in module.named_modules()}
    ignored_names = [names[id(layer)] for layer in resolve_ignored(module, config.ignore)]
    heads = [names[id(layer)] for layer in output_heads(module, example)]
    notes = [f"output head(s) protected: {', '.join(heads)}"] if heads else []
    patterns = risky_patterns(module, example)
    if "BmmBackward" in patterns and not config.ignore and not config.attention:
        raise PruningError("the model multiplies activations with each other (batched matmul: a pairwise dot "
                           "interaction or attention); torch-pruning's dependency graph exhausted 23 GB of memory on "
                           "a pairwise interaction. List the layers feeding it in prune.ignore, or describe attention "
                           "modules in prune.attention, to prune the rest.")
    if "StackBackward" in patterns:
        stacked = [name for name, layer in module.named_modules() if isinstance(layer, nn.Embedding)]
        if stacked:
            ignored_names += [name for name in stacked if name not in ignored_names]
            notes.append("embeddings combined by torch.stack: torch-pruning removes the wrong columns of the next "
                         f"layer there, so embedding dims were left unpruned ({', '.join(stacked)})")
    widths_before = _widths(module)
    macs0, params0 = count_macs_and_params(module, example)
    ratio = _ratio_for_target(module, example, config, ignored_names, heads, macs0, params0, taylor_loss)
    head_dims = _head_dims(module, config)
    pruner = _pruner(module, example, config, ratio, ignored_names, heads, steps=config.steps)
    checks = []
    for step in range(config.steps):
        _taylor_gradients(module, config, taylor_loss)
        for group in pruner.step(interactive=True):
            name = _group_name(group, names)
            checkable = _zero_group(group)
            before = _outputs(module, example)
            group.prune()
            _update_head_counts(module, config, head_dims)
            difference = _compare(before, _outputs(module, example))
            checks.append({"step": step + 1, "group": name, "channels": len(group[0][1]),
                           "max_relative_difference": difference, "checked": checkable})
            if checkable and not difference <= RELATIVE_TOLERANCE:
                raise PruningError(f"pruning self-check failed for the layer group rooted at '{name}': outputs "
                                   f"changed by {difference:.3g} (relative) although the removed channels were "
                                   "zero; the dependency graph removed the wrong channels")
        _sync_attention_heads(module)
        if between_steps is not None and step + 1 < config.steps:
            between_steps(module, step + 1)
    macs1, params1 = count_macs_and_params(module, example)
    widths_after = _widths(module)
    layers = {name: (widths_before[name], widths_after.get(name, 0)) for name in widths_before}
    return PruneResult(module=module.eval(), params_before=params0, params_after=params1, macs_before=macs0,
                       macs_after=macs1, layers=layers, checks=tuple(checks), notes=tuple(notes))


def unpruned(module: nn.Module, example: tuple[torch.Tensor, ...]) -> PruneResult:
    """A copy of `module` described as a PruneResult that removed nothing (compression without pruning)."""
    module = copy.deepcopy(module).eval()
    macs, params = count_macs_and_params(module, example)
    widths = _widths(module)
    return PruneResult(module=module, params_before=params, params_after=params, macs_before=macs, macs_after=macs,
                       layers={name: (width, width) for name, width in widths.items()}, checks=())


def _sync_attention_heads(module: nn.Module) -> None:
    """nn.MultiheadAttention keeps head_dim and its fast-path flags in sync with a pruned embed_dim."""
    for layer in module.modules():
        if isinstance(layer, nn.MultiheadAttention):
            layer.head_dim = layer.embed_dim // layer.num_heads
            layer.kdim = layer.vdim = layer.embed_dim


def save_pruned(module: nn.Module, example: tuple[torch.Tensor, ...], path) -> None:
    """Save the pruned architecture and weights together (torch.export program, dynamic batch)."""
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.export.export(module.eval(), example, dynamic_shapes=tuple({0: batch} for _ in example))
    torch.export.save(program, str(path))


def reload_and_check(path, module: nn.Module, example: tuple[torch.Tensor, ...]) -> float:
    """Reload a saved pruned model and return its max abs difference from `module` on `example`."""
    reloaded = torch.export.load(str(path)).module()
    before, after = _outputs(module, example), _outputs(reloaded, example)
    return max(float((a - b).abs().max()) for a, b in zip(before, after))
