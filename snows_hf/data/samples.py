"""Rows -> samples: images through the model's image processor, text tokenised and packed
into ``seq_len``-token sequences, calibration from the front of the rows' order and the
held-out evaluation set from the rows after (:class:`PreparedData`).

What a row may cost is bounded before it is tokenised or decoded: a row's text is cut to
:data:`CHARS_PER_TOKEN` characters for each token the run can still use, and an image is
decoded no larger than about twice what the processor makes, or skipped when its header
says it is over :data:`MAX_IMAGE_PIXELS`.
"""

from __future__ import annotations

import io
import logging
import math
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from ..evaluation import Evaluation
from ..fields import SettingError, setting
from .columns import detect_column
from .config import DEFAULT_SEQ_LEN, CalibrationConfig
from .labels import class_indices
from .order import SplitRows

logger = logging.getLogger(__name__)


CHARS_PER_TOKEN = 32
"""Characters of a row's text read for each token the run can still use. A token is about
4 characters of English and under 10 of code or tables, so the cut lies far beyond the
last token used and the tokens are the ones the whole row gives; a row of megabytes then
costs what the run can use of it, not its size. Text that averages more than 32
characters a token (long runs of one character, whitespace a tokenizer drops) gives
fewer tokens from that row, and the rows after it give the rest."""

MAX_IMAGE_PIXELS = 2**25
"""Pixels an image may have as it is decoded (33,554,432: an 8K frame, 7680 x 4320, fits),
read from its header before decoding; a JPEG above it is first decoded at 1/2 to 1/8 scale
where that still gives twice what the processor makes. Images still above it are skipped
and counted. It lies below PIL's own decompression-bomb bound (``PIL.Image.MAX_IMAGE_PIXELS``,
89 megapixels, which warns, and refuses at twice that), so PIL's warning is not shown."""

MAX_LABEL_CHARS = 256
"""Characters of a label read (a class name is short; longer strings are cut as rows are read)."""


@dataclass
class EvalSet:
    """Held-out inputs for before/after measurements.

    Attributes:
        evaluation: how models are measured on it (the model's task's, :mod:`snows_hf.heads`).
        inputs: stacked model inputs (``input_ids`` + ``attention_mask``, or ``pixel_values``).
        labels: class indices aligned with the inputs (-1: a row whose class the model
            does not have, left out of accuracy), or ``None``.
    """

    evaluation: Evaluation
    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor | None = None

    @property
    def task(self) -> str:
        """What report.json calls the evaluation: ``classification``, ``causal-lm`` or ``embedding``."""
        return self.evaluation.name

    def __len__(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])


@dataclass
class PreparedData:
    """Calibration tensors, the evaluation set, and where both came from."""

    calibration: dict[str, torch.Tensor]
    evaluation: EvalSet | None
    source: dict[str, Any] = field(default_factory=dict)


