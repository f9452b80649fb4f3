"""Evaluating a saved model: :func:`evaluate` is ``snows-hf eval``, on the held-out rows a
snows-hf folder's recipe names (within bounds of the caller's) and on lm-eval tasks."""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..data import (DEFAULT_SEQ_LEN, RANDOM, CalibrationConfig, check_seq_len, dataset_label, fit_seq_len, is_local,
                    prepare_run_data)
from ..devices import resolve_device, semi_structured_support
from ..evaluation import check_reference
from ..fields import SettingError, checked_arguments, setting
from ..harness import PairedTasks, format_tasks
from ..loading import load_model, quieted
from ..recipe import data_settings_of
from ..report import format_metrics
from ..sparse_inference import SparseInferenceReport, sparse_inference_
from ..heads import modality
from .log import logger
from .options import EvalOptions, LoadOptions, evaluate_options
from .result import PairedEvaluation
from .setup import calibration_fields, load_for_run, placed_loading

EVAL_SKIP_SAMPLES = 4096
"""The most calibration samples (for text, of :data:`~snows_hf.data.DEFAULT_SEQ_LEN`
tokens) that a folder's recipe makes :func:`evaluate` skip to reach the rows its run held
out: far over what runs calibrate on (128 to 1,024), and a bound on what a recipe from
elsewhere can make an evaluation read."""

_NAME_LIMIT = 120  # characters of a recipe's dataset, configuration or split name in a log line


@checked_arguments()
def evaluate(
    model: Any, data: Any = None, *, reference: str | os.PathLike | None = None, load: LoadOptions = LoadOptions(),
    evaluation: EvalOptions = EvalOptions(), device: str = "auto", dtype: str = "auto", max_memory: str | None = None,
    sparse_inference: bool = False, **deprecated: Any,
) -> EvalResult:
    """Evaluate a saved model (and, first, its ``reference``) on held-out samples and
    lm-eval tasks, as ``snows-hf eval`` does; the figures are under ``model``, or ``dense``
    and ``pruned``.

    A folder written by snows-hf chooses, by its recipe, which rows are evaluated: the ones
    its run held out (its dataset, configuration, split, columns and seed, after its
    calibration rows); ``data`` overrides any of them. How much is read is the caller's:
    the held-out count and text length are capped by the defaults, at most
    :data:`EVAL_SKIP_SAMPLES` calibration samples are skipped, and a Hub split is streamed
    even where the run read it whole (``streaming=False`` in ``data`` reads it whole). A
    ``recipe.yaml`` that is not one (another tool's, a newer version's, one with keys this
    version does not know) gives way to the dataset in ``data``, with a warning, and is
    an error without one. With tasks and no ``data``, only the tasks are scored.

    Args:
        model: a Hub id, a folder or a loaded model.
        data: the held-out data's settings, as :func:`~snows_hf.workflow.run` takes them.
        reference: a second model (the dense one) to evaluate first, on the same samples.
        load: the processor to use and what loading may run (:class:`LoadOptions`).
        evaluation: held-out samples or not, the batch size (default 8) and lm-eval tasks
            (:class:`EvalOptions`).
        device, dtype: where and in which precision (``"auto"``: the checkpoint's) to run.
        max_memory: place each model with accelerate within these limits (as
            :attr:`~snows_hf.config.PruneConfig.max_memory`) and evaluate it where it is
            placed, offloaded parts included, instead of moving it whole to ``device``.
        sparse_inference: run 2:4 layers on the GPU's sparse kernels, and say which.
        deprecated: ``processor=``, ``trust_remote_code=``, ``allow_pickle=``,
            ``batch_size=`` and ``tasks=``, the keywords before the option groups, mapped
            into them with one ``FutureWarning``.

    Example:
        >>> result = evaluate("vit-2of4", reference="google/vit-base-patch16-224")  # doctest: +SKIP
        >>> result.figures["pruned"]["top1"] - result.figures["dense"]["top1"]  # doctest: +SKIP
        -0.004
        >>> scored = evaluate("llama-2of4", evaluation=EvalOptions(tasks="arc_easy,piqa"))  # doctest: +SKIP
        >>> scored.figures["tasks"]["model"][0]["metric"]  # doctest: +SKIP
        'acc'
    """
    load, evaluation = evaluate_options(load, evaluation, deprecated)
    task_settings, batch_size = evaluation.tasks, evaluation.batch_size or 8
    if not evaluation.held_out and task_settings is None:
        raise SettingError(f"{setting('held_out', False)} leaves nothing to evaluate without lm-eval tasks",
                           field="held_out", hint=f"name tasks with {setting('tasks')} or leave out "
                           f"{setting('held_out', False)}")
    path = os.fspath(model) if isinstance(model, (str, os.PathLike)) else None
    fields = calibration_fields(data)
    # tasks alone: no held-out data
    held_out = evaluation.held_out and not (task_settings and task_settings.tasks and not fields)
    recipe = _recipe_data(path, fields) if held_out and path and os.path.isdir(os.path.expanduser(path)) else None
    cal_cfg = dataclasses.replace(recipe, **fields) if recipe is not None else CalibrationConfig(**fields)
    run_device = resolve_device(device)  # an absent device fails before any loading
    suite = task_settings.suite() if task_settings else None  # unknown task names: before any loading
    with placed_loading(max_memory, run_device) as placed:
        model, processor, _ = load_for_run(model, load, **({"dtype": dtype} if path else {}), **placed)
        if recipe is not None:
            cal_cfg = _recipe_within_bounds(recipe, fields, model, path)
        check_seq_len(cal_cfg, model)
        prepared = evaluation = None
        if held_out:
            if cal_cfg.dataset == RANDOM:
                raise ValueError("eval needs real held-out data: random inputs have nothing to compare against")
            prepared, cal_cfg = prepare_run_data(cal_cfg, model, processor, cal_cfg.eval_samples, fits_data=False)
            if prepared.evaluation is None:
                raise SettingError("no held-out samples are left after the calibration rows", field="num_samples",
                                   hint=f"lower {setting('num_samples')}")
            evaluation = PairedEvaluation(prepared.evaluation, batch_size, timed=True)
        scored = PairedTasks.for_model(suite, model, processor, task_settings and task_settings.limit, batch_size)
        run_dtype = eval_dtype(model.dtype, dtype, sparse_inference, semi_structured_support(run_device) is None)
        label = "pruned" if reference is not None else "model"
        if reference is not None:  # first, alone on the device, in the same precision as the model
            with placed_loading(max_memory, run_device) as own:  # its own offload folder
                dense, _ = load_model(os.fspath(reference), dtype=dtype, processor=False,
                                      trust_remote_code=load.trust_remote_code, allow_pickle=load.allow_pickle, **own)
                check_reference(model, dense)
                dense = dense if placed else dense.to(device=run_device, dtype=run_dtype)
                for measure in (evaluation, scored):
                    if measure:
                        measure.run("dense", dense)
                del dense
        if not placed:  # a placed model runs where accelerate put it
            model.to(device=run_device, dtype=run_dtype)
        sparse = None
        if sparse_inference:
            with quieted("snows_hf.sparse_inference"):  # its warning repeats the summary returned
                sparse = sparse_inference_(model)
        for measure in (evaluation, scored):
            if measure:
                measure.run(label, model)
    figures = (evaluation.figures() | {"data": prepared.source}) if evaluation else {}
    if scored:
        figures["tasks"] = scored.figures()
    figures |= {"model_path": path, "reference_path": os.fspath(reference) if reference else None,
                "device": str(run_device), "dtype": str(run_dtype).replace("torch.", "")}
    if sparse is not None:
        figures["sparse_inference"] = sparse.to_dict()
    return EvalResult(figures, sparse)


