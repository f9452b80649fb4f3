"""The whole run from Python: :func:`run` loads, evaluates, prunes, evaluates, saves and
pushes, writing the same folder as ``snows-hf prune``; :func:`evaluate` is ``snows-hf eval``.

:func:`~snows_hf.oneshot.prune_` stays the in-place primitive (a model and calibration tensors
in, a report out); this module owns everything around it: data, placement, checkpoints,
the paired dense/pruned evaluation, the output folder and its log.

Example:
    >>> import snows_hf
    >>> result = snows_hf.run("google/vit-base-patch16-224", snows_hf.PruneConfig(sparsity="2:4"))  # doctest: +SKIP
    >>> result.output_dir, result.report.sparsity  # doctest: +SKIP
    (PosixPath('vit-base-patch16-224-pruned-2of4'), 0.5)
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from .fields import SettingError, allowed, check_keys, checked_arguments, setting
from .report import RunRecord

logger = logging.getLogger("snows_hf")

LOG_FILE = "snows-hf.log"

EVAL_SKIP_SAMPLES = 4096
"""The most calibration samples (for text, of :data:`~snows_hf.data.DEFAULT_SEQ_LEN`
tokens) that a folder's recipe makes :func:`evaluate` skip to reach the rows its run held
out: far over what runs calibrate on (128 to 1,024), and a bound on what a recipe from
elsewhere can make an evaluation read."""

_NAME_LIMIT = 120  # characters of a recipe's dataset, configuration or split name in a log line


def default_output_dir(model: str, sparsity: str) -> str:
    """``MODEL-NAME-pruned-2of4`` / ``...-pruned-50pct`` in the current folder, named
    after the model's last path part (a local folder's own name, also given as ``.`` or
    ending in ``/``); beside the model folder when the current folder is inside it, so
    nothing is written into the input.

    Example:
        >>> default_output_dir("google/vit-base-patch16-224", "2:4")
        'vit-base-patch16-224-pruned-2of4'
    """
    tag = re.sub(r"[^\w.-]", "", sparsity.replace(":", "of").replace("%", "pct"))
    local = os.path.expanduser(model)
    if model and os.path.isdir(local):
        real, here = Path(os.path.realpath(local)), Path(os.path.realpath(os.getcwd()))
        if real == here or real in here.parents:
            return sibling_path(local, f"-pruned-{tag}")
        return f"{_folder_name(local)}-pruned-{tag}"
    name = model.rstrip("/").split("/")[-1]
    return f"{name if name not in ('', '.', '..') else 'model'}-pruned-{tag}"


def _folder_name(folder: str) -> str:
    """A folder's own name, also when given as ``.``, ``..`` or with a trailing ``/``."""
    return os.path.basename(os.path.abspath(folder)) or "model"


def sibling_path(folder: str | os.PathLike, suffix: str) -> str:
    """``NAME-SUFFIX`` beside ``folder``, named after its own name (``.`` and a trailing
    ``/`` included), relative when ``folder`` is.

    Example:
        >>> sibling_path("runs/vit-2of4/", "-compact")
        'runs/vit-2of4-compact'
    """
    given = os.path.expanduser(os.fspath(folder))
    normal = os.path.normpath(given)
    if os.path.basename(normal) in ("", ".", ".."):  # named by where it is: its real name, beside it
        absolute = os.path.abspath(normal)
        beside = os.path.join(os.path.dirname(absolute), _folder_name(absolute) + suffix)
        return beside if os.path.isabs(given) else os.path.relpath(beside)
    return normal + suffix


def checkpoint_dir(output_dir: str | os.PathLike) -> str:
    """Where a run writing ``output_dir`` keeps its checkpoint: a hidden folder beside
    the real output folder, so a symlink and its target share one.

    Example:
        >>> checkpoint_dir("/data/out")  # doctest: +SKIP
        '/data/.out.snows-hf-checkpoint'
    """
    from .export import CHECKPOINT_SUFFIX, beside

    return str(beside(os.path.realpath(os.path.expanduser(output_dir)), CHECKPOINT_SUFFIX))


