"""The block pipeline: capture, propagation, in-place pruning, hooks, reports."""

import contextlib
from dataclasses import dataclass

import pytest
import torch
from conftest import VOCAB, tiny_bert, tiny_llama, tiny_vit

import snows_hf
from snows_hf.adapters import block_targets, find_block_list
from snows_hf.masks import parse_sparsity, satisfies, to_rows
from snows_hf.methods import MaskOnly, MaskOnlyConfig, Method, MethodConfig, register_method, METHODS
from snows_hf.pipeline import capture_block_inputs, run_block


def _inputs(kind, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind == "vit":
        return {"pixel_values": torch.randn(n, 3, 32, 32, generator=g)}
    ids = torch.randint(4, VOCAB, (n, 12), generator=g)
    mask = torch.ones_like(ids)
    if kind == "bert":
        mask[1, 8:] = 0  # padding in one sample: the mask must reach the blocks as captured
    return {"input_ids": ids, "attention_mask": mask}


FACTORIES = {"vit": tiny_vit, "llama": tiny_llama, "bert": tiny_bert}


def _all_hooks(model):
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_captured_inputs_reproduce_model_forward(kind):
    model = FACTORIES[kind]()
    blocks = find_block_list(model).modules
    batches = [_inputs(kind, seed=s) for s in (0, 1)]
    calls = capture_block_inputs(model, blocks[0], batches, torch.device("cpu"))
    assert len(calls) == 2

    expected = []
    handle = blocks[-1].register_forward_hook(lambda m, a, o: expected.append(o if torch.is_tensor(o) else o[0]))
    with torch.no_grad():
        for batch in batches:
            model(**batch)
    handle.remove()

    with torch.no_grad():
        for call, want in zip(calls, expected):
            for block in blocks:
                call = call.with_hidden(run_block(block, call))
            torch.testing.assert_close(call.hidden, want, rtol=0, atol=1e-6)
    assert _all_hooks(model) == 0


@pytest.mark.parametrize("method", [{"method": "mask-only", "mask": "magnitude"}, {"method": "mask-only"},
                                    {"method": "snows"}])
def test_pruned_weights_are_positive_zeros(method):
    """A pruned weight is +0.0 whatever its sign was, so the compact format (kept values and
    their positions) gives every bit back (a product with the mask left -0.0 for negatives)."""
    model = tiny_llama()
    report = snows_hf.prune_(model, {"sparsity": "2:4", **method, "batch_size": 2}, _inputs("llama", n=4))
    for layer in report.layers:
        weight = model.get_submodule(layer.name).weight
        assert int((weight == 0).sum()) == weight.numel() // 2, layer.name
        assert not bool(((weight == 0) & torch.signbit(weight)).any()), layer.name


@pytest.mark.parametrize("kind, spec", [("vit", "2:4"), ("llama", "50%"), ("bert", "4:8"), ("llama", "1:4")])
def test_prune_in_place_meets_pattern_and_leaves_rest_alone(kind, spec):
    model = FACTORIES[kind]()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = snows_hf.prune_(model, {"sparsity": spec, "method": "mask-only", "mask": "magnitude", "batch_size": 2}, _inputs(kind, n=5))
    pattern = parse_sparsity(spec)
    blocks = find_block_list(model).modules
    targeted = {f"{n}.weight" for n, _ in model.named_modules() if n in {layer.name for layer in report.layers}}
    n_targets = sum(len(block_targets(b, model)) for b in blocks)
    assert len(report.layers) == n_targets == len(targeted)
    for name, module in model.named_modules():
        if f"{name}.weight" in targeted:
            assert satisfies(to_rows(module.weight, "linear") != 0, pattern), name
    for key, value in model.state_dict().items():
        if key not in targeted:
            assert torch.equal(value, before[key]), key
    assert report.sparsity == pytest.approx(pattern.fraction, abs=1e-6)
    assert report.num_calibration_samples == 5
    assert not model.training
    assert _all_hooks(model) == 0


def test_targets_exclude_embeddings_and_heads():
    model = tiny_llama()
    report = snows_hf.prune_(model, {"sparsity": "2:4", "method": "mask-only", "mask": "magnitude"}, _inputs("llama"))
    names = [layer.name for layer in report.layers]
    assert all(name.startswith("model.layers.") for name in names)
    assert names[:4] == [f"model.layers.0.self_attn.{p}_proj" for p in "qkvo"]
    assert not (model.lm_head.weight == 0).any()


def _options(name):
    """A method config class named ``name``, with no options."""
    return dataclass(type(f"Options_{name}", (MethodConfig,), {"name": name}))


@contextlib.contextmanager
def _registered(method):
    """``method`` registered for the duration of the block only."""
    register_method(method)
    try:
        yield
    finally:
        del METHODS[method.config_class.name]


def test_hooks_removed_when_a_method_fails():
    class Boom(Method):
        config_class = _options("boom-test")

        def prune_module(self, job):
            raise RuntimeError("boom")

    model = tiny_vit()
    with _registered(Boom), pytest.raises(RuntimeError, match="boom"):
        snows_hf.prune_(model, {"sparsity": "2:4", "method": "boom-test"}, _inputs("vit"))
    assert _all_hooks(model) == 0


def test_a_registered_method_gives_its_own_words_to_the_report():
    class Keep(MaskOnly):
        config_class = _options("keep-test")
        uses_mask_setting = False

        @classmethod
        def summary(cls, settings):
            return super().summary(settings) + ", weights kept as masked"

    with _registered(Keep):
        report = snows_hf.prune_(tiny_vit(), {"sparsity": "2:4", "method": "keep-test", "batch_size": 4}, _inputs("vit"))
        assert "(method keep-test, weights kept as masked)" in report.format_table()
        assert report.sparsity_block()["method"] == "keep-test" and "mask" not in report.sparsity_block()
    # read later, without the method registered: its name and mask, as for any method
    assert "(method keep-test, mask sparsegpt)" in report.format_table()


def test_register_method_rejects_duplicates():
    class Again(Method):
        config_class = MaskOnlyConfig

    with pytest.raises(ValueError, match="already registered"):
        register_method(Again)


def test_bad_config_and_calibration():
    model = tiny_vit()
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        snows_hf.prune_(model, {"sparsity": "2:4", "method": "nope"}, _inputs("vit"))
    with pytest.raises(ValueError, match="calibration data is empty"):
        snows_hf.prune_(model, {"sparsity": "2:4"}, [])
    with pytest.raises(ValueError, match="invalid sparsity"):
        snows_hf.PruneConfig(sparsity="4:4")
    with pytest.raises(ValueError, match="batch_size"):
        snows_hf.PruneConfig(sparsity="2:4", batch_size=0)


def test_default_method_is_snows():
    config = snows_hf.PruneConfig(sparsity="2:4")
    assert (config.method.name, config.mask, config.method.k_step) == ("snows", "sparsegpt", 3)


def test_as_batches_splits_mappings():
    batches = snows_hf.as_batches({"input_ids": torch.zeros(10, 3, dtype=torch.long)}, 4)
    assert [b["input_ids"].shape[0] for b in batches] == [4, 4, 2]
    assert len(snows_hf.as_batches([torch.zeros(2, 3)] * 3, 99, "pixel_values")) == 3


def test_generic_fallback_and_block_path():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM  # no registered adapter

    model = GPTNeoXForCausalLM(GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                             num_attention_heads=4, vocab_size=VOCAB)).eval()
    blocks = find_block_list(model)
    assert blocks.path == "gpt_neox.layers" and len(blocks) == 3 and blocks.names[2] == "gpt_neox.layers.2"
    report = snows_hf.prune_(model, {"sparsity": "2:4", "method": "mask-only", "mask": "magnitude"}, torch.randint(0, VOCAB, (2, 8)))
    assert report.sparsity == pytest.approx(0.5)
    with pytest.raises(ValueError, match="does not name a non-empty ModuleList"):
        find_block_list(model, "gpt_neox.embed_in")


@pytest.mark.parametrize("mask", ["wanda", "hessian"])
def test_data_aware_masks_match_hand_computed_statistics(mask):
    """The first module's mask equals the selector applied to its inputs' energy, computed apart."""
    from snows_hf.masks import select_mask

    batch = _inputs("llama", n=8)
    reference = tiny_llama()
    blocks = find_block_list(reference).modules
    calls = capture_block_inputs(reference, blocks[0], snows_hf.as_batches(batch, 4), torch.device("cpu"))
    with torch.no_grad():
        x = torch.cat([blocks[0].input_layernorm(c.hidden).reshape(-1, 32) for c in calls])
    q = blocks[0].self_attn.q_proj.weight.detach()
    expected = select_mask(mask, q, parse_sparsity("2:4"), {"input_sq": x.pow(2).sum(0)})

    model = tiny_llama()
    report = snows_hf.prune_(model, {"sparsity": "2:4", "method": "mask-only", "mask": mask, "batch_size": 4}, batch)
    assert report.layers[0].name == "model.layers.0.self_attn.q_proj"
    assert torch.equal(model.model.layers[0].self_attn.q_proj.weight != 0, expected)
    assert not torch.equal(expected, select_mask("magnitude", q, parse_sparsity("2:4")))
