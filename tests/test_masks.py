"""Sparsity specs, pattern-valid masks and weight layouts."""

import pytest
import torch

from snows_hf.masks import apply_selector, from_rows, nm_keep_count, parse_sparsity, satisfies, select_mask, select_topk, to_rows

INVALID_SPECS = ["3:2", "0:4", "4:4", "1.5", "-0.1", "abc", "", "0", "1", "100%", "0%", "2:0", "nan", "2:4:8", "a:b"]


@pytest.mark.parametrize(
    "spec, fraction, nm",
    [("2:4", 0.5, (2, 4)), ("4:8", 0.5, (4, 8)), ("1:4", 0.75, (1, 4)), (" 2 : 4 ", 0.5, (2, 4)),
     ("0.5", 0.5, None), ("50%", 0.5, None), ("12.5%", 0.125, None), (0.7, 0.7, None)],
)
def test_parse_valid(spec, fraction, nm):
    pattern = parse_sparsity(spec)
    assert pattern.fraction == pytest.approx(fraction)
    assert ((pattern.n, pattern.m) if pattern.is_nm else None) == nm


@pytest.mark.parametrize("spec", INVALID_SPECS)
def test_parse_invalid_names_accepted_forms(spec):
    with pytest.raises(ValueError, match=r"invalid sparsity .*N:M .*2:4.*50%"):
        parse_sparsity(spec)


@pytest.mark.parametrize("spec", ["2:4", "4:8", "1:4", "0.3", "70%"])
@pytest.mark.parametrize("shape", [(7, 16), (5, 24), (3, 8)])
def test_topk_masks_satisfy_pattern(spec, shape):
    pattern = parse_sparsity(spec)
    mask = select_topk(torch.randn(*shape), pattern)
    assert mask.dtype == torch.bool and mask.shape == shape
    assert satisfies(mask, pattern)


def test_nm_keeps_largest_in_each_group():
    scores = torch.tensor([[1.0, 4.0, 3.0, 2.0, 8.0, 5.0, 7.0, 6.0]])
    mask = select_topk(scores, parse_sparsity("2:4"))
    assert mask.tolist() == [[False, True, True, False, True, False, True, False]]


def test_unstructured_keeps_global_top_of_layer():
    scores = torch.arange(12.0).reshape(3, 4)
    mask = select_topk(scores, parse_sparsity("75%"))
    assert mask.sum() == 3 and mask.reshape(-1)[-3:].all()


def test_partial_trailing_group_is_pruned_too():
    # 10 inputs under 2:4: two full groups and a group of 2 that keeps 1, never left dense.
    pattern = parse_sparsity("2:4")
    mask = select_topk(torch.randn(6, 10), pattern)
    assert (mask[:, 8:].sum(-1) == 1).all()
    assert nm_keep_count(2, pattern) == 1 and nm_keep_count(3, pattern) == 2
    assert satisfies(mask, pattern)


def test_satisfies_rejects_invalid():
    assert not satisfies(torch.tensor([[True, True, True, False]]), parse_sparsity("2:4"))
    assert not satisfies(torch.ones(2, 4, dtype=torch.bool), parse_sparsity("0.5"))


@pytest.mark.parametrize(
    "layout, shape", [("linear", (6, 8)), ("conv1d", (8, 6)), ("conv2d", (4, 8, 3, 3))]
)
def test_layout_roundtrip_and_grouping_axis(layout, shape):
    weight = torch.randn(*shape)
    rows = to_rows(weight, layout)
    assert torch.equal(from_rows(rows, layout, weight.shape), weight)
    mask = select_mask("magnitude", rows, parse_sparsity("2:4"))
    pruned = from_rows(rows * mask, layout, weight.shape)
    # groups run along the input dimension of the module's own weight layout
    if layout == "linear":
        groups = pruned.reshape(6, 2, 4)
    elif layout == "conv1d":
        groups = pruned.t().reshape(6, 2, 4)
    else:
        groups = pruned.permute(0, 2, 3, 1).reshape(-1, 2, 4)
    assert ((groups != 0).sum(-1) == 2).all()


def test_magnitude_scores_absolute_value():
    mask = select_mask("magnitude", torch.tensor([[0.1, -3.0, 2.0, 0.5]]), parse_sparsity("2:4"))
    assert mask.tolist() == [[False, True, True, False]]


def test_unknown_selector():
    with pytest.raises(ValueError, match="unknown mask selector 'nope'; choose one of: hessian, magnitude, sparsegpt, wanda"):
        select_mask("nope", torch.ones(1, 4), parse_sparsity("2:4"))


