"""Pruning methods: what happens to one targeted module, given its block's inputs.

Each method is registered here, once, under its options' name: ``mask-only``
(:mod:`~snows_hf.methods.mask_only`), ``snows`` and its cheaper preset ``snows-fast``
(:mod:`~snows_hf.methods.snows`). :func:`register_method` adds another; :func:`get_method`
finds one by name. Earlier names (``none``, ``magnitude``) are still read, with one
deprecation line (:mod:`~snows_hf.methods.aliases`). :func:`build_method` builds the one a config names.

Example:
    >>> from snows_hf import PruneConfig
    >>> PruneConfig(sparsity="2:4", method=SnowsConfig(k_step=1)).method.k_step
    1
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..statistics import InputStats, block_input_stats, has_input_features, input_features
from .aliases import METHOD_ALIASES, register_method_alias, without_method_alias
from .base import METHODS, LayerPlot, Method, MethodConfig, MethodPlan, MethodResult, get_method, register_method
from .job import ModuleJob
from .mask_only import MaskOnly, MaskOnlyConfig
from .refit import split_holdout
from .snows import SnowsConfig, SnowsFastConfig, SnowsFastMethod, SnowsMethod, SnowsPlan

register_method(MaskOnly)
register_method(SnowsMethod)
register_method(SnowsFastMethod)
register_method_alias("none", "mask-only")
register_method_alias("magnitude", "mask-only", mask="magnitude")  # magnitude is a mask, not a method

if TYPE_CHECKING:  # the config names its method: a run-time import would be a circle
    from ..config import PruneConfig


def build_method(config: PruneConfig) -> Method:
    """The method ``config`` names, built on it: what the run, its plan and the block loop use.

    Example:
        >>> from snows_hf import PruneConfig
        >>> type(build_method(PruneConfig(sparsity="2:4", method="mask-only"))).__name__
        'MaskOnly'
    """
    return get_method(config.method)(config)


__all__ = ["METHODS", "METHOD_ALIASES", "InputStats", "LayerPlot", "MaskOnly", "MaskOnlyConfig", "Method",
           "MethodConfig", "MethodPlan", "MethodResult", "ModuleJob", "SnowsConfig", "SnowsFastConfig", "SnowsFastMethod",
           "SnowsMethod", "SnowsPlan", "block_input_stats", "build_method", "get_method", "has_input_features",
           "input_features", "register_method", "register_method_alias", "split_holdout", "without_method_alias"]
