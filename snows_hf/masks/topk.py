"""Turn importance scores into a boolean keep-mask that satisfies a sparsity pattern.

Scores are a 2-D ``(rows, inputs)`` matrix: N:M groups run along the input dimension
(``dim=1``). Callers reshape Conv1D/Conv2d weights into that view first
(see :func:`snows_hf.masks.layout.to_rows`).
"""

from __future__ import annotations

import torch

from .patterns import SparsityPattern


def nm_keep_count(group_size: int, pattern: SparsityPattern) -> int:
    """How many weights a group of ``group_size`` keeps under an N:M pattern.

    A full group keeps N. A trailing partial group (inputs not divisible by M) keeps the
    same share, rounded half up, so it is pruned too rather than left silently dense.

    Example:
        >>> from snows_hf.masks import parse_sparsity
        >>> nm_keep_count(4, parse_sparsity("2:4")), nm_keep_count(2, parse_sparsity("2:4"))
        (2, 1)
    """
    if group_size == pattern.m:
        return pattern.n
    return int(group_size * pattern.n / pattern.m + 0.5)


def _keep_top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask keeping the ``k`` largest entries along the last dimension."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k > 0:
        mask.scatter_(-1, scores.topk(k, dim=-1).indices, True)
    return mask


def select_topk(scores: torch.Tensor, pattern: SparsityPattern, per_row: bool = False) -> torch.Tensor:
    """Keep the highest scores so that the result satisfies ``pattern``.

    Unstructured patterns compare all scores of the layer, or, with ``per_row``, each
    output row's scores among themselves (Wanda's comparison group); per-row counts are
    rounded cumulatively so the layer still has exactly ``round(fraction * numel)`` zeros.

    Example:
        >>> from snows_hf.masks import parse_sparsity
        >>> s = torch.tensor([[4.0, 1.0, 3.0, 2.0]])
        >>> select_topk(s, parse_sparsity("2:4"))
        tensor([[ True, False,  True, False]])
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be 2-D (rows, inputs), got shape {tuple(scores.shape)}")
    scores = scores.float() if scores.dtype in (torch.float16, torch.bfloat16) else scores
    rows, cols = scores.shape
    if not pattern.is_nm and per_row:
        # fraction * (cols * r): for r = rows the same float product as the layer target's
        # fraction * numel (fraction * cols * r can round to the other side of .5)
        cuts = torch.tensor([round(pattern.fraction * (cols * r)) for r in range(rows + 1)], device=scores.device)
        keep_counts = cols - (cuts[1:] - cuts[:-1])
        order = scores.argsort(dim=1, descending=True)
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(cols, device=scores.device).expand(rows, cols))
        return rank < keep_counts[:, None]
    if not pattern.is_nm:
        keep = scores.numel() - int(round(pattern.fraction * scores.numel()))
        return _keep_top(scores.reshape(1, -1), keep).reshape(rows, cols)
    full = cols - cols % pattern.m
    mask = torch.empty(rows, cols, dtype=torch.bool, device=scores.device)
    grouped = scores[:, :full].reshape(rows, full // pattern.m, pattern.m)
    mask[:, :full] = _keep_top(grouped, pattern.n).reshape(rows, full)
    if full < cols:
        mask[:, full:] = _keep_top(scores[:, full:], nm_keep_count(cols - full, pattern))
    return mask


def satisfies(mask: torch.Tensor, pattern: SparsityPattern, at_most: bool = False) -> bool:
    """True when a 2-D ``(rows, inputs)`` keep-mask follows ``pattern`` exactly.

    N:M: every full group of M consecutive inputs keeps exactly N (a trailing partial
    group keeps :func:`nm_keep_count`). Unstructured: the zero count is the rounded target.
    ``at_most=True`` accepts fewer kept entries (the non-zeros of stored weights, where a
    kept weight may itself be zero): at most N per group, at least the target's zeros.

    Example:
        >>> from snows_hf.masks import parse_sparsity
        >>> satisfies(torch.tensor([[True, False, False, True]]), parse_sparsity("2:4"))
        True
        >>> satisfies(torch.tensor([[True, False, False, False]]), parse_sparsity("2:4"), at_most=True)
        True
    """
    ok = torch.Tensor.le if at_most else torch.Tensor.eq
    rows, cols = mask.shape
    if not pattern.is_nm:
        return int(round(pattern.fraction * mask.numel())) <= int((~mask).sum()) if at_most else \
            int((~mask).sum()) == int(round(pattern.fraction * mask.numel()))
    full = cols - cols % pattern.m
    counts = mask[:, :full].reshape(rows, -1, pattern.m).sum(-1)
    if not bool(ok(counts, pattern.n).all()):
        return False
    if full < cols:
        tail = mask[:, full:].sum(-1)
        return bool(ok(tail, nm_keep_count(cols - full, pattern)).all())
    return True
