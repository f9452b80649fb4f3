"""Families without an adapter entry, and stacks that mix attention kinds.

Convolutional networks with no table entry have their dense Linear/Conv2d layers pruned
(never depthwise or grouped convolutions); decoders whose ``config.layer_types`` mix
sliding-window and full attention give every block the arguments of its own kind.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch
import transformers as T

import snows_hf
from snows_hf.adapters import ADAPTERS, find_block_list
from snows_hf.blocks import OTHER_KINDS, run_block
from snows_hf.cli import main
from snows_hf.masks import parse_sparsity, satisfies, to_rows
from snows_hf.pipeline import capture_block_inputs

VOCAB = 128
SLIDING, FULL = "sliding_attention", "full_attention"


def _mobilenet_v2():
    model = T.MobileNetV2ForImageClassification(T.MobileNetV2Config(depth_multiplier=0.1, image_size=32, num_labels=3))
    processor = T.MobileNetV2ImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return model, processor


def _regnet():
    # groups_width=8: the 3x3 convolutions of 16 and 32 channels are grouped (2 and 4 groups)
    config = T.RegNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 2], groups_width=8, num_labels=3)
    return T.RegNetForImageClassification(config), T.ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=1.0)


CONV_NETS = {"mobilenet_v2": (_mobilenet_v2, ["mask-only", "--mask", "magnitude"]), "regnet": (_regnet, ["mask-only"])}


@pytest.mark.parametrize("name", sorted(CONV_NETS))
def test_fallback_prunes_dense_convolutions_through_the_cli(name, tmp_path):
    build, method = CONV_NETS[name]
    torch.manual_seed(0)
    model, processor = build()
    assert model.config.model_type not in ADAPTERS  # the fallback's case
    model.save_pretrained(tmp_path / "dense")
    processor.save_pretrained(tmp_path / "dense")
    argv = ["prune", str(tmp_path / "dense"), "--sparsity", "2:4", "--method", *method, "--dataset", "random",
            "--num-samples", "8", "--batch-size", "4", "--no-eval", "--output-dir", "out", "--quiet"]
    assert main(argv) == 0

    dense = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    pruned = T.AutoModelForImageClassification.from_pretrained("out")
    layers = {layer["name"]: layer for layer in json.loads(Path("out/report.json").read_text())["layers"]}
    grouped = [n for n, m in dense.items() if m.groups > 1]
    assert grouped and not set(grouped) & set(layers)  # depthwise (MobileNetV2) and grouped (RegNet) left out
    for conv_name, conv in pruned.named_modules():
        if not isinstance(conv, torch.nn.Conv2d):
            continue
        if conv_name in layers:
            assert conv.groups == 1 and layers[conv_name]["layout"] == "conv2d"
            assert satisfies(to_rows(conv.weight, "conv2d") != 0, parse_sparsity("2:4"), at_most=True), conv_name
        else:
            assert torch.equal(conv.weight, dense[conv_name].weight), conv_name  # untouched, bit for bit
    in_blocks = [n for n, m in dense.items() if m.groups == 1 and n.startswith(find_block_list(model).path)]
    assert sorted(layers) == sorted(in_blocks)


def _efficientnet():
    # transformers' EfficientNet pads with padding="same" (its 1x1 and stride-1 depthwise convolutions)
    # and "valid" (strided ones, after a ZeroPad2d); squeeze-excite reads >= 4 channels, so 2:4 fits;
    # hidden_dim: the head's width, which must match its 1x1 convolution's (1280 at width 1.0)
    config = T.EfficientNetConfig(image_size=32, width_coefficient=1.0, depth_coefficient=1.0, kernel_sizes=[3, 5, 3],
                                  in_channels=[32, 16, 24], out_channels=[16, 24, 24], strides=[1, 2, 1],
                                  num_block_repeats=[1, 1, 1], expand_ratios=[1, 4, 4], hidden_dim=1280, num_labels=3)
    return T.EfficientNetForImageClassification(config), T.EfficientNetImageProcessor(size={"height": 32, "width": 32})


def test_efficientnet_prunes_with_the_default_command(tmp_path):
    """The default method and mask (SNOWS on a SparseGPT mask) read the inputs of convolutions
    padded "same"; depthwise ones are left out, and the pruned model reloads."""
    torch.manual_seed(0)
    model, processor = _efficientnet()
    model.save_pretrained(tmp_path / "dense")
    processor.save_pretrained(tmp_path / "dense")
    argv = ["prune", str(tmp_path / "dense"), "--sparsity", "2:4", "--dataset", "random", "--num-samples", "8",
            "--batch-size", "4", "--no-eval", "--output-dir", "out", "--quiet"]
    assert main(argv) == 0

    report = json.loads(Path("out/report.json").read_text())
    assert (report["config"]["method"], report["config"]["mask"]) == ("snows", "sparsegpt")  # the defaults
    layers = {layer["name"]: layer for layer in report["layers"]}
    dense = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    in_blocks = sorted(n for n, m in dense.items() if m.groups == 1 and n.startswith("efficientnet.encoder.blocks."))
    assert sorted(layers) == in_blocks and all(dense[n].padding == "same" for n in in_blocks)
    pruned = T.AutoModelForImageClassification.from_pretrained("out").eval()
    for name, conv in pruned.named_modules():
        if name in layers:
            assert satisfies(to_rows(conv.weight, "conv2d") != 0, parse_sparsity("2:4")), name
            assert not torch.equal(conv.weight, dense[name].weight), name
        elif isinstance(conv, torch.nn.Conv2d):
            assert torch.equal(conv.weight, dense[name].weight), name  # depthwise, stem and head untouched
    assert torch.isfinite(pruned(pixel_values=torch.randn(2, 3, 32, 32)).logits).all()


def _gemma3():
    config = T.Gemma3TextConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=64, sliding_window=4,
        layer_types=[SLIDING, FULL, SLIDING, FULL],
    )
    return T.Gemma3ForCausalLM(config)


def _qwen2():
    config = T.Qwen2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, use_sliding_window=True, sliding_window=4,
        layer_types=[FULL, FULL, SLIDING, SLIDING],
    )
    return T.Qwen2ForCausalLM(config)


MIXED = {"gemma3_text": _gemma3, "qwen2": _qwen2}


def _mixed(name: str):
    torch.manual_seed(0)
    return MIXED[name]().to(torch.float64).eval()


def _text(n: int, seed: int = 0) -> dict:
    """Sequences of 12 tokens, three times the sliding window, so the two masks differ."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (n, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # padding in one sample: masks depend on the micro-batch too
    return {"input_ids": ids, "attention_mask": mask}


