"""The ``snows-hf`` options, built from the declarations of the settings they set.

An option that sets a field of a settings dataclass (:class:`~snows_hf.PruneConfig`, a
registered method's options, :class:`~snows_hf.CalibrationConfig`, the lm-eval
:class:`~snows_hf.harness.TaskSettings`, ...) is made by :func:`add_field` from the field's
declaration (:func:`~snows_hf.fields.config_field`) alone: its annotation gives how the
text parses (``int``, ``float``, a switch for a ``bool``, words for a list, ``choices`` for
a ``Literal``), its metadata the help and the choices, and after parsing
:func:`check_given` holds each value given to the field's rules with the validator that
recipes and Python calls go through (:func:`~snows_hf.fields.check_value`). So a method
registered from outside gets its options, and an out-of-bounds value the same refusal,
on the command line as in a recipe or a Python call.

Flag text lives here and in ``cli.py`` only: the library names settings through
:func:`~snows_hf.fields.setting`, which :func:`flag_spelling` answers on the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Iterator, Literal, get_args, get_origin

from .config import PruneConfig, option_owners
from .data import CalibrationConfig
from .fields import UNSET, check_value, field_types, python_spelling
from .harness import INSTALL, TaskSettings
from .methods import METHODS


class Parser(argparse.ArgumentParser):
    """argparse that reports errors on one line (no usage dump) and exits with code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"snows-hf: error: {message}\n")


def field_argument(cls: type, name: str) -> dict[str, Any]:
    """How the command line reads field ``name`` of the dataclass ``cls``, from its
    declaration: ``add_argument`` keywords (``type``, ``nargs``, ``choices``, or a switch's
    ``action``). A number parses as its annotation says; its bounds are checked after
    parsing (:func:`check_given`), as a recipe's value is.

    Example:
        >>> from snows_hf.methods import SnowsConfig
        >>> field_argument(SnowsConfig, "k_step"), field_argument(SnowsConfig, "holdout")
        ({'type': <class 'int'>}, {'type': <class 'float'>})
        >>> field_argument(PruneConfig, "diagnostics"), field_argument(PruneConfig, "targets")
        ({'action': 'store_false'}, {'nargs': '+'})
    """
    declared = {f.name: f for f in dataclasses.fields(cls)}[name]
    kinds = set(field_types(cls)[name]) - {type(None)}
    found: dict[str, Any] = {}
    literals = [kind for kind in kinds if get_origin(kind) is Literal]
    if kinds == {bool}:  # a switch that sets the other value than the default
        return {"action": "store_false" if declared.default is True else "store_true"}
    if len(literals) == len(kinds) == 1:
        values = get_args(literals[0])
        found = {"choices": list(values)} | ({"type": type(values[0])} if len({type(v) for v in values}) == 1 else {})
    elif kinds == {int}:
        found["type"] = int
    elif float in kinds and kinds <= {int, float}:
        found["type"] = float
    elif any(get_origin(kind) in (list, tuple, set, frozenset) for kind in kinds):
        found["nargs"] = "+"
    if declared.metadata.get("choices") is not None:
        found["choices"] = list(declared.metadata["choices"])
    return found



class Choices(list):
    """Allowed values as listed (in the help and errors), which also accept the earlier names
    in ``also``: those are read still, with a deprecation line, but no longer offered.

    Example:
        >>> "none" in Choices(["mask-only", "snows"], also={"none": "mask-only"})
        True
    """

    def __init__(self, names: list[str], also: Any) -> None:
        super().__init__(names)
        self.also = also

    def __contains__(self, value: object) -> bool:
        return super().__contains__(value) or value in self.also


