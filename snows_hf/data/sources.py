"""Where calibration and evaluation rows come from, and in which order.

A dataset is a local file, a local folder, or a Hub id. Hub datasets are streamed
(``datasets.load_dataset(..., split=..., streaming=True)``) so that only the rows a run
uses are read: a few hundred images of ImageNet are a few MB, not 150 GB. Local data, and
Hub data with ``streaming=False``, is loaded as a ``datasets.Dataset``.

Both are visited in one order fixed by the seed, the same on every run:

* a ``Dataset`` (random access): a seeded permutation of all its rows;
* a streamed dataset: its shards (data files) in a seeded order, read one after the
  other, through a seeded shuffle buffer of :data:`SHUFFLE_BUFFER` rows and at most
  :data:`SHUFFLE_BUFFER_BYTES` bytes. A run then reads about ``SHUFFLE_BUFFER`` rows
  more than it uses, from the first shards of that order, and nothing else. (``datasets``'
  own ``IterableDataset.shuffle`` opens about half of the shards of a parquet dataset
  before its first row, reading most of its bytes: it is not used.)

What one row may cost is bounded as it is read, whatever the source (local file or folder,
Hub stream, data in memory): :meth:`SplitRows.bounded` keeps only the columns a run reads and
cuts their strings to what can still be used, before a row is buffered or tokenised. A
local folder is walked, within :data:`MAX_FOLDER_ENTRIES`, before ``datasets`` walks it.

Calibration takes rows from the front of the order and evaluation the rows after, so the
two never share a row (:mod:`snows_hf.data.preparation`).

The order is :mod:`~snows_hf.data.order`'s (:class:`SplitRows`) and the columns a run reads
are found by :mod:`~snows_hf.data.columns`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator

from ..fields import SettingError, setting
from .config import IN_MEMORY, CalibrationConfig, is_in_memory
from .order import SplitRows, first_line
# importable from here too, as before they had modules of their own
from .columns import detect_column  # noqa: F401
from .order import SHUFFLE_BUFFER, SHUFFLE_BUFFER_BYTES, row_bytes  # noqa: F401

logger = logging.getLogger(__name__)


RANDOM = "random"
"""The dataset name that asks for seeded random inputs instead of data."""


MAX_FOLDER_ENTRIES = 100_000
"""Files and folders a local dataset folder may hold: ``datasets`` lists every one before
the first row (a minute for a home folder), so the folder is walked first, and refused
as soon as the walk passes this many."""

MAX_CARD_BYTES = 2**20
"""Size of the YAML files ``datasets`` reads from a local dataset folder (``README.md``'s
header, ``.huggingface.yaml``), checked with the recipes' YAML rules before it reads them."""

_CARDS = ("README.md", ".huggingface.yaml")

_BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class DatasetDefault:
    """The dataset a run calibrates on when none is named (no bundled recipe for the model).

    Attributes:
        dataset: Hub dataset id (open, not gated).
        config: its configuration (subset), if it has several.
        split: the split rows come from (calibration first, held-out rows after).
        text_column / image_column / label_column: columns to read (``None``: detected).
        why: one line on the choice, for the docs and the log.
    """

    dataset: str
    config: str | None
    split: str
    text_column: str | None = None
    image_column: str | None = None
    label_column: str | None = None
    why: str = ""


DEFAULT_DATASETS: dict[str, DatasetDefault] = {
    "text": DatasetDefault(
        "allenai/c4", "en", "train", text_column="text",
        why="English web text: the calibration set of SparseGPT and Wanda (ODC-BY, not gated)",
    ),
    "image": DatasetDefault(
        "frgfm/imagenette", "320px", "validation", image_column="image", label_column="label",
        why="natural photos of 10 ImageNet classes, ImageNet's own validation images (Apache-2.0, not gated); "
            "ImageNet-1k itself is gated",
    ),
}
"""Modality (:func:`snows_hf.heads.modality`) -> default calibration data."""


def is_local(source: str) -> bool:
    """True when ``source`` names a local file or folder (existing or written as a path).

    Example:
        >>> is_local("./data.jsonl"), is_local("allenai/c4")
        (True, False)
    """
    path = os.path.expanduser(source)
    return os.path.exists(path) or source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source


