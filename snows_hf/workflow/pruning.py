"""Running a prune: :func:`run` loads, evaluates, prunes, evaluates, saves and pushes,
writing the same folder as ``snows-hf prune``; a failed run says whether a resume can
get past what stopped it."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..oneshot import prune_
from ..checkpoint import CheckpointError, RunCheckpoint
from ..config import PruneConfig
from ..data import CalibrationConfig, check_seq_len, prepare_run_data
from ..devices import resolve_device
from ..distributed import Processes, start_processes
from ..fields import checked_arguments, setting
from ..harness import PairedTasks, TaskSettings, TaskSuite
from ..hub import PushError, push_folder
from ..methods import build_method
from ..output_claim import claim_output, remove_stale_temporaries
from ..output_folder import (check_output_dir, check_room, checkpoint_dir, default_output_dir, largest_file_bytes,
                             model_bytes, stored_weight_bytes)
from ..recipe import recipe_dict
from ..report import RunRecord
from .log import Phases, RunLog, logger, run_log
from .options import EvalOptions, LoadOptions, SaveOptions, run_options
from .result import PairedEvaluation, RunResult
from .setup import calibration_config, check_recorded_text, check_settings, load_for_run, placement, prune_config


@checked_arguments()
def run(
    model: Any, config: PruneConfig | Mapping[str, Any], data: Any = None, *,
    save: SaveOptions | bool | None = SaveOptions(), load: LoadOptions = LoadOptions(),
    evaluation: EvalOptions = EvalOptions(), progress: bool = True, **deprecated: Any,
) -> RunResult:
    """Prune a model and save it as ``snows-hf prune`` does: load, prepare the data,
    evaluate the dense model, prune (checkpointing each block), evaluate the pruned model,
    save the weights, ``report.json``, ``recipe.yaml``, the model card and the run's log
    (:meth:`RunResult.save`), and push to the Hub when asked.

    With ``save=None`` the run ends with the pruned, evaluated model in memory and writes
    nothing: no output, no per-block checkpoint (so nothing to resume).
    ``result.save(output_dir, ...)`` writes later exactly what a saving run writes, with
    whatever was added to ``result.record`` meanwhile.

    Under ``torchrun`` or ``accelerate launch`` every process prunes its shard of the
    calibration micro-batches in step with the others; the main one evaluates, saves and
    pushes (the others return a result without ``output_dir``).

    Args:
        model: a Hub id, a local folder, or a loaded ``PreTrainedModel``.
        config: a :class:`~snows_hf.config.PruneConfig` or a dict of its fields.
        data: a :class:`~snows_hf.data.CalibrationConfig`, a dict of its fields, a
            dataset (Hub id, local file or folder, ``"random"``, or a ``datasets.Dataset``
            or ``DatasetDict`` already in memory), or ``None`` for the default dataset of
            the model's modality. Calibration and held-out evaluation rows never
            overlap. With other settings, an in-memory dataset goes in the config:
            ``CalibrationConfig(dataset=articles, num_samples=64, label_column="topic")``;
            the report and recipe name it by its fingerprint and rows, never by a path.
        save: where and how to save, and where to push (:class:`SaveOptions`; by default
            ``MODEL-NAME-pruned-SPARSITY`` here, dense); ``None``: keep it in memory.
        load: the processor to use and what loading may run (:class:`LoadOptions`).
        evaluation: held-out evaluation, its batch size and lm-eval tasks (:class:`EvalOptions`).
        progress: show progress bars.
        deprecated: the keywords before the option groups (``output_dir=``,
            ``save_format=``, ``overwrite=``, ``resume=``, ``push_to_hub=``, ``private=``,
            ``token=``, ``processor=``, ``trust_remote_code=``, ``allow_pickle=``,
            ``evaluate=``, ``eval_batch_size=``, ``tasks=``; and ``save=True``/``False``),
            mapped into the groups with one ``FutureWarning``.

    Example:
        >>> from snows_hf import PushOptions, SaveOptions
        >>> result = run("google/vit-base-patch16-224", {"sparsity": "2:4"}, data="frgfm/imagenette",
        ...              save=SaveOptions("vit-2of4", push_to_hub=PushOptions("me/vit-2of4")))  # doctest: +SKIP
        >>> result.evaluation["pruned"]["top1"]  # doctest: +SKIP
        0.79
        >>> articles = datasets.Dataset.from_dict({"text": texts, "topic": topics})  # doctest: +SKIP
        >>> result = run("sentence-transformers/all-MiniLM-L6-v2", {"sparsity": "2:4"},
        ...              CalibrationConfig(dataset=articles, label_column="topic"), save=None)  # doctest: +SKIP
        >>> result.evaluation["pruned"]["cosine_to_dense_min"]  # doctest: +SKIP
        0.93
        >>> result.save("minilm-2of4")  # doctest: +SKIP
        PosixPath('minilm-2of4')
    """
    save, load, evaluation = run_options(save, load, evaluation, deprecated)
    config, cal_cfg = prune_config(config), calibration_config(data)
    check_settings(config, save.save_format if save else "dense")
    device = resolve_device(config.device)  # an absent device fails before any loading
    source = os.fspath(model) if isinstance(model, (str, os.PathLike)) else getattr(model, "name_or_path", "") or ""
    # unsaved, the default output (here) still says where scratch files go
    given = save.output_dir if save else None
    output_dir = os.fspath(given) if given is not None else default_output_dir(source, config.sparsity)
    keep = [source] if source else []
    if save:
        check_output_dir(output_dir, save.overwrite, keep=keep)
        check_recorded_text(recipe_dict(config, cal_cfg, source, evaluation.tasks))  # what only the save would have found
        total, largest = stored_weight_bytes(source)  # a local model's size, known before loading it
        check_room(output_dir, 2 * total, largest)  # its output and its checkpoint
    if config.offload_activations == "disk" and config.offload_dir is None:
        config.offload_dir = str(Path(os.path.realpath(output_dir)).parent)  # the output's filesystem
    checkpoint = RunCheckpoint(checkpoint_dir(output_dir), resume=save.resume) if save else _NoCheckpoint()
    processes = start_processes(device)
    main = processes.is_main
    level = logger.level
    # one writer per output until its rename: a second one is refused, naming this one's pid
    with claim_output(output_dir, save.overwrite, keep=keep) if main and save else contextlib.nullcontext():
        try:
            checkpoint.check_resumable()  # before any loading
            if save and save.resume and not checkpoint.exists:
                logger.info("nothing to resume in %s: starting from the first block", checkpoint.folder)
            if main and save:  # what a killed save left, before the free space is measured
                remove_stale_temporaries(output_dir)
            elif not main:  # the main process speaks for all
                logger.setLevel(logging.ERROR)
            tasks = evaluation.tasks
            suite = tasks.suite() if tasks is not None and main else None  # unknown names: before any loading
            with placement(config, device, processes, output_dir) as load_options, run_log() as log:
                pruning = _Run(config, cal_cfg, processes, checkpoint if save else None, log, progress,
                               evaluation.batch_size or config.batch_size, tasks, suite)
                result = pruning.prune(model, load, output_dir if save else None, evaluation.held_out, save,
                                       load_options)
        except KeyboardInterrupt:
            if checkpoint.exists and main:
                logger.warning("the finished blocks are kept in %s; run it again with %s to continue",
                               checkpoint.folder, setting("resume", True))
            raise
        except CheckpointError as exc:  # resuming cannot get past it: the hint is to delete, not to resume
            text = " ".join(str(exc).split())
            if str(checkpoint.folder) not in text:
                text += f"; delete {checkpoint.folder} to start over ({setting('resume')} cannot continue it)"
            raise CheckpointError(text) from exc
        except Exception as exc:
            if checkpoint.exists and main and checkpoint.state is not None:  # this run's blocks, not a refused one's
                text = " ".join(str(exc).split()) or type(exc).__name__
                first = _resume_advice(exc)
                if first is None:
                    raise RuntimeError(f"{text} (a resume would fail the same way: the finished blocks in "
                                       f"{checkpoint.folder} cannot help; delete that folder)") from exc
                raise RuntimeError(f"{text} (the finished blocks are kept in {checkpoint.folder}: "
                                   f"{first}rerun with {setting('resume', True)} to continue)") from exc
            raise
        finally:
            logger.setLevel(level)
        if main:
            checkpoint.remove()  # still holding the output: the next writer finds no leftover
    push = save.push_to_hub if save else None
    if push and main:
        result.pushed_url = push_saved(result.output_dir, push.repo_id, token=push.token, private=push.private)
    processes.finish()
    return result


def _resume_advice(exc: BaseException) -> str | None:
    """What must change before a resume can get past ``exc`` (``""``: nothing), or
    ``None`` when a resume would fail the same way: a name the output cannot have (not
    UTF-8, too long), whatever the run does again. A system error is read from the
    exception, or from the ``(os error N)`` of an error raised in Rust (safetensors,
    tokenizers).

    Example:
        >>> _resume_advice(OSError(errno.ENOSPC, "No space left on device"))
        'free disk space, then '
    """
    code = exc.errno if isinstance(exc, OSError) else None
    if code is None:
        found = re.search(r"\(os error (\d+)\)", str(exc))
        code = int(found[1]) if found else None
    if isinstance(exc, UnicodeError) or code == errno.ENAMETOOLONG:
        return None
    return {errno.ENOSPC: "free disk space, then ", errno.EFBIG: "raise the file-size limit, then "}.get(code, "")


class _NoCheckpoint:
    """The checkpoint of a run that saves nothing: it keeps no block, so :func:`run` has
    nothing to resume, keep after a failure or remove."""

    exists, state = False, None

    def check_resumable(self) -> None:
        """Nothing to resume."""

    remove = check_resumable


def push_saved(folder: str | os.PathLike, repo_id: str, *, token: str | None = None, private: bool = False) -> str:
    """Push a folder this run saved; a failure says where the model is and how to retry.

    Example:
        >>> push_saved("vit-2of4", "me/vit-2of4")  # doctest: +SKIP
        'https://huggingface.co/me/vit-2of4/commit/...'
    """
    try:
        return push_folder(folder, repo_id, token=token, private=private)
    except PushError as err:
        raise PushError(f"{err}; the model is saved in {os.fspath(folder)}, retry with: "
                        f"snows-hf push {os.fspath(folder)} {repo_id}") from None


@dataclass
class _Run:
    """One prune run's state between its phases (see :func:`run`)."""

    config: PruneConfig
    cal_cfg: CalibrationConfig
    processes: Processes
    checkpoint: RunCheckpoint | None
    log: RunLog
    progress: bool
    eval_batch_size: int
    tasks: TaskSettings | None = None
    suite: TaskSuite | None = None
    phases: Phases = field(default_factory=Phases)

    def prune(self, model: Any, load: LoadOptions, output_dir: str | None, held_out: bool, save: SaveOptions | None,
              load_options: dict[str, Any]) -> RunResult:
        """Load, prepare the data, evaluate, prune, evaluate, and save to ``output_dir``
        (``None``: not at all)."""
        config, main, phases = self.config, self.processes.is_main, self.phases
        with phases("load"):
            model, processor, source = load_for_run(model, load, **load_options)
        check_seq_len(self.cal_cfg, model)
        if main and output_dir is not None:  # the output and its checkpoint, before hours of work rather than after
            check_room(output_dir, 2 * model_bytes(model), largest_file_bytes(model))
        with phases("data"):
            fits_data = build_method(config).fits_data
            eval_samples = self.cal_cfg.eval_samples if held_out else 0
            data, cal_cfg = prepare_run_data(self.cal_cfg, model, processor, eval_samples, fits_data)
        evaluation = PairedEvaluation(data.evaluation, self.eval_batch_size) if data.evaluation is not None and main else None
        tasks = PairedTasks.for_model(self.suite, model, processor, self.tasks and self.tasks.limit, self.eval_batch_size)
        if evaluation:
            with phases("dense eval"):
                evaluation.run("dense", model)
        if tasks:
            with phases("dense tasks"):
                tasks.run("dense", model)
        with phases("prune"):
            report = prune_(model, config, data.calibration, progress=self.progress and main, checkpoint=self.checkpoint)
        record = RunRecord(source_model=source, calibration=cal_cfg.to_dict(), data=data.source,
                           processes=self.processes.world_size)
        result = RunResult(model, processor, report, record, config=config, calibration=cal_cfg, log=self.log,
                           tasks=self.tasks)
        if not main:
            return result
        if evaluation:
            with phases("pruned eval"):
                evaluation.run("pruned", model)
            record.evaluation = evaluation.figures()
        if tasks:
            with phases("pruned tasks"):
                tasks.run("pruned", model)
            record.tasks = tasks.figures()
        record.phases = phases.seconds
        if output_dir is not None and save is not None:
            result.save(output_dir, save_format=save.save_format, overwrite=save.overwrite)
        return result
