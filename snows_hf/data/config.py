"""The data settings of a run: :class:`CalibrationConfig`.

Its fields are also the command line's data options (their help is the flags' help) and
the ``data:`` section of a recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import check_seed
from ..fields import SettingError, check_types

DEFAULT_SEQ_LEN = 512
"""Tokens per calibration sequence when ``seq_len`` is not set (fewer for a model with fewer positions)."""


@dataclass
class CalibrationConfig:
    """Where calibration samples come from and how many.

    ``seq_len`` left at ``None`` is the default: :data:`DEFAULT_SEQ_LEN` tokens, shortened
    to the model's positions (``max_position_embeddings``) when it has fewer. A length
    that is set is taken as asked, and refused beyond the model's positions.

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
    seq_len: int | None = field(default=None, metadata={"help": "tokens per calibration sequence (text models) "
                                f"(default: {DEFAULT_SEQ_LEN})"})
    text_column: str | None = field(default=None, metadata={"help": "text column (default: detected)"})
    image_column: str | None = field(default=None, metadata={"help": "image column (default: detected)"})
    label_column: str | None = field(default=None, metadata={"help": "label column for evaluation (default: detected)"})
    eval_samples: int = field(default=128, metadata={"help": "held-out samples (sequences for causal LMs) to evaluate dense and pruned models on"})
    seed: int = field(default=0, metadata={"help": "random seed for sampling"})
    streaming: bool = field(default=True, metadata={"help": "stream Hub datasets, reading only the rows used "
                            "(false: download and prepare the whole split first)"})

    def __post_init__(self) -> None:
        check_types(self)
        check_seed(self.seed)
        if self.num_samples < 1:
            raise SettingError(f"num_samples must be at least 1, got {self.num_samples}", field="num_samples")
        if self.seq_len is not None and self.seq_len < 1:
            raise SettingError(f"seq_len must be at least 1, got {self.seq_len}", field="seq_len")
        if self.eval_samples < 0:
            raise SettingError(f"eval_samples must be at least 0, got {self.eval_samples}", field="eval_samples")


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
