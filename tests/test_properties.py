"""Property-based: any sparsity spec and weight shape gives a valid mask, or a clear rejection."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from snows_hf.masks import apply_selector, nm_keep_count, parse_sparsity, satisfies

_NUMBER = st.one_of(st.integers(-3, 17), st.floats(allow_nan=True, allow_infinity=True, width=32))
SPECS = st.one_of(
    st.builds(lambda n, m: f"{n}:{m}", st.integers(-2, 17), st.integers(-2, 17)),
    _NUMBER.map(str),
    _NUMBER.map(lambda x: f"{x}%"),
    st.floats(min_value=-1, max_value=2, allow_nan=False),
    st.text(max_size=8),
)


@settings(max_examples=300, deadline=None)
@given(spec=SPECS, rows=st.integers(1, 6), cols=st.integers(1, 40), selector=st.sampled_from(["magnitude", "wanda", "hessian"]),
       seed=st.integers(0, 2**16))
def test_a_spec_gives_a_valid_mask_or_is_rejected(spec, rows, cols, selector, seed):
    try:
        pattern = parse_sparsity(spec)
    except ValueError as err:
        assert "invalid sparsity" in str(err)
        return
    assert 0 < pattern.fraction < 1
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=g)
    x = torch.randn(16, cols, generator=g)
    new, mask = apply_selector(selector, weight, pattern, {"input_sq": x.pow(2).sum(0), "gram": x.T @ x})
    assert mask.dtype == torch.bool and mask.shape == weight.shape
    assert satisfies(mask, pattern)
    assert torch.equal(new * mask, new) or torch.equal(new, weight)  # nothing appears off the mask
    if pattern.is_nm:
        full = cols // pattern.m * pattern.m
        assert int(mask[:, :full].sum()) == rows * (full // pattern.m) * pattern.n  # exactly N of every full group
        if cols > full:
            assert int(mask[:, full:].sum(1).max()) <= nm_keep_count(cols - full, pattern)
    else:
        pruned = int((~mask).sum())
        assert abs(pruned - pattern.fraction * weight.numel()) <= 1 + math.ceil(1e-6 * weight.numel())
