"""Griffe extension: read snows-hf's docstrings as the site should show them.

The docstrings are written for ``help()`` and doctest as well as for this site: an
``Example:`` section holds doctests, and Sphinx roles (``:func:`run```) name other objects.
Before griffe parses a docstring, this renames ``Example:`` to the Google style's
``Examples:`` (so its doctests render as code, not as Markdown) and turns each role into
inline code of the name it points to.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
_ROLE = re.compile(r":(?:func|class|meth|attr|data|mod|exc|obj):`~?([^`]+)`")


def rewrite(text: str) -> str:
    """``text`` with ``Example:`` sections as ``Examples:`` and Sphinx roles as code.

    Example:
        >>> rewrite("See :func:`~snows_hf.run`.\\n\\nExample:\\n    >>> 1\\n")
        'See `snows_hf.run`.\\n\\nExamples:\\n    >>> 1\\n'
    """
    return _ROLE.sub(r"`\1`", _EXAMPLE.sub(r"\1Examples:", text))


class SnowsDocstrings(griffe.Extension):
    """Rewrites every docstring with :func:`rewrite` as griffe loads it."""

    def on_instance(self, *, node: Any, obj: griffe.Object, agent: Any, **kwargs: Any) -> None:  # noqa: ARG002
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)