@contextlib.contextmanager
def _recorded(blocks):
    """Every call of every block, as ``(hidden states, attention mask)``, in order."""
    seen: list[list] = [[] for _ in blocks]

    def hook_for(index):
        def hook(module, args, kwargs):
            assert OTHER_KINDS not in kwargs  # the other kinds' arguments never reach a block
            hidden = args[0] if args else kwargs["hidden_states"]
            seen[index].append((hidden.detach().clone(), kwargs.get("attention_mask")))

        return hook

    handles = [block.register_forward_pre_hook(hook_for(i), with_kwargs=True) for i, block in enumerate(blocks)]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def _same_mask(a, b) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))


@pytest.mark.parametrize("name", sorted(MIXED))
def test_mixed_attention_blocks_get_their_own_kind(name):
    model = _mixed(name)
    blocks = find_block_list(model)
    assert blocks.kinds == list(model.config.layer_types) and len(blocks.first_of_kinds()) == 2
    calibration, batch_size = _text(8), 4
    config = {"sparsity": "2:4", "method": "snows", "k_step": 3, "target": "official", "batch_size": batch_size,
              "newton_steps": 1, "cg_iters": 2}
    with _recorded(blocks.modules) as fed:
        report = snows_hf.prune_(model, config, calibration)
    pattern = parse_sparsity("2:4")
    assert len(report.layers) == 7 * len(blocks)
    for layer in report.layers:
        weight = model.get_submodule(layer.name).weight
        assert satisfies(to_rows(weight, "linear") != 0, pattern, at_most=True), layer.name

    batches = snows_hf.as_batches(calibration, batch_size)
    with _recorded(blocks.modules) as expected, torch.no_grad():
        for batch in batches:
            model(**batch, use_cache=False)
    for index in range(len(blocks)):
        # a block's last calls in the run are the ones that produced the next block's inputs
        pipeline_calls = fed[index][-len(batches):]
        for (hidden, mask), (want_hidden, want_mask) in zip(pipeline_calls, expected[index], strict=True):
            torch.testing.assert_close(hidden, want_hidden, rtol=0, atol=1e-10)
            assert _same_mask(mask, want_mask), f"block {index} got another kind's attention mask"

    # the first block's arguments for every block (what the pipeline did before) go wrong
    calls = capture_block_inputs(model, blocks.modules[0], batches, torch.device("cpu"))
    with torch.no_grad():
        for index, block in enumerate(blocks.modules[:-1]):
            calls = [call.with_hidden(run_block(block, call)) for call in calls]
    assert not torch.allclose(calls[0].hidden, expected[-1][0][0], atol=1e-6)


def test_layer_types_that_do_not_match_the_blocks_are_an_error():
    model = _mixed("qwen2")
    with pytest.raises(ValueError, match=r"config.layer_types mixes .* over 4 layers, but the blocks at model.layers.\*.mlp are 16"):
        find_block_list(model, "model.layers.*.mlp")


@pytest.mark.parametrize("place", ["cpu", "disk"])
def test_mixed_kinds_survive_activation_offload(place):
    """The other kinds' arguments travel with every stored call: same weights as on the device."""
    weights = {}
    for where in ("device", place):
        model = _mixed("gemma3_text")
        config = {"sparsity": "2:4", "method": "mask-only", "batch_size": 4, "offload_activations": where}
        snows_hf.prune_(model, config, _text(8))
        weights[where] = {k: v.clone() for k, v in model.state_dict().items()}
    for key, value in weights["device"].items():
        assert torch.equal(value, weights[place][key]), key
