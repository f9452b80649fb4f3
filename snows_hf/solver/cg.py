"""Conjugate gradient restricted to the support of a sparsity mask.

Solves ``(P H P + damping * I) x = P b`` where ``P`` zeroes the off-mask entries, so
``x`` lives on the mask support: the Newton system of the surviving weights only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor


@dataclass
class CGResult:
    """Outcome of :func:`masked_cg`.

    ``x`` has the shape and dtype of ``b`` and is exactly zero off the mask;
    ``iterations`` counts Hessian products taken inside the loop (a warm start costs
    one more, for its initial residual); ``relative_residual`` is ``||r|| / ||P b||``.

    Example:
        >>> res = masked_cg(lambda v: 2 * v, torch.ones(3), torch.tensor([True, False, True]))
        >>> res.x, res.converged
        (tensor([0.5000, 0.0000, 0.5000]), True)
    """

    x: Tensor
    iterations: int
    relative_residual: float
    converged: bool
    negative_curvature: bool


def project(v: Tensor, mask: Tensor) -> Tensor:
    """``v`` with every entry off ``mask`` set to exactly 0 (also where ``v`` is inf/nan,
    which ``v * mask`` would keep as nan).

    Example:
        >>> project(torch.tensor([1.0, float("nan")]), torch.tensor([True, False]))
        tensor([1., 0.])
    """
    return torch.where(mask, v, torch.zeros((), dtype=v.dtype, device=v.device))


def dot(a: Tensor, b: Tensor) -> float:
    """The inner product of two tensors of any (equal) shape, as a Python float.

    Example:
        >>> dot(torch.ones(2, 2), torch.full((2, 2), 2.0))
        8.0
    """
    return float(torch.dot(a.reshape(-1), b.reshape(-1)))


def masked_cg(
    hvp: Callable[[Tensor], Tensor],
    b: Tensor,
    mask: Tensor,
    *,
    damping: float = 1e-4,
    rtol: float = 1e-2,
    max_iter: int = 50,
    x0: Optional[Tensor] = None,
    preconditioner: Optional[Tensor] = None,
) -> CGResult:
    """Solve ``(P H P + damping I) x = P b`` on the support of the bool ``mask``.

    ``hvp(v)`` returns ``H v`` for ``v`` of ``b``'s shape (any shape: vectors are
    flattened for inner products). Stops when ``||r|| / ||P b|| <= rtol`` or after
    ``max_iter`` products. Negative-curvature guard: if ``p^T (H + damping) p <= 0``,
    CG stops and returns the current iterate, or ``P b`` (the steepest-descent direction
    when ``b = -grad``) if it has not moved from zero yet, with
    ``negative_curvature=True`` (with a preconditioner, ``M^-1 P b``). ``x0`` is a warm
    start, projected onto the support. ``preconditioner`` is a positive tensor of ``b``'s
    shape, the diagonal of an ``M ~ H``: preconditioned CG, which takes fewer products the
    better ``M`` captures the scales of ``H`` (the stopping test stays on the plain
    residual ``||r||``).

    Vector arithmetic runs in at least float32 (half-precision weights would stall CG);
    ``hvp`` is called with ``b``'s dtype and ``x`` comes back in ``b``'s dtype.

    Example:
        >>> A = torch.tensor([[4.0, 1.0, 0.0], [1.0, 3.0, 1.0], [0.0, 1.0, 2.0]])
        >>> mask = torch.tensor([True, True, False])
        >>> res = masked_cg(lambda v: A @ v, torch.tensor([1.0, 2.0, 3.0]), mask, damping=0.0, rtol=1e-10)
        >>> torch.allclose(res.x[:2], torch.linalg.solve(A[:2, :2], torch.tensor([1.0, 2.0])))
        True
    """
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got {mask.dtype}")
    if mask.shape != b.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != b shape {tuple(b.shape)}")
    if damping < 0 or rtol < 0 or max_iter < 0:
        raise ValueError("damping, rtol and max_iter must be >= 0")

    out_dtype = b.dtype
    work = torch.promote_types(out_dtype, torch.float32)
    mask = mask.to(b.device)

    def apply(v: Tensor) -> Tensor:
        hv = hvp(v.to(out_dtype)).to(work)
        return project(hv, mask) + damping * v

    def result(x, it, rel, conv, neg):
        return CGResult(project(x, mask).to(out_dtype), it, rel, conv, neg)

    if preconditioner is not None:
        if preconditioner.shape != b.shape:
            raise ValueError(f"preconditioner shape {tuple(preconditioner.shape)} != b shape {tuple(b.shape)}")
        inverse = project(1.0 / preconditioner.detach().to(device=b.device, dtype=work), mask)
        if not bool(torch.isfinite(inverse).all() and (inverse > 0).eq(mask.to(b.device)).all()):
            raise ValueError("preconditioner must be positive and finite on the mask")
        # CG does not care about M's scale, but the negative-curvature fallback M^-1 P b
        # does: a mean of 1 on the support keeps that step on b's own scale.
        inverse = inverse * (mask.sum() / inverse.sum()).clamp(max=1e30)

    def precondition(v: Tensor) -> Tensor:
        return v if preconditioner is None else v * inverse

    b = project(b.detach().to(work), mask)
    b_norm = dot(b, b) ** 0.5
    if b_norm == 0.0:
        return result(torch.zeros_like(b), 0, 0.0, True, False)

    if x0 is None:
        x, r = torch.zeros_like(b), b.clone()
    else:
        x = project(x0.detach().to(device=b.device, dtype=work), mask)
        r = b - apply(x)
    rel = dot(r, r) ** 0.5 / b_norm
    if rel <= rtol:
        return result(x, 0, rel, True, False)

    z = precondition(r)
    rz = dot(r, z)
    p = z.clone()
    moved = x0 is not None and bool(x.any())
    for it in range(1, max_iter + 1):
        ap = apply(p)
        curvature = dot(p, ap)
        if not curvature > 0.0:  # also catches nan
            x_out = x if moved else precondition(b)
            return result(x_out, it, rel, False, True)
        alpha = rz / curvature
        x.add_(p, alpha=alpha)
        r.sub_(ap, alpha=alpha)
        moved = True
        rel = dot(r, r) ** 0.5 / b_norm
        if rel <= rtol:
            return result(x, it, rel, True, False)
        z = precondition(r)
        rz_new = dot(r, z)
        p.mul_(rz_new / rz).add_(z)
        rz = rz_new
    return result(x, max_iter, rel, False, False)
