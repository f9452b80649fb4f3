"""Mask selection inside the pipeline: targets, global allocation, SparseGPT, Conv2d
statistics and the magnitude-vs-Hessian diagnostics."""

import logging

import pytest
import torch
from conftest import VOCAB, tiny_bert, tiny_llama, tiny_vit

import snows_hf
from snows_hf.masks import parse_sparsity, satisfies, to_rows
from snows_hf.methods import input_features


def _ids(n=8, seed=0):
    return torch.randint(4, VOCAB, (n, 12), generator=torch.Generator().manual_seed(seed))


def _pixels(n=8, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _pruned(report):
    return [layer.name for layer in report.layers]


def test_targets_and_ignore_accept_memory_and_checkpoint_names_and_types():
    config = {"sparsity": "2:4", "method": "mask-only", "mask": "magnitude", "batch_size": 4}
    # the checkpoint spelling of ViT's query projection (transformers 5 calls it q_proj)
    report = snows_hf.prune_(tiny_vit(), config | {"targets": [r"attention\.attention\.query"]}, _pixels())
    assert _pruned(report) == ["vit.layers.0.attention.q_proj", "vit.layers.1.attention.q_proj"]
    model = tiny_vit()
    report = snows_hf.prune_(model, config | {"ignore": ["q_proj", r"intermediate\.dense"]}, _pixels())
    assert not any("q_proj" in n or "fc1" in n for n in _pruned(report)) and len(report.layers) == 8
    assert bool((model.vit.layers[0].mlp.fc1.weight != 0).all())  # ignored means untouched
    report = snows_hf.prune_(tiny_bert(), config | {"targets": ["Linear"], "ignore": ["layer\\.1\\."]}, _ids())
    assert len(report.layers) == 6 and all(".layer.0." in n for n in _pruned(report))


def test_target_errors_are_clear():
    config = {"sparsity": "2:4", "method": "mask-only", "mask": "magnitude", "batch_size": 4}
    with pytest.raises(ValueError, match=r"targets 'nope' matches no Linear/Conv1D/Conv2d module .*q_proj"):
        snows_hf.prune_(tiny_vit(), config | {"targets": ["q_proj", "nope"]}, _pixels())
    with pytest.raises(ValueError, match="no module is left to prune"):
        snows_hf.prune_(tiny_vit(), config | {"ignore": [".*"]}, _pixels())
    with pytest.raises(ValueError, match="not a regular expression"):
        snows_hf.PruneConfig(sparsity="2:4", targets=["("])


@pytest.mark.parametrize("mask", ["magnitude", "wanda", "hessian", "sparsegpt"])
def test_global_allocation_hits_target_and_respects_cap(mask):
    model = tiny_llama()
    config = {"sparsity": "0.6", "method": "mask-only", "mask": mask, "allocation": "global",
              "max_layer_sparsity": 0.75, "batch_size": 4}
    report = snows_hf.prune_(model, config, _ids())
    sizes = [torch.Size(layer.shape).numel() for layer in report.layers]
    zeros = [round(layer.sparsity * n) for layer, n in zip(report.layers, sizes)]
    assert sum(zeros) == round(0.6 * sum(sizes))
    assert max(layer.sparsity for layer in report.layers) <= 0.75 + 1e-9
    assert len({round(layer.sparsity, 3) for layer in report.layers}) > 1  # not uniform


def test_global_allocation_options_are_checked():
    with pytest.raises(ValueError, match="unstructured sparsity"):
        snows_hf.PruneConfig(sparsity="2:4", allocation="global")
    with pytest.raises(ValueError, match="allocation='global' only"):
        snows_hf.PruneConfig(sparsity="0.5", max_layer_sparsity=0.9)
    with pytest.raises(ValueError, match="below the target"):
        snows_hf.PruneConfig(sparsity="0.7", allocation="global", max_layer_sparsity=0.6)
    assert snows_hf.PruneConfig(sparsity="0.5", allocation="global").max_layer_sparsity == 0.95


def _layer_error(model_factory, config, inputs, module):
    """Relative error of the first targeted module's output, pruned vs dense, on its own inputs."""
    dense = model_factory()
    seen = []
    handle = module(dense).register_forward_hook(lambda m, a, o: seen.append((a[0].detach(), o.detach())))
    with torch.no_grad():
        dense(**inputs)
    handle.remove()
    pruned = model_factory()
    snows_hf.prune_(pruned, config, inputs)
    x, y = seen[0]
    with torch.no_grad():
        out = module(pruned)(x)
    return float((out - y).pow(2).sum() / y.pow(2).sum()), pruned


def test_sparsegpt_keeps_its_update_and_beats_magnitude():
    inputs = {"input_ids": _ids(16)}
    first = lambda m: m.model.layers[0].self_attn.q_proj  # noqa: E731
    base = {"sparsity": "2:4", "method": "mask-only", "batch_size": 4}
    err_sgpt, model = _layer_error(tiny_llama, base | {"mask": "sparsegpt"}, inputs, first)
    err_mag, _ = _layer_error(tiny_llama, base | {"mask": "magnitude"}, inputs, first)
    assert err_sgpt < 0.9 * err_mag  # near-isotropic random inputs: a modest, deterministic gain
    dense = first(tiny_llama()).weight
    kept = first(model).weight != 0
    assert satisfies(kept, parse_sparsity("2:4"))
    assert not torch.allclose(first(model).weight[kept], dense[kept])  # OBS-updated, not just masked


def test_sparsegpt_warm_starts_snows():
    model = tiny_llama()
    config = {"sparsity": "2:4", "method": "snows", "mask": "sparsegpt", "init": "mask", "k_step": 1,
              "newton_steps": 1, "cg_iters": 3, "batch_size": 4}
    report = snows_hf.prune_(model, config, _ids(16))
    inits = {layer.metrics["init"] for layer in report.layers}
    assert inits == {"sparsegpt"}
    first = report.layers[0].metrics
    assert first["heldout_loss_after"] <= first["heldout_loss_masked"]


def test_conv2d_features_line_up_with_the_weight_view():
    conv = torch.nn.Conv2d(5, 4, kernel_size=(3, 2), stride=2, padding=1, dilation=(1, 2))
    x = torch.randn(2, 5, 9, 11)
    features = input_features(conv, "conv2d", x)
    rows = to_rows(conv.weight.detach(), "conv2d")  # (out * positions, in)
    flat = rows.reshape(4, -1)  # (out, positions * in), position-major like the features
    with torch.no_grad():
        expected = (conv(x) - conv.bias[:, None, None]).permute(0, 2, 3, 1).reshape(-1, 4)
    torch.testing.assert_close(features @ flat.T, expected, rtol=1e-5, atol=1e-5)
    grouped = torch.nn.Conv2d(4, 4, 3, groups=4)
    with pytest.raises(ValueError, match="grouped"):
        input_features(grouped, "conv2d", torch.randn(1, 4, 5, 5))


@pytest.mark.parametrize("mask", ["magnitude", "wanda", "hessian", "sparsegpt"])
@pytest.mark.parametrize("spec", ["2:4", "0.6"])
def test_conv2d_layers_pruned_with_every_selector(mask, spec):
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    model = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[16, 24], depths=[1, 1], num_labels=3)).eval()
    config = {"sparsity": spec, "method": "mask-only", "mask": mask, "targets": ["Conv2d"], "batch_size": 4}
    report = snows_hf.prune_(model, config, {"pixel_values": _pixels(8)})
    modules = dict(model.named_modules())
    assert len(report.layers) == 8 and {layer.layout for layer in report.layers} == {"conv2d"}  # with the stage-0 shortcut
    for layer in report.layers:
        keep = to_rows(modules[layer.name].weight.detach(), "conv2d") != 0
        assert satisfies(keep, parse_sparsity(spec)), layer.name
        assert layer.diagnostics is not None


