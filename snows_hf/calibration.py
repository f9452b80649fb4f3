"""Calibration inputs: a ``datasets`` dataset (local files or a Hub id) turned into tensors.

Text is tokenised with the model's own tokenizer and packed into ``seq_len``-token
sequences; images go through the model's image processor. Sampling is seeded, so the same
seed gives the same tensors. Without a dataset, seeded random inputs of the right shape
are used (enough for data-free masks, and said so in the log).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch

logger = logging.getLogger(__name__)

_BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass
class CalibrationConfig:
    """Where calibration samples come from and how many.

    Example:
        >>> CalibrationConfig(dataset="data/train.jsonl", num_samples=64, seq_len=256)  # doctest: +ELLIPSIS
        CalibrationConfig(dataset='data/train.jsonl', ...)
    """

    dataset: str | None = field(default=None, metadata={"help": "calibration data: a local folder/file or a Hub dataset id (default: random inputs)"})
    dataset_config: str | None = field(default=None, metadata={"help": "configuration (subset) name of a Hub dataset"})
    split: str = field(default="train", metadata={"help": "dataset split to draw calibration and evaluation samples from"})
    num_samples: int = field(default=128, metadata={"help": "number of calibration samples"})
    seq_len: int = field(default=512, metadata={"help": "tokens per calibration sequence (text models)"})
    text_column: str | None = field(default=None, metadata={"help": "text column (default: detected)"})
    image_column: str | None = field(default=None, metadata={"help": "image column (default: detected)"})
    label_column: str | None = field(default=None, metadata={"help": "label column for evaluation (default: detected)"})
    eval_samples: int = field(default=128, metadata={"help": "held-out samples (sequences for causal LMs) to evaluate dense and pruned models on"})
    seed: int = field(default=0, metadata={"help": "random seed for sampling"})

    def __post_init__(self) -> None:
        from .config import _check_types

        _check_types(self)
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {self.num_samples}")
        if self.seq_len < 1:
            raise ValueError(f"seq_len must be at least 1, got {self.seq_len}")
        if self.eval_samples < 0:
            raise ValueError(f"eval_samples must be at least 0, got {self.eval_samples}")


def _is_image_model(model: Any) -> bool:
    return getattr(model, "main_input_name", "input_ids") == "pixel_values"


def _max_positions(model: Any) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


def _seq_len(cfg: CalibrationConfig, model: Any) -> int:
    limit = _max_positions(model)
    if limit is not None and cfg.seq_len > limit:
        logger.warning("seq_len %d exceeds the model's %d positions; using %d", cfg.seq_len, limit, limit)
        return limit
    return cfg.seq_len


def random_calibration(model: Any, cfg: CalibrationConfig) -> dict[str, torch.Tensor]:
    """Seeded random inputs shaped like the model's own (token ids or pixel values).

    Example:
        >>> batch = random_calibration(vit, CalibrationConfig(num_samples=4))  # doctest: +SKIP
        >>> batch["pixel_values"].shape  # doctest: +SKIP
        torch.Size([4, 3, 224, 224])
    """
    generator = torch.Generator().manual_seed(cfg.seed)
    config = model.config
    if _is_image_model(model):
        size = getattr(config, "image_size", 224)
        size = (size, size) if isinstance(size, int) else tuple(size)
        channels = getattr(config, "num_channels", 3)
        return {"pixel_values": torch.randn(cfg.num_samples, channels, *size, generator=generator)}
    vocab = getattr(config, "vocab_size", None)
    if vocab is None:
        raise ValueError("cannot make random calibration inputs for this model: pass --dataset")
    ids = torch.randint(0, vocab, (cfg.num_samples, _seq_len(cfg, model)), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def load_dataset_split(cfg: CalibrationConfig):
    """Load ``cfg.dataset`` (folder, file or Hub id) and return the requested split.

    Errors are one clear ``ValueError``: a missing path, an unreachable Hub, a bad split.
    """
    import datasets

    source = cfg.dataset
    path = os.path.expanduser(source)
    try:
        if os.path.isfile(path):
            ext = os.path.splitext(path)[1].lower()
            if ext not in _BUILDERS:
                raise ValueError(f"unsupported data file {source!r}: use {', '.join(sorted(_BUILDERS))}")
            data = datasets.load_dataset(_BUILDERS[ext], data_files=path)  # one file: split "train"
        elif os.path.isdir(path):
            data = datasets.load_dataset(path, cfg.dataset_config)
        elif source.startswith((".", "/", "~")) or source.count("/") > 1:
            raise ValueError(f"dataset path {source!r} does not exist")
        else:
            data = datasets.load_dataset(source, cfg.dataset_config)
    except ValueError:
        raise
    except Exception as exc:  # datasets raises many types for offline/missing data
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot load dataset {source!r}: {first}") from None
    if cfg.split not in data:
        raise ValueError(f"dataset {source!r} has no split {cfg.split!r}; it has: {', '.join(data)}")
    split = data[cfg.split]
    if len(split) == 0:
        raise ValueError(f"dataset {source!r} split {cfg.split!r} is empty")
    return split


def _detect_column(split, wanted: str | None, kind: str) -> str | None:
    """The ``kind`` (image, text, label) column: ``wanted`` if given, else detected.

    Images and texts are found by feature type; labels by a ``ClassLabel`` feature or a
    column named ``label``/``labels``, and are optional (``None`` when there is none).
    """
    import datasets

    names = list(split.column_names)
    if wanted is not None:
        if wanted not in names:
            raise ValueError(f"{kind} column {wanted!r} not in the dataset; columns: {', '.join(names)}")
        return wanted
    for name, feature in split.features.items():
        if kind == "image" and isinstance(feature, datasets.Image):
            return name
        if kind == "label" and isinstance(feature, datasets.ClassLabel):
            return name
        if kind == "text" and getattr(feature, "dtype", None) in ("string", "large_string"):
            if name == "text" or "text" not in names:
                return name
    if kind == "label":
        return next((n for n in ("label", "labels") if n in names), None)
    flag = "--image-column" if kind == "image" else "--text-column"
    raise ValueError(f"no {kind} column found in the dataset (columns: {', '.join(names)}); pass {flag}")


def build_calibration(cfg: CalibrationConfig, model: Any, processor: Any = None) -> dict[str, torch.Tensor]:
    """Calibration tensors for ``model``: from ``cfg.dataset`` or random when there is none.

    Example:
        >>> cal = build_calibration(CalibrationConfig(dataset="bbc.jsonl", num_samples=8, seq_len=64),
        ...                         model, tokenizer)  # doctest: +SKIP
        >>> cal["input_ids"].shape  # doctest: +SKIP
        torch.Size([8, 64])
    """
    if cfg.dataset is None:
        logger.warning(
            "no --dataset given: calibrating on random inputs; only the magnitude mask ignores data "
            "(wanda/hessian masks and SNOWS fit what they see), and nothing is held out to evaluate on; "
            "pass --dataset with real samples"
        )
        return random_calibration(model, cfg)
    if processor is None:
        raise ValueError("a tokenizer or image processor is needed to read a dataset; none was found with the model")
    return calibration_from_split(load_dataset_split(cfg), cfg, model, processor)


def calibration_from_split(split, cfg: CalibrationConfig, model: Any, processor: Any) -> dict[str, torch.Tensor]:
    """Calibration tensors from an already loaded ``datasets.Dataset`` (rows in a ``cfg.seed`` order).

    Example:
        >>> split = datasets.Dataset.from_dict({"text": articles})  # doctest: +SKIP
        >>> calibration_from_split(split, CalibrationConfig(num_samples=16, seq_len=128), model, tokenizer)  # doctest: +SKIP
    """
    from .data import prepare_data

    return prepare_data(split, cfg, model, processor).calibration
