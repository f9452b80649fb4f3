"""Mask selectors, registered by name.

A selector either scores every weight of a ``(rows, inputs)`` matrix (``score``), and
:func:`select_mask` keeps the top scores under the pattern, or solves for the mask and
new weights together (``solve``, e.g. SparseGPT). Selectors that need calibration
statistics say so in ``needs`` so the pipeline collects only what is used:

- ``input_sq``: the diagonal of ``X^T X``, shape ``(inputs,)``, or ``(positions, inputs)``
  for Conv2d (one row per kernel position; weight rows cycle through positions);
- ``gram``: the full ``X^T X`` over ``positions * inputs`` columns (position-major).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch

from .patterns import SparsityPattern
from .sparsegpt import sparsegpt_prune
from .topk import select_topk

logger = logging.getLogger(__name__)

Scorer = Callable[[torch.Tensor, dict], torch.Tensor]
Solver = Callable[[torch.Tensor, dict, SparsityPattern], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Selector:
    """A registered mask selector.

    Attributes:
        name: the ``--mask`` name.
        score: ``(weight_rows, stats) -> scores``, for selectors that rank weights.
        solve: ``(weight_rows, stats, pattern) -> (new_weight_rows, keep_mask)``, for
            selectors that also update the surviving weights.
        needs: statistics the selector reads.
        per_row: unstructured sparsity is met within each output row, not the layer.
    """

    name: str
    score: Scorer | None = None
    solve: Solver | None = None
    needs: frozenset[str] = frozenset()
    per_row: bool = False

    @property
    def updates_weights(self) -> bool:
        """True when the selector returns updated weights, not just a mask."""
        return self.solve is not None


SELECTORS: dict[str, Selector] = {}


def register_selector(
    name: str,
    score: Scorer | None = None,
    needs: tuple[str, ...] = (),
    *,
    solve: Solver | None = None,
    per_row: bool = False,
) -> Selector:
    """Register a selector under ``name``; registering a name twice is an error.

    Example:
        >>> register_selector("random-demo", lambda w, s: torch.rand_like(w))  # doctest: +SKIP
    """
    if name in SELECTORS:
        raise ValueError(f"mask selector {name!r} is already registered")
    if (score is None) == (solve is None):
        raise ValueError(f"mask selector {name!r} needs exactly one of score and solve")
    SELECTORS[name] = Selector(name, score, solve, frozenset(needs), per_row)
    return SELECTORS[name]


def get_selector(name: str) -> Selector:
    """Look up a selector, with an error listing the known names."""
    try:
        return SELECTORS[name]
    except KeyError:
        raise ValueError(
            f"unknown mask selector {name!r}; choose one of: {', '.join(sorted(SELECTORS))}"
        ) from None


def select_mask(
    name: str, weight_rows: torch.Tensor, pattern: SparsityPattern, stats: dict | None = None
) -> torch.Tensor:
    """Score ``weight_rows`` with selector ``name`` and keep the top under ``pattern``.

    Example:
        >>> from snows_hf.masks import parse_sparsity
        >>> w = torch.tensor([[0.1, -3.0, 2.0, 0.5]])
        >>> select_mask("magnitude", w, parse_sparsity("2:4"))
        tensor([[False,  True,  True, False]])
    """
    return apply_selector(name, weight_rows, pattern, stats)[1]


def apply_selector(
    name: str, weight_rows: torch.Tensor, pattern: SparsityPattern, stats: dict | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(new_weight_rows, keep_mask)`` from selector ``name``; pruned entries are zero.

    Score-based selectors keep the surviving weights as they are; solving selectors
    (SparseGPT) return their updated weights.

    Example:
        >>> from snows_hf.masks import parse_sparsity
        >>> apply_selector("magnitude", torch.tensor([[0.1, -3.0, 2.0, 0.5]]), parse_sparsity("2:4"))[0]
        tensor([[ 0., -3.,  2.,  0.]])
    """
    selector = get_selector(name)
    stats = stats or {}
    if selector.solve is not None:
        return selector.solve(weight_rows, stats, pattern)
    mask = select_topk(selector.score(weight_rows, stats), pattern, per_row=selector.per_row)
    return weight_rows * mask, mask


