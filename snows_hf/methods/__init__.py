"""Pruning methods: what happens to one targeted module, given its block's inputs."""

from .base import METHODS, MagnitudeMethod, MaskOnly, Method, MethodResult, ModuleJob, get_method, input_features, register_method
from .snows import SnowsMethod, split_holdout

__all__ = ["METHODS", "MagnitudeMethod", "MaskOnly", "Method", "MethodResult", "ModuleJob", "SnowsMethod", "get_method",
           "input_features", "register_method", "split_holdout"]
