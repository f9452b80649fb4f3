"""Loading a model and its tokenizer or image processor from a folder or a Hub id."""

from __future__ import annotations

import contextlib
import logging
import os
import re
from typing import Any, Iterator

logger = logging.getLogger(__name__)

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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
        raise ValueError(
            f"{source!r} holds only pickle weights ({', '.join(pickles)}); pickles can run code when "
            "loaded: pass --allow-pickle to read them anyway (weights only), or convert them to safetensors"
        )
    try:
        model = cls.from_pretrained(target, dtype=dtype, trust_remote_code=trust_remote_code,
                                    use_safetensors=None if allow_pickle else True, **placement)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type for corrupt files
        if not isinstance(exc, (OSError, ValueError, RuntimeError)) and "safetensor" not in type(exc).__name__.lower():
            raise
        hint = "; the file is corrupt or truncated: download or save it again" if "deserializ" in str(exc) else ""
        raise ValueError(f"cannot load the weights of {source!r}: {_first_line(exc)}{hint}") from None
    return model, load_processor(target, model) if processor else None


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


def load_processor(target: str, model: Any) -> Any:
    """The tokenizer (text models) or image processor (vision models) saved with the model."""
    import transformers

    image = getattr(model, "main_input_name", "input_ids") == "pixel_values"
    auto = transformers.AutoImageProcessor if image else transformers.AutoTokenizer
    try:
        return auto.from_pretrained(target)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        kind = "image processor" if image else "tokenizer"
        logger.warning("no %s found with the model (%s); only random calibration is possible", kind, _first_line(exc))
        return None
