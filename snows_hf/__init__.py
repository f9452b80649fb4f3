"""snows-hf: one-shot pruning of Hugging Face models with SNOWS re-fitting.

Example:
    >>> import snows_hf
    >>> report = snows_hf.prune_(model, snows_hf.PruneConfig(sparsity="2:4"), calibration)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Heavy imports (torch, transformers) wait until a name is used, so `import snows_hf`
# and `snows-hf --help` stay fast and touch no accelerator.
_EXPORTS = {
    "prune_": "api",
    "as_batches": "api",
    "PruneConfig": "config",
    "PruneReport": "report",
    "LayerReport": "report",
    "parse_sparsity": "masks",
    "SparsityPattern": "masks",
}

__all__ = sorted(_EXPORTS) + ["__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from .api import as_batches, prune_
    from .config import PruneConfig
    from .masks import SparsityPattern, parse_sparsity
    from .report import LayerReport, PruneReport


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'snows_hf' has no attribute {name!r}")
