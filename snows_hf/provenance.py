"""What a published file may say about where a model or dataset came from.

A run names its model and data by whatever the user typed: a Hub id, or a local path
that can hold a home folder, a user name or a private directory. Anything pushed to the
Hub (the model card above all) shows them through :func:`public_source` only: Hub ids as
they are, a path inside the Hugging Face cache as the repo it caches, and any other
local path by its last component (folder or file name) alone.

The rule reads the string, not the disk, so a card rebuilt later from ``report.json``
on another machine says the same; a caller that knows a string names something on disk
passes ``local=True``.
"""

from __future__ import annotations

import os
import re
from typing import NamedTuple

# huggingface_hub's cache folders are f"{repo_type}s--" + repo_id with "/" -> "--"
# (``file_download.repo_folder_name``); repo ids cannot contain "--", so the split is exact.
_SEPARATOR = "--"
_PATH_PARTS = re.compile(r"[\\/]+")
_DRIVE = re.compile(r"^[A-Za-z]:")


class Source(NamedTuple):
    """A model or dataset as it may be published: ``name``, and whether it is a Hub id."""

    name: str
    on_hub: bool


def public_source(source: str | None, repo_type: str = "model", *, local: bool = False) -> Source | None:
    """``source`` (a Hub id or a local path) reduced to what a public file may show.

    * a Hub id (``name`` or ``org/name``) stays as it is, ``on_hub=True``;
    * a path inside a Hugging Face cache (``.../models--org--name/snapshots/<sha>/...``,
      ``datasets--`` for ``repo_type="dataset"``) becomes ``org/name``, ``on_hub=True``;
    * any other local path becomes its last component, ``on_hub=False``.

    Whatever huggingface_hub's ``validate_repo_id`` rejects is local: strings that start
    with ``/``, ``.`` or ``~``, or hold a backslash, a drive letter, a space or more than
    one ``/``. ``local=True`` (the caller found it on disk) makes a valid repo id local
    too. ``None`` when nothing can be shown: no source, or a path with no name in it
    (``/``, ``~``, ``..``).

    Example:
        >>> public_source("/home/me/private/data.jsonl", "dataset")
        Source(name='data.jsonl', on_hub=False)
        >>> public_source("/home/me/.cache/huggingface/hub/models--org--name/snapshots/0123/")
        Source(name='org/name', on_hub=True)
        >>> public_source("gpt2")
        Source(name='gpt2', on_hub=True)
    """
    if not source:
        return None
    parts = [part for part in _PATH_PARTS.split(_DRIVE.sub("", source)) if part]
    cached = _cached_repo(parts, repo_type)
    if cached:
        return Source(cached, True)
    if not local and _is_repo_id(source):
        return Source(source, True)
    name = parts[-1] if parts else ""
    if name in ("", ".", "..") or name.startswith("~"):  # no name in it, or "~user": a user name
        return None
    return Source(name, False)


def public_source_here(source: str | None, repo_type: str = "model") -> Source | None:
    """:func:`public_source` for a string this machine's run used: one naming something on
    its disk is local even when it reads like a Hub id (a relative folder ``org/name``), as
    it was when loaded.

    Example:
        >>> public_source_here("gpt2")
        Source(name='gpt2', on_hub=True)
    """
    local = bool(source) and os.path.exists(os.path.expanduser(source))
    return public_source(source, repo_type, local=local)


def _cached_repo(parts: list[str], repo_type: str) -> str | None:
    """``org/name`` when ``parts`` run through ``<repo_type>s--org--name/snapshots/<sha>``."""
    prefix = f"{repo_type}s{_SEPARATOR}"
    for folder, snapshots, _ in zip(parts, parts[1:], parts[2:]):
        if folder.startswith(prefix) and snapshots == "snapshots":
            repo_id = "/".join(folder[len(prefix):].split(_SEPARATOR))
            if _is_repo_id(repo_id):
                return repo_id
    return None


def _is_repo_id(value: str) -> bool:
    """Whether ``value`` is a valid Hub repo id (huggingface_hub's own check)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return True
