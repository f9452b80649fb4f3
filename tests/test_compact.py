"""Compact encoding of sparse weights: exact round trips, sizes, and corrupt tensors."""

import pytest
import torch

from snows_hf.masks import SparsityPattern, parse_sparsity, select_topk
from snows_hf.masks.compact import decode, encode, pack_bits, unpack_bits


def _pruned(rows, cols, spec, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g).to(dtype)
    return w * select_topk(w.float().abs(), parse_sparsity(spec))


@pytest.mark.parametrize("spec", ["2:4", "1:4", "4:8", "0.5", "0.7"])
@pytest.mark.parametrize("shape", [(7, 16), (5, 13), (3, 8), (1, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_round_trip_is_bit_identical(spec, shape, dtype):
    pattern = parse_sparsity(spec)
    w = _pruned(*shape, spec, dtype)
    enc = encode(w, pattern)
    assert torch.equal(decode(enc, shape, pattern), w)


def test_kept_weights_that_are_exactly_zero_survive():
    pattern = parse_sparsity("2:4")
    w = torch.tensor([[0.0, 0.0, 0.0, 5.0, 1.0, 2.0, 0.0, 0.0]])  # first group keeps a zero
    assert torch.equal(decode(encode(w, pattern), (1, 8), pattern), w)
    with pytest.raises(ValueError, match="more than 2 non-zeros"):
        encode(torch.ones(1, 4), pattern)


@pytest.mark.parametrize("spec, ratio", [("2:4", 0.547), ("0.5", 0.5625)])
def test_fp16_size_goal(spec, ratio):
    w = _pruned(256, 512, spec, torch.float16)
    enc = encode(w, parse_sparsity(spec))
    size = sum(t.numel() * t.element_size() for t in enc.values())
    assert size <= ratio * w.numel() * w.element_size()


def test_bits_round_trip_and_checks():
    x = torch.randint(0, 8, (37,))
    assert torch.equal(unpack_bits(pack_bits(x, 3), 3, 37), x)
    with pytest.raises(ValueError, match="do not fit"):
        pack_bits(torch.tensor([4]), 2)
    with pytest.raises(ValueError, match="expected 14 packed bytes"):
        unpack_bits(pack_bits(x, 3)[:-1], 3, 37)


@pytest.mark.parametrize("spec", ["2:4", "0.5"])
def test_corrupt_tensors_are_errors(spec):
    pattern = parse_sparsity(spec)
    w = _pruned(4, 8, spec)
    enc = encode(w, pattern)
    meta = "indices" if pattern.is_nm else "bitmask"
    with pytest.raises(ValueError, match="'values'"):
        decode({meta: enc[meta]}, (4, 8), pattern)
    with pytest.raises(ValueError, match=meta):
        decode({"values": enc["values"]}, (4, 8), pattern)
    with pytest.raises(ValueError, match="entries|packed bytes"):
        decode({"values": enc["values"][:-1], meta: enc[meta]}, (4, 8), pattern)
    with pytest.raises(ValueError, match="packed bytes"):
        decode({"values": enc["values"], meta: enc[meta][:-1]}, (4, 8), pattern)
    if pattern.is_nm:
        bad = pack_bits(torch.full((8,), 7), 3)  # 2:4 has six kept sets: code 7 names none
        with pytest.raises(ValueError, match="names no kept set"):
            decode({"values": enc["values"], "indices": bad}, (4, 8), pattern)



def _zero_rows(spec):
    w = torch.randn(5, 12, generator=torch.Generator().manual_seed(0))
    w = torch.where(select_topk(w.abs(), parse_sparsity(spec)), w, torch.zeros(()))  # +0.0 where pruned
    w[1] = 0
    w[3] = 0
    return w


ALL_ZERO = {  # pattern, weight: layers and rows with nothing kept
    "all-zero-100%": (SparsityPattern(fraction=1.0), lambda: torch.zeros(5, 12)),
    "all-zero-50%": (parse_sparsity("0.5"), lambda: torch.zeros(5, 12)),
    "all-zero-2:4": (parse_sparsity("2:4"), lambda: torch.zeros(5, 12)),
    "all-zero-1:4": (parse_sparsity("1:4"), lambda: torch.zeros(5, 10)),
    "zero-rows-50%": (parse_sparsity("0.5"), lambda: _zero_rows("0.5")),
    "zero-rows-2:4": (parse_sparsity("2:4"), lambda: _zero_rows("2:4")),
    "nothing-pruned-0%": (SparsityPattern(fraction=0.0), lambda: torch.randn(5, 12)),
}


@pytest.mark.parametrize("case", sorted(ALL_ZERO))
def test_all_zero_layers_and_rows_round_trip(case):
    """A layer or row with nothing kept is legal in the compact format: unstructured
    stores no values for it, N:M explicit zeros, and both decode to the same bits."""
    pattern, weight = ALL_ZERO[case]
    w = weight()
    out = decode(encode(w, pattern), tuple(w.shape), pattern)
    assert torch.equal(out.view(torch.int32), w.view(torch.int32))
