"""Metrics as ``evaluate`` modules shipped with the package, so they load offline.

``evaluate.load("accuracy")`` fetches its script from the Hub; these local modules are
loaded by path with the same ``evaluate.load`` call and work anywhere.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=None)
def load_metric(name: str):
    """An ``evaluate`` module from this folder (``top_k_accuracy``, ``perplexity_from_nll``).

    Example:
        >>> load_metric("top_k_accuracy").compute(predictions=[[0.1, 0.9]], references=[1])
        {'top1_accuracy': 1.0}
    """
    import evaluate

    path = Path(__file__).parent / name
    if not (path / f"{name}.py").is_file():
        raise ValueError(f"unknown metric {name!r}")
    return evaluate.load(str(path))