def add_field(parser: Any, cls: type, name: str, described: dict[str, str] | None = None, other_defaults: str = "",
              **kwargs: Any) -> argparse.Action:
    """Add the option of field ``name`` of the dataclass ``cls``, read as
    :func:`field_argument` says, its help the field's: ``--name`` (``--no-name`` for a
    switch that is on by default); unset, it keeps the dataclass default. ``described``
    (value -> what it does) lists a registry's values in the help and offers them as
    choices; ``other_defaults`` follows the default in the help (other methods' defaults
    for the same option); ``kwargs`` go to ``add_argument`` (a metavar, the wording of a
    switch's help) over what the declaration says.

    Example:
        >>> parser = Parser(prog="demo")
        >>> action = add_field(parser, PruneConfig, "batch_size")
        >>> action.option_strings, parser.parse_args(["--batch-size", "4"]).batch_size
        (['--batch-size'], 4)
    """
    declared = {f.name: f for f in dataclasses.fields(cls)}[name]
    options = field_argument(cls, name)
    text, default = declared.metadata.get("help", ""), declared.default
    if described:  # each value and what it does, the default first
        values = sorted(described, key=lambda value: value != default)
        text += ": " + ", ".join(f"{value} ({described[value]})" if described[value] else value for value in values)
        options["choices"] = sorted(described)
    switch = options.get("action") == "store_false"
    if default not in (None, dataclasses.MISSING) and not options.get("action"):
        text += f" (default: {default}{'; ' + other_defaults if other_defaults else ''})"
    options = {"dest": name, "default": argparse.SUPPRESS, "help": text.replace("%", "%%")} | options | kwargs
    flag = "--" + ("no-" if switch else "") + name.replace("_", "-")
    action = parser.add_argument(flag, **options)
    action.declared = (cls, name)  # what check_given holds the value to
    return action


def add_method_options(parser: argparse.ArgumentParser) -> None:
    """One option per option of the registered methods (read at the call, so a method
    registered before the parser is built has its own), grouped by the methods that
    declare it, each declaration giving its type, bounds and help (:func:`add_field`)."""
    groups: dict[tuple[str, ...], Any] = {}
    for option, names in option_owners().items():
        if tuple(names) not in groups:
            title = METHODS[names[0]].options_title or METHODS[names[0]].description
            groups[tuple(names)] = parser.add_argument_group(f"{title} (with --method {' or '.join(names)})")
        defaults = {name: {f.name: f.default for f in dataclasses.fields(METHODS[name].config_class)}[option]
                    for name in names}
        others = "; ".join(f"{name}: {value}" for name, value in defaults.items() if value != defaults[names[0]])
        add_field(groups[tuple(names)], METHODS[names[0]].config_class, option, other_defaults=others)


def flag_taken(error: argparse.ArgumentError) -> str:
    """What to tell the user when building the parser met two options of one flag: a
    registered method's option named as an option of the command line (``output_dir``,
    ``seed``), which could never be set, nor the other one.

    Example:
        >>> parser = Parser(prog="demo")
        >>> _ = parser.add_argument("--k-step")
        >>> try:
        ...     add_method_options(parser)
        ... except argparse.ArgumentError as error:
        ...     print(flag_taken(error))
        method 'snows' declares an option 'k_step', but the command line has --k-step for something else; rename the option
    """
    flag = max((error.argument_name or "").split("/"), key=len)
    option = flag.lstrip("-").replace("-", "_")
    owners = option_owners().get(option)
    if not owners:
        return str(error)
    return f"method {owners[0]!r} declares an option {option!r}, but the command line has {flag} for something else; rename the option"


def add_data_options(parser: argparse.ArgumentParser, streaming_flag: bool = False) -> None:
    """The data options (:class:`~snows_hf.CalibrationConfig`'s fields) and ``--processor``;
    with ``streaming_flag``, also ``--streaming`` (``eval``: a folder's recipe may ask for
    the whole split)."""
    group = parser.add_argument_group("data (calibration and held-out evaluation; they never overlap)")
    for name in ("dataset", "dataset_config", "split", "num_samples", "seq_len", "eval_samples", "text_column",
                 "image_column", "label_column", "seed"):
        add_field(group, CalibrationConfig, name)
    add_field(group, CalibrationConfig, "streaming", help="download and prepare a Hub dataset's whole split before "
              "reading it (default: stream only the rows used)")
    if streaming_flag:  # eval: where a recipe asks for the whole split, saying so is the user's own choice
        group.add_argument("--streaming", dest="streaming", action="store_true", default=argparse.SUPPRESS,
                           help="stream a Hub dataset, reading only the rows used (the default, whatever the "
                           "folder's recipe asks)")
    group.add_argument("--processor", help="tokenizer or image processor folder/id (default: the model's own)")


def add_task_options(parser: argparse.ArgumentParser, more: str = "") -> None:
    """The lm-eval options (:class:`~snows_hf.harness.TaskSettings`' fields)."""
    group = parser.add_argument_group(f"lm-eval tasks (needs {INSTALL}){more}")
    add_field(group, TaskSettings, "tasks", metavar="TASKS", nargs=None)  # one word, comma-separated
    add_field(group, TaskSettings, "limit", metavar="N")


