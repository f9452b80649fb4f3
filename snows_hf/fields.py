"""Fields of the settings dataclasses: help text and allowed values, declared once.

A field made by :func:`config_field` carries its help text and the rules of its values
(a fixed set of ``choices``, or bounds) in the field's metadata; its annotation gives its
type. :func:`check_fields` validates a dataclass against both, :func:`checked_arguments`
a public function's arguments against theirs, and the command line reads the same
metadata for its option help and its ``choices``.

Messages name a setting through :func:`setting`, so that a Python caller reads the keyword
it passes (``batch_size``, ``resume=True``) and a command-line user the flag it types
(``--batch-size``, ``--resume``): the command line installs its spelling with
:func:`spelled` while it runs. :class:`SettingError` is the error a setting that cannot
work raises, carrying the setting's name and the hint.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import sys
import types
from contextvars import ContextVar
from dataclasses import field, fields
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping, Union, get_args, get_origin

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


MAX_INT = 2**63 - 1
"""The largest integer a setting may hold (and ``-MAX_INT - 1`` the smallest): what torch,
its generators and ``random`` take."""


def allowed(*, choices: Iterable[Any] | None = None, minimum: float | None = None, maximum: float | None = None,
            strict: bool = False) -> dict[str, Any]:
    """The rules a setting's value follows beyond its type: one of ``choices``, or a number
    from ``minimum`` to ``maximum`` (both excluded with ``strict``). :func:`config_field`
    keeps them in a field's metadata; :func:`checked_arguments` takes them for a function's
    arguments.

    Example:
        >>> allowed(minimum=0, maximum=1, strict=True)
        {'minimum': 0, 'maximum': 1, 'strict': True}
    """
    rules: dict[str, Any] = {} if choices is None else {"choices": tuple(choices)}
    rules |= {key: value for key, value in (("minimum", minimum), ("maximum", maximum)) if value is not None}
    return rules | ({"strict": True} if strict else {})


def config_field(default: Any, help: str, *, choices: Iterable[str] | None = None, minimum: float | None = None,
                 maximum: float | None = None, strict: bool = False, **extra: Any) -> Any:
    """A dataclass field with its help text and the rules of its values (see :func:`allowed`):
    with its type annotation, all :func:`check_fields` checks and the command line offers.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class Options:
        ...     target: str = config_field("dense-stream", "where targets come from", choices=("dense-stream", "official"))
        ...     steps: int = config_field(1, "Newton steps", minimum=0)
        >>> check_fields(Options(target="nope"))
        Traceback (most recent call last):
        snows_hf.fields.SettingError: target must be dense-stream or official, got 'nope'
        >>> check_fields(Options(steps=-1))
        Traceback (most recent call last):
        snows_hf.fields.SettingError: steps must be at least 0, got -1
    """
    rules = allowed(choices=choices, minimum=minimum, maximum=maximum, strict=strict)
    return field(default=default, metadata={"help": help, **rules, **extra})


def redeclared(cls: type, name: str, default: Any) -> Any:
    """Field ``name`` of the dataclass ``cls`` with another default, its help and rules
    kept: a subclass that changes a default declares nothing twice.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class Options:
        ...     steps: int = config_field(1, "Newton steps", minimum=0)
        >>> @dataclass
        ... class Fast(Options):
        ...     steps: int = redeclared(Options, "steps", 0)
        >>> Fast().steps, fields(Fast)[0].metadata["minimum"]
        (0, 0)
    """
    declared = {f.name: f for f in fields(cls)}[name]
    return field(default=default, metadata=declared.metadata)


def require(ok: bool, field: str, message: str) -> None:
    """Raise ``SettingError(message)`` about ``field`` unless ``ok``.

    Example:
        >>> require(2 >= 0, "k_step", "k_step must be >= 0")
    """
    if not ok:
        raise SettingError(message, field=field)


def check_fields(config: Any) -> None:
    """Each field of the dataclass ``config`` holds a value of its declared type (``int``,
    ``float``, ``str``, ``bool``, ``None``, ``Literal[...]``, ``list[str]``, classes, and
    unions of them; a ``list[str]`` also takes one string) within its rules
    (:func:`config_field`): a :class:`SettingError` naming the first field that does not.
    Numbers are finite, and integers at most :data:`MAX_INT`. A part of an annotation that
    names a type imported for type checking only is left to the class's own checks.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class Options:
        ...     k_step: int = 3
        >>> check_fields(Options(k_step="three"))
        Traceback (most recent call last):
        snows_hf.fields.SettingError: k_step must be an int, got 'three'
    """
    types = field_types(type(config))
    for f in fields(config):
        check_value(f.name, getattr(config, f.name), types[f.name], f.metadata)


def check_value(name: str, value: Any, types: tuple, rules: Mapping[str, Any]) -> None:
    """Refuse ``value`` for the setting ``name`` unless one of ``types`` (alternatives, as
    :func:`field_types` gives them) takes it and it follows ``rules`` (:func:`allowed`).

    Example:
        >>> check_value("batch_size", 0, (int,), allowed(minimum=1))
        Traceback (most recent call last):
        snows_hf.fields.SettingError: batch_size must be at least 1, got 0
    """
    verdicts = [_accepts(kind, value) for kind in types]
    if not any(verdicts) and None not in verdicts:
        kinds = " or ".join(_describe(kind) for kind in types)
        raise SettingError(f"{setting(name)} must be {kinds}, got {_shown(value)}", field=name)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        _check_number(name, value, rules, whole=float not in types)
    choices = rules.get("choices")
    if choices is not None and value not in choices:
        listed = ", ".join(map(str, choices[:-1])) + f" or {choices[-1]}" if len(choices) > 1 else str(choices[0])
        raise SettingError(f"{setting(name)} must be {listed}, got {_shown(value)}", field=name)


def _check_number(name: str, value: float, rules: Mapping[str, Any], whole: bool) -> None:
    low, high, strict = rules.get("minimum"), rules.get("maximum"), rules.get("strict", False)
    below = low is not None and (value <= low if strict else value < low)
    above = high is not None and (value >= high if strict else value > high)
    if isinstance(value, float) and not math.isfinite(value):
        problem = "a finite number"
    elif (below or above) and low is not None and high is not None:
        problem = (f"strictly between {low} and {high}" if strict else
                   f"an integer from {low} to {high}" if whole else f"from {low} to {high}")
    elif below:
        problem = f"greater than {low}" if strict else f"at least {low}"
    elif above:
        problem = f"less than {high}" if strict else f"at most {high}"
    elif isinstance(value, int) and not -MAX_INT - 1 <= value <= MAX_INT:
        problem = f"at most {MAX_INT}" if value > 0 else f"at least {-MAX_INT - 1}"
    else:
        return
    raise SettingError(f"{setting(name)} must be {problem}, got {_shown(value)}", field=name)


def checked_arguments(**rules: Mapping[str, Any]) -> Callable[[Callable], Callable]:
    """Decorate a public function so that each argument it is given is checked against its
    annotation and, when given here, its rules (:func:`allowed`), as :func:`check_fields`
    checks a config's fields: a :class:`SettingError` names the argument.

    Example:
        >>> @checked_arguments(batch_size=allowed(minimum=1))
        ... def batches(n: int, batch_size: int = 8) -> int:
        ...     return -(-n // batch_size)
        >>> batches(10, batch_size=0)
        Traceback (most recent call last):
        snows_hf.fields.SettingError: batch_size must be at least 1, got 0
    """

    def decorate(func: Callable) -> Callable:
        signature = inspect.signature(func)

        @functools.wraps(func)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                given = signature.bind(*args, **kwargs).arguments
            except TypeError:  # arguments that do not match: Python's own error names them
                given = {}
            types = argument_types(func)
            for name, value in given.items():
                if name in types:
                    check_value(name, value, types[name], rules.get(name, {}))
            return func(*args, **kwargs)

        return call

    return decorate


def check_keys(names: Iterable[str], values: Mapping[Any, Any]) -> None:
    """Refuse keys of ``values`` that are not among ``names``, naming the first.

    Example:
        >>> check_keys(["seed"], {"sed": 1})
        Traceback (most recent call last):
        snows_hf.fields.SettingError: unknown settings: 'sed'
    """
    known = set(names)
    unknown = sorted((key for key in values if key not in known), key=str)
    if unknown:
        raise SettingError(f"unknown settings: {', '.join(map(_shown, unknown))}", field=str(unknown[0]))


def settings_from(cls: type, values: Any, name: str) -> Any:
    """``values`` as settings of the dataclass ``cls``: such settings themselves, or a
    mapping of their fields; anything else is a :class:`SettingError` naming the argument
    ``name``, an unknown key one naming the key.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class Options:
        ...     k_step: int = 3
        >>> settings_from(Options, {"k_step": 1}, "options")
        Options(k_step=1)
        >>> settings_from(Options, 3, "options")
        Traceback (most recent call last):
        snows_hf.fields.SettingError: options must be an Options or a dict of its fields, got 3
    """
    if isinstance(values, cls):
        return values
    if not isinstance(values, Mapping):
        raise SettingError(f"{setting(name)} must be {_article(cls.__name__)} or a dict of its fields, got {_shown(values)}",
                           field=name)
    check_keys([f.name for f in fields(cls)], values)
    return cls(**values)


# -- declared types ---------------------------------------------------------------------

_OPAQUE = object()
"""An alternative of an annotation that does not resolve at run time (a name imported for
type checking only): the value is left to the owner's own checks."""


@functools.cache
def field_types(cls: type) -> dict[str, tuple]:
    """Each field of the dataclass ``cls`` and the types it declares, a union's
    alternatives apart, each annotation read in the module of the class declaring it.

    Example:
        >>> from snows_hf.methods import SnowsConfig
        >>> field_types(SnowsConfig)["batches_per_step"]
        (<class 'int'>, <class 'NoneType'>)
    """
    found = {}
    for f in fields(cls):
        owner = next(base for base in cls.__mro__ if f.name in base.__dict__.get("__annotations__", {}))
        found[f.name] = _alternatives(f.type, vars(sys.modules[owner.__module__]))
    return found


@functools.cache
def argument_types(func: Callable) -> dict[str, tuple]:
    """Each annotated argument of ``func`` and the types it declares (see :func:`field_types`).

    Example:
        >>> argument_types(require)["ok"]
        (<class 'bool'>,)
    """
    return {name: _alternatives(annotation, func.__globals__)
            for name, annotation in func.__annotations__.items() if name != "return"}


def _alternatives(annotation: Any, namespace: Mapping[str, Any]) -> tuple:
    if isinstance(annotation, str):
        try:  # this package's own annotation text, evaluated as typing.get_type_hints does
            annotation = eval(annotation, dict(namespace))  # noqa: S307
        except Exception:  # noqa: BLE001 - a name for type checkers only: try each alternative alone
            parts = _split_union(annotation)
            return (_OPAQUE,) if len(parts) == 1 else tuple(a for part in parts for a in _alternatives(part, namespace))
    if get_origin(annotation) in (Union, types.UnionType):
        return tuple(a for arg in get_args(annotation) for a in _alternatives(arg, namespace))
    return (type(None),) if annotation is None else (annotation,)


def _split_union(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "|" and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    return parts + [text[start:].strip()]


def _accepts(kind: Any, value: Any) -> bool | None:
    """Whether ``kind`` takes ``value``; ``None``: cannot tell (left to other checks)."""
    if kind is _OPAQUE:
        return None
    if kind is Any:
        return True
    if kind is type(None):
        return value is None
    if kind in (int, float):  # bool is an int to Python, never to a setting
        return isinstance(value, int if kind is int else (int, float)) and not isinstance(value, bool)
    origin, args = get_origin(kind), get_args(kind)
    if origin is Literal:
        return any(value == choice and type(value) is type(choice) for choice in args)
    if origin in (list, tuple, set, frozenset):
        if args == (str,) and isinstance(value, str):  # one string for a list of them
            return True
        if not isinstance(value, (list, tuple) if origin in (list, tuple) else origin):
            return False
        element = args[0] if len(args) == 1 or len(args) == 2 and args[1] is Ellipsis else None
        return element is None or all(_accepts(element, item) is not False for item in value)
    if origin is not None:
        kind = origin
    return isinstance(value, kind) if isinstance(kind, type) else None


def _describe(kind: Any) -> str:
    names = {int: "an int", float: "a number", str: "a string", bool: "a bool", type(None): "None"}
    if kind in names:
        return names[kind]
    origin, args = get_origin(kind), get_args(kind)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin is list and args == (str,):
        return "a list of strings"
    name = getattr(origin or kind, "__name__", None)
    return _article(name) if name else "another type"


def _article(name: str) -> str:
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _shown(value: Any) -> str:
    """``repr(value)``, cut short: values from files reach messages."""
    return shorten(repr(value))


QUOTE_CHARS = 120  #: characters of one value (a setting, a YAML key) that a message quotes


def shorten(text: str, limit: int = QUOTE_CHARS) -> str:
    """``text`` cut to at most ``limit`` characters, its end replaced by an ellipsis: a value
    from a file (a recipe's, a task file's) reaches a message only through it or :func:`clip`.

    Example:
        >>> shorten("x" * 200, 10)
        'xxxxxxx...'
    """
    return text if len(text) <= limit else text[:limit - 3] + "..."


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