def test_wanda_and_hessian_scores_by_hand():
    from snows_hf.masks.selectors import hessian_scores, wanda_scores

    w = torch.tensor([[0.5, -1.0, 2.0, 0.1]])
    stats = {"input_sq": torch.tensor([16.0, 1.0, 0.01, 100.0])}
    assert torch.allclose(wanda_scores(w, stats), torch.tensor([[2.0, 1.0, 0.2, 1.0]]))
    assert torch.allclose(hessian_scores(w, stats), torch.tensor([[4.0, 1.0, 0.04, 1.0]]))
    # the largest weight sits on an input with almost no energy: magnitude keeps it, Hessian scaling does not
    pattern = parse_sparsity("2:4")
    assert select_mask("magnitude", w, pattern).tolist() == [[False, True, True, False]]
    assert select_mask("hessian", w, pattern, stats)[0, 0] and not select_mask("hessian", w, pattern, stats)[0, 2]
    with pytest.raises(ValueError, match="needs input statistics"):
        select_mask("wanda", w, pattern)


def test_wanda_compares_within_each_output_row():
    # Row 0 has all the large scores: a layer-wide threshold would empty row 1; Wanda's
    # per-row comparison prunes each row to the target while the layer total stays exact.
    w = torch.tensor([[9.0, 8.0, 7.0, 6.0, 5.0], [0.1, 0.2, 0.3, 0.4, 0.5]])
    stats = {"input_sq": torch.ones(5)}
    pattern = parse_sparsity("0.5")
    mask = select_mask("wanda", w, pattern, stats)
    assert mask.sum(1).tolist() == [3, 2]  # cumulative rounding: 2 then 3 zeros, 5 in all
    assert satisfies(mask, pattern)
    assert mask[1].tolist() == [False, False, False, True, True]
    assert select_mask("hessian", w, pattern, stats)[1].sum() == 0  # layer-wide comparison


@pytest.mark.parametrize("spec, rows, cols", [("7%", 5, 30), ("10%", 5, 29), ("27%", 5, 30), ("29%", 6, 25)])
def test_per_row_counts_add_up_to_the_layer_target_exactly(spec, rows, cols):
    # fraction * cols * rows and fraction * (rows * cols) round differently in floats for
    # these shapes: the per-row cuts must use the layer's own product (found by hypothesis)
    pattern = parse_sparsity(spec)
    mask = select_topk(torch.randn(rows, cols), pattern, per_row=True)
    assert int((~mask).sum()) == round(pattern.fraction * mask.numel())
    assert satisfies(mask, pattern)


def test_conv2d_statistics_are_per_kernel_position():
    from snows_hf.masks.selectors import hessian_scores

    rows = torch.ones(2 * 3, 4)  # 2 output channels, 3 kernel positions, 4 input channels
    sq = torch.arange(12.0).reshape(3, 4)
    scores = hessian_scores(rows, {"input_sq": sq})
    assert torch.equal(scores, torch.cat([sq, sq]))
    with pytest.raises(ValueError, match="does not fit"):
        hessian_scores(torch.ones(5, 4), {"input_sq": sq})


def _odd_modules():
    from transformers.pytorch_utils import Conv1D

    yield "linear", torch.nn.Linear(13, 7)
    yield "conv1d", Conv1D(7, 13)  # GPT-2 stores (in=13, out=7)
    yield "conv2d", torch.nn.Conv2d(6, 5, kernel_size=(3, 2))
    yield "conv2d", torch.nn.Conv2d(9, 3, kernel_size=1)


@pytest.mark.parametrize("spec", ["2:4", "4:8", "1:4", "0.3", "70%"])
@pytest.mark.parametrize("selector", ["magnitude", "wanda", "hessian", "sparsegpt"])
def test_every_pattern_exact_on_odd_linear_conv1d_conv2d(spec, selector):
    pattern = parse_sparsity(spec)
    for layout, module in _odd_modules():
        weight = module.weight.detach()
        rows = to_rows(weight, layout)
        positions = weight.shape[2] * weight.shape[3] if layout == "conv2d" else 1
        x = torch.randn(64, positions * rows.shape[1])
        stats = {"input_sq": x.pow(2).sum(0).reshape(positions, -1), "gram": x.T @ x}
        new, mask = apply_selector(selector, rows, pattern, stats)
        assert satisfies(mask, pattern), (layout, tuple(weight.shape))
        back = from_rows(new, layout, weight.shape)
        assert back.shape == weight.shape
        assert int((back == 0).sum()) == int((~mask).sum())  # zeros land exactly on the pruned entries
