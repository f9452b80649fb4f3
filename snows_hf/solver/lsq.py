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


#: above this many floating-point operations (the per-row Cholesky factorisations), the
#: systems are solved by conjugate gradients instead: batched small factorisations run at
#: 1-8 GFLOP/s on 2 CPU cores, while one CG iteration is a single matrix product over all
#: rows. On SmolLM2's block-0 systems at 2:4, 32 iterations reached at least 97% of the
#: exact solve's gain in fit (most over 99.6%) in a sixth of its time
#: (``python benchmarks/lsq_solve.py``: 3.96 s against 24.76 s for the block's 14 systems)
EXACT_FLOPS = 2e8


def exact_flops(mask: Tensor) -> float:
    """Floating-point operations of the exact solve: one ``k x k`` Cholesky factorisation
    per row, ``k`` the largest support of the rows solved together (rows are padded to it).

    Example:
        >>> exact_flops(torch.ones(4, 6, dtype=torch.bool))  # 4 rows x 6^3 / 3
        288.0
    """
    k = float(mask.sum(1).max()) if mask.numel() else 0.0
    return mask.shape[0] * k**3 / 3


def masked_lstsq(gram: Tensor, cross: Tensor, weight: Tensor, mask: Tensor, *, damping: float = 1e-4,
                 max_elements: int = 2**27, start: Tensor | None = None, max_exact_flops: float = EXACT_FLOPS,
                 cg_iterations: int = 32, cg_tol: float = 1e-4) -> Tensor:
    """Per-row least squares on the support of ``mask`` (``(rows, inputs)`` bool).

    ``damping`` is relative to the mean diagonal of ``gram`` (it keeps the solve defined
    when inputs are collinear). Off-support entries of the result are exactly zero.

    Each row's ``k x k`` system (``k`` its support) is factorised exactly while that costs at
    most ``max_exact_flops`` (:func:`exact_flops`). Above, all rows are solved together by
    Jacobi-preconditioned conjugate gradients started from ``start`` (the masked
    ``weight`` by default), at most ``cg_iterations`` iterations and until every row's
    residual is below ``cg_tol`` times its right-hand side: each iteration is one product
    with ``gram`` for all rows, where the factorisations cost ``rows * k^3 / 3``.

    The exact systems are solved in the Grams' own precision (at least float32: about
    twice as fast as float64 on a CPU, and the result is only Newton's start, checked
    against the masked weight on held-out data); where float32 Cholesky fails they are
    solved again in float64. Rows are solved in chunks of at most ``max_elements`` matrix
    entries, which bounds the memory of the batched systems.

    Example:
        >>> X = torch.randn(200, 6, dtype=torch.float64)
        >>> W0, mask = torch.randn(3, 6, dtype=torch.float64), torch.rand(3, 6) > 0.4
        >>> W = masked_lstsq(X.T @ X, X.T @ X, W0, mask, damping=0.0)
        >>> S = mask[0]
        >>> ref = torch.linalg.lstsq(X[:, S], X @ W0[0]).solution
        >>> torch.allclose(W[0, S], ref)
        True
        >>> W_cg = masked_lstsq(X.T @ X, X.T @ X, W0, mask, damping=0.0, max_exact_flops=0, cg_tol=1e-12)
        >>> torch.allclose(W_cg, W)
        True
    """
    rows, inputs = weight.shape
    if gram.shape != (inputs, inputs) or cross.shape != (inputs, inputs) or mask.shape != weight.shape:
        raise ValueError("masked_lstsq: gram/cross must be (inputs, inputs) and mask the weight's shape")
    if start is not None and start.shape != weight.shape:
        raise ValueError("masked_lstsq: start must have the weight's shape")
    dtype = torch.promote_types(gram.dtype, torch.float32)
    if exact_flops(mask) > max_exact_flops:
        return _cg_rows(gram, cross, weight, mask, damping, start, cg_iterations, cg_tol, dtype)
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
    """Each row's system gathered to its support, padded to the largest support of the rows
    (padding: identity rows and columns with a zero right-hand side, so it solves to 0)."""
    rows, inputs = weight.shape
    g = gram.to(dtype)
    lam = damping * float(g.diagonal().mean().clamp(min=1e-12))
    rhs = weight.to(dtype) @ cross.to(dtype).T  # row j: C W0_j
    out = torch.zeros(rows, inputs, dtype=dtype, device=weight.device)
    counts = mask.sum(1)
    k = int(counts.max()) if rows else 0
    if k == 0:
        return out.to(weight.dtype)
    # the support's columns first, in order (a stable sort of the mask, descending)
    idx = torch.sort(mask.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :k]
    valid = torch.arange(k, device=weight.device) < counts.unsqueeze(1)
    eye = torch.eye(k, dtype=dtype, device=weight.device)
    chunk = max(1, max_elements // (k * k))
    for s in range(0, rows, chunk):
        i, v = idx[s : s + chunk], valid[s : s + chunk].to(dtype)
        pair = v.unsqueeze(-1) * v.unsqueeze(-2)
        a = g[i.unsqueeze(-1), i.unsqueeze(-2)] * pair + eye * (lam * v + (1 - v)).unsqueeze(-1)
        b = torch.gather(rhs[s : s + chunk], 1, i) * v
        out[s : s + chunk].scatter_add_(1, i, _spd_solve(a, b) * v)
    return (out * mask).to(weight.dtype)


def _cg_rows(gram: Tensor, cross: Tensor, weight: Tensor, mask: Tensor, damping: float, start: Tensor | None,
             iterations: int, tol: float, dtype: torch.dtype) -> Tensor:
    """All rows' masked systems ``(G_SS + lambda I) w_S = (C W0_j)_S`` by Jacobi-preconditioned
    conjugate gradients, one product with ``G`` per iteration for every row at once."""
    g = gram.to(dtype)
    m = mask.to(dtype)
    lam = damping * float(g.diagonal().mean().clamp(min=1e-12))
    b = (weight.to(dtype) @ cross.to(dtype).T) * m
    x = (weight if start is None else start).to(dtype) * m
    apply = lambda w: (w @ g) * m + lam * w  # noqa: E731 - G is symmetric: row j of W G is G w_j
    inverse_diagonal = m / (g.diagonal() + lam).clamp(min=1e-30)
    r = b - apply(x)
    z = r * inverse_diagonal
    p = z.clone()
    rz = (r * z).sum(1)
    limit = tol * b.norm(dim=1).clamp(min=1e-30)
    for _ in range(iterations):
        if bool((r.norm(dim=1) <= limit).all()):
            break
        ap = apply(p)
        alpha = rz / (p * ap).sum(1).clamp(min=1e-30)
        x = x + alpha.unsqueeze(1) * p
        r = r - alpha.unsqueeze(1) * ap
        z = r * inverse_diagonal
        rz_next = (r * z).sum(1)
        p = z + (rz_next / rz.clamp(min=1e-30)).unsqueeze(1) * p
        rz = rz_next
    if not bool(torch.isfinite(x).all()):
        raise ValueError("least-squares system is not positive definite; raise the damping")
    return (x * m).to(weight.dtype)


def _spd_solve(a: Tensor, b: Tensor) -> Tensor:
    """Solve batched symmetric positive-definite systems ``a x = b`` by Cholesky."""
    factor, info = torch.linalg.cholesky_ex(a)
    if bool((info != 0).any()):
        raise _NotPositiveDefinite
    return torch.cholesky_solve(b.unsqueeze(-1), factor).squeeze(-1)
