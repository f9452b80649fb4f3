"""Mask-only methods collect every module's input statistics in one forward of its block
(``statistics="block"``, the default), or module by module after the ones before it are
pruned (``statistics="module"``, what versions 1 and 2 did)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_llama
from torch import nn

import snows_hf
from snows_hf.blocks import BlockCall, counted_forwards
from snows_hf.distributed import Processes
from snows_hf.masks import apply_selector, parse_sparsity, to_rows
from snows_hf.methods import ModuleJob, block_input_stats

INPUTS = torch.randint(0, 100, (8, 16), generator=torch.Generator().manual_seed(0))
LLAMA_MODULES = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def _two_linears():
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 3)).double()
    calls = [BlockCall((torch.randn(5, 4, dtype=torch.float64),), {}) for _ in range(3)]
    return block, calls


def test_block_statistics_are_each_modules_sums_over_its_dense_inputs():
    block, calls = _two_linears()
    found = block_input_stats(block, [("0", block[0], "linear"), ("1", block[1], "linear")], calls,
                              {"input_sq", "gram"}, torch.float64, Processes())
    with torch.no_grad():
        x0 = torch.cat([c.args[0] for c in calls])
        x1 = block[0](x0)
    assert torch.allclose(found["0"]["gram"], x0.T @ x0) and torch.allclose(found["0"]["input_sq"], (x0 ** 2).sum(0))
    assert torch.allclose(found["1"]["gram"], x1.T @ x1) and torch.allclose(found["1"]["input_sq"], (x1 ** 2).sum(0))


def test_a_modules_block_statistics_equal_what_its_job_computes_alone():
    """Bit for bit, for every module while the block is dense: the two paths add the same
    micro-batches in the same order."""
    block, calls = _two_linears()
    found = block_input_stats(block, [("0", block[0], "linear"), ("1", block[1], "linear")], calls,
                              {"input_sq", "gram"}, torch.float32, Processes())
    for name in ("0", "1"):
        job = ModuleJob(name, block[int(name)], "linear", parse_sparsity("2:4"), 0, block, calls)
        alone = job.input_stats({"input_sq", "gram"})
        assert all(torch.equal(alone[k], found[name][k]) for k in ("input_sq", "gram"))


def test_a_module_seen_twice_in_one_forward_counts_its_first_input():
    shared = nn.Linear(3, 3).double()
    block = nn.Sequential(shared, nn.ReLU(), shared)
    call = BlockCall((torch.ones(2, 3, dtype=torch.float64),), {})
    found = block_input_stats(block, [("0", shared, "linear")], [call], {"input_sq"}, torch.float64, Processes())
    assert torch.equal(found["0"]["input_sq"], torch.full((3,), 2.0, dtype=torch.float64))


def _prune(statistics: str, method: str = "mask-only", mask: str = "sparsegpt", diagnostics: bool = True):
    model = tiny_llama()
    report = snows_hf.prune_(model, {"sparsity": "2:4", "method": method, "mask": mask, "statistics": statistics,
                                     "diagnostics": diagnostics, "batch_size": 4}, INPUTS)
    return model, report


@pytest.mark.parametrize("statistics, method, mask, diagnostics, passes", [
    ("block", "mask-only", "sparsegpt", True, 2),    # statistics of all seven modules, then propagation
    ("block", "mask-only", "wanda", False, 2),
    ("block", "mask-only", "magnitude", False, 1),  # nothing to collect: propagation only
    ("block", "mask-only", "magnitude", True, 2),   # the diagnostics' statistics, in the same single pass
    ("module", "mask-only", "sparsegpt", True, 8),   # one forward per module (diagnostics reuse it), then propagation
])
def test_block_forwards_per_block_are_counted_in_the_report(statistics, method, mask, diagnostics, passes):
    _, report = _prune(statistics, method, mask, diagnostics)
    forwards = passes + 1 / 2  # and one micro-batch of the two to find the order the modules run in
    assert report.block_forwards == [forwards, forwards]
    assert report.to_dict()["block_forwards"] == [forwards, forwards]


def test_block_statistics_prune_each_module_as_its_selector_does_on_the_dense_blocks_inputs():
    """The weights block mode writes are the selector's, run on statistics of the block's
    inputs with every module of the block still dense (closed form, by hand)."""
    dense = tiny_llama()
    pruned, _ = _prune("block")
    expected = {}
    captured: dict[str, list[torch.Tensor]] = {}
    layer = dense.model.layers[0]
    hooks = [layer.get_submodule(n).register_forward_hook(
        lambda m, args, out, n=n: captured.setdefault(n, []).append(args[0].reshape(-1, args[0].shape[-1])))
        for n in LLAMA_MODULES]
    with torch.no_grad():
        for batch in INPUTS.split(4):
            dense(input_ids=batch)
    for hook in hooks:
        hook.remove()
    for name in LLAMA_MODULES:
        gram = sum(x.float().T @ x.float() for x in captured[name])
        sq = sum(x.float().pow(2).sum(0) for x in captured[name])
        weight = layer.get_submodule(name).weight.detach()
        rows, _ = apply_selector("sparsegpt", to_rows(weight, "linear"), parse_sparsity("2:4"), {"gram": gram, "input_sq": sq})
        expected[name] = rows
    for name in LLAMA_MODULES:
        got = pruned.model.layers[0].get_submodule(name).weight.detach()
        assert torch.allclose(got, expected[name], atol=1e-6, rtol=1e-5), name


def test_module_statistics_follow_the_pruned_modules_before_them():
    """The two orders agree on the block's first modules (q, k, v read the block's input)
    and differ after them (o_proj reads attention of pruned q, k, v)."""
    block_mode, _ = _prune("block")
    module_mode, _ = _prune("module")
    first, later = block_mode.model.layers[0], module_mode.model.layers[0]
    for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
        assert torch.equal(first.get_submodule(name).weight, later.get_submodule(name).weight), name
    assert not torch.equal(first.self_attn.o_proj.weight, later.self_attn.o_proj.weight)


def test_forwards_are_counted_only_inside_the_counter():
    block, calls = _two_linears()
    with counted_forwards() as counted:
        block_input_stats(block, [("0", block[0], "linear")], calls, {"input_sq"}, torch.float64, Processes())
    block_input_stats(block, [("0", block[0], "linear")], calls, {"input_sq"}, torch.float64, Processes())
    assert counted == [len(calls)]


def test_modules_reading_one_tensor_share_its_statistics(monkeypatch):
    """q/k/v read the same normed hidden states and gate/up the same MLP input: each
    tensor's Gram matrix is computed once per micro-batch (4 of the 7 modules compute),
    and each module's sums are those of its own inputs all the same."""
    from snows_hf.methods import InputStats

    computed = []
    add = InputStats.add
    monkeypatch.setattr(InputStats, "add", lambda self, x: computed.append(x.shape) or add(self, x))
    model = tiny_llama()
    layer = model.model.layers[0]
    calls = []
    hook = layer.register_forward_pre_hook(lambda m, args, kwargs: calls.append(BlockCall(args, kwargs)),
                                           with_kwargs=True)
    with torch.no_grad():
        for batch in INPUTS.split(4):
            model(input_ids=batch)
    hook.remove()
    modules = [(n, layer.get_submodule(n), "linear") for n in LLAMA_MODULES]
    found = block_input_stats(layer, modules, calls, {"input_sq", "gram"}, torch.float32, Processes())
    assert len(computed) == 4 * len(calls)
    for name in LLAMA_MODULES:
        job = ModuleJob(name, layer.get_submodule(name), "linear", parse_sparsity("2:4"), 0, layer, calls)
        alone = job.input_stats({"input_sq", "gram"})
        assert all(torch.equal(alone[k], found[name][k]) for k in ("input_sq", "gram")), name