def check_recorded_text(recipe: dict[str, Any]) -> None:
    """Refuse, before anything is loaded, a setting of the run's ``recipe`` that the
    saved files (card, log) name and cannot write: text that is not valid UTF-8 (a path
    of other bytes, as Python reads it).

    Example:
        >>> check_recorded_text({"data": {"dataset": "d\\udcff"}})
        Traceback (most recent call last):
        snows_hf.fields.SettingError: dataset 'd\\udcff' is not valid UTF-8, which the saved files are; rename it
    """
    stack: list[tuple[str, Any]] = [("model", recipe)]
    while stack:
        key, value = stack.pop()
        if isinstance(value, dict):
            stack += [(str(k), v) for k, v in value.items()]
        elif isinstance(value, (list, tuple)):
            stack += [(key, v) for v in value]
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                shown = repr(value if len(value) <= 80 else value[:80] + "...")
                raise SettingError(f"{key} {shown} is not valid UTF-8, which the saved files are", field=key,
                                   hint="rename it") from None


class Phases:
    """Wall time per phase of a run, in order (added to ``seconds`` when given).

    Example:
        >>> phases = Phases()
        >>> with phases("load"):
        ...     pass
        >>> list(phases.seconds)
        ['load']
    """

    def __init__(self, seconds: dict[str, float] | None = None) -> None:
        self.seconds: dict[str, float] = {} if seconds is None else seconds

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - start, 3)


class PairedEvaluation:
    """Figures of one or two models (``dense`` first, then ``pruned``) on the same held-out
    samples; the second is also compared with the first's outputs.

    Example:
        >>> evaluation = PairedEvaluation(data.evaluation, batch_size=8)  # doctest: +SKIP
        >>> evaluation.run("dense", model); evaluation.figures()["dense"]  # doctest: +SKIP
        {'perplexity': 31.4, 'nll_per_token': 3.44}
    """

    def __init__(self, eval_set: Any, batch_size: int, timed: bool = False) -> None:
        self.eval_set, self.batch_size, self.timed = eval_set, batch_size, timed
        self.outputs: dict[str, Any] = {}
        self.metrics: dict[str, dict[str, float]] = {}

    def run(self, label: str, model: Any) -> None:
        """Evaluate ``model`` under ``label``, against ``dense`` when that ran first."""
        from .evaluation import compute_metrics, model_outputs, throughput

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
    """What :func:`run` returns: the pruned model (still in memory), its report, the run's
    record, where it was saved (and pushed), and what :meth:`save` needs to write it.

    Attributes:
        output_dir: where it was saved; ``None`` until then (``run(..., save=False)``),
            and in data-parallel processes other than the main one.
        config: the run's :class:`~snows_hf.config.PruneConfig`.
        tasks: the run's :class:`~snows_hf.harness.TaskSettings` (``None``: no lm-eval tasks).
        calibration: the run's :class:`~snows_hf.data.CalibrationConfig` as used (the
            dataset and ``seq_len`` filled in).
        log: the run's log records, which :meth:`save` writes as ``snows-hf.log``.

    Example:
        >>> result = run("my-vit", PruneConfig(sparsity="2:4"))  # doctest: +SKIP
        >>> print(result.format())  # doctest: +SKIP
    """

    model: Any
    processor: Any
    report: Any
    record: RunRecord
    output_dir: Path | None
    pushed_url: str | None = None
    config: Any = None
    calibration: Any = None
    log: RunLog | None = field(default=None, repr=False)
    tasks: Any = None

    @property
    def evaluation(self) -> dict[str, Any] | None:
        """Dense and pruned figures on the held-out samples (``None`` without evaluation)."""
        return self.record.evaluation

    def format(self) -> str:
        """The terminal summary ``snows-hf prune`` prints (lm-eval's task table first, when tasks ran)."""
        table = self.report.format_table(self.record.evaluation, self.record.phases)
        if self.record.tasks is None:
            return table
        from .harness import format_tasks

        return f"{format_tasks(self.record.tasks)}\n{table}"

    @checked_arguments()
    def save(self, output_dir: str | os.PathLike | None = None, *, save_format: str = "dense",
             overwrite: bool = False) -> Path:
        """Write the pruned model as :func:`run` saves it: weights, processor,
        ``report.json`` (the report and :attr:`record`, as it is now), ``recipe.yaml``
        (model named by ``record.source_model``), the model card and ``snows-hf.log``.
        ``run(..., save=True)`` saves through this very call. Returns the folder, also set
        as :attr:`output_dir`.

        Args:
            output_dir: where (default: ``MODEL-NAME-pruned-SPARSITY`` here).
            save_format: ``"dense"`` or ``"compact"`` (see :func:`run`).
            overwrite: replace an earlier snows-hf output in ``output_dir``.

        Example:
            >>> result = run("my-vit", PruneConfig(sparsity="2:4"), save=False)  # doctest: +SKIP
            >>> result.record.source_model = "google/vit-base-patch16-224"  # doctest: +SKIP
            >>> result.save("vit-2of4")  # doctest: +SKIP
            PosixPath('vit-2of4')
        """
        from .export import claim_output, save_pruned
        from .recipe import recipe_dict

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