def fit_seq_len(seq_len: int | None, model: Any, explicit: bool = False) -> int:
    """``seq_len`` (``None``: :data:`~snows_hf.data.config.DEFAULT_SEQ_LEN`) held against
    the model's positions (``max_position_embeddings``).

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
    seq_len = DEFAULT_SEQ_LEN if seq_len is None else seq_len
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if limit is None or seq_len <= limit:
        return seq_len
    if explicit:
        raise ValueError(f"seq_len {seq_len} exceeds the model's {limit} positions (max_position_embeddings); "
                         f"use a seq_len of {limit} or less")
    logger.info("seq_len %d exceeds the model's %d positions; using %d", seq_len, limit, limit)
    return limit


def check_seq_len(cfg: CalibrationConfig, model: Any) -> None:
    """Refuse a ``cfg.seq_len`` beyond the model's positions, before any data is read
    (an unset one is the default, which is shortened instead).

    Example:
        >>> check_seq_len(CalibrationConfig(seq_len=4096), gpt2)  # doctest: +SKIP
        Traceback (most recent call last):
        ValueError: seq_len 4096 exceeds the model's 1024 positions (max_position_embeddings); use a seq_len of 1024 or less
    """
    if cfg.seq_len is not None:
        fit_seq_len(cfg.seq_len, model, explicit=True)


def run_seq_len(cfg: CalibrationConfig, model: Any) -> int:
    """The length ``cfg`` gets on ``model``: its own (refused beyond the model's positions),
    or the default (shortened to them).

    Example:
        >>> run_seq_len(CalibrationConfig(), gpt2)  # doctest: +SKIP
        512
    """
    return fit_seq_len(cfg.seq_len, model, explicit=cfg.seq_len is not None)


class _TooLarge(Exception):
    """An image whose header says it is over :data:`MAX_IMAGE_PIXELS`."""


def _processor_side(processor: Any) -> int | None:
    """The longest side, in pixels, that the image processor resizes or crops to (``None``:
    it names none).

    Example:
        >>> _processor_side(ViTImageProcessor(size={"height": 224, "width": 224}))  # doctest: +SKIP
        224
    """
    processor = getattr(processor, "image_processor", processor)
    sides = []
    for name in ("size", "crop_size"):
        value = getattr(processor, name, None)
        for key in ("height", "width", "shortest_edge", "longest_edge", "max_height", "max_width"):
            side = value.get(key) if isinstance(value, dict) else getattr(value, key, None)
            if isinstance(side, int) and not isinstance(side, bool) and side > 0:
                sides.append(side)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            sides.append(value)
    return max(sides) if sides else None


def _decode(value: Any, mode: str, side: int | None) -> Any:
    """One image as a ``mode`` PIL image, decoded no larger than needed: a JPEG at the
    smallest scale still twice ``side`` on its shorter side, then any image at least four
    times ``side`` reduced to two to four times it. Raises :class:`_TooLarge` when the
    header says it is over :data:`MAX_IMAGE_PIXELS`, before its pixels are read."""
    from PIL import Image

    if value.get("bytes"):
        source = io.BytesIO(value["bytes"])
    elif os.path.isfile(value["path"]):  # a regular file only: a pipe or device named by the data would never end
        source = value["path"]
    else:
        raise ValueError(f"{value['path']!r} is not a file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the bound below is lower
            image = Image.open(source)  # reads the header only
    except Image.DecompressionBombError:
        raise _TooLarge from None
    with image:
        width, height = image.size
        if side and min(width, height) >= 4 * side:
            scale = min(width, height) / (2 * side)
            image.draft(image.mode, (math.ceil(width / scale), math.ceil(height / scale)))  # JPEG only; else no-op
        if image.size[0] * image.size[1] > MAX_IMAGE_PIXELS:
            raise _TooLarge
        factor = min(image.size) // (2 * side) if side else 1
        if factor >= 2 and image.mode in ("L", "LA", "RGB", "RGBA"):  # reduced first: the copies are small
            return image.reduce(factor).convert(mode)
        converted = image.convert(mode)
    return converted.reduce(factor) if factor >= 2 else converted


def _decoded(rows: SplitRows, column: str, mode: str, side: int | None, skipped: Counter) -> Iterator[tuple[Any, Any, dict]]:
    """``(row id, PIL image, row)`` in the seeded order, for the images that decode within
    bounds (:func:`_decode`); the others are counted in ``skipped`` (``broken``, ``large``)."""
    import datasets

    rows.cast_column(column, datasets.Image(decode=False))
    for row_id, row in rows:
        try:
            image = _decode(row[column], mode, side)
        except _TooLarge:
            skipped["large"] += 1
            continue
        except Exception as err:  # PIL raises several types for broken files
            logger.debug("row %s: cannot decode image (%s)", row_id, err)
            skipped["broken"] += 1
            continue
        yield row_id, image, row


def _label(row: dict, column: str | None) -> Any:
    """The row's label as class matching reads it: a number or name as it is; any other
    value (a list of a multi-label set, a record) by its text, cut to :data:`MAX_LABEL_CHARS`,
    so a held-out row keeps no more of its label than a name's worth."""
    value = row.get(column) if column else None
    if value is None or isinstance(value, (str, int, float)):
        return value
    return str(value)[:MAX_LABEL_CHARS]


def _skipped_words(skipped: Counter) -> str:
    parts = [f"{skipped['broken']} could not be decoded"] if skipped["broken"] else []
    if skipped["large"]:
        parts.append(f"{skipped['large']} over the bound of {MAX_IMAGE_PIXELS:,} pixels")
    return ", ".join(parts)


def image_samples(rows, cfg, model, processor, eval_samples, evaluation, label_column) -> PreparedData:
    """Calibration images from the front of ``rows`` and up to ``eval_samples`` held-out ones
    after them (with their labels read from ``label_column``), through ``processor``; an
    image that cannot be decoded, or is over :data:`MAX_IMAGE_PIXELS`, is skipped and counted.

    Example:
        >>> image_samples(rows, cfg, vit, processor, 64, task_of(vit).evaluation, "label")  # doctest: +SKIP
    """
    column = detect_column(rows, cfg.image_column, "image")
    rows = rows.bounded({column: None} | ({label_column: MAX_LABEL_CHARS} if label_column and label_column != column else {}))
    mode = "L" if getattr(model.config, "num_channels", 3) == 1 else "RGB"
    side = _processor_side(processor)

    def pixels(image):  # one image at a time: what is kept is its tensor, not the decoded image
        return processor(images=[image], return_tensors="pt")["pixel_values"]

    calib, held, skipped = [], [], Counter()
    for row_id, image, row in _decoded(rows, column, mode, side, skipped):
        if len(calib) < cfg.num_samples:
            calib.append((row_id, pixels(image), None))
        elif len(held) < eval_samples:
            held.append((row_id, pixels(image), _label(row, label_column)))
        if len(calib) == cfg.num_samples and len(held) == eval_samples:
            break
    tried = sum(skipped.values())
    if tried:
        logger.warning("skipped %d image%s: %s", tried, "" if tried == 1 else "s", _skipped_words(skipped))
    if not calib:
        if skipped["large"]:
            raise ValueError(f"no image in column {column!r} could be used ({tried} tried: {_skipped_words(skipped)})")
        raise ValueError(f"no image in column {column!r} could be decoded ({tried} tried)")
    if len(calib) < cfg.num_samples:
        logger.warning("the dataset has %d usable images, fewer than the %d asked for; using all", len(calib), cfg.num_samples)

    held_out, source = None, {}
    if held:
        labels = class_indices([value for _, _, value in held], label_column, rows, model, evaluation.labels, source)
        held_out = EvalSet(evaluation, {"pixel_values": torch.cat([p for _, p, _ in held])}, labels)
    source.update(calibration_rows=[r for r, _, _ in calib], eval_rows=[r for r, _, _ in held], skipped_images=tried)
    return PreparedData({"pixel_values": torch.cat([p for _, p, _ in calib])}, held_out, source)


def text_samples(rows, cfg, model, tokenizer, eval_samples, evaluation, label_column) -> PreparedData:
    """Calibration sequences of ``seq_len`` tokens packed from the front of ``rows``, and up to
    ``eval_samples`` held-out samples from the rows after: packed sequences for causal LMs,
    one sample per row (with its label) for other heads.

    Example:
        >>> text_samples(rows, cfg, llama, tokenizer, 64, task_of(llama).evaluation, None)  # doctest: +SKIP
    """
    column = detect_column(rows, cfg.text_column, "text")
    seq_len = run_seq_len(cfg, model)
    read = _text_reader(rows, column)
    most = max(cfg.num_samples, eval_samples) * seq_len  # the most tokens one row can give
    rows = rows.bounded({column: most * CHARS_PER_TOKEN}
                        | ({label_column: MAX_LABEL_CHARS} if label_column and label_column != column else {}))
    ordered = iter(rows)
    calib_rows: list[Any] = []
    ids = _pack(ordered, read, tokenizer, cfg.num_samples, seq_len, calib_rows)
    if ids.shape[0] == 0:
        raise SettingError(f"the dataset holds fewer tokens than one sequence of {seq_len}", field="seq_len",
                           hint=f"lower {setting('seq_len')}")
    if ids.shape[0] < cfg.num_samples:
        logger.warning("the dataset fills %d sequences of %d tokens, fewer than the %d asked for; using all",
                       ids.shape[0], seq_len, cfg.num_samples)
    calibration = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    eval_rows: list[Any] = []
    held_out, source = None, {}
    if eval_samples and evaluation.packed:
        held = _pack(ordered, read, tokenizer, eval_samples, seq_len, eval_rows)
        if held.shape[0]:
            held_out = EvalSet(evaluation, {"input_ids": held, "attention_mask": torch.ones_like(held)})
    elif eval_samples:
        texts, values = [], []
        for _, (row_id, row) in zip(range(eval_samples), ordered):  # each row cut as it comes, not kept whole
            eval_rows.append(row_id)
            texts.append(read(row_id, row)[: seq_len * CHARS_PER_TOKEN])
            values.append(_label(row, label_column))
        if texts:
            enc = tokenizer(texts, padding=True, truncation=True, max_length=seq_len, return_tensors="pt")
            inputs = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
            labels = class_indices(values, label_column, rows, model, evaluation.labels, source)
            held_out = EvalSet(evaluation, inputs, labels)
    ordered.close()  # a stream stops reading here
    source.update(calibration_rows=calib_rows, eval_rows=eval_rows)
    return PreparedData(calibration, held_out, source)


def _text_reader(rows: SplitRows, column: str):
    """``read(row_id, row)``: the row's text, or one error naming the row whose value is not
    a string (and saying when the column mixes types)."""
    import datasets

    feature = rows.features[column] if rows.features is not None and column in rows.features else None
    mixed = "; its values are of mixed types" if isinstance(feature, datasets.Json) else ""

    def read(row_id: Any, row: dict) -> str:
        value = row[column]
        if not isinstance(value, str):
            raise ValueError(f"text column {column!r} holds {type(value).__name__}, not strings ({_row_name(row_id)}{mixed})")
        return value

    return read


def _row_name(row_id: Any) -> str:
    """A row id as the report records it, in words: ``row 7``, or ``row 7 of shard 2``."""
    return f"row {row_id[1]} of shard {row_id[0]}" if isinstance(row_id, list) else f"row {row_id}"


def _pack(rows: Iterator[tuple[Any, dict]], read, tokenizer, count: int, seq_len: int, used: list) -> torch.Tensor:
    """Up to ``count`` sequences of ``seq_len`` tokens from the next rows (their ids appended
    to ``used``). Each row's text is cut to :data:`CHARS_PER_TOKEN` characters per token
    still needed before it is tokenised, and only the tokens still needed are kept."""
    need, tokens = count * seq_len, []
    while len(tokens) < need:
        item = next(rows, None)
        if item is None:
            break
        row_id, row = item
        used.append(row_id)
        room = need - len(tokens)
        ids = tokenizer(read(row_id, row)[: room * CHARS_PER_TOKEN], verbose=False)["input_ids"]  # packed, not truncated
        tokens.extend(ids[:room])
    n = min(len(tokens) // seq_len, count)
    return torch.tensor(tokens[: n * seq_len], dtype=torch.long).reshape(n, seq_len)