def add_execution_options(parser: argparse.ArgumentParser) -> None:
    """``--batch-size`` and ``--device`` (:class:`~snows_hf.PruneConfig`'s fields)."""
    add_field(parser, PruneConfig, "batch_size")
    add_field(parser, PruneConfig, "device")


def add_allow_pickle(parser: argparse.ArgumentParser) -> None:
    """``--allow-pickle``."""
    parser.add_argument("--allow-pickle", action="store_true",
                        help="read pickle (.bin) weights when a model has no safetensors (weights only; off by default)")


def add_push_options(parser: argparse.ArgumentParser, repo_flag: str | None = None, repo_help: str = "") -> None:
    """``--private``, ``--token`` and, when named, the flag that gives the Hub repo."""
    if repo_flag:
        parser.add_argument(repo_flag, dest="push_to_hub", metavar="REPO", help=repo_help)
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    parser.add_argument("--token", help="Hub token (default: HF_TOKEN or the cached `hf auth login`); never written anywhere")


def add_common(parser: argparse.ArgumentParser) -> None:
    """``--quiet`` or ``--verbose``, and ``--debug``: every command has them."""
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument("--quiet", action="store_true", help="print only warnings, errors and the result")
    noise.add_argument("--verbose", action="store_true", help="also print one line per pruned layer "
                       "(window loss before and after, CG iterations, seconds)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")


def _actions(parser: argparse.ArgumentParser, command: str | None) -> Iterator[argparse.Action]:
    """The parser's actions and its commands' (``command``'s only, when it is one of them)."""
    parsers = [parser]
    while parsers:
        for action in parsers.pop()._actions:
            if isinstance(action, argparse._SubParsersAction):  # the command's own words, else every command's
                parsers.extend([action.choices[command]] if command in action.choices else action.choices.values())
            else:
                yield action


def check_given(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Hold each value given to an option of a field (:func:`add_field`) to the field's
    declaration, with the check recipes and Python calls go through: a
    :class:`~snows_hf.fields.SettingError` naming the setting as :func:`setting` spells it.

    Example:
        >>> parser = Parser(prog="demo")
        >>> _ = add_field(parser, PruneConfig, "batch_size")
        >>> check_given(parser, parser.parse_args(["--batch-size", "0"]))
        Traceback (most recent call last):
        snows_hf.fields.SettingError: batch_size must be at least 1, got 0
    """
    given = vars(args)
    for action in _actions(parser, getattr(args, "command", None)):
        declared = getattr(action, "declared", None)
        if declared is not None and action.dest in given:
            cls, name = declared
            rules = {f.name: f for f in dataclasses.fields(cls)}[name].metadata
            check_value(name, given[action.dest], field_types(cls)[name], rules)


def flag_spelling(parser: argparse.ArgumentParser, command: str | None = None):
    """How the library's messages name a setting on the command line: the option whose
    destination is the setting's name (``batch_size`` -> ``--batch-size``; set to a value,
    ``--mask sparsegpt``; a switch set on, ``--resume``), or the placeholder of a positional
    argument (``model`` -> ``MODEL``). A name the command line does not set keeps its
    Python spelling. With ``command``, that command's options (its placeholders differ).

    Example:
        >>> from snows_hf.cli import build_parser
        >>> spell = flag_spelling(build_parser(), "prune")
        >>> spell("batch_size", UNSET), spell("mask", "wanda"), spell("model", UNSET)
        ('--batch-size', '--mask wanda', 'MODEL')
    """
    options: dict[str, argparse.Action] = {}
    for action in _actions(parser, command):
        if action.dest not in options or action.option_strings and not options[action.dest].option_strings:
            options[action.dest] = action  # an option before a positional argument of the same name

    def spell(name: str, value: Any) -> str:
        action = options.get(name)
        if action is None:
            return python_spelling(name, value)
        if not action.option_strings:  # a positional argument: its placeholder, or the value itself
            return str(action.metavar or name.upper()) if value is UNSET else str(value)
        flag = max(action.option_strings, key=len)
        return flag if value is UNSET or action.nargs == 0 else f"{flag} {value}"

    return spell
