"""Rows -> calibration tensors and a disjoint held-out evaluation set.

Text is tokenised with the model's own tokenizer and packed into ``seq_len``-token
sequences; images go through the model's image processor.

What a row may cost is bounded before it is tokenised or decoded: a row's text is cut to
:data:`CHARS_PER_TOKEN` characters for each token the run can still use, and an image is
decoded no larger than about twice what the processor makes, or skipped when its header
says it is over :data:`MAX_IMAGE_PIXELS` (see :meth:`~snows_hf.data.sources.SplitRows.bounded`
for the columns and the stream's buffer). Rows are visited in one seeded
order (:class:`~snows_hf.data.sources.SplitRows`: a permutation of a local split, or
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
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from ..evaluation import Evaluation
from ..fields import SettingError, setting
from ..loading import load_processor
from ..heads import modality, task_of
from .config import DEFAULT_SEQ_LEN, CalibrationConfig, dataset_label
from .sources import DEFAULT_DATASETS, RANDOM, SplitRows, detect_column, load_dataset_split, split_read

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


def _seq_len(cfg: CalibrationConfig, model: Any) -> int:
    """The length ``cfg`` gets on ``model``: its own (refused beyond the model's positions),
    or the default (shortened to them)."""
    return fit_seq_len(cfg.seq_len, model, explicit=cfg.seq_len is not None)


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

    ``split`` is a :class:`~snows_hf.data.sources.SplitRows` or a ``datasets.Dataset``
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
    build = _images if task.modality == "image" else _texts
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


# ---------------------------------------------------------------------------- images


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


def _images(rows, cfg, model, processor, eval_samples, evaluation, label_column) -> PreparedData:
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


# ---------------------------------------------------------------------------- text


def _texts(rows, cfg, model, tokenizer, eval_samples, evaluation, label_column) -> PreparedData:
    column = detect_column(rows, cfg.text_column, "text")
    seq_len = _seq_len(cfg, model)
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


# ---------------------------------------------------------------------------- labels


def class_indices(values: list, column: str | None, rows: SplitRows, model: Any, classes: str | None,
                  source: dict) -> torch.Tensor | None:
    """Class indices for ``values`` of the label column, numbered as ``classes`` says
    (:attr:`Evaluation.labels <snows_hf.evaluation.Evaluation.labels>`).

    ``"dataset"`` (bare encoders): the dataset's classes in sorted order (a linear probe's
    classes). ``"model"`` (classifiers): the model's classes; when both the dataset
    (``ClassLabel`` names, or string labels) and the model (``id2label``) name their
    classes, labels are matched by name; rows whose class the model lacks get -1 (left out
    of accuracy) and, when no name matches, there are no labels at all (only top-1
    agreement with the dense model is reported). Unnamed integer labels are taken as the
    model's indices and must lie within its classes. What was done is recorded in
    ``source["labels"]``.

    Example:
        >>> source = {}
        >>> class_indices(["dog", "cat", "bird"], "label", rows, vit_cats_and_dogs, "model", source)  # doctest: +SKIP
        tensor([ 1,  0, -1])
        >>> source["labels"]  # doctest: +SKIP
        'matched by name: 2 of 3 samples (not: bird)'
    """
    if column is None or not values:
        return None
    import datasets

    feature = rows.features[column] if rows.features is not None and column in rows.features else None
    names = feature.names if isinstance(feature, datasets.ClassLabel) else None
    integers = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    if classes == "dataset":
        numbers = {v: i for i, v in enumerate(sorted(set(map(str, values))))}
        return torch.tensor([numbers[str(v)] for v in values], dtype=torch.long)
    model_names = _class_names(model)
    if integers and (names is None or model_names is None):  # nothing to match by name
        num = int(getattr(model.config, "num_labels", 0) or 0)
        declared = range(len(names)) if names is not None else ()  # a ClassLabel's classes, seen or not
        outside = sorted({v for v in [*values, *declared] if not 0 <= v < num})
        if outside:
            shown = ", ".join(map(str, outside[:8])) + (", ..." if len(outside) > 8 else "")
            raise SettingError(f"labels in column {column!r} ({shown}) are outside the model's {num} classes "
                               f"(0..{num - 1})", field="label_column", hint=f"pass {setting('label_column')} with the right column")
        source["labels"] = "dataset class indices taken as the model's"
        return torch.tensor(values, dtype=torch.long)
    if integers:
        values = [names[v] if 0 <= v < len(names) else str(v) for v in values]
    if model_names is None:
        raise SettingError(f"labels in column {column!r} are names, but the model's classes are unnamed "
                           "(config.id2label)", field="label_column", hint=f"pass {setting('label_column')} with integer labels")
    lookup = match_class_names(sorted(set(map(str, values)) | set(names or [])), model_names)
    matched = [lookup.get(str(v)) for v in values]
    known = sum(m is not None for m in matched)
    missing = sorted({str(v) for v, m in zip(values, matched) if m is None})
    if known == 0:
        logger.warning("no label name of column %r (%s) is one of the model's classes: reporting top-1 agreement "
                       "with the dense model only, not accuracy", column, _listed(missing))
        source["labels"] = f"no label name matched the model's classes ({_listed(missing)}): agreement only"
        return None
    if missing:
        logger.warning("accuracy is measured on the %d of %d held-out samples whose label is one of the model's "
                       "classes; not: %s", known, len(values), _listed(missing))
    source["labels"] = f"matched by name: {known} of {len(values)} samples" + (f" (not: {_listed(missing)})" if missing else "")
    return torch.tensor([-1 if m is None else m for m in matched], dtype=torch.long)


def _listed(names: list[str], most: int = 5) -> str:
    return ", ".join(map(_short, names[:most])) + (f", ... ({len(names)} in all)" if len(names) > most else "")


def _short(name: str, most: int = 40) -> str:
    return name if len(name) <= most else name[: most - 3] + "..."


def _class_names(model: Any) -> dict[int, str] | None:
    """The model's ``id2label``, or ``None`` when its classes are unnamed (``LABEL_0`` ...)."""
    id2label = getattr(model.config, "id2label", None) or {}
    if not id2label or all(re.fullmatch(r"LABEL_\d+", str(name)) for name in id2label.values()):
        return None
    return {int(i): str(name) for i, name in id2label.items()}


