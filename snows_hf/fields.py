"""Fields of the settings dataclasses: help text and allowed values, declared once.

A field made by :func:`config_field` carries its help text and, for a fixed set of
values, its ``choices`` in the field's metadata. :func:`check_types` and
:func:`check_choices` validate a dataclass against them, and the command line reads the
same metadata for its option help and its ``choices``.

Messages name a setting through :func:`setting`, so that a Python caller reads the keyword
it passes (``batch_size``, ``resume=True``) and a command-line user the flag it types
(``--batch-size``, ``--resume``): the command line installs its spelling with
:func:`spelled` while it runs. :class:`SettingError` is the error a setting that cannot
work raises, carrying the setting's name and the hint.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from dataclasses import field, fields
from typing import Any, Callable, Iterable, Iterator

#: A spelling takes a setting's name and its value (:data:`UNSET` when the message names
#: the setting alone) and returns the words a user types to set it.
Spelling = Callable[[str, Any], str]

UNSET: Any = object()
_SPELLING: ContextVar[Spelling | None] = ContextVar("snows_hf_spelling", default=None)


def setting(name: str, value: Any = UNSET) -> str:
    """``name`` (set to ``value``) as the caller writes it: the keyword of a Python call by
    default, the command line's flag while :func:`spelled` says so.

    Example:
        >>> setting("batch_size"), setting("resume", True), setting("mask", "sparsegpt")
        ('batch_size', 'resume=True', "mask='sparsegpt'")
        >>> with spelled(lambda name, value: "--" + name.replace("_", "-")):
        ...     setting("batch_size")
        '--batch-size'
    """
    spell = _SPELLING.get()
    return spell(name, value) if spell is not None else python_spelling(name, value)


def python_spelling(name: str, value: Any = UNSET) -> str:
    """``name`` as a keyword of a Python call: ``batch_size``, or ``resume=True`` with a value.

    Example:
        >>> python_spelling("mask", "sparsegpt")
        "mask='sparsegpt'"
    """
    return name if value is UNSET else f"{name}={value!r}"


@contextlib.contextmanager
def spelled(spell: Spelling) -> Iterator[None]:
    """Messages raised and logged inside spell settings with ``spell`` (see :func:`setting`)."""
    token = _SPELLING.set(spell)
    try:
        yield
    finally:
        _SPELLING.reset(token)


class SettingError(ValueError):
    """A setting that cannot work: ``field`` names it (a field of a settings dataclass or
    an argument of :func:`snows_hf.run`), ``hint`` says what to change, and the message is
    ``"<problem>; <hint>"`` with settings spelled as the caller writes them.

    Example:
        >>> err = SettingError("no held-out samples are left", field="num_samples", hint=f"lower {setting('num_samples')}")
        >>> str(err), err.field
        ('no held-out samples are left; lower num_samples', 'num_samples')
    """

    def __init__(self, problem: str, *, field: str, hint: str = "") -> None:
        self.problem, self.field, self.hint = problem, field, hint
        super().__init__(f"{problem}; {hint}" if hint else problem)

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across processes, keyword arguments included
        return _rebuild_setting_error, (self.problem, self.field, self.hint)


def _rebuild_setting_error(problem: str, field: str, hint: str) -> SettingError:
    return SettingError(problem, field=field, hint=hint)


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
        snows_hf.fields.SettingError: target must be dense-stream or official, got 'nope'
    """
    metadata = {"help": help, **extra}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    return field(default=default, metadata=metadata)


def require(ok: bool, field: str, message: str) -> None:
    """Raise ``SettingError(message)`` about ``field`` unless ``ok``.

    Example:
        >>> require(2 >= 0, "k_step", "k_step must be >= 0")
    """
    if not ok:
        raise SettingError(message, field=field)


def check_choices(config: Any) -> None:
    """Each field of ``config`` that declares ``choices`` holds one of them, said as
    "a, b or c" otherwise (see :func:`config_field`)."""
    for f in fields(config):
        allowed = f.metadata.get("choices")
        if allowed is None:
            continue
        value = getattr(config, f.name)
        listed = ", ".join(allowed[:-1]) + f" or {allowed[-1]}"
        require(value in allowed, f.name, f"{f.name} must be {listed}, got {value!r}")


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
        snows_hf.fields.SettingError: k_step must be an int, got 'three'
    """
    for f in fields(config):
        declared = str(f.type).replace(" ", "")
        base = declared.removesuffix("|None")
        value = getattr(config, f.name)
        if value is None:
            continue
        if base == "list[str]":
            if not (isinstance(value, str) or isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)):
                raise SettingError(f"{f.name} must be a list of regular expressions (strings), got {value!r}", field=f.name)
            continue
        if base not in _KINDS:
            continue
        if isinstance(value, bool) and base != "bool" or not isinstance(value, _KINDS[base]):
            optional = " or None" if declared.endswith("|None") else ""
            raise SettingError(f"{f.name} must be a{'n' if base == 'int' else ''} {base}{optional}, got {value!r}",
                               field=f.name)


QUOTE_LIMIT = 80  #: characters of a file's string that a message quotes


def clip(text: str, limit: int = QUOTE_LIMIT) -> str:
    """``text`` cut to at most ``limit`` characters, an ellipsis in the middle (where names
    differ least: ``model.layers.31.mlp.up_proj`` keeps its start and its end). Every string
    that a file holds goes through it before it reaches a message, so a crafted file cannot
    make an error line of megabytes.

    Example:
        >>> clip("model.layers.31.self_attn.q_proj", 24)
        'model.layer...ttn.q_proj'
    """
    if len(text) <= limit:
        return text
    head = (limit - 3 + 1) // 2
    return text[:head] + "..." + text[len(text) - (limit - 3 - head):]


def problems_line(problems: list[str], most: int = 3) -> str:
    """Problems as one line: the first ``most`` of them, and how many more.

    Example:
        >>> problems_line(["a is missing", "b is not a number"])
        'a is missing; b is not a number'
        >>> problems_line([f"layer {i} is missing" for i in range(5)], most=2)
        'layer 0 is missing; layer 1 is missing; and 3 more'
    """
    more = f"; and {len(problems) - most} more" if len(problems) > most else ""
    return "; ".join(problems[:most]) + more
