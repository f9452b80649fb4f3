"""Calibration and held-out evaluation data: where rows come from and how they become tensors.

- :mod:`~snows_hf.data.config`: :class:`CalibrationConfig`, the data settings of a run.
- :mod:`~snows_hf.data.sources`: local files and folders, and streamed Hub splits, checked
  before ``datasets`` reads them; the default dataset of each modality.
- :mod:`~snows_hf.data.order`: the one seeded order rows are visited in (:class:`SplitRows`).
- :mod:`~snows_hf.data.columns`: which column holds the text, the images or the labels.
- :mod:`~snows_hf.data.samples`: rows -> calibration tensors and a disjoint evaluation set
  (:class:`PreparedData`), each row's cost bounded.
- :mod:`~snows_hf.data.labels`: held-out labels as the model's classes.
- :mod:`~snows_hf.data.preparation`: what a run reads: random, default or named data.

Example:
    >>> from snows_hf.data import CalibrationConfig, build_calibration
    >>> calibration = build_calibration(CalibrationConfig(dataset="data/train.jsonl"), model, tokenizer)  # doctest: +SKIP
"""

from .config import DEFAULT_SEQ_LEN, IN_MEMORY, CalibrationConfig, dataset_label, is_in_memory, read_recipe_data
from .columns import detect_column
from .labels import class_indices, match_class_names
from .order import SHUFFLE_BUFFER, SHUFFLE_BUFFER_BYTES, SplitRows, row_bytes
from .preparation import (build_calibration, calibration_from_split, pick_processor, prepare_data, prepare_run_data,
                          random_calibration, with_default_dataset)
from .samples import CHARS_PER_TOKEN, MAX_IMAGE_PIXELS, MAX_LABEL_CHARS, EvalSet, PreparedData, check_seq_len, fit_seq_len
from .sources import DEFAULT_DATASETS, MAX_FOLDER_ENTRIES, RANDOM, DatasetDefault, is_local, load_dataset_split, open_split, split_read

__all__ = [
    "CHARS_PER_TOKEN", "DEFAULT_DATASETS", "DEFAULT_SEQ_LEN", "IN_MEMORY", "MAX_FOLDER_ENTRIES", "MAX_IMAGE_PIXELS",
    "MAX_LABEL_CHARS", "RANDOM", "SHUFFLE_BUFFER", "SHUFFLE_BUFFER_BYTES", "CalibrationConfig", "DatasetDefault",
    "EvalSet", "PreparedData", "SplitRows", "build_calibration", "calibration_from_split", "check_seq_len",
    "class_indices", "dataset_label", "detect_column", "fit_seq_len", "is_in_memory", "is_local", "load_dataset_split",
    "match_class_names", "open_split", "pick_processor", "prepare_data", "prepare_run_data", "random_calibration",
    "read_recipe_data", "row_bytes", "split_read", "with_default_dataset",
]
