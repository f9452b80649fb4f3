"""The data settings of a run: :class:`CalibrationConfig`.

Its fields are also the command line's data options (their help is the flags' help) and
the ``data:`` section of a recipe.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from ..config import MAX_SEED
from ..fields import SettingError, check_fields, config_field

if TYPE_CHECKING:  # pragma: no cover
    import datasets

DEFAULT_SEQ_LEN = 512
"""Tokens per calibration sequence when ``seq_len`` is not set (fewer for a model with fewer positions)."""

IN_MEMORY = "in-memory "
"""How the name of an in-memory dataset begins in reports and recipes (:func:`dataset_label`)."""


@dataclass
class CalibrationConfig:
    """Where calibration samples come from and how many.

    ``seq_len`` left at ``None`` is the default: :data:`DEFAULT_SEQ_LEN` tokens, shortened
    to the model's positions (``max_position_embeddings``) when it has fewer. A length
    that is set is taken as asked, and refused beyond the model's positions.

    From Python, ``dataset`` may also be data already in memory: a ``datasets.Dataset``
    (its rows are the split), or a ``DatasetDict`` (``split`` picks one). Reports and
    ``recipe.yaml`` name it by its kind, fingerprint and rows (:func:`dataset_label`).

    Example:
        >>> CalibrationConfig(dataset="data/train.jsonl", num_samples=64, seq_len=256)  # doctest: +ELLIPSIS
        CalibrationConfig(dataset='data/train.jsonl', ...)
        >>> articles = datasets.Dataset.from_dict({"text": texts, "topic": topics})  # doctest: +SKIP
        >>> CalibrationConfig(dataset=articles, num_samples=64, label_column="topic")  # doctest: +SKIP
    """

    dataset: str | datasets.Dataset | datasets.DatasetDict | None = config_field(
        None, "calibration data: a local folder/file, a Hub dataset id (streamed), or 'random' for seeded noise "
        "(default: the bundled recipe's for MODEL, else allenai/c4 for text and frgfm/imagenette for images)")
    dataset_config: str | None = config_field(None, "configuration (subset) name of a Hub dataset")
    split: str = config_field("train", "dataset split to draw calibration and evaluation samples from")
    num_samples: int = config_field(128, "number of calibration samples", minimum=1)
    seq_len: int | None = config_field(None, f"tokens per calibration sequence (text models) (default: {DEFAULT_SEQ_LEN})",
                                       minimum=1)
    text_column: str | None = config_field(None, "text column (default: detected)")
    image_column: str | None = config_field(None, "image column (default: detected)")
    label_column: str | None = config_field(None, "label column for evaluation (default: detected)")
    eval_samples: int = config_field(
        128, "held-out samples (sequences for causal LMs) to evaluate dense and pruned models on", minimum=0)
    seed: int = config_field(0, "random seed for sampling", minimum=0, maximum=MAX_SEED)
    streaming: bool = config_field(True, "stream Hub datasets, reading only the rows used "
                                   "(false: download and prepare the whole split first)")

    def __post_init__(self) -> None:
        check_fields(self)
        if not (self.dataset is None or isinstance(self.dataset, str) or is_in_memory(self.dataset)):
            raise SettingError(f"dataset must be a name or path, a datasets.Dataset or a DatasetDict, got {self.dataset!r}",
                               field="dataset")

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain data, as ``recipe.yaml`` and ``report.json`` hold them: an
        in-memory dataset by its :func:`dataset_label`.

        Example:
            >>> CalibrationConfig(dataset="data.jsonl").to_dict()["dataset"]
            'data.jsonl'
        """
        return {f.name: getattr(self, f.name) for f in fields(self)} | {"dataset": dataset_label(self.dataset)}


def is_in_memory(value: Any) -> bool:
    """True when ``value`` is a ``datasets.Dataset`` or ``DatasetDict`` (data a run may
    take instead of a dataset's name or path).

    Example:
        >>> is_in_memory("allenai/c4")
        False
    """
    loaded = sys.modules.get("datasets")  # without it imported, nothing can be one of its datasets
    return loaded is not None and isinstance(value, (loaded.Dataset, loaded.DatasetDict))


def dataset_label(dataset: Any) -> str | None:
    """How reports and recipes name ``dataset``: a name or path as it is given; an
    in-memory dataset by its kind, fingerprint and rows, never by the paths of its cache
    files (local, perhaps private, and not what a rerun could read anyway).

    Example:
        >>> dataset_label("allenai/c4")
        'allenai/c4'
        >>> dataset_label(datasets.Dataset.from_dict({"text": ["a", "b"]}))  # doctest: +SKIP
        'in-memory Dataset (fingerprint 4f3c0121bdf331a5, 2 rows)'
    """
    if not is_in_memory(dataset):
        return dataset

    def summary(split: Any) -> str:  # datasets keeps the fingerprint as _fingerprint, with no public name
        return f"fingerprint {split._fingerprint}, {split.num_rows} rows"

    if isinstance(dataset, dict):
        return f"{IN_MEMORY}DatasetDict (" + "; ".join(f"{name}: {summary(split)}" for name, split in dataset.items()) + ")"
    return f"{IN_MEMORY}Dataset ({summary(dataset)})"


def read_recipe_data(values: Any) -> Any:
    """The ``data:`` section of a recipe as :class:`CalibrationConfig` fields.

    A recipe holds the ``seq_len`` its run used; recipes written before ``seq_len`` could
    be unset hold 512 for the default even where the model's positions shortened it. So
    512 reads as the default (:data:`DEFAULT_SEQ_LEN`, shortened to the model's
    positions), and both kinds rerun as they ran.

    Example:
        >>> read_recipe_data({"dataset": "data.jsonl", "seq_len": 512})
        {'dataset': 'data.jsonl', 'seq_len': None}
    """
    if isinstance(values, dict) and isinstance(values.get("seq_len"), int) and values["seq_len"] == DEFAULT_SEQ_LEN:
        return {**values, "seq_len": None}
    return values