def _stat(stats: dict, key: str) -> torch.Tensor:
    try:
        return stats[key]
    except KeyError:
        raise ValueError(f"this mask selector needs input statistics ({key!r})") from None


def row_input_sq(weight_rows: torch.Tensor, stats: dict) -> torch.Tensor:
    """``input_sq`` broadcast to ``weight_rows``' shape (Conv2d: per kernel position).

    Example:
        >>> row_input_sq(torch.zeros(4, 2), {"input_sq": torch.tensor([[1.0, 2.0], [3.0, 4.0]])})
        tensor([[1., 2.],
                [3., 4.],
                [1., 2.],
                [3., 4.]])
    """
    sq = _stat(stats, "input_sq")
    rows, cols = weight_rows.shape
    sq = sq.reshape(-1, sq.shape[-1]) if sq.dim() else sq
    if sq.dim() != 2 or sq.shape[1] != cols or rows % sq.shape[0]:
        raise ValueError(f"input_sq has shape {tuple(stats['input_sq'].shape)}, which does not fit weights of {(rows, cols)}")
    return sq.to(weight_rows.device, torch.float32).repeat(rows // sq.shape[0], 1)


def wanda_scores(weight_rows: torch.Tensor, stats: dict) -> torch.Tensor:
    """Wanda: ``|W_ij| * ||X_j||`` (``stats["input_sq"][j] = sum of x_j^2`` over tokens).

    Example:
        >>> wanda_scores(torch.tensor([[1.0, -2.0]]), {"input_sq": torch.tensor([9.0, 1.0])})
        tensor([[3., 2.]])
    """
    return weight_rows.detach().float().abs() * row_input_sq(weight_rows, stats).sqrt()


def hessian_scores(weight_rows: torch.Tensor, stats: dict) -> torch.Tensor:
    """Covariance-scaled importance ``W_ij^2 * H_jj`` with ``H = X^T X`` (its diagonal).

    For a linear model this is the loss increase of removing one weight alone, which
    is why it, unlike ``|W|``, keeps small weights on high-variance inputs.

    Example:
        >>> hessian_scores(torch.tensor([[1.0, -2.0]]), {"input_sq": torch.tensor([9.0, 1.0])})
        tensor([[9., 4.]])
    """
    return weight_rows.detach().float().pow(2) * row_input_sq(weight_rows, stats)


def sparsegpt_solve(weight_rows: torch.Tensor, stats: dict, pattern: SparsityPattern) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT on the layer Hessian ``stats["gram"]``; Conv2d runs on ``(out, positions * inputs)``.

    Example:
        >>> from snows_hf.masks import parse_sparsity
        >>> w, keep = sparsegpt_solve(torch.randn(4, 8), {"gram": torch.eye(8)}, parse_sparsity("2:4"))
        >>> keep.sum(1).tolist()
        [4, 4, 4, 4]
    """
    gram = _stat(stats, "gram")
    rows, cols = weight_rows.shape
    positions = gram.shape[-1] // cols if cols else 0
    if positions < 1 or gram.shape != (positions * cols, positions * cols) or rows % positions:
        raise ValueError(f"gram has shape {tuple(gram.shape)}, which does not fit weights of {(rows, cols)}")
    if not bool(torch.isfinite(gram).all()):
        # NaN/Inf activations upstream: no Hessian to solve with; the weights decide alone.
        logger.warning("input statistics hold NaN/Inf: SparseGPT falls back to the magnitude mask, weights unchanged")
        mask = select_topk(weight_rows.detach().abs(), pattern, per_row=False)
        return weight_rows * mask, mask
    flat = weight_rows.reshape(rows // positions, positions * cols)
    new, keep = sparsegpt_prune(flat, gram, pattern, segment=cols)
    return new.reshape(rows, cols), keep.reshape(rows, cols)


register_selector("magnitude", lambda w, stats: w.detach().abs())
register_selector("wanda", wanda_scores, needs=("input_sq",), per_row=True)
register_selector("hessian", hessian_scores, needs=("input_sq",))
register_selector("sparsegpt", solve=sparsegpt_solve, needs=("gram",))
