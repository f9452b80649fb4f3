"""``from_pretrained`` of compact snows-hf checkpoints after ``import snows_hf``, without
importing transformers then: :func:`install` puts a finder on ``sys.meta_path`` that waits
for ``transformers.modeling_utils`` (which every ``from_pretrained`` imports) and, once it
has loaded, registers the compact format's quantizer
(:func:`snows_hf.compact_format.register`) and takes itself off. Installing is cheap (no
import) and idempotent; if transformers is loaded already, the format is registered at once.

Example:
    >>> import sys
    >>> from snows_hf import compact_hook
    >>> compact_hook.install()
    >>> compact_hook.install()  # a second call adds nothing
    >>> sum(isinstance(f, compact_hook.WhenLoaded) for f in sys.meta_path) <= 1
    True
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from typing import Any

TARGET = "transformers.modeling_utils"


def register() -> None:
    """Register the compact format with transformers (imported now: this is what waits)."""
    from .compact_format import register as register_format  # imports torch and transformers: only when they load

    register_format()


class WhenLoaded(importlib.abc.MetaPathFinder):
    """Runs :func:`register` right after :data:`TARGET` has been executed, then leaves the meta path."""

    busy = False

    def find_spec(self, name: str, path: Any, target_module: Any = None) -> Any:
        if name != TARGET or self.busy:
            return None
        self.busy = True  # the lookup below runs the meta path again, this finder included
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self.busy = False
        if spec is None or spec.loader is None:
            return spec
        exec_module, finder = spec.loader.exec_module, self

        def exec_and_register(module: Any) -> None:
            exec_module(module)
            if finder in sys.meta_path:  # only once the module really loaded
                sys.meta_path.remove(finder)
            register()

        spec.loader.exec_module = exec_and_register
        return spec


def install() -> None:
    """Make ``from_pretrained`` read compact checkpoints from now on (see the module's text)."""
    if TARGET in sys.modules:
        register()
    elif not any(isinstance(finder, WhenLoaded) for finder in sys.meta_path):
        sys.meta_path.insert(0, WhenLoaded())