@dataclass
class EvalResult:
    """What :func:`evaluate` returns: the figures (as ``--json`` writes them) and, with
    sparse inference, which layers run on the 2:4 kernels and why others do not."""

    figures: dict[str, Any]
    sparse_inference: SparseInferenceReport | None = None

    def format(self) -> str:
        """The terminal summary ``snows-hf eval`` prints: which layers run sparse (with
        sparse inference), then the figures (held-out data, lm-eval tasks), of the reference
        and the model when there is one."""
        parts = [] if self.sparse_inference is None else [self.sparse_inference.format()]
        if "samples" in self.figures:
            paired = "dense" in self.figures
            parts.append(format_metrics(self.figures, columns=("dense", "pruned") if paired else ("model",),
                                        headers=("reference", "model") if paired else ("model",)))
        if "tasks" in self.figures:
            parts.append(format_tasks(self.figures["tasks"]))
        return "\n".join(parts)


def _recipe_data(folder: str, fields: dict[str, Any]) -> CalibrationConfig | None:
    """The data settings of ``folder``'s recipe (``None``: it has none). A recipe that cannot
    be read as one gives way to a dataset among ``fields``, said in one warning; without one,
    it is an error, as the rows its run held out are unknown."""
    try:
        return data_settings_of(folder)
    except ValueError as err:
        reason = str(err)
    if fields.get("dataset") is None:
        raise SettingError(f"{reason}: which rows its run held out is unknown", field="dataset",
                           hint=f"name the data to evaluate on with {setting('dataset', 'PATH')}")
    logger.warning("%s: evaluating on the data options given instead (which rows its run held out is unknown)", reason)
    return None