class RunLog(logging.Handler):
    """Every record of a run, timestamped, kept in memory until the output is saved
    (so a refused or failed run leaves no file behind).

    Example:
        >>> with run_log() as log:  # doctest: +SKIP
        ...     logger.info("pruning")
        >>> log.text()  # doctest: +SKIP
        '2026-01-01 00:00:00,000 INFO snows_hf: pruning\\n'
    """

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def text(self) -> str:
        """The log so far, one line per record."""
        return "\n".join(self.lines) + "\n"


@contextlib.contextmanager
def run_log(handler: RunLog | None = None) -> Iterator[RunLog]:
    """Capture the ``snows_hf`` logger's records from INFO up for the duration (see
    :class:`RunLog`), into ``handler`` when given (a run's log, continued while it is
    saved); a logger nobody configured passes INFO while it runs."""
    handler = RunLog() if handler is None else handler
    added = handler not in logger.handlers  # already capturing: the outer capture goes on after this one
    if added:
        logger.addHandler(handler)
    unset = logger.level == logging.NOTSET  # Python's default: warnings only; the log wants the run's steps
    if unset:
        logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        if added:
            logger.removeHandler(handler)
        if unset:
            logger.setLevel(logging.NOTSET)


@contextlib.contextmanager
def placement(config: Any, device: Any, processes: Any, output_dir: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """``from_pretrained`` options for ``config.max_memory``: accelerate's
    ``device_map="auto"`` within those limits, offloading the rest to a temporary folder
    beside the output (removed at the end, also on error); ``{}`` without ``max_memory``.

    Example:
        >>> with placement(PruneConfig(sparsity="2:4"), "cpu", Processes(), "out") as options:  # doctest: +SKIP
        ...     options
        {}
    """
    if config.max_memory is not None and processes.parallel:
        raise SettingError(f"{setting('max_memory')} places one model across devices", field="max_memory",
                           hint="it cannot be combined with several processes")
    with placed_loading(config.max_memory, device, config.offload_dir or Path(output_dir).absolute().parent) as options:
        yield options


@contextlib.contextmanager
def placed_loading(max_memory: str | None, device: Any, root: str | os.PathLike | None = None) -> Iterator[dict[str, Any]]:
    """``from_pretrained`` options that load one model with accelerate's
    ``device_map="auto"`` within ``max_memory``, what does not fit offloaded to a temporary
    folder in ``root`` (else the system's temp), removed at the end, also on error; ``{}``
    without limits. Each model loaded this way needs its own folder.

    Example:
        >>> with placed_loading(None, "cpu") as options:
        ...     options
        {}
    """
    if max_memory is None:
        yield {}
        return
    from .activations import scratch_folder
    from .placement import parse_max_memory

    limits = parse_max_memory(max_memory, device)
    with scratch_folder(".snows-hf-offload-", root) as folder:
        yield {"device_map": "auto", "max_memory": limits, "offload_folder": str(folder)}


def load_for_run(model: Any, processor: Any = None, *, trust_remote_code: bool = False, allow_pickle: bool = False,
                 **load_options: Any) -> tuple[Any, Any, str | None]:
    """``(model, processor, source)``: a Hub id or folder is loaded (``processor``, if a
    name, replaces the model's own); a loaded model is taken as it is, its source being
    its ``name_or_path``.

    Example:
        >>> model, processor, source = load_for_run("my-vit")  # doctest: +SKIP
    """
    from .data import pick_processor
    from .loading import load_model

    own = None
    if isinstance(model, (str, os.PathLike)):
        source = os.fspath(model)
        model, own = load_model(source, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle, **load_options)
    else:
        if load_options:
            raise SettingError(f"{setting('max_memory')} places a model while loading it", field="max_memory",
                               hint="pass a Hub id or a folder, not a loaded model")
        source = getattr(model, "name_or_path", None) or None
    if isinstance(processor, (str, os.PathLike)):
        processor = pick_processor(model, own, os.fspath(processor), trust_remote_code=trust_remote_code)
    return model, own if processor is None else processor, source


def _calibration_config(data: Any) -> Any:
    from .data import CalibrationConfig

    return data if isinstance(data, CalibrationConfig) else CalibrationConfig(**_calibration_fields(data))


def _prune_config(config: Any) -> Any:
    from .config import PruneConfig

    if isinstance(config, PruneConfig):
        return config
    if not isinstance(config, Mapping):
        raise SettingError(f"config must be a PruneConfig or a dict of its fields, got {type(config).__name__}",
                           field="config")
    return PruneConfig.from_dict(config)


def check_settings(config: Any, save_format: str = "dense") -> None:
    """Refuse, before anything is loaded, settings a run would fail on only at its end or
    after its first block: a sparsity the compact format cannot store, an empty block
    path, an offload folder that cannot be written.

    Example:
        >>> check_settings(PruneConfig(sparsity="0.3"), save_format="compact")  # doctest: +SKIP
        Traceback (most recent call last):
        ValueError: ...
    """
    from .activations import check_offload_dir

    if save_format == "compact":
        from .compact_format import check_compact_sparsity

        check_compact_sparsity(config.sparsity)
    elif save_format != "dense":
        raise SettingError(f"save_format must be dense or compact, got {save_format!r}", field="save_format")
    if config.block_path is not None and not config.block_path.strip():
        raise SettingError(f"{setting('block_path')} is empty", field="block_path",
                           hint="name the block list (e.g. model.layers) or leave it out to find it")
    if config.offload_dir is not None:
        check_offload_dir(config.offload_dir)


@checked_arguments(eval_batch_size=allowed(minimum=1))
def run(
    model: Any, config: Any, data: Any = None, *, output_dir: str | os.PathLike | None = None, evaluate: bool = True,
    save_format: str = "dense", push_to_hub: str | None = None, private: bool = False, token: str | None = None,
    overwrite: bool = False, resume: bool = False, processor: Any = None, trust_remote_code: bool = False,
    allow_pickle: bool = False, progress: bool = True, save: bool = True, eval_batch_size: int | None = None,
    tasks: Any = None,
) -> RunResult:
    """Prune a model and save it as ``snows-hf prune`` does: load, prepare the data,
    evaluate the dense model, prune (checkpointing each block), evaluate the pruned model,
    save the weights, ``report.json``, ``recipe.yaml``, the model card and the run's log
    (:meth:`RunResult.save`), and push to the Hub when asked.

    With ``save=False`` the run ends with the pruned, evaluated model in memory and writes
    nothing: no output, no per-block checkpoint (so nothing to resume). The settings of
    saving are then refused here; ``result.save(output_dir, ...)`` writes later exactly
    what a saving run writes, with whatever was added to ``result.record`` meanwhile.

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
        output_dir: where to save (default: ``MODEL-NAME-pruned-SPARSITY`` here).
        evaluate: evaluate dense and pruned on ``data.eval_samples`` held-out samples.
        save_format: ``"dense"`` (safetensors with zeros) or ``"compact"`` (kept values
            and codes; ``from_pretrained`` reads it after ``import snows_hf``).
        push_to_hub: a Hub repo id to push the saved folder to.
        private, token: for the push (the token is never written anywhere).
        overwrite: replace an earlier snows-hf output in ``output_dir`` once the new one is complete.
        resume: continue an interrupted run from its checkpoint.
        processor: a tokenizer or image processor (object, folder or Hub id) instead of the model's own.
        trust_remote_code, allow_pickle: allow model code from the Hub / pickle weights.
        progress: show progress bars.
        save: save the result (``False``: keep it in memory, see above).
        eval_batch_size: samples per forward pass of the dense and pruned evaluation
            (default: ``config.batch_size``).
        tasks: lm-evaluation-harness tasks to score the dense and the pruned model on (causal
            LMs): a :class:`~snows_hf.harness.TaskSettings`, a dict of its fields, or task names
            and paths of task YAML files or folders (a list, or one comma-separated string).
            Needs ``pip install "snows-hf[lmeval]"``; independent of ``evaluate``.

    Example:
        >>> result = run("google/vit-base-patch16-224", {"sparsity": "2:4"}, data="frgfm/imagenette",
        ...              output_dir="vit-2of4", push_to_hub="me/vit-2of4")  # doctest: +SKIP
        >>> result.evaluation["pruned"]["top1"]  # doctest: +SKIP
        0.79
        >>> articles = datasets.Dataset.from_dict({"text": texts, "topic": topics})  # doctest: +SKIP
        >>> result = run("sentence-transformers/all-MiniLM-L6-v2", {"sparsity": "2:4"},
        ...              CalibrationConfig(dataset=articles, label_column="topic"), save=False)  # doctest: +SKIP
        >>> result.evaluation["pruned"]["cosine_to_dense_min"]  # doctest: +SKIP
        0.93
        >>> result.save("minilm-2of4")  # doctest: +SKIP
        PosixPath('minilm-2of4')
    """
    from .checkpoint import CheckpointError, RunCheckpoint
    from .devices import resolve_device
    from .distributed import start_processes
    from .export import (check_output_dir, check_room, claim_output, remove_stale_temporaries,
                          stored_weight_bytes)
    from .fields import SettingError, setting
    from .harness import TaskSettings
    from .recipe import recipe_dict

    config, cal_cfg, tasks = _prune_config(config), _calibration_config(data), TaskSettings.of(tasks)
    check_settings(config, save_format)
    if not save:
        _check_unsaved(output_dir=output_dir, save_format=save_format, overwrite=overwrite, push_to_hub=push_to_hub,
                       resume=resume)
    device = resolve_device(config.device)  # an absent device fails before any loading
    source = os.fspath(model) if isinstance(model, (str, os.PathLike)) else getattr(model, "name_or_path", "") or ""
    # unsaved, the default output (here) still says where scratch files go
    output_dir = os.fspath(output_dir) if output_dir is not None else default_output_dir(source, config.sparsity)
    keep = [source] if source else []
    if save:
        check_output_dir(output_dir, overwrite, keep=keep)
        check_recorded_text(recipe_dict(config, cal_cfg, source, tasks))  # what only the save would have found
        total, largest = stored_weight_bytes(source)  # a local model's size, known before loading it
        check_room(output_dir, 2 * total, largest)  # its output and its checkpoint
    if config.offload_activations == "disk" and config.offload_dir is None:
        config.offload_dir = str(Path(os.path.realpath(output_dir)).parent)  # the output's filesystem
    checkpoint = RunCheckpoint(checkpoint_dir(output_dir), resume=resume) if save else _NoCheckpoint()
    processes = start_processes(device)
    main = processes.is_main
    level = logger.level
    # one writer per output until its rename: a second one is refused, naming this one's pid
    with claim_output(output_dir, overwrite, keep=keep) if main and save else contextlib.nullcontext():
        try:
            checkpoint.check_resumable()  # before any loading
            if resume and not checkpoint.exists:
                logger.info("nothing to resume in %s: starting from the first block", checkpoint.folder)
            if main and save:  # what a killed save left, before the free space is measured
                remove_stale_temporaries(output_dir)
            elif not main:  # the main process speaks for all
                logger.setLevel(logging.ERROR)
            suite = tasks.suite() if tasks is not None and main else None  # unknown names: before any loading
            with placement(config, device, processes, output_dir) as load_options, run_log() as log:
                run = _Run(config, cal_cfg, processes, checkpoint if save else None, log, progress,
                           eval_batch_size or config.batch_size, tasks, suite)
                result = run.prune(model, processor, output_dir if save else None, evaluate, save_format, overwrite,
                                   trust_remote_code, allow_pickle, load_options)
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
    if push_to_hub and main:
        result.pushed_url = push_saved(result.output_dir, push_to_hub, token=token, private=private)
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


_SAVE_SETTINGS = {"output_dir": None, "save_format": "dense", "overwrite": False, "push_to_hub": None}
"""The arguments of :func:`run` that only saving reads, with the values that ask for nothing."""


def _check_unsaved(resume: bool, **given: Any) -> None:
    """Refuse, in a run that saves nothing, a setting that only saving reads."""
    from .fields import SettingError, setting

    unsaved = setting("save", False)
    if resume:
        raise SettingError(f"{setting('resume', True)} continues the checkpoint that a saving run keeps beside its "
                           f"output; a run with {unsaved} keeps none", field="resume",
                           hint=f"leave out {setting('resume', True)} or {unsaved}")
    for name, nothing in _SAVE_SETTINGS.items():
        if given[name] != nothing:
            later = "push the folder result.save(...) writes" if name == "push_to_hub" else "pass it to result.save(...)"
            raise SettingError(f"{setting(name, given[name])} only matters when saving, and a run with {unsaved} "
                               "saves nothing", field=name, hint=f"leave it out, and {later}")


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
    from .hub import PushError, push_folder

    try:
        return push_folder(folder, repo_id, token=token, private=private)
    except PushError as err:
        raise PushError(f"{err}; the model is saved in {os.fspath(folder)}, retry with: "
                        f"snows-hf push {os.fspath(folder)} {repo_id}") from None


@dataclass
class _Run:
    """One prune run's state between its phases (see :func:`run`)."""

    config: Any
    cal_cfg: Any
    processes: Any
    checkpoint: Any
    log: RunLog
    progress: bool
    eval_batch_size: int
    tasks: Any = None
    suite: Any = None
    phases: Phases = field(default_factory=Phases)

    def prune(self, model: Any, processor: Any, output_dir: str | None, evaluate: bool, save_format: str,
              overwrite: bool, trust_remote_code: bool, allow_pickle: bool, load_options: dict[str, Any]) -> RunResult:
        """Load, prepare the data, evaluate, prune, evaluate, and save to ``output_dir``
        (``None``: not at all)."""
        from .oneshot import prune_
        from .data import check_seq_len, prepare_run_data
        from .export import check_room, largest_file_bytes, model_bytes
        from .harness import PairedTasks
        from .methods import get_method

        config, main, phases = self.config, self.processes.is_main, self.phases
        with phases("load"):
            model, processor, source = load_for_run(model, processor, trust_remote_code=trust_remote_code,
                                                    allow_pickle=allow_pickle, **load_options)
        check_seq_len(self.cal_cfg, model)
        if main and output_dir is not None:  # the output and its checkpoint, before hours of work rather than after
            check_room(output_dir, 2 * model_bytes(model), largest_file_bytes(model))
        with phases("data"):
            fits_data = get_method(config.method)(config).fits_data
            eval_samples = self.cal_cfg.eval_samples if evaluate else 0
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
        result = RunResult(model, processor, report, record, output_dir=None, config=config, calibration=cal_cfg,
                           log=self.log, tasks=self.tasks)
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
        if output_dir is not None:
            result.save(output_dir, save_format=save_format, overwrite=overwrite)
        return result


@checked_arguments(batch_size=allowed(minimum=1))
def evaluate(
    model: Any, data: Any = None, *, reference: str | os.PathLike | None = None, batch_size: int = 8, device: str = "auto",
    dtype: str = "auto", sparse_inference: bool = False, processor: Any = None, trust_remote_code: bool = False,
    allow_pickle: bool = False, tasks: Any = None, max_memory: str | None = None,
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
    an error without one. With ``tasks`` (as :func:`run` takes them) and no ``data``, only
    the tasks are scored.

    Args:
        max_memory: place each model with accelerate within these limits (as
            :attr:`~snows_hf.config.PruneConfig.max_memory`) and evaluate it where it is
            placed, offloaded parts included, instead of moving it whole to ``device``.

    Example:
        >>> result = evaluate("vit-2of4", reference="google/vit-base-patch16-224")  # doctest: +SKIP
        >>> result.figures["pruned"]["top1"] - result.figures["dense"]["top1"]  # doctest: +SKIP
        -0.004
        >>> evaluate("llama-2of4", tasks="arc_easy,piqa").figures["tasks"]["model"][0]["metric"]  # doctest: +SKIP
        'acc'
    """
    from .data import RANDOM, CalibrationConfig, check_seq_len, prepare_run_data
    from .devices import resolve_device, semi_structured_support
    from .evaluation import check_reference
    from .harness import PairedTasks, TaskSettings
    from .loading import load_model, quieted

    task_settings = TaskSettings.of(tasks)
    path = os.fspath(model) if isinstance(model, (str, os.PathLike)) else None
    fields = _calibration_fields(data)
    held_out = not (task_settings and task_settings.tasks and not fields)  # tasks alone: no held-out data
    recipe = _recipe_data(path, fields) if held_out and path and os.path.isdir(os.path.expanduser(path)) else None
    cal_cfg = dataclasses.replace(recipe, **fields) if recipe is not None else CalibrationConfig(**fields)
    run_device = resolve_device(device)  # an absent device fails before any loading
    suite = task_settings.suite() if task_settings else None  # unknown task names: before any loading
    with placed_loading(max_memory, run_device) as placed:
        options = {"trust_remote_code": trust_remote_code, "allow_pickle": allow_pickle, **placed}
        model, processor, _ = load_for_run(model, processor, **({"dtype": dtype} if path else {}), **options)
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
                dense, _ = load_model(os.fspath(reference), dtype=dtype, processor=False, **{**options, **own})
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
            from .sparse_inference import sparse_inference_

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
    sparse_inference: Any = None

    def format(self) -> str:
        """The terminal summary ``snows-hf eval`` prints: which layers run sparse (with
        sparse inference), then the figures (held-out data, lm-eval tasks), of the reference
        and the model when there is one."""
        from .harness import format_tasks
        from .report import format_metrics

        parts = [] if self.sparse_inference is None else [self.sparse_inference.format()]
        if "samples" in self.figures:
            paired = "dense" in self.figures
            parts.append(format_metrics(self.figures, columns=("dense", "pruned") if paired else ("model",),
                                        headers=("reference", "model") if paired else ("model",)))
        if "tasks" in self.figures:
            parts.append(format_tasks(self.figures["tasks"]))
        return "\n".join(parts)


def _calibration_fields(data: Any) -> dict[str, Any]:
    """The fields ``data`` sets: none, a dataset (name, path or in-memory), a config's or a dict's."""
    from .data import CalibrationConfig, is_in_memory

    if data is None:
        return {}
    if is_in_memory(data):
        return {"dataset": data}
    if isinstance(data, (str, os.PathLike)):
        return {"dataset": os.fspath(data)}
    if dataclasses.is_dataclass(data):  # field by field: an in-memory dataset is taken, not copied
        return {f.name: getattr(data, f.name) for f in dataclasses.fields(data)}
    if not isinstance(data, Mapping):
        raise SettingError(f"data must be a CalibrationConfig, a dict of its fields or a dataset, got "
                           f"{type(data).__name__}", field="data")
    check_keys([f.name for f in dataclasses.fields(CalibrationConfig)], data)
    return dict(data)


def _recipe_data(folder: str, fields: dict[str, Any]) -> Any:
    """The data settings of ``folder``'s recipe (``None``: it has none). A recipe that cannot
    be read as one gives way to a dataset among ``fields``, said in one warning; without one,
    it is an error, as the rows its run held out are unknown."""
    from .recipe import data_settings_of

    try:
        return data_settings_of(folder)
    except ValueError as err:
        reason = str(err)
    if fields.get("dataset") is None:
        raise SettingError(f"{reason}: which rows its run held out is unknown", field="dataset",
                           hint=f"name the data to evaluate on with {setting('dataset', 'PATH')}")
    logger.warning("%s: evaluating on the data options given instead (which rows its run held out is unknown)", reason)
    return None


def _recipe_within_bounds(recipe: Any, fields: dict[str, Any], model: Any, folder: str) -> Any:
    """The data settings an evaluation of ``folder`` reads: ``fields`` (the caller's own) over
    its ``recipe``, which chooses which rows, not how many are read. Its held-out count and
    (text) sequence length are capped by the defaults, its calibration rows, skipped to reach
    the held-out ones, by :data:`EVAL_SKIP_SAMPLES`, and a Hub split is streamed even where
    it was read whole. One line says what the recipe chose and what was not taken, as a
    warning where the rows evaluated may not be the ones its run held out."""
    from .data import DEFAULT_SEQ_LEN, CalibrationConfig, dataset_label, fit_seq_len, is_local
    from .heads import modality

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


def eval_dtype(checkpoint_dtype: Any, dtype: str, sparse_inference: bool, kernels: bool) -> Any:
    """The precision an evaluation runs in: ``dtype``, else the checkpoint's, except that
    sparse inference on a GPU with 2:4 kernels runs float32 checkpoints in bfloat16 (the
    kernels' precision, and float16's range problems avoided).

    Example:
        >>> eval_dtype(torch.float32, "auto", sparse_inference=True, kernels=True)  # doctest: +SKIP
        torch.bfloat16
    """
    import torch

    if sparse_inference and dtype == "auto" and kernels and checkpoint_dtype == torch.float32:
        logger.info("%s: running the float32 checkpoint in bfloat16, the precision of the 2:4 kernels (%s or "
                    "float32 to choose otherwise)", setting("sparse_inference"), setting("dtype", "float16"))
        return torch.bfloat16
    return checkpoint_dtype


def convert(folder: str | os.PathLike, to: str, output_dir: str | os.PathLike | None = None, *,
            overwrite: bool = False, trust_remote_code: bool = False) -> tuple[Path, Any]:
    """Rewrite a snows-hf output in the ``"dense"`` or ``"compact"`` format: the same
    pruned weights, bit for bit, with its report, recipe and card. Returns the new folder
    and the report.

    Example:
        >>> convert("vit-2of4", "compact")  # doctest: +SKIP
        (PosixPath('vit-2of4-compact'), PruneReport(...))
    """
    import json

    from .compact_format import check_pruned
    from .export import claim_output, save_pruned
    from .loading import load_model
    from .recipe import read_recipe_yaml
    from .report import PruneReport

    source = Path(folder)
    try:
        payload = json.loads((source / "report.json").read_text())
    except (OSError, ValueError):
        raise ValueError(f"{str(source)!r} has no readable report.json: not a snows-hf output folder") from None
    output_dir = os.fspath(output_dir) if output_dir is not None else sibling_path(source, f"-{to}")
    with claim_output(output_dir, overwrite, keep=[source]):  # never the input folder itself; one writer at a time
        try:  # before any weight is read
            report = PruneReport.from_dict(payload)
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            missing = f"no {err}" if isinstance(err, KeyError) else "fields missing or of the wrong kind"
            raise ValueError(f"{str(source / 'report.json')!r} is not a snows-hf report ({missing}): "
                             "convert reads folders written by snows-hf prune") from None
        model, processor = load_model(str(source), trust_remote_code=trust_remote_code)
        check_pruned(model, report)  # either format: weights never pruned, or changed since, are named
        recipe_file = source / "recipe.yaml"
        recipe = read_recipe_yaml(recipe_file) if recipe_file.exists() else None
        if isinstance(recipe, dict):
            recipe.pop("snows_hf_version", None)
        saved = save_pruned(model, report, output_dir, processor, overwrite=overwrite,
                            record=RunRecord.from_dict(payload), recipe=recipe, save_format=to)
    return saved, report


def plan(model: str, config: Any, data: Any = None, *, output_dir: str | os.PathLike | None = None,
         save_format: str = "dense", overwrite: bool = False, trust_remote_code: bool = False,
         allow_pickle: bool = False) -> Any:
    """What :func:`run` would do (blocks, modules, shapes, windows, calibration, HVPs,
    memory, where it saves), traced without weights on the meta device when the family's
    code allows, else on the loaded weights. Settings and an output folder that
    :func:`run` would refuse are refused here too. Writes nothing.

    Example:
        >>> found = plan("google/vit-base-patch16-224", {"sparsity": "2:4"})  # doctest: +SKIP
        >>> print(found.format()); found.output_dir  # doctest: +SKIP
        'vit-base-patch16-224-pruned-2of4'
    """
    from .data import RANDOM, check_seq_len, dataset_label, random_calibration, with_default_dataset
    from .export import check_output_dir
    from .loading import load_model
    from .plan import empty_model, plan_run

    config, cal_cfg = _prune_config(config), _calibration_config(data)
    check_settings(config, save_format)
    model_id = os.fspath(model)
    output_dir = os.fspath(output_dir) if output_dir is not None else default_output_dir(model_id, config.sparsity)
    check_output_dir(output_dir, overwrite, keep=[model_id])
    model = empty_model(model_id, trust_remote_code=trust_remote_code)
    check_seq_len(cal_cfg, model)
    example = random_calibration(model, dataclasses.replace(cal_cfg, num_samples=1, dataset=RANDOM))
    cal_cfg = with_default_dataset(cal_cfg, model)
    source = (f"of random inputs ({setting('dataset', RANDOM)})" if cal_cfg.dataset == RANDOM
              else f"of {dataset_label(cal_cfg.dataset)}")
    ids = example.get("input_ids")
    size = f"{cal_cfg.num_samples} images" if ids is None else f"{cal_cfg.num_samples} x {ids.shape[1]} tokens"
    # Some mask code asks an all-ones attention mask for its values, which meta tensors
    # cannot give: without one it is all ones anyway. Only then are the weights read.
    bare = {k: v for k, v in example.items() if k != "attention_mask"}
    for inputs in (example, bare) if len(bare) < len(example) else (example,):
        try:
            found = plan_run(model, config, inputs, f"{size} {source}", cal_cfg.num_samples)
            break
        except (RuntimeError, NotImplementedError) as exc:
            if "meta" not in str(exc).lower():
                raise
            reason = " ".join(str(exc).split())
    else:
        logger.info("this model's code needs values to run (%s): tracing on its weights", reason)
        model, _ = load_model(model_id, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
        found = plan_run(model, config, example, f"{size} {source}", cal_cfg.num_samples)
    found.output_dir = output_dir
    return found