# Every padding a Conv2d can take is an explicit padding of its input: "same" (stride 1)
# pads dilation * (kernel - 1) per dimension, the smaller half first (torch's rule);
# "valid" pads nothing; reflect, replicate and circular modes pad with those values.
PADDINGS = [
    pytest.param({"kernel_size": 3, "padding": "same"}, id="same-3x3"),
    pytest.param({"kernel_size": (2, 4), "dilation": (1, 2), "padding": "same"}, id="same-even-dilated-asymmetric"),
    pytest.param({"kernel_size": 1, "padding": "same"}, id="same-1x1"),
    pytest.param({"kernel_size": 3, "stride": 2, "padding": "valid"}, id="valid-strided"),
    pytest.param({"kernel_size": 3, "padding": 1, "padding_mode": "reflect"}, id="reflect"),
    pytest.param({"kernel_size": (3, 2), "padding": (1, 2), "padding_mode": "circular"}, id="circular"),
    pytest.param({"kernel_size": (2, 3), "padding": "same", "padding_mode": "replicate"}, id="same-replicate"),
]


def _by_hand(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """``F.pad``'s (left, right, top, bottom) for ``conv``, written out from torch's documented rule."""
    if conv.padding == "valid":
        return (0, 0, 0, 0)
    if conv.padding == "same":
        (kh, kw), (dh, dw) = conv.kernel_size, conv.dilation
        th, tw = dh * (kh - 1), dw * (kw - 1)
        return (tw // 2, tw - tw // 2, th // 2, th - th // 2)
    ph, pw = conv.padding
    return (pw, pw, ph, ph)


@pytest.mark.parametrize("options", PADDINGS)
def test_conv_statistics_are_those_of_its_input_padded_by_hand(options):
    from torch.nn import functional as F

    from snows_hf.methods import InputStats, input_features

    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, **options).double()
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    padded = F.pad(x, _by_hand(conv), mode="constant" if conv.padding_mode == "zeros" else conv.padding_mode)
    plain = nn.Conv2d(3, 4, conv.kernel_size, stride=conv.stride, dilation=conv.dilation, padding=0).double()
    plain.load_state_dict(conv.state_dict())
    torch.testing.assert_close(plain(padded), conv(x))  # the padding by hand is the one torch applies

    features = input_features(conv, "conv2d", x)
    expected = input_features(plain, "conv2d", padded)
    torch.testing.assert_close(features, expected)
    rows = conv.weight.permute(0, 2, 3, 1).reshape(conv.out_channels, -1)  # kernel-position-major, as the features
    output = (conv(x) - conv.bias[None, :, None, None]).permute(0, 2, 3, 1).reshape(-1, conv.out_channels)
    torch.testing.assert_close(features @ rows.T, output)  # one feature row per output pixel, lined up with the weight
    sums = InputStats(conv, "conv2d", {"input_sq", "gram"}, torch.float64)
    sums.add(features)
    found = sums.result(Processes())
    positions = conv.kernel_size[0] * conv.kernel_size[1]
    torch.testing.assert_close(found["gram"], expected.T @ expected)
    torch.testing.assert_close(found["input_sq"], (expected ** 2).sum(0).reshape(positions, 3) if positions > 1
                               else (expected ** 2).sum(0))


def test_grouped_convolutions_still_have_no_input_statistics():
    from snows_hf.fields import SettingError
    from snows_hf.methods import has_input_features, input_features

    conv = nn.Conv2d(4, 4, 3, groups=2, padding="same")
    assert not has_input_features(conv, "conv2d")
    with pytest.raises(SettingError, match="grouped Conv2d"):
        input_features(conv, "conv2d", torch.randn(1, 4, 5, 5))