def _recipe_within_bounds(recipe: CalibrationConfig, fields: dict[str, Any], model: nn.Module,
                          folder: str) -> CalibrationConfig:
    """The data settings an evaluation of ``folder`` reads: ``fields`` (the caller's own) over
    its ``recipe``, which chooses which rows, not how many are read. Its held-out count and
    (text) sequence length are capped by the defaults, its calibration rows, skipped to reach
    the held-out ones, by :data:`EVAL_SKIP_SAMPLES`, and a Hub split is streamed even where
    it was read whole. One line says what the recipe chose and what was not taken, as a
    warning where the rows evaluated may not be the ones its run held out."""
    cfg = dataclasses.replace(recipe, **fields)
    notes, other_rows = [], False
    default = CalibrationConfig()
    if "eval_samples" not in fields and not 0 < recipe.eval_samples <= default.eval_samples:  # fewer: its figures
        if recipe.eval_samples:
            notes.append(f"recipe asked for {recipe.eval_samples} held-out samples: evaluating {default.eval_samples} "
                         f"({setting('eval_samples')} for more)")
        cfg = dataclasses.replace(cfg, eval_samples=default.eval_samples)
    if "streaming" not in fields and not recipe.streaming:
        cfg = dataclasses.replace(cfg, streaming=True)
        if cfg.dataset is None or isinstance(cfg.dataset, str) and not is_local(cfg.dataset):  # local data: read whole
            notes.append(f"recipe asked streaming: false; streaming anyway, so the rows are not the ones its run held "
                         f"out and may include its calibration rows ({setting('streaming', False)} to read the "
                         "whole split as it did)")
            other_rows = True
    skip, bound, unit = recipe.num_samples, EVAL_SKIP_SAMPLES, ""
    if modality(model) == "text":
        # Calibration packs num_samples x seq_len tokens from the front rows: the same count of
        # tokens skips the same rows at any length the evaluation takes.
        default_len = fit_seq_len(None, model)
        run_len = recipe.seq_len or default_len
        if "seq_len" in fields:
            length = fields["seq_len"] or default_len
        else:
            length = min(run_len, default_len)
            if length < run_len:
                notes.append(f"recipe's seq_len {run_len} is over the default {length}: evaluating sequences of "
                             f"{length} tokens after the same calibration rows ({setting('seq_len')} to choose)")
        skip = -(-recipe.num_samples * run_len // length)
        bound, unit = max(1, EVAL_SKIP_SAMPLES * DEFAULT_SEQ_LEN // length), f" of {length} tokens"
        cfg = dataclasses.replace(cfg, seq_len=length)
    if "num_samples" not in fields:
        if skip > bound:
            notes.append(f"recipe asked for {recipe.num_samples} calibration samples: skipping at most {bound}{unit} to "
                         f"reach its held-out rows, so the rows evaluated may be among them ({setting('num_samples')} to "
                         "choose)")
            skip, other_rows = bound, True
        cfg = dataclasses.replace(cfg, num_samples=skip)
    given = ", with the data options given on top" if fields else ""
    # a stranger's names, quoted and cut short: one line of the log, whatever the recipe holds
    what = f"dataset {dataset_label(cfg.dataset)!r:.{_NAME_LIMIT}}" + (
        f" (configuration {cfg.dataset_config!r:.{_NAME_LIMIT}})" if cfg.dataset_config else "")
    logger.log(logging.WARNING if other_rows else logging.INFO,
               "evaluation data from %s's recipe.yaml%s: %s, split %.*r, seed %d, the rows after its %d calibration "
               "samples%s", folder, given, what, _NAME_LIMIT, cfg.split, cfg.seed, recipe.num_samples,
               "".join(f"; {note}" for note in notes))
    return cfg


def eval_dtype(checkpoint_dtype: torch.dtype, dtype: str, sparse_inference: bool, kernels: bool) -> torch.dtype:
    """The precision an evaluation runs in: ``dtype``, else the checkpoint's, except that
    sparse inference on a GPU with 2:4 kernels runs float32 checkpoints in bfloat16 (the
    kernels' precision, and float16's range problems avoided).

    Example:
        >>> eval_dtype(torch.float32, "auto", sparse_inference=True, kernels=True)
        torch.bfloat16
    """
    if sparse_inference and dtype == "auto" and kernels and checkpoint_dtype == torch.float32:
        logger.info("%s: running the float32 checkpoint in bfloat16, the precision of the 2:4 kernels (%s or "
                    "float32 to choose otherwise)", setting("sparse_inference"), setting("dtype", "float16"))
        return torch.bfloat16
    return checkpoint_dtype


