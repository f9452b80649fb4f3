"""Scoring a model in memory on lm-eval's tasks: :func:`score_tasks` (one model, through
lm-eval's ``HFLM`` wrapper and ``simple_evaluate``, leaving the global random state and the
terminal as they were) and :class:`PairedTasks` (a dense and a pruned model on the same items).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any, Iterator

from ..fields import SettingError, setting
from .suite import TaskSuite, import_lm_eval
from .tables import task_datasets, task_rows

logger = logging.getLogger("snows_hf")

_KEPT_OUTPUT = 2**16  # bytes of what other libraries wrote while tasks ran, passed on to the log
_PROGRESS_BAR = re.compile(r"\[\d+:\d\d(:\d\d)?(<[^,\]]*)?, [^\]]*\]$")  # tqdm's "[00:01<00:02, 3.1it/s]"


@contextlib.contextmanager
def _kept_random_state() -> Iterator[None]:
    """Run a block that seeds the global generators (lm-eval seeds Python's, NumPy's and
    torch's) and leave them as they were, so scoring tasks changes nothing else in a run."""
    import numpy as np
    import torch

    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng():  # the CPU generator and every visible accelerator's
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


@contextlib.contextmanager
def _others_off_stderr() -> Iterator[None]:
    """Keep what other libraries write to stderr while the block runs off the terminal:
    lm-eval's and datasets' progress bars, and the ``fatal: not a git repository`` of the git
    that lm-eval runs for a commit hash (a child process, hence descriptor 2 redirected too).
    Their lines, progress bars left out, go to the ``snows_hf`` logger at DEBUG afterwards."""
    with tempfile.TemporaryFile() as sink:
        try:
            with (_descriptor_2_into(sink),
                  open(os.dup(sink.fileno()), "w", encoding="utf-8", errors="backslashreplace", buffering=1) as text,
                  contextlib.redirect_stderr(text)):
                yield
        finally:
            sink.seek(max(0, sink.seek(0, os.SEEK_END) - _KEPT_OUTPUT))
            for line in re.split(r"[\r\n]+", sink.read().decode("utf-8", "replace")):
                if line.strip() and not _PROGRESS_BAR.search(line.strip()):
                    logger.debug("while lm-eval scored: %s", line.strip())


@contextlib.contextmanager
def _descriptor_2_into(sink: Any) -> Iterator[None]:
    """Descriptor 2, where child processes and C code write, into ``sink`` while the block runs."""
    try:
        if sys.stderr is not None:
            sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # a process started without one: Python's stream alone is redirected
        yield
        return
    os.dup2(sink.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def score_tasks(model: Any, tokenizer: Any, suite: TaskSuite, limit: int | None = None,
                batch_size: int = 8) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Score ``model`` (in memory, wherever it is placed) on the suite's tasks with lm-eval.

    Returns the figures, one row per task and metric in lm-eval's names
    (``{"task", "metric", "value", "stderr", "samples"}``; a metric of another filter
    than lm-eval's default has ``"filter"`` too), and per task the dataset it read
    (``{"path", "name", "split"}``; a local builder's files are not named).

    Example:
        >>> rows, datasets = score_tasks(model, tokenizer, resolve_tasks(["arc_easy"]), limit=50)  # doctest: +SKIP
        >>> rows[0]  # doctest: +SKIP
        {'task': 'arc_easy', 'metric': 'acc', 'value': 0.58, 'stderr': 0.07, 'samples': 50}
    """
    lm_eval = import_lm_eval()
    from lm_eval.models.huggingface import HFLM

    from ..devices import model_input_device
    from ..loading import quieted

    was_training = model.training
    model.eval()
    try:
        with quieted("lm_eval"), _kept_random_state(), _others_off_stderr():
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
            # a model placed by accelerate reads its inputs where its embeddings execute
            lm._device = model_input_device(model)
            results = lm_eval.simple_evaluate(model=lm, tasks=suite.names, limit=limit, task_manager=suite.manager,
                                              log_samples=False)
    finally:
        model.train(was_training)
    return task_rows(results), task_datasets(results)


@dataclass
class PairedTasks:
    """lm-eval figures of one or two models (``dense`` first, then ``pruned``) on the same
    items of the same tasks, as :class:`~snows_hf.workflow.PairedEvaluation` is for held-out data.

    Example:
        >>> tasks = PairedTasks(resolve_tasks(["arc_easy"]), tokenizer, limit=100)  # doctest: +SKIP
        >>> tasks.run("dense", model); tasks.figures()["dense"][0]["metric"]  # doctest: +SKIP
        'acc'
    """

    suite: TaskSuite
    tokenizer: Any
    limit: int | None = None
    batch_size: int = 8
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def for_model(cls, suite: TaskSuite | None, model: Any, tokenizer: Any, limit: int | None = None,
                  batch_size: int = 8) -> PairedTasks | None:
        """The suite's tasks, ready to score ``model`` (``None`` without a suite). Only causal
        language models with a tokenizer are scored.

        Example:
            >>> PairedTasks.for_model(None, model, tokenizer) is None  # doctest: +SKIP
            True
        """
        from ..heads import task_of

        if suite is None:
            return None
        if task_of(model).name != "causal-lm" or not callable(getattr(tokenizer, "encode", None)):
            raise SettingError(f"{setting('tasks')} scores causal language models with their tokenizer; this is a "
                               f"{type(model).__name__}", field="tasks", hint="leave the tasks out for this model")
        return cls(suite, tokenizer, limit, batch_size)

    def run(self, label: str, model: Any) -> None:
        """Score ``model`` under ``label``."""
        logger.info("lm-eval: scoring the %s model on %s%s", label, ", ".join(self.suite.names),
                    f" (the first {self.limit} items of each)" if self.limit else "")
        self.rows[label], datasets = score_tasks(model, self.tokenizer, self.suite, self.limit, self.batch_size)
        self.datasets.update(datasets)

    def figures(self) -> dict[str, Any]:
        """``{"limit", "datasets", <label>: [rows]}`` as ``report.json`` stores them."""
        return {"limit": self.limit, "datasets": self.datasets, **self.rows}