def test_diagnostics_in_report_and_warning_when_magnitude_drops_importance(caplog):
    # Make the magnitude mask wrong on purpose: inputs of q/k/v with tiny variance carry
    # large weights, inputs with large variance carry small ones.
    model = tiny_vit()
    scale = torch.ones(32)
    scale[::2] = 30.0
    scale[1::2] = 0.03
    for layer in model.vit.layers:
        with torch.no_grad():
            layer.layernorm_before.weight.mul_(scale)
            layer.layernorm_before.bias.zero_()
            for proj in (layer.attention.q_proj, layer.attention.k_proj, layer.attention.v_proj):
                proj.weight.div_(scale.sqrt())
    with caplog.at_level(logging.WARNING, logger="snows_hf"):
        report = snows_hf.prune_(model, {"sparsity": "2:4", "method": "mask-only", "mask": "magnitude", "batch_size": 4}, _pixels())
    diag = report.layers[0].diagnostics
    assert set(diag) == {"jaccard", "importance_removed_magnitude", "importance_removed_hessian",
                         "input_variance_spread", "dead_inputs"}
    assert diag["importance_removed_magnitude"] > 2 * diag["importance_removed_hessian"]
    assert diag["input_variance_spread"] > 100 and diag["jaccard"] < 0.5
    assert "mask='sparsegpt' (the default) or hessian avoids this" in caplog.text
    assert report.to_dict()["layers"][0]["diagnostics"] == diag


def test_diagnostics_can_be_switched_off(monkeypatch):
    from snows_hf.methods import ModuleJob

    calls = []
    original = ModuleJob.input_stats
    monkeypatch.setattr(ModuleJob, "input_stats", lambda self, needs: calls.append(set(needs)) or original(self, needs))
    report = snows_hf.prune_(tiny_vit(), {"sparsity": "2:4", "method": "mask-only", "mask": "magnitude", "diagnostics": False}, _pixels())
    assert all(layer.diagnostics is None for layer in report.layers)
    assert all(not needs for needs in calls)  # magnitude needs nothing, so no statistics pass ran
