"""Fields of the settings dataclasses: help text and allowed values, declared once.

A field made by :func:`config_field` carries its help text and, for a fixed set of
values, its ``choices`` in the field's metadata. :func:`check_types` and
:func:`check_choices` validate a dataclass against them, and the command line reads the
same metadata for its option help and its ``choices``.
"""

from __future__ import annotations

from dataclasses import field, fields
from typing import Any, Iterable


def config_field(default: Any, help: str, *, choices: Iterable[str] | None = None, **extra: Any) -> Any:
    """A dataclass field with its help text and, where the values form a fixed set, its
    ``choices`` (the default first).

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class Options:
        ...     target: str = config_field("dense-stream", "where targets come from", choices=("dense-stream", "official"))
        >>> check_choices(Options(target="nope"))
        Traceback (most recent call last):
        ValueError: target must be dense-stream or official, got 'nope'
    """
    metadata = {"help": help, **extra}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    return field(default=default, metadata=metadata)


def require(ok: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``ok``.

    Example:
        >>> require(2 >= 0, "k_step must be >= 0")
    """
    if not ok:
        raise ValueError(message)


def check_choices(config: Any) -> None:
    """Each field of ``config`` that declares ``choices`` holds one of them, said as
    "a, b or c" otherwise (see :func:`config_field`)."""
    for f in fields(config):
        allowed = f.metadata.get("choices")
        if allowed is None:
            continue
        value = getattr(config, f.name)
        listed = ", ".join(allowed[:-1]) + f" or {allowed[-1]}"
        require(value in allowed, f"{f.name} must be {listed}, got {value!r}")


_KINDS = {"int": int, "float": (int, float), "str": str, "bool": bool}


def check_types(config: Any) -> None:
    """Each plain field of ``config`` holds its declared type (recipes and dicts can carry
    anything): ``int``, ``float``, ``str``, ``bool``, ``list[str]``, each optionally
    ``| None``; fields of other types are left to their own checks.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class Options:
        ...     k_step: int = 3
        >>> check_types(Options(k_step="three"))
        Traceback (most recent call last):
        ValueError: k_step must be an int, got 'three'
    """
    for f in fields(config):
        declared = str(f.type).replace(" ", "")
        base = declared.removesuffix("|None")
        value = getattr(config, f.name)
        if value is None:
            continue
        if base == "list[str]":
            if not (isinstance(value, str) or isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)):
                raise ValueError(f"{f.name} must be a list of regular expressions (strings), got {value!r}")
            continue
        if base not in _KINDS:
            continue
        if isinstance(value, bool) and base != "bool" or not isinstance(value, _KINDS[base]):
            optional = " or None" if declared.endswith("|None") else ""
            raise ValueError(f"{f.name} must be a{'n' if base == 'int' else ''} {base}{optional}, got {value!r}")
