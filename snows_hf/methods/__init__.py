"""Pruning methods: what happens to one targeted module, given its block's inputs.

Each method is registered here, once, under its options' name: ``none`` and
``magnitude`` (:mod:`~snows_hf.methods.mask_only`), ``snows`` and its cheaper preset
``snows-fast`` (:mod:`~snows_hf.methods.snows`). :func:`register_method` adds another;
:func:`get_method` finds one by name, :func:`build_method` builds the one a config names.

Example:
    >>> from snows_hf import PruneConfig
    >>> PruneConfig(sparsity="2:4", method=SnowsConfig(k_step=1)).method.k_step
    1
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import (METHODS, InputStats, Method, MethodConfig, MethodPlan, MethodResult, ModuleJob, block_input_stats,
                   get_method, has_input_features, input_features, register_method)
from .mask_only import MagnitudeConfig, MagnitudeMethod, MaskOnly, MaskOnlyConfig
from .snows import SnowsConfig, SnowsFastConfig, SnowsFastMethod, SnowsMethod, SnowsPlan, split_holdout

register_method(MaskOnly)
register_method(MagnitudeMethod)
register_method(SnowsMethod)
register_method(SnowsFastMethod)

if TYPE_CHECKING:  # the config names its method: a run-time import would be a circle
    from ..config import PruneConfig


def build_method(config: PruneConfig) -> Method:
    """The method ``config`` names, built on it: what the run, its plan and the block loop use.

    Example:
        >>> from snows_hf import PruneConfig
        >>> type(build_method(PruneConfig(sparsity="2:4", method="magnitude"))).__name__
        'MagnitudeMethod'
    """
    return get_method(config.method)(config)

__all__ = ["METHODS", "InputStats", "MagnitudeConfig", "MagnitudeMethod", "MaskOnly", "MaskOnlyConfig", "Method",
           "MethodConfig", "MethodPlan", "MethodResult", "ModuleJob", "SnowsConfig", "SnowsFastConfig", "SnowsFastMethod",
           "SnowsMethod", "SnowsPlan",
           "block_input_stats", "build_method", "get_method", "has_input_features", "input_features", "register_method", "split_holdout"]
