"""Mask selectors: ``(weight_rows, stats) -> importance scores``, registered by name.

A selector scores every weight of a ``(rows, inputs)`` matrix; :func:`select_mask`
keeps the top scores under the pattern. Selectors that need calibration statistics say
so in ``needs`` so the pipeline collects only what is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .patterns import SparsityPattern
from .topk import select_topk

Scorer = Callable[[torch.Tensor, dict], torch.Tensor]


@dataclass(frozen=True)
class Selector:
    """A registered mask selector: its scoring function and the statistics it needs."""

    name: str
    score: Scorer
    needs: frozenset[str] = frozenset()


SELECTORS: dict[str, Selector] = {}


def register_selector(name: str, score: Scorer, needs: tuple[str, ...] = ()) -> Selector:
    """Register a selector under ``name``; registering a name twice is an error.

    Example:
        >>> register_selector("random-demo", lambda w, s: torch.rand_like(w))  # doctest: +SKIP
    """
    if name in SELECTORS:
        raise ValueError(f"mask selector {name!r} is already registered")
    SELECTORS[name] = Selector(name, score, frozenset(needs))
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
    selector = get_selector(name)
    return select_topk(selector.score(weight_rows, stats or {}), pattern)


def _input_sq(weight_rows: torch.Tensor, stats: dict) -> torch.Tensor:
    try:
        sq = stats["input_sq"]
    except KeyError:
        raise ValueError("this mask selector needs input statistics ('input_sq')") from None
    if sq.shape != weight_rows.shape[1:]:
        raise ValueError(f"input_sq has shape {tuple(sq.shape)}, expected ({weight_rows.shape[1]},)")
    return sq.to(weight_rows.device, torch.float32)


def wanda_scores(weight_rows: torch.Tensor, stats: dict) -> torch.Tensor:
    """Wanda: ``|W_ij| * ||X_j||`` (``stats["input_sq"][j] = sum of x_j^2`` over tokens).

    Example:
        >>> wanda_scores(torch.tensor([[1.0, -2.0]]), {"input_sq": torch.tensor([9.0, 1.0])})
        tensor([[3., 2.]])
    """
    return weight_rows.detach().float().abs() * _input_sq(weight_rows, stats).sqrt()


def hessian_scores(weight_rows: torch.Tensor, stats: dict) -> torch.Tensor:
    """Covariance-scaled importance ``W_ij^2 * H_jj`` with ``H = X^T X`` (its diagonal).

    For a linear model this is the loss increase of removing one weight alone, which
    is why it, unlike ``|W|``, keeps small weights on high-variance inputs.

    Example:
        >>> hessian_scores(torch.tensor([[1.0, -2.0]]), {"input_sq": torch.tensor([9.0, 1.0])})
        tensor([[9., 4.]])
    """
    return weight_rows.detach().float().pow(2) * _input_sq(weight_rows, stats)


register_selector("magnitude", lambda w, stats: w.detach().abs())
register_selector("wanda", wanda_scores, needs=("input_sq",))
register_selector("hessian", hessian_scores, needs=("input_sq",))