def open_split(dataset: str, config: str | None = None, split: str = "train", *, streaming: bool = True,
               seed: int = 0) -> SplitRows:
    """The rows of one split of ``dataset`` (file, folder or Hub id) in their seeded order.

    Hub ids are streamed unless ``streaming=False``; local data is always loaded. Errors
    are one ``ValueError`` naming the dataset and the reason: a missing path, a split or
    configuration it does not have, a gated or unreachable Hub dataset (with how to pass
    a local copy instead).

    Example:
        >>> rows = open_split("allenai/c4", "en", "train", seed=0)  # doctest: +SKIP
        >>> next(iter(rows))[0]  # doctest: +SKIP
        [411, 0]
    """
    import datasets

    path = os.path.expanduser(dataset)
    local = is_local(dataset)
    if not local and dataset.startswith(IN_MEMORY):  # a recipe's name for data that no file holds
        raise SettingError(f"{dataset} is the data of an earlier run, which was held in memory and saved nowhere",
                           field="dataset", hint=f"pass that data again as {setting('dataset')}")
    try:
        if os.path.isfile(path):
            ext = os.path.splitext(path)[1].lower()
            if ext not in _BUILDERS:
                raise ValueError(f"unsupported data file {dataset!r}: use {', '.join(sorted(_BUILDERS))}")
            if os.path.getsize(path) == 0:
                raise ValueError(f"dataset file {dataset!r} is empty")
            data = datasets.load_dataset(_BUILDERS[ext], data_files=path)  # one file: split "train"
        elif os.path.isdir(path):
            _check_folder(path, dataset)
            data = datasets.load_dataset(path, config)
        elif local:
            raise ValueError(f"dataset path {dataset!r} does not exist")
        else:
            _check_hub_cards(dataset)
            data = datasets.load_dataset(dataset, config, split=split, streaming=streaming)
    except ValueError as exc:
        if str(exc).startswith(("unsupported data file", "dataset path", "dataset file", "dataset folder", "Hub dataset")):
            raise
        if local:
            raise ValueError(f"cannot load dataset {dataset!r}: {_reason(exc)}") from None
        raise ValueError(_hub_error(dataset, config, split, exc)) from None
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for offline, gated, missing data
        if local:
            raise ValueError(f"cannot load dataset {dataset!r}: {_reason(exc)}") from None
        raise ValueError(_hub_error(dataset, config, split, exc)) from None
    if local:
        if split not in data:
            raise ValueError(f"dataset {dataset!r} has no split {split!r}; it has: {', '.join(data)}")
        data = data[split]
        if len(data) == 0:
            raise ValueError(f"dataset {dataset!r} split {split!r} is empty")
    return SplitRows(data, seed, name=f"dataset {dataset!r}")


def _check_folder(path: str, dataset: str) -> None:
    """Refuse a folder ``datasets`` cannot or should not walk: the root of the file system
    (``datasets`` fails on it with an IndexError), or one that holds more than
    :data:`MAX_FOLDER_ENTRIES` files and folders (counted without following links, and
    no further than that).

    Example:
        >>> _check_folder("/", "/")
        Traceback (most recent call last):
        ValueError: dataset path '/' is the root of the file system: pass the folder or file that holds the data
    """
    absolute = os.path.abspath(path)
    if os.path.dirname(absolute) == absolute:
        raise ValueError(f"dataset path {dataset!r} is the root of the file system: pass the folder or file that holds "
                         "the data")
    seen, pending = 0, [absolute]
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    seen += 1
                    if seen > MAX_FOLDER_ENTRIES:
                        raise ValueError(f"dataset folder {dataset!r} holds more than {MAX_FOLDER_ENTRIES:,} files and "
                                         "folders: pass a folder that holds only the data, or one data file")
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
        except OSError:  # an unreadable subfolder: datasets says what it cannot read
            continue
    for name in _CARDS:
        card = os.path.join(absolute, name)
        if os.path.isfile(card):
            with open(card, "rb") as file:
                _check_card(file.read(MAX_CARD_BYTES + 1), name, f"dataset folder {dataset!r}: {name}")


def _check_hub_cards(dataset: str) -> None:
    """:func:`_check_card` for a Hub dataset's ``README.md`` and ``.huggingface.yaml``,
    read (at most :data:`MAX_CARD_BYTES` + 1 bytes) before ``datasets`` loads them whole.
    A card that cannot be read (none, gated, offline) is left to ``datasets`` to report."""
    from huggingface_hub import HfFileSystem

    files = HfFileSystem()
    for name in _CARDS:
        try:
            with files.open(f"datasets/{dataset}/{name}", "rb") as file:
                data = file.read(MAX_CARD_BYTES + 1)
        except Exception:  # noqa: BLE001 - missing, gated, offline or unreachable: datasets says which
            continue
        _check_card(data, name, f"Hub dataset {dataset!r}: {name}", within="dataset")


