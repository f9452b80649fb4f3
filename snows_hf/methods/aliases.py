"""Earlier names of methods, still read: each stands for a registered method with some
settings (``none`` is ``mask-only``; ``magnitude`` is ``mask-only`` with the magnitude
mask), and reading one says so on one line of the ``snows_hf`` logger.

Example:
    >>> register_method_alias("keep-old", "mask-only", mask="wanda")
    >>> without_method_alias({"sparsity": "2:4", "method": "keep-old"})  # logs one deprecation line
    {'sparsity': '2:4', 'method': 'mask-only', 'mask': 'wanda'}
    >>> del METHOD_ALIASES["keep-old"]  # this example's alias only
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from ..fields import setting
from .base import METHODS

logger = logging.getLogger("snows_hf")

#: earlier method name -> (the registered method it stands for, the settings it implies)
METHOD_ALIASES: dict[str, tuple[str, dict[str, Any]]] = {}


def register_method_alias(old: str, new: str, **settings: Any) -> None:
    """Read the method name ``old`` as ``new`` with ``settings`` (flat setting keys, such as
    ``mask``) from now on. A name already registered or aliased is an error.

    Example:
        >>> register_method_alias("none", "mask-only")
        Traceback (most recent call last):
        ValueError: method name 'none' is already registered or an alias
    """
    if old in METHODS or old in METHOD_ALIASES:
        raise ValueError(f"method name {old!r} is already registered or an alias")
    METHOD_ALIASES[old] = (new, dict(settings))


def without_method_alias(values: Mapping[str, Any], quiet: bool = False) -> dict[str, Any]:
    """Flat settings ``values`` with an earlier method name (one no registered method
    takes) replaced by the method and settings it stands for, logging one deprecation
    line that names the new spelling (``quiet``: none, for settings a file of an earlier
    run recorded, not ones a user gives); other settings as they are.

    Example:
        >>> without_method_alias({"method": "magnitude", "mask": "sparsegpt"})  # logs one deprecation line
        {'method': 'mask-only', 'mask': 'magnitude'}
        >>> without_method_alias({"method": "snows"})
        {'method': 'snows'}
    """
    method = values.get("method")
    if not isinstance(method, str) or method in METHODS or method not in METHOD_ALIASES:
        return dict(values)
    new, settings = METHOD_ALIASES[method]
    if quiet:
        return {**values, "method": new, **settings}
    spelled = " with ".join([setting("method", new), *(setting(key, value) for key, value in settings.items())])
    logger.warning("method %r is deprecated and will be removed: use %s (same weights)", method, spelled)
    return {**values, "method": new, **settings}
