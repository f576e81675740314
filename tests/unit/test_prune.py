"""Pruning: every supported architecture prunes, runs, exports and reloads; the self-check catches mis-pruning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgepack.compression.prune import prune_model, reload_and_check, save_pruned
from edgepack.errors import ConfigError, PruningError
from edgepack.model.onnx_export import check_against_torch, export_float_onnx
from edgepack.recipe.schema import InputSpec, PruneConfig
from tests.helpers import seeded
from tests.unit import prune_models

CASES = {
    "residual_depthwise_cnn": (lambda: seeded(prune_models.ResidualDepthwiseCNN),
                               lambda g: (torch.rand(8, 3, 16, 16, generator=g),)),
    "mlp": (lambda: seeded(prune_models.MLP), lambda g: (torch.randn(8, 20, generator=g),)),
    "embedding_concat": (lambda: seeded(prune_models.EmbeddingModel, "cat"),
                         lambda g: (torch.randint(0, 50, (8,), generator=g), torch.randint(0, 40, (8,), generator=g),
                                    torch.randn(8, 4, generator=g))),
    "multihead_attention": (lambda: seeded(prune_models.TinyTransformer, "mha"),
                            lambda g: (torch.randn(8, 6, 8, generator=g),)),
}


def _example(make_inputs):
    return make_inputs(torch.Generator().manual_seed(1))


def _spec(example):
    dtype = {torch.float32: "float32", torch.int64: "int64"}
    return [InputSpec(name=f"in{i}", dtype=dtype[t.dtype], shape=["batch", *t.shape[1:]])
            for i, t in enumerate(example)]


@pytest.mark.parametrize("case", sorted(CASES))
def test_architecture_prunes_runs_exports_and_reloads(case, tmp_path):
    make_model, make_inputs = CASES[case]
    model, example = make_model(), _example(make_inputs)
    result = prune_model(model, example, PruneConfig(ratio=0.3, by="params", round_to=4))
    assert result.params_after < result.params_before * 0.85
    assert all(check["max_relative_difference"] <= 1e-4 for check in result.checks if check["checked"])
    with torch.no_grad():
        assert result.module(*example).shape == model(*example).shape
    save_pruned(result.module, example, tmp_path / "model.pt2")
    assert reload_and_check(tmp_path / "model.pt2", result.module, example) < 1e-6
    feeds = {f"in{i}": t.numpy() for i, t in enumerate(example)}
    inputs = _spec(example)
    export_float_onnx(result.module, inputs, feeds, tmp_path / "model.onnx")
    assert check_against_torch(result.module, tmp_path / "model.onnx", inputs, feeds, threads=1) < 1e-4


def test_embedding_dims_are_pruned_when_concatenated():
    model, example = CASES["embedding_concat"][0](), _example(CASES["embedding_concat"][1])
    result = prune_model(model, example, PruneConfig(ratio=0.3, by="params", round_to=4))
    assert result.layers["users"][1] < 16 and result.layers["items"][1] < 16
    assert result.layers["top.2"] == (2, 2), "the output head is protected"


def test_whole_attention_heads_are_removed_and_the_head_count_rewritten(tmp_path):
    model = seeded(prune_models.TinyTransformer, "qkv")
    example = (torch.randn(8, 6, 8, generator=torch.Generator().manual_seed(1)),)
    config = PruneConfig(ratio=0.2, by="params", attention=[{"module": "attn", "q": "attn.q", "k": "attn.k",
                                                               "v": "attn.v"}])
    result = prune_model(model, example, config)
    attention = result.module.attn
    assert attention.num_heads < 4 and attention.q.out_features == attention.num_heads * attention.head_dim
    assert all(check["checked"] and check["max_relative_difference"] <= 1e-4 for check in result.checks)
    save_pruned(result.module, example, tmp_path / "model.pt2")
    assert reload_and_check(tmp_path / "model.pt2", result.module, example) < 1e-6


def test_stacked_embeddings_are_detected_and_left_unpruned():
    model = seeded(prune_models.EmbeddingModel, "stack")
    example = _example(CASES["embedding_concat"][1])
    result = prune_model(model, example, PruneConfig(ratio=0.3, by="params", round_to=4))
    assert any("torch.stack" in note for note in result.notes)
    assert result.layers["users"] == (16, 16) and result.layers["items"] == (16, 16)


def test_self_check_catches_a_mis_pruned_model(monkeypatch):
    """Remove different channels from the consumer than the producer: the check must stop the run."""
    import torch_pruning as tp

    original = tp.pruner.function.LinearPruner.prune_in_channels

    def off_by_one(self, layer, idxs):
        return original(self, layer, [(i + 1) % layer.in_features for i in idxs])

    monkeypatch.setattr(tp.pruner.function.LinearPruner, "prune_in_channels", off_by_one)
    model, example = CASES["mlp"][0](), _example(CASES["mlp"][1])
    with pytest.raises(PruningError, match="self-check failed for the layer group rooted at"):
        prune_model(model, example, PruneConfig(ratio=0.3, by="params", round_to=4))


def test_unknown_module_in_ignore_list_is_a_clear_error():
    model, example = CASES["mlp"][0](), _example(CASES["mlp"][1])
    with pytest.raises(ConfigError, match=r"prune.ignore: no module named 'net.9'.*did you mean"):
        prune_model(model, example, PruneConfig(ratio=0.3, ignore=["net.9"]))


@pytest.mark.parametrize("bad", [{"ratio": 0.0}, {"ratio": 1.0}, {"ratio": -0.2}, {"ratio": 0.5, "importance": "l3"},
                                 {"ratio": 0.5, "by": "flops"}, {"ratio": 0.5, "steps": 0}])
def test_bad_options_are_rejected(bad):
    with pytest.raises(Exception) as info:
        PruneConfig(**bad)
    assert type(info.value).__name__ == "ValidationError"


def test_mac_target_is_reached():
    model, example = CASES["residual_depthwise_cnn"][0](), _example(CASES["residual_depthwise_cnn"][1])
    result = prune_model(model, example, PruneConfig(ratio=0.5, by="macs", round_to=4))
    assert 1 - result.macs_after / result.macs_before >= 0.5
    assert np.isfinite(result.macs_after)


def test_activation_products_without_guidance_are_refused():
    model = seeded(prune_models.TinyTransformer, "qkv")
    example = (torch.randn(4, 6, 8, generator=torch.Generator().manual_seed(1)),)
    with pytest.raises(PruningError, match="prune.attention"):
        prune_model(model, example, PruneConfig(ratio=0.2, by="params"))


def test_low_rank_factorization_keeps_the_energy_and_saves_parameters():
    from edgepack.compression.lowrank import factorize

    torch.manual_seed(0)
    low_rank = torch.randn(128, 8) @ torch.randn(8, 96)  # rank 8 plus a little noise
    model = torch.nn.Sequential(torch.nn.Linear(96, 128), torch.nn.ReLU(), torch.nn.Linear(128, 5))
    with torch.no_grad():
        model[0].weight.copy_(low_rank + 0.01 * torch.randn(128, 96))
    inputs = torch.randn(16, 96)
    with torch.no_grad():
        before = model(inputs)
    (report,) = factorize(model, energy=0.99, min_features=64, keep={"2"})
    assert report["factorized"] and report["rank"] <= 10 and report["params_after"] < report["params_before"] / 4
    assert isinstance(model[0], torch.nn.Sequential)
    with torch.no_grad():
        assert (model(inputs) - before).abs().max() / before.abs().max() < 0.05


def test_low_rank_leaves_full_rank_layers_alone():
    from edgepack.compression.lowrank import factorize

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 3))
    (report,) = factorize(model, energy=0.99, min_features=32, keep={"2"})
    assert not report["factorized"] and isinstance(model[0], torch.nn.Linear)


def test_taylor_importance_gets_gradients_in_every_trial_and_a_nonzero_signal():
    from edgepack.compression.distill import distillation_loss, label_loss, top1

    model, example = CASES["mlp"][0](), _example(CASES["mlp"][1])
    with torch.no_grad():
        teacher_logits = model(*example)
    # Before the first step the student IS the teacher: the distillation loss has zero gradient,
    # so Taylor scores (|w * grad|) would all be 0; the teacher's hard labels give a real signal.
    for loss_of, nonzero in ((lambda m: distillation_loss(m(*example), teacher_logits, 1.0), False),
                             (lambda m: label_loss(m(*example), top1(teacher_logits)), True)):
        model.zero_grad()
        loss_of(model).backward()
        assert (max(p.grad.abs().max().item() for p in model.parameters()) > 1e-6) == nonzero
    calls = []

    def taylor_loss(module):
        calls.append(module)
        return label_loss(module(*example), top1(teacher_logits))

    result = prune_model(model, example, PruneConfig(ratio=0.3, by="params", round_to=4, importance="taylor"),
                         taylor_loss=taylor_loss)
    assert result.params_after < result.params_before * 0.85
    assert len(calls) > 1  # the bisection trials (fresh copies, no .grad) and the final step
    assert all(check["max_relative_difference"] <= 1e-4 for check in result.checks if check["checked"])
