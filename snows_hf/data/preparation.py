"""Rows -> calibration tensors and a disjoint held-out evaluation set.

Text is tokenised with the model's own tokenizer and packed into ``seq_len``-token
sequences; images go through the model's image processor.

What a row may cost is bounded before it is tokenised or decoded: a row's text is cut to
:data:`~snows_hf.data.samples.CHARS_PER_TOKEN` characters for each token the run can still use, and an image is
decoded no larger than about twice what the processor makes, or skipped when its header
says it is over :data:`~snows_hf.data.samples.MAX_IMAGE_PIXELS` (see :meth:`~snows_hf.data.order.SplitRows.bounded`
for the columns and the stream's buffer). Rows are visited in one seeded
order (:class:`~snows_hf.data.order.SplitRows`: a permutation of a local split, or
shuffled shards through a shuffle buffer for a streamed one), so the same seed gives the
same tensors. Calibration takes rows from the front; the evaluation set takes the rows
that follow, so the two never share a row. Which rows each used is recorded, with the
split, in :attr:`PreparedData.source`.

What is evaluated follows the model's head: classifiers get their inputs one sample per
row with labels; causal LMs get packed held-out sequences (perplexity); bare encoders
get one sample per row (embeddings), with labels when the data has them.

:func:`prepare_run_data` resolves what a run reads: without a dataset, the default of
the model's modality (:data:`~snows_hf.data.sources.DEFAULT_DATASETS`); with
``dataset="random"``, seeded random inputs of the right shape (enough for data-free
masks and smoke tests); else the named dataset.

The pieces: :mod:`~snows_hf.data.samples` turns rows into calibration tensors and the
held-out set, :mod:`~snows_hf.data.labels` reads labels as the model's classes.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch

from ..fields import SettingError, setting
from ..heads import modality, task_of
from ..loading import load_processor
from .columns import detect_column
from .config import CalibrationConfig, dataset_label
from .order import SplitRows
from .samples import PreparedData, image_samples, run_seq_len, text_samples
from .sources import DEFAULT_DATASETS, RANDOM, load_dataset_split, split_read
# importable from here too, as before they had modules of their own
from .labels import class_indices, match_class_names  # noqa: F401
from .samples import CHARS_PER_TOKEN, MAX_IMAGE_PIXELS, MAX_LABEL_CHARS, EvalSet, check_seq_len, fit_seq_len  # noqa: F401

logger = logging.getLogger(__name__)


def pick_processor(model: Any, processor: Any, override: str | None = None, *, trust_remote_code: bool = False) -> Any:
    """The tokenizer or image processor a run reads its data with: ``processor`` (the
    model's own), or the one at ``override`` (a folder or Hub id) when one is named.

    Example:
        >>> model, tokenizer = load_model("my-llama")  # doctest: +SKIP
        >>> tokenizer = pick_processor(model, tokenizer, "my-org/other-tokenizer")  # doctest: +SKIP
    """
    if not override:
        return processor
    loaded = load_processor(override, model, trust_remote_code=trust_remote_code)
    if loaded is None:
        raise SettingError(f"{setting('processor', override)} holds no tokenizer or image processor for this model",
                           field="processor")
    return loaded


def random_calibration(model: Any, cfg: CalibrationConfig) -> dict[str, torch.Tensor]:
    """Seeded random inputs shaped like the model's own (token ids or pixel values).

    Example:
        >>> batch = random_calibration(vit, CalibrationConfig(num_samples=4))  # doctest: +SKIP
        >>> batch["pixel_values"].shape  # doctest: +SKIP
        torch.Size([4, 3, 224, 224])
    """
    generator = torch.Generator().manual_seed(cfg.seed)
    config = model.config
    if modality(model) == "image":
        size = getattr(config, "image_size", 224)
        size = (size, size) if isinstance(size, int) else tuple(size)
        channels = getattr(config, "num_channels", 3)
        return {"pixel_values": torch.randn(cfg.num_samples, channels, *size, generator=generator)}
    vocab = getattr(config, "vocab_size", None)
    if vocab is None:
        raise SettingError("cannot make random calibration inputs for this model", field="dataset",
                           hint=f"pass {setting('dataset')}")
    ids = torch.randint(0, vocab, (cfg.num_samples, run_seq_len(cfg, model)), generator=generator)
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
    default = DEFAULT_DATASETS[modality(model)]
    logger.info("no dataset given: calibrating on %s (%s, split %s, streamed), %s; pass %s for your own data or %s "
                "for seeded noise", default.dataset, default.config, default.split, default.why,
                setting("dataset", "PATH"), setting("dataset", RANDOM))
    columns = {name: getattr(cfg, name) or getattr(default, name) for name in ("text_column", "image_column", "label_column")}
    return dataclasses.replace(cfg, dataset=default.dataset, dataset_config=default.config, split=default.split, **columns)


def build_calibration(cfg: CalibrationConfig, model: Any, processor: Any = None) -> dict[str, torch.Tensor]:
    """Calibration tensors for ``model``: from ``cfg.dataset`` (the modality's default when
    ``None``), or seeded random inputs when it is ``"random"``.

    Example:
        >>> cal = build_calibration(CalibrationConfig(dataset="bbc.jsonl", num_samples=8, seq_len=64),
        ...                         model, tokenizer)  # doctest: +SKIP
        >>> cal["input_ids"].shape  # doctest: +SKIP
        torch.Size([8, 64])
    """
    return prepare_run_data(cfg, model, processor)[0].calibration


def calibration_from_split(split, cfg: CalibrationConfig, model: Any, processor: Any) -> dict[str, torch.Tensor]:
    """Calibration tensors from an already loaded ``datasets.Dataset`` (rows in a ``cfg.seed`` order).

    Example:
        >>> split = datasets.Dataset.from_dict({"text": articles})  # doctest: +SKIP
        >>> calibration_from_split(split, CalibrationConfig(num_samples=16, seq_len=128), model, tokenizer)  # doctest: +SKIP
    """
    return prepare_data(split, cfg, model, processor).calibration


def prepare_data(split, cfg: CalibrationConfig, model: Any, processor: Any, eval_samples: int = 0) -> PreparedData:
    """Calibration tensors and up to ``eval_samples`` held-out evaluation samples.

    ``split`` is a :class:`~snows_hf.data.order.SplitRows` or a ``datasets.Dataset``
    (visited in ``cfg.seed`` order).

    Example:
        >>> data = prepare_data(open_split("bbc.jsonl"), cfg, model, tokenizer, eval_samples=64)  # doctest: +SKIP
        >>> data.calibration["input_ids"].shape, len(data.evaluation)  # doctest: +SKIP
        (torch.Size([128, 512]), 64)
    """
    rows = split if isinstance(split, SplitRows) else SplitRows(split, cfg.seed)
    if rows.size == 0:
        raise ValueError("the calibration dataset is empty")
    task = task_of(model)
    label_column = detect_column(rows, cfg.label_column, "label") if eval_samples and task.evaluation.labels else None
    build = image_samples if task.modality == "image" else text_samples
    prepared = build(rows, cfg, model, processor, eval_samples, task.evaluation, label_column)
    prepared.source.update(seed=cfg.seed, label_column=label_column, **rows.describe())
    held = len(prepared.evaluation) if prepared.evaluation is not None else 0
    if eval_samples and held == 0:
        logger.warning("no held-out evaluation samples are left after the %d calibration rows (asked for %d): "
                       "no dense/pruned evaluation; lower num_samples or add data",
                       len(prepared.source["calibration_rows"]), eval_samples)
        prepared.source["evaluation_skipped"] = "no held-out rows are left after the calibration rows"
    elif eval_samples and held < eval_samples:
        logger.warning("only %d held-out evaluation samples were left after calibration (asked for %d)", held, eval_samples)
    prepared.source["eval_samples"] = held
    return prepared


def prepare_run_data(cfg: CalibrationConfig, model: Any, processor: Any, eval_samples: int = 0,
                     fits_data: bool = True) -> tuple[PreparedData, CalibrationConfig]:
    """A run's data: calibration tensors and held-out evaluation samples, plus the data
    settings as used (``cfg`` with the modality's default dataset filled in when it named
    none, and with the ``seq_len`` the model got: for the recipe, and for ``eval`` to find
    the same held-out rows).

    ``dataset="random"`` gives seeded noise and nothing to evaluate on; with a method that
    fits what it sees (``fits_data``) a warning names the consequence. An in-memory
    dataset (a ``datasets.Dataset`` or ``DatasetDict``) is read as it is, and named in
    :attr:`PreparedData.source` by its :func:`~snows_hf.data.config.dataset_label`.

    Example:
        >>> data, used = prepare_run_data(CalibrationConfig(num_samples=64), model, tokenizer, eval_samples=32)  # doctest: +SKIP
        >>> used.dataset  # doctest: +SKIP
        'allenai/c4'
    """
    if cfg.dataset == RANDOM:
        if fits_data:
            logger.warning("calibrating on random inputs (dataset 'random'): the mask statistics and the re-fit are "
                           "fitted to noise, which damages real accuracy (magnitude masks alone ignore data)")
        if eval_samples:
            logger.warning("random inputs leave nothing to evaluate on: no dense/pruned evaluation")
        cfg = dataclasses.replace(cfg, seq_len=run_seq_len(cfg, model))
        return PreparedData(random_calibration(model, cfg), None, {"dataset": RANDOM, "seed": cfg.seed}), cfg
    cfg = with_default_dataset(cfg, model)
    if processor is None:
        raise SettingError("a tokenizer or image processor is needed to read a dataset; none was found", field="processor",
                           hint=f"pass {setting('processor')}")
    split = load_dataset_split(cfg)
    cfg = dataclasses.replace(cfg, seq_len=run_seq_len(cfg, model))
    data = prepare_data(split, cfg, model, processor, eval_samples)
    data.source.update(dataset=dataset_label(cfg.dataset), dataset_config=cfg.dataset_config, split=split_read(cfg))
    return data, cfg
