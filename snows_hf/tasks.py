"""Deprecated: the earlier name of :mod:`snows_hf.heads` (model heads; lm-eval tasks are
:mod:`snows_hf.harness`'s), kept so that code importing ``snows_hf.tasks`` still runs
(with one ``DeprecationWarning``)."""

import warnings

from .heads import MODALITIES, TASKS, Task, modality, register_task, task_of

__all__ = ["MODALITIES", "TASKS", "Task", "modality", "register_task", "task_of"]

warnings.warn("snows_hf.tasks is deprecated and will be removed: import from snows_hf.heads", DeprecationWarning,
              stacklevel=2)
