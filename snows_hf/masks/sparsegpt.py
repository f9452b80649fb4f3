"""SparseGPT (Frantar & Alistarh, 2023): OBS-style mask selection and weight update.

For a layer ``y = W x`` with input Hessian ``H = X^T X`` the columns of ``W`` are
visited left to right. Column ``i`` is kept or pruned; a pruned weight's error is
spread over the columns not yet visited with the optimal-brain-surgeon update

    w[i:] -= w_i * inv(H[i:, i:])[0, :] / inv(H[i:, i:])[0, 0]

Every ``inv(H[i:, i:])`` row comes from one upper Cholesky factor ``U`` of ``H^-1``
(``U[i, i:] = inv(H[i:, i:])[0, :] / sqrt(inv(H[i:, i:])[0, 0])``), and the updates are
applied lazily, one block of columns at a time. Masks are chosen with the OBS saliency
``w^2 / U[i, i]^2`` on the weights as updated so far: per block for unstructured sparsity
(each block prunes its share of the layer's target), per group for N:M.

Pure torch: ``(weight_rows, hessian, pattern) -> (weight_rows, keep_mask)``.
"""

from __future__ import annotations

import torch

from .patterns import SparsityPattern
from .topk import nm_keep_count


def nm_groups(cols: int, m: int, segment: int | None = None) -> list[tuple[int, int]]:
    """``(start, stop)`` column ranges of N:M groups: groups of ``m`` inside each ``segment``.

    A segment (a Conv2d kernel position: its input channels) not divisible by ``m`` ends
    in a shorter group.

    Example:
        >>> nm_groups(10, 4)
        [(0, 4), (4, 8), (8, 10)]
        >>> nm_groups(6, 2, segment=3)
        [(0, 2), (2, 3), (3, 5), (5, 6)]
    """
    segment = segment or cols
    if cols % segment:
        raise ValueError(f"{cols} columns do not split into segments of {segment}")
    return [(s + a, s + min(a + m, segment)) for s in range(0, cols, segment) for a in range(0, segment, m)]


def _blocks(cols: int, blocksize: int, groups: list[tuple[int, int]] | None) -> list[tuple[int, int]]:
    """Column blocks for the lazy updates; under N:M they hold whole groups only."""
    if groups is None:
        return [(a, min(a + blocksize, cols)) for a in range(0, cols, blocksize)]
    blocks, start = [], 0
    for _, stop in groups:
        if stop - start >= blocksize or stop == cols:
            blocks.append((start, stop))
            start = stop
    return blocks


def damped_hessian(hessian: torch.Tensor, damping: float) -> torch.Tensor:
    """``H + damping * mean(diag H) * I``, with unused inputs (``H_jj = 0``) given ``H_jj = 1``.

    Example:
        >>> damped_hessian(torch.diag(torch.tensor([2.0, 0.0])), 0.5)
        tensor([[2.7500, 0.0000],
                [0.0000, 1.7500]])
    """
    h = hessian.clone()
    diag = h.diagonal()
    diag[diag == 0] = 1.0
    diag += damping * float(diag.mean())
    return h


def sparsegpt_prune(
    weight_rows: torch.Tensor,
    hessian: torch.Tensor,
    pattern: SparsityPattern,
    *,
    segment: int | None = None,
    blocksize: int = 128,
    damping: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune ``weight_rows`` (``(rows, cols)``) to ``pattern`` with SparseGPT's OBS updates.

    Args:
        weight_rows: the dense weight, rows are outputs.
        hessian: ``(cols, cols)`` input Gram matrix ``X^T X``; its dtype is the working one.
        pattern: N:M (groups of M consecutive columns inside each ``segment``) or
            unstructured (exactly ``round(fraction * numel)`` zeros over the layer).
        segment: N:M groups restart every ``segment`` columns (Conv2d kernel positions).
        blocksize: columns per lazy-update block.
        damping: fraction of the mean Hessian diagonal added to it.

    Returns ``(new_weight_rows, keep_mask)``; pruned entries of the weight are zero.

    Example:
        >>> from snows_hf.masks import parse_sparsity
        >>> w, keep = sparsegpt_prune(torch.tensor([[1.0, 0.1, 2.0, 0.3]]), torch.eye(4), parse_sparsity("2:4"))
        >>> keep
        tensor([[ True, False,  True, False]])
    """
    rows, cols = weight_rows.shape
    if hessian.shape != (cols, cols):
        raise ValueError(f"hessian has shape {tuple(hessian.shape)}, expected ({cols}, {cols})")
    dtype = hessian.dtype if hessian.dtype in (torch.float32, torch.float64) else torch.float32
    h = damped_hessian(hessian.to(dtype), damping)
    try:
        u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    except torch.linalg.LinAlgError:
        raise ValueError("the input Hessian is not positive definite even after damping; raise the damping") from None
    w = weight_rows.detach().to(device=h.device, dtype=dtype).clone()
    keep = torch.ones(rows, cols, dtype=torch.bool, device=h.device)
    groups = nm_groups(cols, pattern.m, segment) if pattern.is_nm else None
    group_at = {start: stop for start, stop in groups} if groups else {}
    total_pruned = round(pattern.fraction * (rows * cols))  # the float product satisfies() rounds
    for b0, b1 in _blocks(cols, blocksize, groups):
        w1, u1 = w[:, b0:b1].clone(), u[b0:b1, b0:b1]
        diag_sq = u1.diagonal().pow(2)
        err1 = torch.zeros_like(w1)
        if groups is None:  # this block's share of the layer target, cumulative so the total is exact
            n_prune = round(total_pruned * b1 / cols) - round(total_pruned * b0 / cols)
            saliency = (w1.pow(2) / diag_sq).reshape(-1)
            pruned = torch.zeros(saliency.numel(), dtype=torch.bool, device=w.device)
            pruned[saliency.topk(n_prune, largest=False).indices] = True
            keep[:, b0:b1] = ~pruned.reshape(rows, b1 - b0)
        for i in range(b1 - b0):
            col = b0 + i
            if col in group_at:
                stop = group_at[col] - b0
                saliency = w1[:, i:stop].pow(2) / diag_sq[i:stop]
                n_prune = (stop - i) - nm_keep_count(stop - i, pattern)
                group_keep = torch.ones_like(saliency, dtype=torch.bool)
                group_keep.scatter_(1, saliency.topk(n_prune, dim=1, largest=False).indices, False)
                keep[:, col : b0 + stop] = group_keep
            err = w1[:, i] * (~keep[:, col]) / u1[i, i]
            w1[:, i:] -= err[:, None] * u1[i, i:][None, :]
            err1[:, i] = err
        w[:, b0:b1] = w1 * keep[:, b0:b1]
        w[:, b1:] -= err1 @ u[b0:b1, b1:]
    return w.to(weight_rows.dtype), keep
