"""Pure-torch SNOWS solver: window loss, Hessian-vector products, masked CG, Newton re-fit.

Knows nothing about models: it works on a weight tensor, a bool mask and a residual
function ``residual_fn(w, batch) -> list[Tensor]``. Several weights re-fitted together
are one flat vector (:class:`FlatLayout` packs and unpacks them).

Example:
    >>> import torch
    >>> from snows_hf.solver import newton_refit, NewtonConfig
    >>> X, Y = torch.randn(64, 4), torch.randn(64, 3)
    >>> fn = lambda w, b: [b[0] @ w.T - b[1]]
    >>> res = newton_refit(torch.randn(3, 4), torch.rand(3, 4) > 0.5, fn,
    ...                    [(X[:48], Y[:48])], [(X[48:], Y[48:])], NewtonConfig(steps=1))
    >>> res.steps_accepted + res.steps_rejected
    1
"""

from .cg import CGResult, masked_cg
from .flat import FlatLayout
from .hvp import ONE_PROCESS, BatchShard, HessianOperator, batch_loss, window_loss
from .newton import NewtonConfig, NewtonResult, newton_refit

__all__ = [
    "ONE_PROCESS",
    "BatchShard",
    "CGResult",
    "FlatLayout",
    "HessianOperator",
    "NewtonConfig",
    "NewtonResult",
    "batch_loss",
    "masked_cg",
    "newton_refit",
    "window_loss",
]