def _normal(name: str) -> str:
    return " ".join(re.sub(r"[_\-]+", " ", name).lower().split())


def match_class_names(dataset_names: list[str], model_names: dict[int, str]) -> dict[str, int]:
    """Dataset class name -> model class index, where the names agree.

    Names are compared without case, ``_`` or ``-``; a name matches the model's whole
    label first, then its first comma-separated synonym, then any synonym (ImageNet's
    ``"tench, Tinca tinca"``), and only where exactly one model class answers. Dataset
    names that are one name once compared so (``golf_ball`` and ``Golf Ball``) are
    matched to nothing, said in one warning line: which of them the model's class
    stands for is a guess.

    Example:
        >>> match_class_names(["tench", "golf_ball", "cat"], {0: "tench, Tinca tinca", 1: "golf ball", 2: "dog"})
        {'tench': 0, 'golf_ball': 1}
    """
    whole = {i: _normal(name) for i, name in model_names.items()}
    synonyms = {i: [_normal(part) for part in name.split(",") if part.strip()] for i, name in model_names.items()}
    levels = (
        lambda i, n: whole[i] == n,
        lambda i, n: bool(synonyms[i]) and synonyms[i][0] == n,
        lambda i, n: n in synonyms[i],
    )
    spellings: dict[str, list[str]] = {}
    for name in dict.fromkeys(dataset_names):
        spellings.setdefault(_normal(name), []).append(name)
    groups = [names for names in spellings.values() if len(names) > 1]
    if groups:
        shown = " and ".join(repr(_short(n)) for n in groups[0][:3]) + (", ..." if len(groups[0]) > 3 else "")
        others = f" (and {len(groups) - 1} more such groups of names)" if len(groups) > 1 else ""
        logger.warning("dataset classes %s are one name once case, '_' and '-' are ignored%s: %s matched to a model "
                       "class", shown, others, "neither is" if len(groups) == 1 and len(groups[0]) == 2 else "none of them is")
    found = {}
    for name in dataset_names:
        wanted = _normal(name)
        if len(spellings[wanted]) > 1:
            continue
        for level in levels:
            hits = [i for i in model_names if level(i, wanted)]
            if len(hits) == 1:
                found[name] = hits[0]
                break
            if hits:  # ambiguous at this level: no guess
                break
    return found


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
        cfg = dataclasses.replace(cfg, seq_len=_seq_len(cfg, model))
        return PreparedData(random_calibration(model, cfg), None, {"dataset": RANDOM, "seed": cfg.seed}), cfg
    cfg = with_default_dataset(cfg, model)
    if processor is None:
        raise SettingError("a tokenizer or image processor is needed to read a dataset; none was found", field="processor",
                           hint=f"pass {setting('processor')}")
    split = load_dataset_split(cfg)
    cfg = dataclasses.replace(cfg, seq_len=_seq_len(cfg, model))
    data = prepare_data(split, cfg, model, processor, eval_samples)
    data.source.update(dataset=dataset_label(cfg.dataset), dataset_config=cfg.dataset_config, split=split_read(cfg))
    return data, cfg
