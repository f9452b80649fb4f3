"""Pushing a pruned model folder to the Hugging Face Hub.

``create_repo(exist_ok=True)``, then one commit of the whole folder. The token comes from
the caller, ``HF_TOKEN`` or the cached login (``huggingface_hub`` resolves the last two)
and only ever travels in the Authorization header. Transient failures (5xx, dropped
connections) are retried with exponential backoff; authentication and permission
failures become one clear message. Nothing in the local folder is changed.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

logger = logging.getLogger(__name__)

CARD_PLACEHOLDER = "path/to/this/model"


class PushError(RuntimeError):
    """A push that failed for a reason the user has to act on."""


def push_folder(
    folder: str | Path, repo_id: str, *, token: str | None = None, private: bool = False,
    endpoint: str | None = None, retries: int = 4, backoff: float = 1.0,
) -> str:
    """Upload ``folder`` to the model repo ``repo_id`` in one commit; returns the commit URL.

    The model card's loading example names the repo. Files identical to those already in
    the repo are skipped, so pushing unchanged files makes no new commit.

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
    api = HfApi(endpoint=endpoint, token=token)
    operations = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel == "README.md":
            card = path.read_text().replace(CARD_PLACEHOLDER, repo_id)
            operations.append(CommitOperationAdd(rel, card.encode()))
        else:
            operations.append(CommitOperationAdd(rel, str(path)))

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
        return (f"authentication failed at {endpoint} (HTTP 401): pass --token, set HF_TOKEN, "
                "or log in with `hf auth login`")
    return f"permission denied at {endpoint} (HTTP 403): the token cannot write to this namespace"


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:300] or type(err).__name__
