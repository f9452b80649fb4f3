"""Compact storage of sparse weights: kept values plus small position metadata.

Pure torch, on the ``(rows, inputs)`` view of :mod:`snows_hf.masks.layout`:

- N:M: each row's kept values in order, and for each group which of its C(M, N) possible
  kept sets it uses, in ``ceil(log2 C(M, N))`` bits (2:4: one of six, 3 bits per group of
  four, where two 2-bit positions would take 4); a trailing partial group keeps
  :func:`~snows_hf.masks.topk.nm_keep_count` values and is coded the same way.
- unstructured: the kept values in row-major order and a 1-bit-per-weight mask.

Bits are packed little-endian into ``uint8``. Decoding checks every size, so a
truncated or mismatched tensor is an error, not a wrong weight.

Groups hold at most :data:`MAX_GROUP` (16) inputs. That covers the patterns in use (2:4,
1:4, 4:8, 8:16: those GPU kernels and the pruning literature use) while keeping a group's
tables small: at most C(16, 8) = 12,870 kept sets and a 2**16-entry index (512 KiB). The
index grows as 2**M, so M = 32 would take 32 GiB, and its kept sets can number in the
hundreds of millions (16:32); a checkpoint that declares such groups is refused, not obeyed.
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache

import torch

from ..fields import clip
from .patterns import SparsityPattern
from .topk import nm_keep_count

MAX_GROUP = 16  #: the widest N:M group (M) the compact code stores


class CompactTensorError(ValueError):
    """A compact tensor that does not decode; ``part`` names it (``values``, ``indices``, ``bitmask``)."""

    def __init__(self, part: str, problem: str) -> None:
        super().__init__(f"'{part}' {problem}")
        self.part, self.problem = part, problem


def check_storable(pattern: SparsityPattern) -> None:
    """Refuse an N:M pattern whose groups are wider than :data:`MAX_GROUP`.

    Example:
        >>> from snows_hf.masks import parse_sparsity
        >>> check_storable(parse_sparsity("2:4"))
        >>> check_storable(parse_sparsity("2:32"))
        Traceback (most recent call last):
        ...
        ValueError: sparsity 2:32 groups 32 inputs; the compact format codes groups of at most 16 (M <= 16)
    """
    if pattern.is_nm and pattern.m > MAX_GROUP:  # N and M as a file spells them: thousands of digits at worst
        raise ValueError(f"sparsity {clip(str(pattern))} groups {clip(str(pattern.m))} inputs; the compact format codes "
                         f"groups of at most {MAX_GROUP} (M <= {MAX_GROUP})")


def pack_bits(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack non-negative integers below ``2**bits`` into a ``uint8`` bitstream.

    Example:
        >>> pack_bits(torch.tensor([1, 2, 3, 0]), 2)
        tensor([57], dtype=torch.uint8)
    """
    flat = values.reshape(-1).to(torch.int64)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 2**bits):
        raise ValueError(f"values do not fit in {bits} bits")
    shifts = torch.arange(bits, device=flat.device)
    stream = ((flat[:, None] >> shifts) & 1).reshape(-1)
    stream = torch.nn.functional.pad(stream, (0, (-stream.numel()) % 8))
    return (stream.reshape(-1, 8) << torch.arange(8, device=flat.device)).sum(1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: ``count`` integers of ``bits`` bits each.

    Example:
        >>> unpack_bits(torch.tensor([57], dtype=torch.uint8), 2, 4)
        tensor([1, 2, 3, 0])
    """
    need = math.ceil(count * bits / 8)
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != need:
        raise ValueError(f"expected {need} packed bytes (uint8, 1-D), got {packed.numel()} ({packed.dtype})")
    stream = ((packed.to(torch.int64)[:, None] >> torch.arange(8, device=packed.device)) & 1).reshape(-1)
    return (stream[: count * bits].reshape(count, bits) << torch.arange(bits, device=packed.device)).sum(1)


@lru_cache(maxsize=None)
def _combinations(size: int, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Kept-set tables of a group: ``positions[code]`` (C x keep) and ``code_of[bitmask]``."""
    if size > MAX_GROUP:  # the tables grow as 2**size: callers check first, this is the backstop
        raise ValueError(f"groups of {size} inputs exceed the compact format's {MAX_GROUP}")
    combos = list(itertools.combinations(range(size), keep))
    code_of = torch.full((2**size,), -1, dtype=torch.long)
    for code, combo in enumerate(combos):
        code_of[sum(1 << p for p in combo)] = code
    return torch.tensor(combos, dtype=torch.long).reshape(len(combos), keep), code_of


def _code_bits(m: int, n: int) -> int:
    return max(1, math.ceil(math.log2(math.comb(m, n))))


def _groups(cols: int, pattern: SparsityPattern) -> list[tuple[int, int, int]]:
    """``(start, size, kept)`` of every N:M group along the inputs."""
    m = pattern.m
    return [(a, min(m, cols - a), pattern.n if cols - a >= m else nm_keep_count(cols - a, pattern)) for a in range(0, cols, m)]


def encode(weight_rows: torch.Tensor, pattern: SparsityPattern) -> dict[str, torch.Tensor]:
    """Compact tensors of a pruned ``(rows, inputs)`` weight that follows ``pattern``.

    Returns ``{"values": ..., "indices": ...}`` (N:M) or ``{"values": ..., "bitmask": ...}``
    (unstructured). The weight's zeros must sit exactly where the pattern prunes: for N:M
    every group must hold exactly its kept count of non-zeros, or the kept entries are
    given by ``~(weight == 0)`` padded with explicit zeros where a group has fewer.

    Example:
        >>> from snows_hf.masks import parse_sparsity
        >>> enc = encode(torch.tensor([[0.0, 2.0, 0.0, 3.0]]), parse_sparsity("2:4"))
        >>> enc["values"], enc["indices"]
        (tensor([2., 3.]), tensor([4], dtype=torch.uint8))
    """
    rows, cols = weight_rows.shape
    check_storable(pattern)
    if not pattern.is_nm:
        keep = weight_rows != 0
        return {"values": weight_rows[keep].contiguous(), "bitmask": pack_bits(keep.reshape(-1), 1)}
    keep = _nm_keep(weight_rows, pattern)
    bits, codes = _code_bits(pattern.m, pattern.n), []
    for start, size, kept in _groups(cols, pattern):
        weights = 1 << torch.arange(size)
        codes.append(_combinations(size, kept)[1][(keep[:, start : start + size].long() * weights).sum(1)])
    return {"values": weight_rows[keep].contiguous(), "indices": pack_bits(torch.stack(codes, 1), bits)}


def _nm_keep(weight_rows: torch.Tensor, pattern: SparsityPattern) -> torch.Tensor:
    """The kept positions of an N:M weight: its non-zeros, topped up to exactly the kept
    count per group with the first zero positions (a kept weight may be exactly zero)."""
    rows, cols = weight_rows.shape
    keep = weight_rows != 0
    for start, size, want in _groups(cols, pattern):
        stop = start + size
        block = keep[:, start:stop]
        have = block.sum(1)
        if bool((have > want).any()):
            raise ValueError(f"the weight has more than {want} non-zeros in a group of {stop - start}: not {pattern}")
        if bool((have < want).any()):  # kept weights that happen to be zero: keep the first zeros
            rank = (~block).cumsum(1)
            block |= (~block) & (rank <= (want - have)[:, None])
            keep[:, start:stop] = block
    return keep


def decode(tensors: dict[str, torch.Tensor], shape: tuple[int, int], pattern: SparsityPattern) -> torch.Tensor:
    """The dense ``(rows, inputs)`` weight from :func:`encode`'s tensors.

    Every size and dtype is checked before anything of the weight's size is allocated; a
    problem is a :class:`CompactTensorError` naming the tensor.

    Example:
        >>> from snows_hf.masks import parse_sparsity
        >>> decode({"values": torch.tensor([2.0, 3.0]), "indices": torch.tensor([4], dtype=torch.uint8)},
        ...        (1, 4), parse_sparsity("2:4"))
        tensor([[0., 2., 0., 3.]])
    """
    rows, cols = shape
    check_storable(pattern)
    code = "indices" if pattern.is_nm else "bitmask"
    values = tensors.get("values")
    if values is None:
        raise CompactTensorError("values", "is missing")
    if values.dim() != 1 or not values.is_floating_point():
        raise CompactTensorError("values", f"must be a 1-D floating-point tensor, got {values.dtype} of shape {list(values.shape)}")
    if code not in tensors:
        raise CompactTensorError(code, "is missing")
    if not pattern.is_nm:
        keep = _unpack(tensors[code], code, 1, rows * cols).bool().reshape(rows, cols)
        if int(keep.sum()) != values.numel():
            raise CompactTensorError("values", f"holds {values.numel()} entries, the bitmask keeps {int(keep.sum())}")
        out = torch.zeros(rows, cols, dtype=values.dtype, device=values.device)
        out[keep] = values
        return out
    groups = _groups(cols, pattern)
    per_row = sum(kept for _, _, kept in groups)
    if values.numel() != rows * per_row:
        raise CompactTensorError("values", f"holds {values.numel()} entries, {pattern} keeps {rows * per_row}")
    codes = _unpack(tensors[code], code, _code_bits(pattern.m, pattern.n), rows * len(groups)).reshape(rows, len(groups))
    columns = []
    for g, (start, size, kept) in enumerate(groups):
        positions = _combinations(size, kept)[0]
        if bool((codes[:, g] >= positions.shape[0]).any()):
            raise CompactTensorError(code, "holds a code that names no kept set")
        columns.append(start + positions[codes[:, g]])
    out = torch.zeros(rows, cols, dtype=values.dtype, device=values.device)
    out.scatter_(1, torch.cat(columns, 1).to(values.device), values.reshape(rows, per_row))
    return out


def _unpack(packed: torch.Tensor, part: str, bits: int, count: int) -> torch.Tensor:
    try:
        return unpack_bits(packed, bits, count)
    except ValueError as err:
        raise CompactTensorError(part, f"does not unpack: {err}") from None
