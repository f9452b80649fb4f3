"""Pruning methods: what happens to one targeted module, given its block's inputs.

Each method is registered here, once, under its options' name: ``mask-only``
(:mod:`~snows_hf.methods.mask_only`), ``snows`` and its cheaper preset ``snows-fast``
(:mod:`~snows_hf.methods.snows`). :func:`register_method` adds another; :func:`get_method`
finds one by name. Earlier names (``none``, ``magnitude``) are still read, with one
deprecation line (:mod:`~snows_hf.methods.aliases`).

Example:
    >>> from snows_hf import PruneConfig
    >>> PruneConfig(sparsity="2:4", method=SnowsConfig(k_step=1)).method.k_step
    1
"""

from .base import (METHODS, InputStats, Method, MethodConfig, MethodPlan, MethodResult, ModuleJob, block_input_stats,
                   get_method, has_input_features, input_features, register_method)
from .aliases import METHOD_ALIASES, register_method_alias, without_method_alias
from .mask_only import MaskOnly, MaskOnlyConfig
from .snows import SnowsConfig, SnowsFastConfig, SnowsFastMethod, SnowsMethod, SnowsPlan, split_holdout

register_method(MaskOnly)
register_method(SnowsMethod)
register_method(SnowsFastMethod)
register_method_alias("none", "mask-only")
register_method_alias("magnitude", "mask-only", mask="magnitude")  # magnitude is a mask, not a method

__all__ = ["METHODS", "METHOD_ALIASES", "InputStats", "MaskOnly", "MaskOnlyConfig", "Method",
           "MethodConfig", "MethodPlan", "MethodResult", "ModuleJob", "SnowsConfig", "SnowsFastConfig", "SnowsFastMethod",
           "SnowsMethod", "SnowsPlan", "block_input_stats", "get_method", "has_input_features", "input_features",
           "register_method", "register_method_alias", "split_holdout", "without_method_alias"]
