"""Closed-form layer-wise (K=0) re-fit: per-row least squares on each row's mask support.

For a linear layer ``y = x W^T`` with inputs ``X`` (rows are samples) and targets
``Y = X_t W0^T`` (the dense layer on target inputs ``X_t``), each output row ``j`` solves

    min_w || X w - X_t W0_j ||^2   over w supported on S_j

from the Gram matrices ``G = X^T X`` and ``C = X^T X_t`` alone:
``(G_SS + lambda I) w_S = (C W0_j)_S``. Pure torch.
"""

from __future__ import annotations

import torch
from torch import Tensor


def masked_lstsq(gram: Tensor, cross: Tensor, weight: Tensor, mask: Tensor, *, damping: float = 1e-4,
                 max_elements: int = 2**27) -> Tensor:
    """Per-row least squares on the support of ``mask`` (``(rows, inputs)`` bool).

    ``damping`` is relative to the mean diagonal of ``gram`` (it keeps the solve defined
    when inputs are collinear). Off-support entries of the result are exactly zero.
    The systems are solved in the Grams' own precision (at least float32: about twice as
    fast as float64 on a CPU, and the result is only Newton's start, checked against the
    masked weight on held-out data); where float32 Cholesky fails they are solved again
    in float64.
    Rows are solved in chunks of at most ``max_elements`` matrix entries, which bounds
    the memory of the batched systems.

    Example:
        >>> X = torch.randn(200, 6, dtype=torch.float64)
        >>> W0, mask = torch.randn(3, 6, dtype=torch.float64), torch.rand(3, 6) > 0.4
        >>> W = masked_lstsq(X.T @ X, X.T @ X, W0, mask, damping=0.0)
        >>> S = mask[0]
        >>> ref = torch.linalg.lstsq(X[:, S], X @ W0[0]).solution
        >>> torch.allclose(W[0, S], ref)
        True
    """
    rows, inputs = weight.shape
    if gram.shape != (inputs, inputs) or cross.shape != (inputs, inputs) or mask.shape != weight.shape:
        raise ValueError("masked_lstsq: gram/cross must be (inputs, inputs) and mask the weight's shape")
    dtype = torch.promote_types(gram.dtype, torch.float32)
    for attempt in dict.fromkeys((dtype, torch.float64)):  # float64 again only after a float32 failure
        try:
            return _solve_rows(gram, cross, weight, mask, damping, max_elements, attempt)
        except _NotPositiveDefinite:
            continue
    raise ValueError("least-squares system is not positive definite; raise the damping")


class _NotPositiveDefinite(Exception):
    pass


def _solve_rows(gram: Tensor, cross: Tensor, weight: Tensor, mask: Tensor, damping: float, max_elements: int,
                dtype: torch.dtype) -> Tensor:
    rows, inputs = weight.shape
    g = gram.to(dtype)
    lam = damping * float(g.diagonal().mean().clamp(min=1e-12))
    rhs = weight.to(dtype) @ cross.to(dtype).T  # row j: C W0_j
    out = torch.zeros(rows, inputs, dtype=dtype, device=weight.device)
    eye = torch.eye(inputs, dtype=dtype, device=weight.device)
    counts = mask.sum(1)
    if bool((counts == counts[0]).all()) and int(counts[0]) > 0:
        # equal support sizes (N:M): gather each row's k x k system
        k = int(counts[0])
        chunk = max(1, max_elements // (k * k))
        idx = mask.nonzero()[:, 1].reshape(rows, k)
        for s in range(0, rows, chunk):
            i = idx[s : s + chunk]
            a = g[i.unsqueeze(-1), i.unsqueeze(-2)] + lam * eye[:k, :k]
            b = torch.gather(rhs[s : s + chunk], 1, i)
            out[s : s + chunk].scatter_(1, i, _spd_solve(a, b))
    else:
        # unequal supports: identity rows and columns off the support pin those entries to 0
        chunk = max(1, max_elements // (inputs * inputs))
        for s in range(0, rows, chunk):
            m = mask[s : s + chunk].to(dtype)
            a = m.unsqueeze(-1) * (g + lam * eye) * m.unsqueeze(-2) + torch.diag_embed(1 - m)
            out[s : s + chunk] = _spd_solve(a, m * rhs[s : s + chunk])
    return (out * mask).to(weight.dtype)


def _spd_solve(a: Tensor, b: Tensor) -> Tensor:
    """Solve batched symmetric positive-definite systems ``a x = b`` by Cholesky."""
    factor, info = torch.linalg.cholesky_ex(a)
    if bool((info != 0).any()):
        raise _NotPositiveDefinite
    return torch.cholesky_solve(b.unsqueeze(-1), factor).squeeze(-1)
