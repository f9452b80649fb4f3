"""Several weight tensors laid end to end in one flat vector: the variable of a joint re-fit.

The solver (:func:`~snows_hf.solver.newton_refit`, :class:`~snows_hf.solver.HessianOperator`,
:func:`~snows_hf.solver.masked_cg`) works on one tensor of any shape. To re-fit several
weights together, their values, masks and preconditioner diagonals are packed into one
flat vector each; the residual function unpacks the vector into differentiable views of
the weights' shapes. Gradients and Hessian products are then those of the joint
variable, the curvature between the weights included.
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch
from torch import Tensor


class FlatLayout:
    """Where each of several tensors sits in one flat vector, and how to get it back.

    Example:
        >>> layout = FlatLayout([torch.zeros(2, 3), torch.zeros(4)])
        >>> flat = layout.pack([torch.ones(2, 3), torch.arange(4.0)])
        >>> flat.shape, [t.shape for t in layout.unpack(flat)]
        (torch.Size([10]), [torch.Size([2, 3]), torch.Size([4])])
        >>> layout.unpack(flat)[1].tolist()
        [0.0, 1.0, 2.0, 3.0]
    """

    def __init__(self, like: Sequence[Tensor]) -> None:
        if not like:
            raise ValueError("FlatLayout needs at least one tensor")
        self.shapes = [t.shape for t in like]
        self.dtypes = [t.dtype for t in like]
        self.sizes = [t.numel() for t in like]
        #: the vector's dtype: every tensor's values fit (the weights of one block share one)
        self.dtype = functools.reduce(torch.promote_types, self.dtypes)

    @property
    def numel(self) -> int:
        """Length of the flat vector."""
        return sum(self.sizes)

    def pack(self, tensors: Sequence[Tensor], dtype: torch.dtype | None = None) -> Tensor:
        """One flat vector of ``tensors`` (in the layout's order and shapes), in ``dtype``
        (default: the layout's); bool tensors (masks) stay bool."""
        if len(tensors) != len(self.shapes):
            raise ValueError(f"expected {len(self.shapes)} tensors, got {len(tensors)}")
        for t, shape in zip(tensors, self.shapes):
            if t.shape != shape:
                raise ValueError(f"tensor of shape {tuple(t.shape)} where the layout has {tuple(shape)}")
        dtype = torch.bool if all(t.dtype == torch.bool for t in tensors) else dtype or self.dtype
        return torch.cat([t.detach().reshape(-1).to(dtype) for t in tensors])

    def unpack(self, flat: Tensor) -> list[Tensor]:
        """Views of ``flat`` in each tensor's shape (and dtype): differentiable, so a
        residual function of the unpacked weights is one of ``flat``."""
        if flat.shape != (self.numel,):
            raise ValueError(f"flat vector of shape {tuple(flat.shape)}, expected ({self.numel},)")
        parts = flat.split(self.sizes)
        if flat.dtype == torch.bool:
            return [p.view(shape) for p, shape in zip(parts, self.shapes)]
        return [p.view(shape).to(dtype) for p, shape, dtype in zip(parts, self.shapes, self.dtypes)]
