"""Calibration and held-out evaluation data: where rows come from and how they become tensors.

- :mod:`~snows_hf.data.config`: :class:`CalibrationConfig`, the data settings of a run.
- :mod:`~snows_hf.data.sources`: local files and folders, and streamed Hub splits, visited
  in one seeded order; column detection.
- :mod:`~snows_hf.data.preparation`: rows -> calibration tensors and a disjoint evaluation
  set (:class:`PreparedData`); the resolution of random, default and named data.

Example:
    >>> from snows_hf.data import CalibrationConfig, build_calibration
    >>> calibration = build_calibration(CalibrationConfig(dataset="data/train.jsonl"), model, tokenizer)  # doctest: +SKIP
"""

from .config import DEFAULT_SEQ_LEN, IN_MEMORY, CalibrationConfig, dataset_label, is_in_memory, read_recipe_data
from .preparation import (CHARS_PER_TOKEN, MAX_IMAGE_PIXELS, MAX_LABEL_CHARS, EvalSet, PreparedData, build_calibration, calibration_from_split, check_seq_len, class_indices,
                          fit_seq_len, match_class_names, pick_processor, prepare_data, prepare_run_data,
                          random_calibration, with_default_dataset)
from .sources import (DEFAULT_DATASETS, MAX_FOLDER_ENTRIES, RANDOM, SHUFFLE_BUFFER, SHUFFLE_BUFFER_BYTES, DatasetDefault,
                      SplitRows, detect_column, is_local, load_dataset_split, open_split, row_bytes, split_read)

__all__ = [
    "CHARS_PER_TOKEN", "DEFAULT_DATASETS", "DEFAULT_SEQ_LEN", "IN_MEMORY", "MAX_FOLDER_ENTRIES", "MAX_IMAGE_PIXELS",
    "MAX_LABEL_CHARS", "RANDOM", "SHUFFLE_BUFFER", "SHUFFLE_BUFFER_BYTES", "CalibrationConfig", "DatasetDefault",
    "EvalSet", "PreparedData", "SplitRows", "build_calibration", "calibration_from_split", "check_seq_len",
    "class_indices", "dataset_label", "detect_column", "fit_seq_len", "is_in_memory", "is_local", "load_dataset_split",
    "match_class_names", "open_split", "pick_processor", "prepare_data", "prepare_run_data", "random_calibration",
    "read_recipe_data", "row_bytes", "split_read", "with_default_dataset",
]
