"""Calibration inputs: a ``datasets`` dataset (local files or a Hub id) turned into tensors.

Text is tokenised with the model's own tokenizer and packed into ``seq_len``-token
sequences; images go through the model's image processor. Sampling is seeded, so the same
seed gives the same tensors. Hub datasets are streamed (:mod:`snows_hf.datasources`).
Without a dataset, a default for the model's modality is used
(:data:`~snows_hf.datasources.DEFAULT_DATASETS`); ``dataset="random"`` asks for seeded
random inputs of the right shape (enough for data-free masks and smoke tests).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from .datasources import DEFAULT_DATASETS, model_modality, open_split

logger = logging.getLogger(__name__)


@dataclass
class CalibrationConfig:
    """Where calibration samples come from and how many.

    Example:
        >>> CalibrationConfig(dataset="data/train.jsonl", num_samples=64, seq_len=256)  # doctest: +ELLIPSIS
        CalibrationConfig(dataset='data/train.jsonl', ...)
    """

    dataset: str | None = field(default=None, metadata={"help": "calibration data: a local folder/file, a Hub dataset id "
                                "(streamed), or 'random' for seeded noise (default: the bundled recipe's for MODEL, "
                                "else allenai/c4 for text and frgfm/imagenette for images)"})
    dataset_config: str | None = field(default=None, metadata={"help": "configuration (subset) name of a Hub dataset"})
    split: str = field(default="train", metadata={"help": "dataset split to draw calibration and evaluation samples from"})
    num_samples: int = field(default=128, metadata={"help": "number of calibration samples"})
    seq_len: int = field(default=512, metadata={"help": "tokens per calibration sequence (text models)"})
    text_column: str | None = field(default=None, metadata={"help": "text column (default: detected)"})
    image_column: str | None = field(default=None, metadata={"help": "image column (default: detected)"})
    label_column: str | None = field(default=None, metadata={"help": "label column for evaluation (default: detected)"})
    eval_samples: int = field(default=128, metadata={"help": "held-out samples (sequences for causal LMs) to evaluate dense and pruned models on"})
    seed: int = field(default=0, metadata={"help": "random seed for sampling"})
    streaming: bool = field(default=True, metadata={"help": "stream Hub datasets, reading only the rows used "
                            "(false: download and prepare the whole split first)"})

    def __post_init__(self) -> None:
        from .config import check_seed
        from .fields import check_types

        check_types(self)
        check_seed(self.seed)
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {self.num_samples}")
        if self.seq_len < 1:
            raise ValueError(f"seq_len must be at least 1, got {self.seq_len}")
        if self.eval_samples < 0:
            raise ValueError(f"eval_samples must be at least 0, got {self.eval_samples}")


def fit_seq_len(seq_len: int, model: Any, explicit: bool = False) -> int:
    """``seq_len`` held against the model's positions (``max_position_embeddings``).

    Within them, or for a model without a limit, it is kept. Beyond them, a length the
    user chose (``explicit``) is refused, as asking for positions the model lacks is a
    mistake to report, not to hide; a length nobody chose (the default) is shortened to
    the limit, said in one info line.

    Example:
        >>> from types import SimpleNamespace
        >>> model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=128))
        >>> fit_seq_len(512, model)
        128
        >>> fit_seq_len(512, model, explicit=True)
        Traceback (most recent call last):
        ValueError: seq_len 512 exceeds the model's 128 positions (max_position_embeddings); use a seq_len of 128 or less
    """
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if limit is None or seq_len <= limit:
        return seq_len
    if explicit:
        raise ValueError(f"seq_len {seq_len} exceeds the model's {limit} positions (max_position_embeddings); "
                         f"use a seq_len of {limit} or less")
    logger.info("seq_len %d exceeds the model's %d positions; using %d", seq_len, limit, limit)
    return limit


def _seq_len(cfg: CalibrationConfig, model: Any) -> int:
    """The length ``cfg`` asks for, as :func:`fit_seq_len` fits it to ``model`` (the command
    line refuses an explicit --seq-len beyond the model's positions before any data is read)."""
    return fit_seq_len(cfg.seq_len, model)


def random_calibration(model: Any, cfg: CalibrationConfig) -> dict[str, torch.Tensor]:
    """Seeded random inputs shaped like the model's own (token ids or pixel values).

    Example:
        >>> batch = random_calibration(vit, CalibrationConfig(num_samples=4))  # doctest: +SKIP
        >>> batch["pixel_values"].shape  # doctest: +SKIP
        torch.Size([4, 3, 224, 224])
    """
    generator = torch.Generator().manual_seed(cfg.seed)
    config = model.config
    if model_modality(model) == "image":
        size = getattr(config, "image_size", 224)
        size = (size, size) if isinstance(size, int) else tuple(size)
        channels = getattr(config, "num_channels", 3)
        return {"pixel_values": torch.randn(cfg.num_samples, channels, *size, generator=generator)}
    vocab = getattr(config, "vocab_size", None)
    if vocab is None:
        raise ValueError("cannot make random calibration inputs for this model: pass --dataset")
    ids = torch.randint(0, vocab, (cfg.num_samples, _seq_len(cfg, model)), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def with_default_dataset(cfg: CalibrationConfig, model: Any) -> CalibrationConfig:
    """``cfg`` itself when it names a dataset (or ``random``), else ``cfg`` with the
    default dataset of the model's modality filled in (columns the user set are kept),
    said in one log line.

    Example:
        >>> with_default_dataset(CalibrationConfig(), llama).dataset  # doctest: +SKIP
        'allenai/c4'
    """
    if cfg.dataset is not None:
        return cfg
    default = DEFAULT_DATASETS[model_modality(model)]
    logger.info("no dataset given: calibrating on %s (%s, split %s, streamed), %s; pass --dataset PATH for your own "
                "data or --dataset random for seeded noise", default.dataset, default.config, default.split, default.why)
    columns = {name: getattr(cfg, name) or getattr(default, name) for name in ("text_column", "image_column", "label_column")}
    return dataclasses.replace(cfg, dataset=default.dataset, dataset_config=default.config, split=default.split, **columns)


def load_dataset_split(cfg: CalibrationConfig):
    """The rows of ``cfg``'s split (:class:`~snows_hf.datasources.SplitRows`, in ``cfg.seed`` order).

    Errors are one clear ``ValueError``: a missing path, an unreachable or gated Hub
    dataset, a bad split or configuration.

    Example:
        >>> rows = load_dataset_split(CalibrationConfig(dataset="data/train.jsonl"))  # doctest: +SKIP
    """
    return open_split(cfg.dataset, cfg.dataset_config, cfg.split, streaming=cfg.streaming, seed=cfg.seed)


def build_calibration(cfg: CalibrationConfig, model: Any, processor: Any = None) -> dict[str, torch.Tensor]:
    """Calibration tensors for ``model``: from ``cfg.dataset`` (the modality's default when
    ``None``), or seeded random inputs when it is ``"random"``.

    Example:
        >>> cal = build_calibration(CalibrationConfig(dataset="bbc.jsonl", num_samples=8, seq_len=64),
        ...                         model, tokenizer)  # doctest: +SKIP
        >>> cal["input_ids"].shape  # doctest: +SKIP
        torch.Size([8, 64])
    """
    from .data import prepare_run_data  # the one place that resolves random, default and named data

    return prepare_run_data(cfg, model, processor)[0].calibration


def calibration_from_split(split, cfg: CalibrationConfig, model: Any, processor: Any) -> dict[str, torch.Tensor]:
    """Calibration tensors from an already loaded ``datasets.Dataset`` (rows in a ``cfg.seed`` order).

    Example:
        >>> split = datasets.Dataset.from_dict({"text": articles})  # doctest: +SKIP
        >>> calibration_from_split(split, CalibrationConfig(num_samples=16, seq_len=128), model, tokenizer)  # doctest: +SKIP
    """
    from .data import prepare_data

    return prepare_data(split, cfg, model, processor).calibration
