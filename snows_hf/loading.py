"""Loading a model and its tokenizer or image processor from a folder or a Hub id.

A repo can ship Python that transformers imports when it loads the model, its tokenizer or
its processor (an ``auto_map`` in one of their JSON files). Without ``trust_remote_code``
such a repo is refused by :func:`check_remote_code` before transformers reads it, and every
``from_pretrained`` gets the run's ``trust_remote_code`` explicitly, so transformers never
asks on stdin (where a piped "y" would run the code).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterator

from .fields import SettingError, clip, setting
from .heads import modality

logger = logging.getLogger(__name__)

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

# The files whose ``auto_map`` makes an ``Auto*.from_pretrained`` import the repo's code:
# the config (model and config classes) and the tokenizer, processor, image processor,
# feature extractor and video processor configs, under their current and former names.
CODE_MAP_FILES = (
    "config.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json",
    "image_processor_config.json", "feature_extractor_config.json", "video_preprocessor_config.json",
)


def _first_line(exc: BaseException) -> str:
    """An exception's first line, clipped: other libraries quote what a file holds whole."""
    text = str(exc).strip()
    return clip(text.splitlines()[0], 1200) if text else type(exc).__name__


@contextlib.contextmanager
def quieted(logger_name: str) -> Iterator[None]:
    """Only errors from ``logger_name`` while the block runs, for warnings that something
    else reports once anyway (per-retry Hub warnings, a summary printed in full).

    Example:
        >>> with quieted("huggingface_hub"):
        ...     pass
    """
    quiet = logging.getLogger(logger_name)
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        yield
    finally:
        quiet.setLevel(level)


def load_model(
    source: str, *, dtype: str = "auto", trust_remote_code: bool = False, allow_pickle: bool = False,
    processor: bool = True, **placement: Any
) -> tuple[Any, Any]:
    """Load ``source`` (local folder or Hub id) with the class its config names, plus its processor.

    The class comes from ``config.architectures`` (falling back to ``AutoModel``), so a
    classifier stays a classifier and a causal LM keeps its head. Returns
    ``(model, processor)``; the processor is ``None`` when the folder has none (or
    ``processor=False``).
    ``placement`` goes to ``from_pretrained`` (``device_map``, ``max_memory``, ``offload_folder``).
    Only safetensors weights are read unless ``allow_pickle`` (then transformers reads
    ``.bin`` files with ``torch.load(weights_only=True)``).

    Example:
        >>> model, tokenizer = load_model("path/to/llama")  # doctest: +SKIP
    """
    _, cls, target = load_model_config(source, trust_remote_code=trust_remote_code)
    path = os.path.expanduser(source)
    is_local = os.path.isdir(path)
    pickles = _pickle_only(path) if is_local and not allow_pickle else []
    if pickles:
        raise SettingError(
            f"{source!r} holds only pickle weights ({', '.join(pickles)}); pickles can run code when loaded",
            field="allow_pickle",
            hint=f"pass {setting('allow_pickle', True)} to read them anyway (weights only), or convert them to safetensors",
        )
    try:
        model = cls.from_pretrained(target, dtype=dtype, trust_remote_code=trust_remote_code,
                                    use_safetensors=None if allow_pickle else True, **placement)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type for corrupt files
        if not isinstance(exc, (OSError, ValueError, RuntimeError)) and "safetensor" not in type(exc).__name__.lower():
            raise
        hint = "; the file is corrupt or truncated: download or save it again" if "deserializ" in str(exc) else ""
        raise ValueError(f"cannot load the weights of {source!r}: {_first_line(exc)}{hint}") from None
    return model, _auto_processor(target, model, trust_remote_code) if processor else None


def check_remote_code(source: str, trust_remote_code: bool = False) -> None:
    """Refuse ``source`` (a folder or a Hub id) when loading it would run code it ships,
    unless ``trust_remote_code``.

    Looks for an ``auto_map`` in each of ``CODE_MAP_FILES`` (fetched one by one from the
    Hub for a repo id; absent ones are skipped, and a repo the Hub cannot serve is left to
    the loading that follows to report).

    Example:
        >>> check_remote_code("path/to/llama")  # doctest: +SKIP
        >>> check_remote_code("someone/custom-model")  # doctest: +SKIP
        Traceback (most recent call last):
        ValueError: 'someone/custom-model' ships code that loading it runs: ...
    """
    if trust_remote_code:
        return
    for name, text in _code_map_files(source):
        try:
            settings = json.loads(text)
        except ValueError:  # not JSON: transformers refuses it too, and says why
            continue
        auto_map = settings.get("auto_map") if isinstance(settings, dict) else None
        # a dict of Auto class -> "module.Class" (or a [slow, fast] pair); tokenizers once used the bare pair
        entries = auto_map.items() if isinstance(auto_map, dict) else [("auto_map", auto_map)]
        for key, ref in entries:
            if ref:
                shown = clip(f"{key} -> {', '.join(map(str, ref)) if isinstance(ref, list) else ref}", 160)
                raise SettingError(
                    f"{source!r} ships code that loading it runs: {name} maps {shown} in auto_map",
                    field="trust_remote_code",
                    hint=f"pass {setting('trust_remote_code', True)} to run it, only if you trust this repo",
                )


