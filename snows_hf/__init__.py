"""snows-hf: one-shot pruning of Hugging Face models with SNOWS re-fitting.

The whole run (load, evaluate, prune, evaluate, save with report, recipe and card, push)
is :func:`run`; :func:`prune_` prunes a model in memory with calibration tensors.

Example:
    >>> import snows_hf
    >>> result = snows_hf.run("google/vit-base-patch16-224", snows_hf.PruneConfig(sparsity="2:4"))  # doctest: +SKIP
    >>> report = snows_hf.prune_(model, snows_hf.PruneConfig(sparsity="2:4"), calibration)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import compact_hook
from .version import __version__

# Heavy imports (torch, transformers) wait until a name is used, so `import snows_hf`
# and `snows-hf --help` stay fast and touch no accelerator.
_EXPORTS = {
    "run": "workflow",
    "RunResult": "workflow",
    "evaluate": "workflow",
    "LoadOptions": "workflow",
    "SaveOptions": "workflow",
    "PushOptions": "workflow",
    "EvalOptions": "workflow",
    "RunRecord": "report",
    "save_pruned": "export",
    "prune_": "oneshot",
    "as_batches": "oneshot",
    "PruneConfig": "config",
    "SnowsConfig": "methods",
    "SnowsFastConfig": "methods",
    "CalibrationConfig": "data",
    "SettingError": "fields",
    "PruneReport": "report",
    "LayerReport": "report",
    "parse_sparsity": "masks",
    "SparsityPattern": "masks",
    "sparse_inference_": "sparse_inference",
    "SparseInferenceReport": "sparse_inference",
}

__all__ = sorted(_EXPORTS) + ["__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from .oneshot import as_batches, prune_
    from .export import save_pruned
    from .workflow import EvalOptions, LoadOptions, PushOptions, RunResult, SaveOptions, evaluate, run
    from .config import PruneConfig
    from .data import CalibrationConfig
    from .fields import SettingError
    from .methods import SnowsConfig, SnowsFastConfig
    from .masks import SparsityPattern, parse_sparsity
    from .report import LayerReport, PruneReport, RunRecord
    from .sparse_inference import SparseInferenceReport, sparse_inference_


# Compact checkpoints load with from_pretrained after `import snows_hf`: a cheap, idempotent
# hook registers their format once transformers loads (nothing is imported now).
compact_hook.install()


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'snows_hf' has no attribute {name!r}")
