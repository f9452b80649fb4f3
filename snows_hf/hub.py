"""Pushing a pruned model folder to the Hugging Face Hub.

``create_repo(exist_ok=True)``, then one commit of the whole folder. The token comes from
the caller, ``HF_TOKEN`` or the cached login (``huggingface_hub`` resolves the last two)
and only ever travels in the Authorization header. Transient failures (5xx, dropped
connections) are retried with exponential backoff; authentication and permission
failures become one clear message. Nothing in the local folder is changed.

Only regular files inside the folder are uploaded: a symbolic link (to a token file, to
anything outside) stops the push before any request. Text files are uploaded as public
copies: the run's model, data and scratch paths (``report.json``, ``recipe.yaml``) become
what :func:`snows_hf.provenance.public_source` shows, and in any text the home folder,
the working folder and the folder holding the output become ``~`` and ``.``, so no local
path of this machine is published. The local files keep what reruns need.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import time
from pathlib import Path
from typing import Any

from .fields import setting

logger = logging.getLogger(__name__)

CARD_PLACEHOLDER = "path/to/this/model"
TEXT_SUFFIXES = (".json", ".yaml", ".yml", ".md", ".log", ".txt")
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


def push_folder(
    folder: str | Path, repo_id: str, *, token: str | None = None, private: bool = False,
    endpoint: str | None = None, retries: int = 4, backoff: float = 1.0,
) -> str:
    """Upload ``folder`` to the model repo ``repo_id`` in one commit; returns the commit URL.

    The model card's loading example names the repo. Files identical to those already in
    the repo are skipped, so pushing unchanged files makes no new commit. A symbolic link
    in the folder is an error (:func:`regular_files`); text files go up without the local
    paths they name (see the module's docstring), the local copies stay as they are.

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
    files = regular_files(folder)
    from huggingface_hub import get_token

    if not token and not get_token():  # else five retries end in "Connection refused" or a 401
        raise PushError(f"no Hub token found: pass {setting('token')}, set HF_TOKEN, or run `hf auth login`")
    api = HfApi(endpoint=endpoint, token=token)
    operations = [CommitOperationAdd(rel, content) for rel, content in _public_contents(folder, files, repo_id)]

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


def regular_files(folder: str | Path) -> list[tuple[str, Path]]:
    """``(path relative to folder, path)`` of every file under ``folder``, sorted; a
    symbolic link (to a file or a folder) or a special file under it is an error that
    names it, so that nothing outside the folder is ever read for an upload.

    Example:
        >>> [rel for rel, _ in regular_files("vit-2of4")]  # doctest: +SKIP
        ['README.md', 'config.json', 'model.safetensors', ...]
    """
    folder = Path(folder)
    found = []
    for root, dirs, names in os.walk(folder):  # never into a linked folder (followlinks=False)
        for name in sorted(dirs + names):
            path = Path(root, name)
            rel = path.relative_to(folder).as_posix()
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise ValueError(f"{rel!r} in {str(folder)!r} is a symbolic link: push uploads only the regular files "
                                 "inside the folder; replace the link with a copy, or remove it")
            if stat.S_ISREG(mode):
                found.append((rel, path))
            elif not stat.S_ISDIR(mode):
                raise ValueError(f"{rel!r} in {str(folder)!r} is not a regular file; remove it before pushing")
    return sorted(found)


def _public_contents(folder: Path, files: list[tuple[str, Path]], repo_id: str) -> list[tuple[str, Any]]:
    """What each file uploads as: its path, or for a text file that names local paths, the public text."""
    documents, renamed = {}, {}
    for rel, path in files:
        if path.suffix in (".json", ".yaml", ".yml"):
            document = _document(path)
            if _publish_sources(document, renamed):
                documents[rel] = document
    replacements = {**_local_prefixes(folder), **renamed}
    local = _local_path_pattern(replacements)
    out = []
    for rel, path in files:
        if not rel.endswith(TEXT_SUFFIXES):
            out.append((rel, str(path)))
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # not text after all: uploaded as it is
            out.append((rel, str(path)))
            continue
        public = _dump(path, documents[rel]) if rel in documents else text
        if rel == "README.md":
            public = public.replace(CARD_PLACEHOLDER, repo_id)
        public = local.sub(lambda match: replacements[match.group(0)], public) if local else public
        out.append((rel, public.encode("utf-8") if public != text else str(path)))
    return out


def _document(path: Path) -> Any:
    """The JSON or YAML document in ``path``; ``None`` when it is not one (it stays plain text)."""
    try:
        if path.suffix == ".json":
            return json.loads(path.read_text(encoding="utf-8"))
        from .recipe import read_recipe_yaml

        return read_recipe_yaml(path)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError included
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


def _dump(path: Path, document: Any) -> str:
    if path.suffix == ".json":
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
