"""Zero-shot tasks of lm-evaluation-harness (``lm-eval``) on a model in memory.

People judge pruned language models by task accuracy (ARC, HellaSwag, PIQA, WinoGrande,
BoolQ, ...), as lm-eval measures it. :class:`TaskSettings` names the tasks (lm-eval's
names, or task YAML files and folders of the user's own) and how many items of each to
score; :func:`resolve_tasks` finds them, refusing unknown names with the close matches;
:class:`PairedTasks` scores a dense and a pruned model through lm-eval's ``HFLM`` wrapper
and ``simple_evaluate``, without saving, reloading or moving the model.

lm-eval is an optional extra (``pip install "snows-hf[lmeval]"``) and is imported only
when tasks run, never by ``import snows_hf``. Results keep lm-eval's own metric names
(``acc``, ``acc_norm`` and their standard errors) and name each task by its name, never
by the path of its YAML file.

A task file is code: lm-eval renders its prompt templates with Jinja, unsandboxed, and
imports the Python its ``!function`` tags name, with the rights of whoever runs it. So task
files and folders come only from the caller's own ``tasks`` (the command line's ``--tasks``);
a recipe, a file from strangers, names lm-eval's tasks by their registered names only
(:func:`check_recipe_tasks`). The files a caller names are read first with the rules of
files from strangers, their includes followed within bounds (:func:`check_task_files`), and
lm-eval indexes those files alone, never the rest of their folder.

- :mod:`~snows_hf.harness.suite`: which tasks (:class:`TaskSettings`), found and checked
  (:func:`resolve_tasks`, :func:`check_recipe_tasks`, :func:`check_task_files`).
- :mod:`~snows_hf.harness.scoring`: a model scored on them (:func:`score_tasks`,
  :class:`PairedTasks`).
- :mod:`~snows_hf.harness.tables`: lm-eval's results as rows and the terminal table.
"""

from .scoring import PairedTasks, score_tasks
from .suite import (INSTALL, MAX_FOLDER_ENTRIES, MAX_INCLUDE_DEPTH, MAX_TASK_BYTES, MAX_TASK_FILES, TaskSettings, TaskSuite,
                    check_recipe_tasks, check_task_files, import_lm_eval, resolve_tasks)
from .tables import LOCAL_BUILDERS, format_tasks, metric_label, paired_rows, task_datasets, task_rows, value_text

__all__ = ["INSTALL", "LOCAL_BUILDERS", "MAX_FOLDER_ENTRIES", "MAX_INCLUDE_DEPTH", "MAX_TASK_BYTES", "MAX_TASK_FILES",
           "PairedTasks", "TaskSettings", "TaskSuite", "check_recipe_tasks", "check_task_files", "format_tasks",
           "import_lm_eval", "metric_label", "paired_rows", "resolve_tasks", "score_tasks", "task_datasets", "task_rows",
           "value_text"]
