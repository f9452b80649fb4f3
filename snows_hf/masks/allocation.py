"""Global unstructured sparsity: one score threshold across layers, each layer capped.

Pure torch. Scores are given per layer, as tensors or as zero-argument callables that
compute them on demand (so a large model never holds every layer's scores at once).
"""

from __future__ import annotations

from typing import Callable, Mapping, Union

import torch

Scores = Union[torch.Tensor, Callable[[], torch.Tensor]]


def _get(scores: Scores) -> torch.Tensor:
    return scores() if callable(scores) else scores


def allocate_global(scores: Mapping[str, Scores], sparsity: float, max_layer_sparsity: float) -> dict[str, int]:
    """How many weights each layer prunes so that the lowest scores overall go first.

    Every layer prunes its weights scoring below one shared threshold, but never more than
    ``floor(max_layer_sparsity * numel)``; the threshold is set so the total is exactly
    ``round(sparsity * total numel)``. Ties at the threshold are shared out in proportion.

    Example:
        >>> s = {"a": torch.tensor([1.0, 2.0, 3.0, 4.0]), "b": torch.tensor([10.0, 20.0, 30.0, 40.0])}
        >>> allocate_global(s, 0.5, 1.0)
        {'a': 4, 'b': 0}
        >>> allocate_global(s, 0.5, 0.75)
        {'a': 3, 'b': 1}
    """
    if not 0 <= sparsity <= max_layer_sparsity <= 1:
        raise ValueError(f"need 0 <= sparsity ({sparsity}) <= max_layer_sparsity ({max_layer_sparsity}) <= 1")
    sizes, lo, hi = {}, float("inf"), float("-inf")
    for name, value in scores.items():
        s = _get(value)
        sizes[name] = s.numel()
        if s.numel():
            lo, hi = min(lo, float(s.min())), max(hi, float(s.max()))
    caps = {name: int(max_layer_sparsity * n + 1e-9) for name, n in sizes.items()}
    target = round(sparsity * sum(sizes.values()))
    if target > sum(caps.values()):  # only by rounding of the caps
        raise ValueError("the per-layer cap leaves too few weights to reach the target sparsity")

    def counts(threshold: float) -> dict[str, int]:
        return {n: min(int((_get(v) < threshold).sum()), caps[n]) for n, v in scores.items()}

    if target == 0 or not sizes:
        return {name: 0 for name in sizes}
    # counts(t) is monotone in t: bisect so that counts(lo) <= target < sum(above), where
    # ``above`` counts the weights scoring below ``hi`` (at first: every weight, capped).
    below, above = counts(lo), {n: min(sizes[n], caps[n]) for n in sizes}
    if sum(above.values()) <= target:
        below = above
    else:
        for _ in range(64):
            mid = lo + (hi - lo) / 2
            if not lo < mid < hi:
                break
            at = counts(mid)
            if sum(at.values()) <= target:
                lo, below = mid, at
                if sum(at.values()) == target:
                    break
            else:
                hi, above = mid, at
    # Weights between the two thresholds score (nearly) alike: share the rest by room.
    rest = target - sum(below.values())
    band = {n: above[n] - below[n] for n in sizes}
    total_band = sum(band.values())
    out, taken, seen = dict(below), 0, 0
    for name in sizes:
        seen += band[name]
        share = round(rest * seen / total_band) if total_band else 0
        out[name] += share - taken
        taken = share
    return out
