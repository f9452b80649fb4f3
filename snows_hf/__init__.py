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

__version__ = "0.1.0"

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
    "prune_": "api",
    "as_batches": "api",
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
    from .api import as_batches, prune_
    from .export import save_pruned
    from .workflow import EvalOptions, LoadOptions, PushOptions, RunResult, SaveOptions, evaluate, run
    from .config import PruneConfig
    from .data import CalibrationConfig
    from .fields import SettingError
    from .methods import SnowsConfig, SnowsFastConfig
    from .masks import SparsityPattern, parse_sparsity
    from .report import LayerReport, PruneReport, RunRecord
    from .sparse_inference import SparseInferenceReport, sparse_inference_


def _register_compact_format_when_transformers_loads() -> None:
    """Make ``from_pretrained`` read compact snows-hf checkpoints, without importing
    transformers now: registration runs once ``transformers.modeling_utils`` (which every
    ``from_pretrained`` needs) has been imported, or right away if it already was."""
    import importlib.abc
    import importlib.util
    import sys

    target = "transformers.modeling_utils"

    def register() -> None:
        from .compact_format import register as _register

        _register()

    if target in sys.modules:
        register()
        return

    class _Finder(importlib.abc.MetaPathFinder):
        busy = False

        def find_spec(self, name, path, target_module=None):  # noqa: ANN001
            if name != target or self.busy:
                return None
            self.busy = True  # the lookup below runs the meta path again, us included
            try:
                spec = importlib.util.find_spec(name)
            finally:
                self.busy = False
            if spec is None or spec.loader is None:
                return spec
            exec_module, finder = spec.loader.exec_module, self

            def exec_and_register(module):  # noqa: ANN001
                exec_module(module)
                if finder in sys.meta_path:  # only once the module really loaded
                    sys.meta_path.remove(finder)
                register()

            spec.loader.exec_module = exec_and_register
            return spec

    if not any(type(f).__name__ == "_Finder" and type(f).__module__ == __name__ for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


_register_compact_format_when_transformers_loads()


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'snows_hf' has no attribute {name!r}")
