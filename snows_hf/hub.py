"""Pushing a pruned model folder to the Hugging Face Hub.

``create_repo(exist_ok=True)``, then one commit of the whole folder. The token comes from
the caller, ``HF_TOKEN`` or the cached login (``huggingface_hub`` resolves the last two)
and only ever travels in the Authorization header. Transient failures (5xx, dropped
connections) are retried with exponential backoff; authentication and permission
failures become one clear message. Nothing in the local folder is changed.

Only regular files inside the folder are uploaded, each opened once without following
links and uploaded from that open file (:func:`open_regular_files`): a symbolic link (to a
token file, to anything outside) stops the push before any request, and a link swapped
in after a file was opened changes nothing that is sent. The files snows-hf writes that
name local paths (:data:`REWRITTEN`: the card, the report, the recipe, the run's log) are
uploaded as public copies, read within :data:`REWRITE_LIMIT`: the run's model, data and
scratch paths (``report.json``, ``recipe.yaml``) become what
:func:`snows_hf.provenance.public_source` shows, and the home folder, the working folder
and the folder holding the output become ``~`` and ``.``, so no local path of this machine
is published. Every other file goes up byte for byte, streamed from its descriptor. The
local files keep what reruns need.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import stat
import time
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from .fields import allowed, checked_arguments, setting

logger = logging.getLogger(__name__)

CARD_PLACEHOLDER = "path/to/this/model"
#: The files snows-hf writes at the top of an output that can name local paths (the model
#: card, the report, the recipe, the run's log; the names export, recipe and workflow give
#: them): push uploads public copies of these and every other file as it is.
REWRITTEN = ("README.md", "report.json", "recipe.yaml", "snows-hf.log")
#: The most push reads of a file it rewrites; snows-hf writes them far smaller.
REWRITE_LIMIT = 16 * 2**20
# Fields of report.json (and of an eval --json), recipe.yaml that name a model, a dataset
# or a local folder, by their path in the document, with the kind of thing they name.
_SOURCE_FIELDS = {
    ("source_model",): "model", ("model",): "model", ("model_path",): "model", ("reference_path",): "model",
    ("calibration", "dataset"): "dataset", ("data", "dataset"): "dataset",
    ("config", "offload_dir"): "folder", ("prune", "offload_dir"): "folder",
    ("evaluation", "tasks"): "tasks",  # lm-eval task names, or task files and folders of this machine
}


class PushError(RuntimeError):
    """A push that failed for a reason the user has to act on."""


@checked_arguments(retries=allowed(minimum=0), backoff=allowed(minimum=0))
def push_folder(
    folder: str | Path, repo_id: str, *, token: str | None = None, private: bool = False,
    endpoint: str | None = None, retries: int = 4, backoff: float = 1.0,
) -> str:
    """Upload ``folder`` to the model repo ``repo_id`` in one commit; returns the commit URL.

    The model card's loading example names the repo. Files identical to those already in
    the repo are skipped, so pushing unchanged files makes no new commit. A symbolic link
    in the folder is an error (:func:`open_regular_files`); snows-hf's own files go up
    without the local paths they name (see the module's docstring), the local copies stay
    as they are.

    Example:
        >>> push_folder("vit-2of4", "me/vit-2of4")  # doctest: +SKIP
        'https://huggingface.co/me/vit-2of4/commit/...'
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    endpoint = endpoint or os.environ.get("HF_ENDPOINT")  # read per call, not at import
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ValueError(f"{str(folder)!r} is not a saved model folder (no config.json)")
    if repo_id.count("/") > 1 or not repo_id.strip("/"):
        raise ValueError(f"invalid repo id {repo_id!r}: use NAME or NAMESPACE/NAME")
    with open_regular_files(folder) as files:
        from huggingface_hub import get_token

        if not token and not get_token():  # else five retries end in "Connection refused" or a 401
            raise PushError(f"no Hub token found: pass {setting('token')}, set HF_TOKEN, or run `hf auth login`")
        operations = [CommitOperationAdd(rel, content) for rel, content in _public_contents(folder, files, repo_id)]
        return _commit(HfApi(endpoint=endpoint, token=token), operations, repo_id, private, retries, backoff)


def _commit(api: Any, operations: list, repo_id: str, private: bool, retries: int, backoff: float) -> str:
    """``create_repo`` and one commit of ``operations``, transient failures retried."""

    def attempt() -> str:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        target = getattr(url, "repo_id", repo_id)
        info = api.create_commit(target, operations, commit_message="Upload pruned model (snows-hf)", repo_type="model")
        return getattr(info, "commit_url", str(info)) if info is not None else f"{url} (unchanged)"

    for number in range(retries + 1):
        try:
            return attempt()
        except Exception as err:  # noqa: BLE001 - classified below, re-raised when not transient
            status = _status(err)
            if status in (401, 403):
                raise PushError(_auth_message(status, api.endpoint)) from None
            transient = status is None and _is_connection_error(err) or (status is not None and status >= 500) or status == 429
            if not transient or number == retries:
                raise PushError(f"push to {repo_id} failed: {_first_line(err)}") from None
            wait = backoff * 2**number
            logger.warning("push to %s failed (%s); retrying in %.1f s", repo_id, _first_line(err), wait)
            time.sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover


@contextlib.contextmanager
def open_regular_files(folder: str | Path) -> Iterator[dict[str, BinaryIO]]:
    """Every file under ``folder``, opened once for reading, by its path relative to
    ``folder`` (sorted); all closed at the end. Each folder and file is opened relative to
    the folder above it without following a link, and checked on the open descriptor, so
    what is read is what was found inside ``folder`` even when the folder changes
    meanwhile: a symbolic link (to a file or a folder, found when listing or swapped in
    before opening) or a special file is an error that names it. ``folder`` itself may be
    a link the caller named.

    Example:
        >>> with open_regular_files("vit-2of4") as files:  # doctest: +SKIP
        ...     sorted(files)
        ['README.md', 'config.json', 'model.safetensors', ...]
    """
    if os.open not in os.supports_dir_fd:  # POSIX; Windows opens no file relative to a folder
        raise PushError("push needs a system that opens files relative to a folder without following links (POSIX)")
    with contextlib.ExitStack() as stack:
        top = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        stack.callback(os.close, top)
        found: dict[str, BinaryIO] = {}
        _open_below(top, "", str(folder), stack, found)
        yield dict(sorted(found.items()))


def _open_below(parent: int, prefix: str, folder: str, stack: contextlib.ExitStack, found: dict[str, BinaryIO]) -> None:
    """Open every entry of the folder open as ``parent`` (named ``prefix`` inside ``folder``) into ``found``."""
    with os.scandir(parent) as listing:
        entries = sorted(listing, key=lambda entry: entry.name)
    for entry in entries:
        rel = prefix + entry.name
        if entry.is_symlink():
            raise _link_error(rel, folder)
        is_dir = entry.is_dir(follow_symlinks=False)
        if not (is_dir or entry.is_file(follow_symlinks=False)):
            raise _special_error(rel, folder)
        fd = _open_nofollow(entry.name, parent, rel, folder, is_dir)
        if is_dir:
            stack.callback(os.close, fd)
            _open_below(fd, rel + "/", folder, stack, found)
            continue
        file = stack.enter_context(os.fdopen(fd, "rb"))
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a special file swapped in after the listing
            raise _special_error(rel, folder)
        found[rel] = file


def _open_nofollow(name: str, parent: int, rel: str, folder: str, directory: bool) -> int:
    """``name`` in the folder open as ``parent``, opened to read; a link there is an error.
    Non-blocking, so a FIFO swapped in is opened (and then refused) instead of waited on."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        return os.open(name, flags | (os.O_DIRECTORY if directory else 0), dir_fd=parent)
    except OSError as err:
        with contextlib.suppress(OSError):  # ELOOP for a file, ENOTDIR for a folder: which it was
            if err.errno == errno.ELOOP or stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
                raise _link_error(rel, folder) from None
        raise ValueError(f"cannot open {rel!r} in {folder!r} to push it: {err.strerror}") from None


def _link_error(rel: str, folder: str) -> ValueError:
    return ValueError(f"{rel!r} in {folder!r} is a symbolic link: push uploads only the regular files "
                      "inside the folder; replace the link with a copy, or remove it")


def _special_error(rel: str, folder: str) -> ValueError:
    return ValueError(f"{rel!r} in {folder!r} is not a regular file; remove it before pushing")


def _public_contents(folder: Path, files: dict[str, BinaryIO], repo_id: str) -> list[tuple[str, Any]]:
    """What each file uploads as: for the files snows-hf writes (:data:`REWRITTEN`), their
    bytes without the local paths they name; for every other file, the open file itself."""
    raw = {rel: _read_bounded(files[rel], rel, folder) for rel in REWRITTEN if rel in files}
    texts = {rel: _utf8(data) for rel, data in raw.items()}
    documents, renamed = {}, {}
    for rel, text in texts.items():
        document = _document(rel, raw[rel]) if text is not None and rel.endswith((".json", ".yaml")) else None
        if document is not None and _publish_sources(document, renamed):
            documents[rel] = document
    replacements = {**_local_prefixes(folder), **renamed}
    local = _local_path_pattern(replacements)
    out: list[tuple[str, Any]] = []
    for rel, file in files.items():
        text = texts.get(rel)
        if rel not in raw or text is None:  # another file, or not text after all: uploaded as it is
            out.append((rel, raw.get(rel, file)))
            continue
        public = _dump(rel, documents[rel]) if rel in documents else text
        if rel == "README.md":
            public = public.replace(CARD_PLACEHOLDER, repo_id)
        public = local.sub(lambda match: replacements[match.group(0)], public) if local else public
        out.append((rel, public.encode("utf-8") if public != text else raw[rel]))
    return out


def _read_bounded(file: BinaryIO, rel: str, folder: Path) -> bytes:
    """The bytes of a file push rewrites, never more than :data:`REWRITE_LIMIT` of them."""
    chunks, size = [], 0
    while size <= REWRITE_LIMIT:  # whatever its size says; in pieces, so no buffer of the limit's size
        chunk = file.read(min(2**20, REWRITE_LIMIT + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    data = b"".join(chunks)
    if size > REWRITE_LIMIT:
        raise ValueError(f"{rel!r} in {str(folder)!r} is over {REWRITE_LIMIT // 2**20} MiB: push rewrites it to "
                         "leave out local paths, and snows-hf writes it far smaller; replace or remove it")
    return data


def _utf8(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _document(rel: str, data: bytes) -> Any:
    """The JSON or YAML document in ``data`` (the file ``rel``); ``None`` when it is not one
    (it stays plain text)."""
    try:
        if rel.endswith(".json"):
            return json.loads(data)
        from .recipe import read_recipe_yaml

        return read_recipe_yaml(rel, data)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError included
        return None


def _publish_sources(document: Any, renamed: dict[str, str]) -> bool:
    """Replace, in place, the ``_SOURCE_FIELDS`` of ``document`` that name local paths by their
    public names, adding each ``original -> public`` to ``renamed``; whether any changed."""
    from .provenance import public_source, public_source_here

    changed = False
    for keys, kind in _SOURCE_FIELDS.items():
        parent = document
        for key in keys[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        value = parent.get(keys[-1]) if isinstance(parent, dict) else None
        if kind == "tasks" and isinstance(value, list):
            public_tasks = [_public_task(task, renamed) for task in value]
            changed |= public_tasks != value
            parent[keys[-1]] = public_tasks
            continue
        if not isinstance(value, str) or not value:
            continue
        repo_type = "dataset" if kind == "dataset" else "model"
        source = public_source(value, local=True) if kind == "folder" else public_source_here(value, repo_type)
        public = source.name if source else None
        if public != value:
            parent[keys[-1]] = public
            if public and value.strip("/\\") != public:  # a bare name stays itself in free text
                renamed[value] = public
            changed = True
    return changed


def _public_task(task: Any, renamed: dict[str, str]) -> Any:
    """An lm-eval task as a public file names it: a task file or folder on this machine by
    its own name (added to ``renamed``), a task name as it is."""
    from .provenance import public_source

    if not isinstance(task, str) or not os.path.exists(os.path.expanduser(task)):
        return task
    source = public_source(task, local=True)
    public = source.name if source else "task folder"
    if task.strip("/\\") != public:
        renamed[task] = public
    return public


def _dump(rel: str, document: Any) -> str:
    if rel.endswith(".json"):
        return json.dumps(document, indent=2) + "\n"
    import yaml

    return yaml.safe_dump(document, sort_keys=False)


def _local_prefixes(folder: Path) -> dict[str, str]:
    """Absolute folders of this machine that text may name, each with the form it is published in:
    the output's parent and the working folder as ``.``, the home folder as ``~``."""
    prefixes = {}
    for place, public in ((folder.absolute().parent, "."), (Path.cwd(), "."), (Path.home(), "~")):
        for form in {str(place), os.path.realpath(place)}:
            if len(Path(form).parts) > 1:  # never "/" itself: that would rewrite every path
                prefixes.setdefault(form, public)
    return prefixes


def _local_path_pattern(literals: Any) -> re.Pattern[str] | None:
    """One pattern for all of ``literals`` (local paths), longest first, each matching
    whole path components only (``/home/me`` in ``/home/me/x``, not in ``/home/mel``)."""
    literals = sorted(literals, key=len, reverse=True)
    if not literals:
        return None
    return re.compile(r"(?<![\w.~-])(?:" + "|".join(map(re.escape, literals)) + r")(?![\w.-])")


def _status(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def _is_connection_error(err: BaseException) -> bool:
    names = {cls.__name__ for cls in type(err).__mro__}
    if "OfflineModeIsEnabled" in names:  # a setting, not a glitch: retrying cannot help
        return False
    return bool(names & {"ConnectionError", "ConnectError", "ReadTimeout", "RemoteProtocolError", "TimeoutException"})


def _auth_message(status: int, endpoint: str) -> str:
    if status == 401:
        return (f"authentication failed at {endpoint} (HTTP 401): pass {setting('token')}, set HF_TOKEN, "
                "or log in with `hf auth login`")
    return f"permission denied at {endpoint} (HTTP 403): the token cannot write to this namespace"


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:300] or type(err).__name__
