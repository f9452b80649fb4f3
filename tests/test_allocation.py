"""Global unstructured allocation with a per-layer cap."""

import pytest
import torch

from snows_hf.masks.allocation import allocate_global


def _layers(seed=0):
    g = torch.Generator().manual_seed(seed)
    # layers with very different score scales, so a global threshold is lopsided
    return {
        "small": torch.rand(7, 13, generator=g) * 0.01,
        "mid": torch.rand(5, 11, generator=g),
        "large": torch.rand(9, 3, generator=g) * 100,
        "odd": torch.rand(1, 17, generator=g) * 0.5,
    }


@pytest.mark.parametrize("sparsity", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_without_cap_equals_a_global_sort(sparsity):
    scores = _layers()
    got = allocate_global(scores, sparsity, 1.0)
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    owner = torch.cat([torch.full((s.numel(),), i) for i, s in enumerate(scores.values())])
    lowest = owner[flat.argsort()[: round(sparsity * flat.numel())]]
    assert list(got.values()) == [int((lowest == i).sum()) for i in range(len(scores))]


@pytest.mark.parametrize("sparsity, cap", [(0.5, 0.6), (0.7, 0.75), (0.3, 0.31), (0.6, 0.95), (0.9, 0.92)])
def test_cap_hit_target_exactly_and_never_exceeded(sparsity, cap):
    scores = _layers(1)
    got = allocate_global(scores, sparsity, cap)
    total = sum(s.numel() for s in scores.values())
    assert sum(got.values()) == round(sparsity * total)
    for name, s in scores.items():
        assert 0 <= got[name] <= int(cap * s.numel() + 1e-9), name
    # the cap binds: the lowest-scoring layer sits at it whenever the target needs that much
    assert got["small"] == min(int(cap * scores["small"].numel() + 1e-9), round(sparsity * total))


def test_ties_and_callables():
    # all scores equal: the threshold band holds everything, shared out by room
    scores = {"a": lambda: torch.ones(10), "b": lambda: torch.ones(30)}
    got = allocate_global(scores, 0.5, 0.8)
    assert sum(got.values()) == 20 and got["a"] <= 8 and got["b"] <= 24


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_layer_sparsity"):
        allocate_global(_layers(), 0.8, 0.5)


def test_cap_equal_to_target_can_be_unreachable_by_rounding():
    with pytest.raises(ValueError, match="too few weights"):
        allocate_global({"a": torch.rand(7), "b": torch.rand(7)}, 0.5, 0.5)
