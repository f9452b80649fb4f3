"""Pruning methods: what happens to one targeted module, given its block's inputs.

Each method is registered here, once, under its name: ``none`` and ``magnitude``
(:mod:`~snows_hf.methods.mask_only`) and ``snows`` (:mod:`~snows_hf.methods.snows`).
:func:`register_method` adds another; :func:`get_method` finds one by name.
"""

from .base import METHODS, Method, MethodResult, ModuleJob, get_method, input_features, register_method
from .mask_only import MagnitudeMethod, MaskOnly
from .snows import SnowsMethod, split_holdout

register_method(MaskOnly)
register_method(MagnitudeMethod)
register_method(SnowsMethod)

__all__ = ["METHODS", "MagnitudeMethod", "MaskOnly", "Method", "MethodResult", "ModuleJob", "SnowsMethod", "get_method",
           "input_features", "register_method", "split_holdout"]
