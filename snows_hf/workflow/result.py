"""What a run gives back: :class:`RunResult` (the pruned model, its report and record,
and how to save it) and :class:`PairedEvaluation` (dense and pruned figures on the same
held-out samples)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..config import PruneConfig
from ..data import CalibrationConfig, EvalSet
from ..evaluation import compute_metrics, model_outputs, throughput
from ..export import save_pruned
from ..fields import checked_arguments
from ..harness import TaskSettings, format_tasks
from ..output_claim import claim_output
from ..output_folder import default_output_dir
from ..recipe import recipe_dict
from ..report import PruneReport, RunRecord
from .log import LOG_FILE, Phases, RunLog, logger, run_log
from .setup import check_recorded_text, check_settings


class PairedEvaluation:
    """Figures of one or two models (``dense`` first, then ``pruned``) on the same held-out
    samples; the second is also compared with the first's outputs.

    Example:
        >>> evaluation = PairedEvaluation(data.evaluation, batch_size=8)  # doctest: +SKIP
        >>> evaluation.run("dense", model); evaluation.figures()["dense"]  # doctest: +SKIP
        {'perplexity': 31.4, 'nll_per_token': 3.44}
    """

    def __init__(self, eval_set: EvalSet, batch_size: int, timed: bool = False) -> None:
        self.eval_set, self.batch_size, self.timed = eval_set, batch_size, timed
        self.outputs: dict[str, Any] = {}
        self.metrics: dict[str, dict[str, float]] = {}

    def run(self, label: str, model: nn.Module) -> None:
        """Evaluate ``model`` under ``label``, against ``dense`` when that ran first."""
        if self.timed:
            outputs, per_second = throughput(model, self.eval_set, self.batch_size)
        else:
            outputs, per_second = model_outputs(model, self.eval_set, self.batch_size), None
        self.metrics[label] = compute_metrics(self.eval_set, outputs, self.outputs.get("dense"))
        if per_second is not None:
            self.metrics[label]["samples_per_second"] = per_second
        self.outputs[label] = outputs

    def figures(self) -> dict[str, Any]:
        """``{"task", "samples", <label>: {metric: value}, ...}`` as reports store it."""
        return {"task": self.eval_set.task, "samples": len(self.eval_set), **self.metrics}


@dataclass
class RunResult:
    """What :func:`~snows_hf.workflow.run` returns: the pruned model (still in memory), its
    report, the run's record, where it was saved (and pushed), and what :meth:`save` needs
    to write it.

    Attributes:
        output_dir: where it was saved; ``None`` until then (``run(..., save=None)``),
            and in data-parallel processes other than the main one.
        config: the run's :class:`~snows_hf.config.PruneConfig`.
        calibration: the run's :class:`~snows_hf.data.CalibrationConfig` as used (the
            dataset and ``seq_len`` filled in).
        tasks: the run's :class:`~snows_hf.harness.TaskSettings` (``None``: no lm-eval tasks).
        log: the run's log records, which :meth:`save` writes as ``snows-hf.log``.

    Example:
        >>> result = run("my-vit", PruneConfig(sparsity="2:4"))  # doctest: +SKIP
        >>> print(result.format())  # doctest: +SKIP
    """

    model: nn.Module
    processor: Any
    report: PruneReport
    record: RunRecord
    config: PruneConfig
    calibration: CalibrationConfig
    output_dir: Path | None = None
    pushed_url: str | None = None
    log: RunLog | None = field(default=None, repr=False)
    tasks: TaskSettings | None = None

    @property
    def evaluation(self) -> dict[str, Any] | None:
        """Dense and pruned figures on the held-out samples (``None`` without evaluation)."""
        return self.record.evaluation

    def format(self) -> str:
        """The terminal summary ``snows-hf prune`` prints (lm-eval's task table first, when tasks ran)."""
        table = self.report.format_table(self.record.evaluation, self.record.phases)
        if self.record.tasks is None:
            return table
        return f"{format_tasks(self.record.tasks)}\n{table}"

    @checked_arguments()
    def save(self, output_dir: str | os.PathLike | None = None, *, save_format: str = "dense",
             overwrite: bool = False) -> Path:
        """Write the pruned model as :func:`~snows_hf.workflow.run` saves it: weights,
        processor, ``report.json`` (the report and :attr:`record`, as it is now),
        ``recipe.yaml`` (model named by ``record.source_model``), the model card and
        ``snows-hf.log``. A saving run saves through this very call. Returns the folder,
        also set as :attr:`output_dir`.

        Args:
            output_dir: where (default: ``MODEL-NAME-pruned-SPARSITY`` here).
            save_format: ``"dense"`` or ``"compact"`` (see :class:`~snows_hf.workflow.SaveOptions`).
            overwrite: replace an earlier snows-hf output in ``output_dir``.

        Example:
            >>> result = run("my-vit", PruneConfig(sparsity="2:4"), save=None)  # doctest: +SKIP
            >>> result.record.source_model = "google/vit-base-patch16-224"  # doctest: +SKIP
            >>> result.save("vit-2of4")  # doctest: +SKIP
            PosixPath('vit-2of4')
        """
        source = self.record.source_model
        recipe = recipe_dict(self.config, self.calibration, source, self.tasks)
        check_settings(self.config, save_format)
        check_recorded_text(recipe)
        if output_dir is None:
            output_dir = default_output_dir(source or "", self.config.sparsity)
        output_dir = os.fspath(output_dir)
        with claim_output(output_dir, overwrite, keep=[source] if source else []), run_log(self.log) as log, \
                Phases(self.record.phases)("save"):
            logger.info("saving to %s", output_dir)
            self.output_dir = save_pruned(self.model, self.report, output_dir, self.processor, overwrite=overwrite,
                                          record=self.record, recipe=recipe,
                                          save_format=save_format, extra_files={LOG_FILE: log.text()})
        return self.output_dir
