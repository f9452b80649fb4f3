"""How much a magnitude mask costs, measured with the layer's own input statistics.

For a linear layer ``y = W x`` the loss increase of removing weight ``W_ij`` alone is
``W_ij^2 * H_jj`` (``H = X^T X``): covariance scaling, not ``|W_ij|``, says what matters.
Magnitude fails when important weights are small, i.e. when input variances spread
widely. These figures, per layer, show when that happens.
"""

from __future__ import annotations

import torch

from ..fields import setting
from .patterns import SparsityPattern
from .selectors import hessian_scores
from .topk import select_topk


def importance_diagnostics(weight_rows: torch.Tensor, input_sq: torch.Tensor, pattern: SparsityPattern) -> dict:
    """Compare the magnitude and Hessian-scaled masks of one layer under ``pattern``.

    Returns:
        ``jaccard``: overlap of the two keep-sets (1 = same mask);
        ``importance_removed_magnitude`` / ``importance_removed_hessian``: share of the
        total ``sum W_ij^2 H_jj`` that each mask prunes;
        ``input_variance_spread``: ``max / min`` of the non-zero ``H_jj``;
        ``dead_inputs``: inputs with ``H_jj = 0``.

    Example:
        >>> from snows_hf.masks import parse_sparsity
        >>> d = importance_diagnostics(torch.tensor([[1.0, 0.1]]), torch.tensor([1.0, 1e4]), parse_sparsity("1:2"))
        >>> d["jaccard"], round(d["importance_removed_magnitude"], 3), round(d["importance_removed_hessian"], 3)
        (0.0, 0.99, 0.01)
    """
    w = weight_rows.detach().float()
    importance = hessian_scores(w, {"input_sq": input_sq})
    by_magnitude = select_topk(w.abs(), pattern)
    by_hessian = select_topk(importance, pattern)
    total = float(importance.sum())
    sq = input_sq.detach().reshape(-1).float()
    live = sq[sq > 0]
    union = int((by_magnitude | by_hessian).sum())
    return {
        "jaccard": int((by_magnitude & by_hessian).sum()) / union if union else 1.0,
        "importance_removed_magnitude": float(importance[~by_magnitude].sum()) / total if total else 0.0,
        "importance_removed_hessian": float(importance[~by_hessian].sum()) / total if total else 0.0,
        "input_variance_spread": float(live.max() / live.min()) if live.numel() else None,
        "dead_inputs": int((sq == 0).sum()),
    }


def magnitude_warning(layers: list[tuple[str, dict]], ratio: float = 2.0, floor: float = 0.01) -> str | None:
    """One line naming layers where magnitude removes ``ratio`` times the importance the
    Hessian-scaled mask removes (and at least ``floor`` of the total), else ``None``.

    Example:
        >>> d = {"importance_removed_magnitude": 0.3, "importance_removed_hessian": 0.05}
        >>> magnitude_warning([("fc1", d)])
        "magnitude masks remove far more Hessian-weighted importance than Hessian-scaled masks in 1 of 1 layers (worst: fc1, 0.300 vs 0.050); mask='sparsegpt' (the default) or hessian avoids this"
    """
    bad = [
        (d["importance_removed_magnitude"] / max(d["importance_removed_hessian"], 1e-12), name, d)
        for name, d in layers
        if d and d["importance_removed_magnitude"] >= floor
        and d["importance_removed_magnitude"] >= ratio * d["importance_removed_hessian"]
    ]
    if not bad:
        return None
    _, name, worst = max(bad, key=lambda item: item[0])
    return (
        f"magnitude masks remove far more Hessian-weighted importance than Hessian-scaled masks in "
        f"{len(bad)} of {len(layers)} layers (worst: {name}, {worst['importance_removed_magnitude']:.3f} vs "
        f"{worst['importance_removed_hessian']:.3f}); {setting('mask', 'sparsegpt')} (the default) or hessian avoids this"
    )
