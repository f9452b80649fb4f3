"""Pruning methods: what happens to one targeted module, given its block's inputs.

Each method is registered here, once, under its options' name: ``none`` and
``magnitude`` (:mod:`~snows_hf.methods.mask_only`), ``snows`` and its cheaper preset
``snows-fast`` (:mod:`~snows_hf.methods.snows`). :func:`register_method` adds another;
:func:`get_method` finds one by name.

Example:
    >>> from snows_hf import PruneConfig
    >>> PruneConfig(sparsity="2:4", method=SnowsConfig(k_step=1)).method.k_step
    1
"""

from ..statistics import InputStats, block_input_stats, has_input_features, input_features
from .base import METHODS, LayerPlot, Method, MethodConfig, MethodPlan, MethodResult, get_method, register_method
from .job import ModuleJob
from .mask_only import MagnitudeConfig, MagnitudeMethod, MaskOnly, MaskOnlyConfig
from .refit import split_holdout
from .snows import SnowsConfig, SnowsFastConfig, SnowsFastMethod, SnowsMethod, SnowsPlan

register_method(MaskOnly)
register_method(MagnitudeMethod)
register_method(SnowsMethod)
register_method(SnowsFastMethod)

__all__ = ["METHODS", "InputStats", "LayerPlot", "MagnitudeConfig", "MagnitudeMethod", "MaskOnly", "MaskOnlyConfig",
           "Method", "MethodConfig", "MethodPlan", "MethodResult", "ModuleJob", "SnowsConfig", "SnowsFastConfig",
           "SnowsFastMethod", "SnowsMethod", "SnowsPlan",
           "block_input_stats", "get_method", "has_input_features", "input_features", "register_method", "split_holdout"]
