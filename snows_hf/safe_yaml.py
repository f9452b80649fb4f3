"""YAML files from strangers, read the safe way: recipes (:mod:`snows_hf.recipe`) and the
lm-eval task files a caller names (:mod:`snows_hf.harness`).

Plain YAML only (``yaml.SafeLoader``): no Python objects, no aliases (``*name``: a few
hundred bytes of nested aliases expand to gigabytes), a regular file (a pipe or a device
never ends), none over ``MAX_YAML_BYTES``. Every failure is a ``ValueError`` of one short
line that names the file.
"""

from __future__ import annotations

import functools
import os
import stat
from pathlib import Path
from typing import Any

from .fields import shorten

MAX_YAML_BYTES = 2**20  # a recipe or a task file is a few kB; the bound keeps a hostile one cheap


def read_safe_yaml(path: str | Path, kind: str = "recipe", tags: tuple[str, ...] = (), data: bytes | None = None) -> Any:
    """The YAML document of the file ``path``, a ``kind`` of file (the word its errors use),
    read the safe way a shared file needs; a node tagged with one of ``tags`` (local tags
    such as lm-eval's ``!function``) is read as its plain value. ``data``: the file's bytes,
    when the caller has read them from a file it opened itself (``path`` then only names it).

    Example:
        >>> from snows_hf.recipe import bundled_recipes
        >>> read_safe_yaml(bundled_recipes()["smollm2-135m-2of4"])["prune"]["sparsity"]
        '2:4'
    """
    import yaml

    where = shorten(repr(str(path)))
    if data is None:
        data = _read_regular(path, kind, where)
    if len(data) > MAX_YAML_BYTES:
        raise ValueError(f"{kind} {where} is over {MAX_YAML_BYTES // 2**20} MiB: not a {kind}")
    try:
        return yaml.load(data.decode("utf-8"), Loader=_loader(tags))  # noqa: S506 - a SafeLoader
    except UnicodeDecodeError:
        raise ValueError(f"{kind} {where} is not UTF-8 text") from None
    except _AliasFound as err:
        raise ValueError(f"{kind} {where} uses the YAML alias *{shorten(str(err))} (line {err.line}): "
                         f"{kind}s may not use aliases; write the value out") from None
    except _KeyTwice as err:
        raise ValueError(f"{kind} {where} gives the key {shorten(repr(err.key))} twice (line {err.line}): "
                         "YAML would keep the last one; give each key once") from None
    except RecursionError:
        raise ValueError(f"{kind} {where} is nested too deeply to be a {kind}") from None
    except (yaml.YAMLError, ValueError) as err:  # ValueError: e.g. an integer of 5000 digits
        raise ValueError(f"{kind} {where} is not valid YAML: {shorten(' '.join(str(err).split()))}") from None


def _read_regular(path: str | Path, kind: str, where: str) -> bytes:
    """At most ``MAX_YAML_BYTES`` + 1 bytes of the regular file ``path``."""
    try:
        # never blocks: a pipe nobody writes to opens at once, and is refused below
        handle = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as err:
        raise ValueError(f"cannot read {kind} {where}: {err.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(handle).st_mode):
            raise ValueError(f"{kind} {where} is not a regular file")
        with open(handle, "rb", closefd=False) as file:
            return file.read(MAX_YAML_BYTES + 1)  # never more, whatever the file claims to be
    finally:
        os.close(handle)


@functools.cache
def _loader(tags: tuple[str, ...]) -> type:
    import yaml

    class SafeFileLoader(yaml.SafeLoader):
        """``SafeLoader`` that stops at the first alias, before anything is expanded, and at
        the second occurrence of a key in one mapping (YAML would keep the last silently; a
        merge ``<<:`` counts as giving its keys)."""

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise _AliasFound(event.anchor, event.start_mark.line + 1)
            return super().compose_node(parent, index)

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            if isinstance(node, yaml.MappingNode):
                self.flatten_mapping(node)  # merged keys (<<:) first, as SafeLoader takes them
                seen: set[Any] = set()
                for key_node, _ in node.value:
                    key = self.construct_object(key_node, deep=True)
                    try:
                        twice = key in seen  # as the mapping built would see it: 1, 1.0 and true are one key
                    except TypeError:  # unhashable: SafeLoader refuses it
                        break
                    if twice:
                        raise _KeyTwice(key, key_node.start_mark.line + 1)
                    seen.add(key)
            return super().construct_mapping(node, deep)

    for tag in tags:
        SafeFileLoader.add_constructor(tag, lambda loader, node: loader.construct_scalar(node))
    return SafeFileLoader


class _AliasFound(Exception):
    """An alias in a file: its name, and the line it is on."""

    def __init__(self, anchor: str, line: int) -> None:
        super().__init__(anchor)
        self.line = line


class _KeyTwice(Exception):
    """A key given twice in one mapping, and the line of the second."""

    def __init__(self, key: Any, line: int) -> None:
        super().__init__(key)
        self.key, self.line = key, line