def _check_card(data: bytes, name: str, where: str, within: str = "folder") -> None:
    """Refuse a dataset's YAML (``name``: ``README.md``, whose header is read, or
    ``.huggingface.yaml``; ``data``: up to :data:`MAX_CARD_BYTES` + 1 of its bytes) that
    ``datasets`` would expand or follow out of the dataset: over :data:`MAX_CARD_BYTES`,
    with an alias (a few hundred bytes of nested aliases expand to gigabytes as it is
    loaded), or naming data files or a data folder outside the dataset (an absolute path,
    ``..``, ``~`` or a URL: ``datasets`` would walk and read them as the data).

    Example:
        >>> _check_card(b"configs: [{data_files: ../secret/*.jsonl}]", ".huggingface.yaml", "dataset folder 'evil'")
        Traceback (most recent call last):
        ValueError: dataset folder 'evil' names data files outside the folder ('../secret/*.jsonl')
    """
    import yaml

    if len(data) > MAX_CARD_BYTES:
        raise ValueError(f"{where} is over {MAX_CARD_BYTES // 2**20} MiB: a dataset card is a page of text")
    text, line_offset = data.decode("utf-8", errors="replace"), 1
    if name.endswith(".md"):  # the YAML header only, split as datasets splits it
        lines = text.splitlines()
        if not lines or lines[0] != "---" or "---" not in lines[1:]:
            return
        text, line_offset = "\n".join(lines[1: lines[1:].index("---") + 1]), 2
    try:
        for event in yaml.parse(text):  # events only: nothing is built, so an alias is seen, not expanded
            if isinstance(event, yaml.AliasEvent):
                raise ValueError(f"{where} uses the YAML alias *{event.anchor[:40]} (line {event.start_mark.line + line_offset}), "
                                 "which expands as it is loaded: write the value out")
        card = yaml.safe_load(text)
    except yaml.YAMLError:  # datasets says what is wrong with it
        return
    configs = card.get("configs") if isinstance(card, dict) else None
    for config in configs if isinstance(configs, list) else []:
        if isinstance(config, dict):
            for pattern in _strings([config.get("data_files"), config.get("data_dir")]):
                parts = pattern.replace("\\", "/").split("/")
                if os.path.isabs(pattern) or ".." in parts or pattern.startswith("~") or "://" in pattern or "::" in pattern:
                    raise ValueError(f"{where} names data files outside the {within} ({pattern[:200]!r})")


def _strings(value: Any) -> Iterator[str]:
    """Every string in ``value``, a tree of lists and dicts (dict values)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)


def load_dataset_split(cfg: CalibrationConfig) -> SplitRows:
    """The rows of ``cfg``'s split (:class:`SplitRows`, in ``cfg.seed`` order).

    Errors are one clear ``ValueError``: a missing path, an unreachable or gated Hub
    dataset, a bad split or configuration.

    An in-memory ``cfg.dataset`` is read as it is: a ``Dataset`` whole, a ``DatasetDict``'s
    ``cfg.split``.

    Example:
        >>> rows = load_dataset_split(CalibrationConfig(dataset="data/train.jsonl"))  # doctest: +SKIP
    """
    if not is_in_memory(cfg.dataset):
        return open_split(cfg.dataset, cfg.dataset_config, cfg.split, streaming=cfg.streaming, seed=cfg.seed)
    data = cfg.dataset
    if isinstance(data, dict):  # a DatasetDict
        if cfg.split not in data:
            raise SettingError(f"the in-memory DatasetDict has no split {cfg.split!r}", field="split",
                               hint=f"set {setting('split')} to one of: {', '.join(data)}")
        data = data[cfg.split]
    return SplitRows(data, cfg.seed, name="the in-memory dataset")


def split_read(cfg: CalibrationConfig) -> str | None:
    """The name of the split ``cfg`` reads: ``cfg.split``, except for an in-memory
    ``Dataset``, which is one split already: its own name, if it has one.

    Example:
        >>> split_read(CalibrationConfig(dataset="allenai/c4", split="validation"))
        'validation'
    """
    if is_in_memory(cfg.dataset) and not isinstance(cfg.dataset, dict):
        return None if cfg.dataset.split is None else str(cfg.dataset.split)
    return cfg.split


def _hub_error(dataset: str, config: str | None, split: str, exc: BaseException) -> str:
    """One line for a Hub dataset that cannot be read: what, why, and the way around it."""
    text = first_line(exc)
    lower = text.lower()
    if "gated" in lower or "authenticat" in lower or "401" in lower or "403" in lower:
        reason = "it is gated: accept its terms on the Hub and run `hf auth login`"
    elif "split" in lower and split in text:
        reason = f"it has no split {split!r} ({text})"
    elif config is not None and config in text and ("config" in lower or "not found" in lower):
        reason = f"it has no configuration {config!r} ({text})"
    else:
        reason = text
    return (f"cannot read Hub dataset {dataset!r}: {reason}; or download it and pass the local folder or file "
            f"as the dataset ({setting('dataset', 'PATH')})")


def _reason(exc: BaseException) -> str:
    """The first line of the innermost cause of ``exc`` (``datasets`` wraps the reader's own
    error in "An error occurred while generating the dataset"), in words where it is known.

    Example:
        >>> _reason(ValueError("x"))
        'x'
    """
    while exc.__cause__ is not None or (exc.__context__ is not None and not exc.__suppress_context__):
        exc = exc.__cause__ or exc.__context__
    if isinstance(exc, StopIteration):  # the json reader's way of saying it found no row
        return "it holds no rows"
    if "corresponds to no data" in str(exc):  # datasets, for a split of files with no rows
        return "it holds no rows"
    if isinstance(exc, UnicodeDecodeError):
        return f"it is not UTF-8 text (byte {exc.object[exc.start:exc.start + 1]!r} at position {exc.start})"
    return first_line(exc)