def _code_map_files(source: str) -> Iterator[tuple[str, str]]:
    """``(file name, text)`` of the ``CODE_MAP_FILES`` that ``source`` has."""
    for name, path in _code_map_paths(source):
        with contextlib.suppress(OSError, UnicodeDecodeError):  # absent or unreadable: transformers cannot use it
            yield name, Path(path).read_text(encoding="utf-8")


def _code_map_paths(source: str) -> Iterator[tuple[str, str]]:
    """Where each of the ``CODE_MAP_FILES`` of ``source`` is: in its folder, or fetched alone from the Hub."""
    path = os.path.expanduser(source)
    if os.path.isdir(path):
        yield from ((name, os.path.join(path, name)) for name in CODE_MAP_FILES)
        return
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    for name in CODE_MAP_FILES:
        try:
            with quieted("huggingface_hub"):
                file = hf_hub_download(source, name)
        except EntryNotFoundError:  # this repo has no such file (or, offline, none cached)
            continue
        except (OSError, ValueError):  # no such repo, no network: what follows reports it
            return
        yield name, file


def load_model_config(source: str, trust_remote_code: bool = False) -> tuple[Any, type, str]:
    """``(config, model class, where to load from)`` for ``source``, reading no weights.

    The class comes from ``config.architectures`` (falling back to ``AutoModel``).
    """
    import transformers

    path = os.path.expanduser(source)
    is_local = os.path.isdir(path)
    if not is_local:
        if os.path.exists(path):
            raise ValueError(f"model path {source!r} is a file; pass the folder that holds config.json")
        if not _REPO_ID.match(source):
            raise ValueError(f"model folder {source!r} does not exist")
    elif not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"model folder {source!r} has no config.json")
    target = path if is_local else source
    if not is_local:
        logger.info("%s is not a local folder: fetching it from the Hugging Face Hub", source)
    check_remote_code(source, trust_remote_code)
    try:
        with quieted("huggingface_hub"):  # per-retry warnings; the final failure is reported once
            config = transformers.AutoConfig.from_pretrained(target, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        where = "local folder" if is_local else "local folder, and the Hugging Face Hub could not serve it"
        raise ValueError(f"cannot load model {source!r}: not a usable {where} ({_first_line(exc)})") from None
    names = getattr(config, "architectures", None) or []
    cls = getattr(transformers, names[0], None) if names else None
    if cls is None:
        cls = transformers.AutoModel
    return config, cls, target


def _pickle_only(path: str) -> list[str]:
    """The pickle weight files of a local folder that has no safetensors ones."""
    names = os.listdir(path)
    if any(name.endswith(".safetensors") for name in names):
        return []
    return sorted(n for n in names if n.endswith((".bin", ".pt", ".pth", ".ckpt")) and "training_args" not in n)


def load_processor(target: str, model: Any, trust_remote_code: bool = False) -> Any:
    """The tokenizer (text models) or image processor (vision models) in ``target`` (a
    folder or a Hub id) for ``model``; ``None`` when it has none. A ``target`` that ships
    code is refused unless ``trust_remote_code`` (:func:`check_remote_code`).

    Example:
        >>> tokenizer = load_processor("path/to/tokenizer", model)  # doctest: +SKIP
    """
    check_remote_code(target, trust_remote_code)
    return _auto_processor(target, model, trust_remote_code)


def _auto_processor(target: str, model: Any, trust_remote_code: bool) -> Any:
    import transformers

    image = modality(model) == "image"
    auto = transformers.AutoImageProcessor if image else transformers.AutoTokenizer
    try:
        return auto.from_pretrained(target, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        kind = "image processor" if image else "tokenizer"
        logger.warning("no %s found with the model (%s); only random calibration is possible", kind, _first_line(exc))
        return None
