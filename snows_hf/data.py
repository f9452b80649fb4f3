"""One dataset split -> calibration tensors and a disjoint held-out evaluation set.

Rows are visited in one seeded order. Calibration takes rows from the front (texts packed
into ``seq_len``-token sequences, images decoded through the model's processor); the
evaluation set takes the rows that follow, so the two never share a row. Which rows each
used is recorded, with the split, in :attr:`PreparedData.source`.

What is evaluated follows the model's head: classifiers get their inputs one sample per
row with labels; causal LMs get packed held-out sequences (perplexity); bare encoders
get one sample per row (embeddings), with labels when the data has them.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from .calibration import CalibrationConfig, _detect_column, _is_image_model, _seq_len

logger = logging.getLogger(__name__)


@dataclass
class EvalSet:
    """Held-out inputs for before/after measurements.

    Attributes:
        task: ``classification``, ``causal-lm`` or ``embedding``.
        inputs: stacked model inputs (``input_ids`` + ``attention_mask``, or ``pixel_values``).
        labels: class indices aligned with the inputs, or ``None``.
    """

    task: str
    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])


@dataclass
class PreparedData:
    """Calibration tensors, the evaluation set, and where both came from."""

    calibration: dict[str, torch.Tensor]
    evaluation: EvalSet | None
    source: dict[str, Any] = field(default_factory=dict)


def model_task(model: Any) -> str:
    """``classification``, ``causal-lm`` or ``embedding`` (bare models), from the model class.

    Example:
        >>> model_task(LlamaForCausalLM(config))  # doctest: +SKIP
        'causal-lm'
    """
    name = type(model).__name__
    if name.endswith(("ForImageClassification", "ForSequenceClassification")):
        return "classification"
    if name.endswith("ForCausalLM") or name.endswith("LMHeadModel"):
        return "causal-lm"
    return "embedding"


def prepare_data(split, cfg: CalibrationConfig, model: Any, processor: Any, eval_samples: int = 0) -> PreparedData:
    """Calibration tensors and up to ``eval_samples`` held-out evaluation samples.

    Example:
        >>> data = prepare_data(load_dataset_split(cfg), cfg, model, tokenizer, eval_samples=64)  # doctest: +SKIP
        >>> data.calibration["input_ids"].shape, len(data.evaluation)  # doctest: +SKIP
        (torch.Size([128, 512]), 64)
    """
    if len(split) == 0:
        raise ValueError("the calibration dataset is empty")
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    task = model_task(model)
    label_column = _detect_column(split, cfg.label_column, "label") if eval_samples and task != "causal-lm" else None
    if _is_image_model(model):
        prepared = _images(split, order, cfg, model, processor, eval_samples, task, label_column)
    else:
        prepared = _texts(split, order, cfg, model, processor, eval_samples, task, label_column)
    prepared.source.update(seed=cfg.seed, rows_in_split=len(split), label_column=label_column)
    if eval_samples and prepared.evaluation is not None and len(prepared.evaluation) < eval_samples:
        logger.warning("only %d held-out evaluation samples were left after calibration (asked for %d)",
                       len(prepared.evaluation), eval_samples)
    return prepared


# ---------------------------------------------------------------------------- images


def _decoded_images(split, order: list[int], column: str, mode: str) -> Iterator[tuple[int, Any]]:
    """``(row, PIL image)`` in ``order``; rows that cannot be decoded are skipped (counted)."""
    import datasets
    from PIL import Image

    raw = split.cast_column(column, datasets.Image(decode=False))
    for row in order:
        value = raw[row][column]
        try:
            source = io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]
            with Image.open(source) as image:
                yield row, image.convert(mode)
        except Exception as err:  # PIL raises several types for broken files
            logger.debug("row %d: cannot decode image (%s)", row, err)
            yield row, None


def _images(split, order, cfg, model, processor, eval_samples, task, label_column) -> PreparedData:
    column = _detect_column(split, cfg.image_column, "image")
    mode = "L" if getattr(model.config, "num_channels", 3) == 1 else "RGB"
    calib, held, skipped = [], [], 0
    for row, image in _decoded_images(split, order, column, mode):
        if image is None:
            skipped += 1
        elif len(calib) < cfg.num_samples:
            calib.append((row, image))
        elif len(held) < eval_samples:
            held.append((row, image))
        if len(calib) == cfg.num_samples and len(held) == eval_samples:
            break
    if skipped:
        logger.warning("skipped %d images that could not be decoded", skipped)
    if not calib:
        raise ValueError(f"no image in column {column!r} could be decoded ({skipped} tried)")
    if len(calib) < cfg.num_samples:
        logger.warning("the dataset has %d usable images, fewer than the %d asked for; using all", len(calib), cfg.num_samples)

    def pixels(items):
        return processor(images=[image for _, image in items], return_tensors="pt")["pixel_values"]

    evaluation = None
    if held:
        labels = _labels(split, [row for row, _ in held], label_column, model, task)
        evaluation = EvalSet(task, {"pixel_values": pixels(held)}, labels)
    source = {"calibration_rows": [r for r, _ in calib], "eval_rows": [r for r, _ in held], "skipped_images": skipped}
    return PreparedData({"pixel_values": pixels(calib)}, evaluation, source)


# ---------------------------------------------------------------------------- text


def _texts(split, order, cfg, model, tokenizer, eval_samples, task, label_column) -> PreparedData:
    column = _detect_column(split, cfg.text_column, "text")
    seq_len = _seq_len(cfg, model)
    rows = iter(order)
    calib_rows: list[int] = []
    ids = _pack(rows, split, column, tokenizer, cfg.num_samples, seq_len, calib_rows)
    if ids.shape[0] == 0:
        raise ValueError(f"the dataset holds fewer tokens than one sequence of {seq_len}; lower --seq-len")
    if ids.shape[0] < cfg.num_samples:
        logger.warning("the dataset fills %d sequences of %d tokens, fewer than the %d asked for; using all",
                       ids.shape[0], seq_len, cfg.num_samples)
    calibration = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    eval_rows: list[int] = []
    evaluation = None
    if eval_samples and task == "causal-lm":
        held = _pack(rows, split, column, tokenizer, eval_samples, seq_len, eval_rows)
        if held.shape[0]:
            evaluation = EvalSet(task, {"input_ids": held, "attention_mask": torch.ones_like(held)})
    elif eval_samples:
        eval_rows = [row for _, row in zip(range(eval_samples), rows)]
        if eval_rows:
            texts = [_text(split[row][column], column) for row in eval_rows]
            enc = tokenizer(texts, padding=True, truncation=True, max_length=seq_len, return_tensors="pt")
            inputs = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
            evaluation = EvalSet(task, inputs, _labels(split, eval_rows, label_column, model, task))
    return PreparedData(calibration, evaluation, {"calibration_rows": calib_rows, "eval_rows": eval_rows})


def _text(value: Any, column: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"text column {column!r} holds {type(value).__name__}, not strings")
    return value


def _pack(rows: Iterator[int], split, column: str, tokenizer, count: int, seq_len: int, used: list[int]) -> torch.Tensor:
    """Up to ``count`` sequences of ``seq_len`` tokens from the next rows (appended to ``used``)."""
    need, tokens = count * seq_len, []
    while len(tokens) < need:
        row = next(rows, None)
        if row is None:
            break
        used.append(row)
        tokens.extend(tokenizer(_text(split[row][column], column), verbose=False)["input_ids"])  # packed, not truncated
    n = min(len(tokens) // seq_len, count)
    return torch.tensor(tokens[: n * seq_len], dtype=torch.long).reshape(n, seq_len)


# ---------------------------------------------------------------------------- labels


def _labels(split, rows: list[int], column: str | None, model: Any, task: str) -> torch.Tensor | None:
    """Class indices for ``rows``: integers as they are; strings through ``config.label2id``
    for classifiers, or numbered in sorted order for bare encoders (a linear probe's classes)."""
    if column is None:
        return None
    values = [split[row][column] for row in rows]
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return torch.tensor(values, dtype=torch.long)
    if task == "embedding":
        classes = {v: i for i, v in enumerate(sorted(set(map(str, values))))}
        return torch.tensor([classes[str(v)] for v in values], dtype=torch.long)
    label2id = getattr(model.config, "label2id", None) or {}
    try:
        return torch.tensor([label2id[v] if isinstance(v, str) else int(v) for v in values], dtype=torch.long)
    except (KeyError, TypeError, ValueError):
        known = ", ".join(map(str, list(label2id)[:5]))
        raise ValueError(f"labels in column {column!r} do not match the model's classes ({known}); pass --label-column") from None
