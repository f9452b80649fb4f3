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
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import random
import re
import sys
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

from .fields import SettingError, check_fields, config_field, setting, settings_from, shorten
from .safe_yaml import read_safe_yaml

logger = logging.getLogger("snows_hf")

INSTALL = 'pip install "snows-hf[lmeval]"'
"""The command that installs lm-eval with the versions snows-hf is tested with."""

LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow", "pandas", "webdataset", "xml", "sql")
"""``dataset_path`` values that are ``datasets``' builders for local files, not Hub datasets."""

MAX_TASK_FILES = 1000  #: YAML files lm-eval may read for the task files and folders named, included ones counted
MAX_TASK_BYTES = 16 * 2**20  #: YAML lm-eval may parse to index them (an included file once per file including it)
MAX_INCLUDE_DEPTH = 8  #: files in one chain of includes (lm-eval's own tasks go 2 deep)
MAX_FOLDER_ENTRIES = 100_000  #: entries of a named task folder walked to find its YAML files
_FUNCTION_TAG = "!function"  # lm-eval's one tag of its own: the Python a task imports
_IGNORED_FOLDERS = ("__pycache__", ".ipynb_checkpoints")  # folders lm-eval's index skips
_KEPT_OUTPUT = 2**16  # bytes of what other libraries wrote while tasks ran, passed on to the log
_PROGRESS_BAR = re.compile(r"\[\d+:\d\d(:\d\d)?(<[^,\]]*)?, [^\]]*\]$")  # tqdm's "[00:01<00:02, 3.1it/s]"


@dataclass
class TaskSettings:
    """Which lm-eval tasks a run scores, dense and pruned (a recipe's ``evaluation:`` section).

    Task files and folders named here run as code with the caller's rights (see the module's
    notes); a recipe's tasks are checked by :func:`check_recipe_tasks` before they get here.

    Example:
        >>> TaskSettings(tasks="arc_easy,hellaswag", limit=100).tasks
        ['arc_easy', 'hellaswag']
        >>> TaskSettings(limit=0)
        Traceback (most recent call last):
        snows_hf.fields.SettingError: limit must be at least 1, got 0
    """

    tasks: list[str] | None = config_field(
        None, "lm-evaluation-harness tasks to score dense and pruned, comma-separated: task names (arc_easy, "
        "hellaswag, piqa, winogrande, boolq, ...) or the path of a task YAML file or of a folder of them. A task "
        "file is code: lm-eval runs its templates and the Python it names with your rights, so name only files "
        "you trust (a recipe may name registered tasks only)"
    )
    limit: int | None = config_field(
        None, "score only the first N items of each task: a quick look whose figures carry a wider standard error "
        "(default: every item)", minimum=1,
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if isinstance(self.tasks, str):
            self.tasks = [self.tasks]
        if self.tasks is not None:
            self.tasks = [part.strip() for entry in self.tasks for part in entry.split(",") if part.strip()] or None
        if self.limit is not None and not self.tasks:
            raise SettingError(f"{setting('limit')} limits the items of each lm-eval task, and no task is named",
                               field="limit", hint=f"name them with {setting('tasks')}")

    def to_dict(self) -> dict[str, Any]:
        """The settings as a recipe's ``evaluation:`` section holds them."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def of(cls, value: Any) -> TaskSettings | None:
        """Settings from what a caller passes: ``None``, settings, a dict of their fields,
        or the tasks alone (a comma-separated string or a list).

        Example:
            >>> TaskSettings.of("piqa,boolq").tasks, TaskSettings.of({"tasks": ["piqa"], "limit": 8}).limit
            (['piqa', 'boolq'], 8)
        """
        if value is None:
            return None
        if isinstance(value, (cls, dict)):
            return settings_from(cls, value, "tasks")
        return cls(tasks=value)  # names, as a string or a list; anything else is refused naming tasks

    def suite(self) -> TaskSuite | None:
        """The tasks found (:func:`resolve_tasks`), or ``None`` when none are named."""
        return resolve_tasks(self.tasks) if self.tasks else None


def import_lm_eval() -> Any:
    """The ``lm_eval`` module, or one line naming the command that installs it.

    Example:
        >>> import_lm_eval().__name__  # doctest: +SKIP
        'lm_eval'
    """
    try:
        import lm_eval
    except ImportError:
        raise SettingError(f"{setting('tasks')} runs lm-evaluation-harness, which is not installed",
                           field="tasks", hint=f"install it with: {INSTALL}") from None
    return lm_eval


@dataclass
class TaskSuite:
    """Tasks found for a run: lm-eval's ``TaskManager`` and the task names to score, those of
    the named files and folders included; ``staging`` is the private folder of links to those
    files that lm-eval indexes (kept while the suite lives).

    Example:
        >>> suite = resolve_tasks(["arc_easy", "my_tasks/"])  # doctest: +SKIP
        >>> suite.names  # doctest: +SKIP
        ['arc_easy', 'my_task']
    """

    manager: Any
    names: list[str]
    staging: Any = field(default=None, repr=False)


def _task_paths(specs: list[str]) -> tuple[list[str], list[Path]]:
    """The task names and the existing files or folders among ``specs``."""
    names, paths = [], []
    for spec in specs:
        path = Path(os.path.expanduser(spec))
        if path.exists():
            paths.append(path.resolve())
        elif spec.endswith((".yaml", ".yml")) or os.sep in spec:
            raise SettingError(f"no task file or folder {spec!r}", field="tasks",
                               hint="name an lm-eval task or an existing task YAML file or folder")
        else:
            names.append(spec)
    return names, paths


def check_recipe_tasks(specs: list[str], source: str) -> None:
    """Refuse an entry of the tasks of ``source``, a recipe (a file from strangers), that is
    not a name. A task file is code, so a recipe names lm-eval's tasks by their registered
    names only, never a task file or folder: whatever could be read as one is refused (a
    path separator, a YAML suffix, a leading ``~`` or ``.``, or anything on disk by that
    name), and the names are looked up among lm-eval's own tasks (:func:`resolve_tasks`).

    Example:
        >>> check_recipe_tasks(["arc_easy", "hellaswag"], "recipe 'r.yaml'")
        >>> check_recipe_tasks(["my_tasks/"], "recipe 'r.yaml'")
        Traceback (most recent call last):
        snows_hf.fields.SettingError: recipe 'r.yaml': evaluation.tasks names 'my_tasks/', a path: a recipe names lm-eval tasks by their registered names only, since a task file runs code; name task files you trust yourself with tasks
    """
    separators = tuple(s for s in ("/", os.sep, os.altsep) if s)
    for spec in specs:
        if (any(s in spec for s in separators) or spec.startswith(("~", ".")) or spec.lower().endswith((".yaml", ".yml"))
                or os.path.lexists(os.path.expanduser(spec))):
            raise SettingError(f"{source}: evaluation.tasks names {shorten(repr(spec))}, a path: a recipe names lm-eval "
                               "tasks by their registered names only, since a task file runs code", field="tasks",
                               hint=f"name task files you trust yourself with {setting('tasks')}")


def check_task_files(files: list[Path]) -> None:
    """Read each YAML file lm-eval would read to index the task files ``files``: they and the
    files they ``include:`` at any depth (relative to the including file, or absolute, as
    lm-eval finds them), read with the rules of files from strangers (plain YAML without
    aliases, a regular file of at most 1 MiB: :func:`~snows_hf.safe_yaml.read_safe_yaml`),
    within bounds: at most ``MAX_TASK_FILES`` files, ``MAX_TASK_BYTES`` of YAML parsed as
    lm-eval parses it (an included file once for each file including it), chains of
    includes at most ``MAX_INCLUDE_DEPTH`` files long. An include cycle is refused as one,
    and so is a file included twice into one task, which lm-eval cannot read either.

    Example:
        >>> check_task_files([Path("my_tasks/my_task.yaml").resolve()])  # doctest: +SKIP
    """
    parsed: dict[Path, tuple[int, list[Path]]] = {}
    parsed_bytes = expanded_bytes = 0

    def too_much() -> SettingError:
        return SettingError(f"the task files named are over {MAX_TASK_BYTES:,} bytes of YAML for lm-eval to read, "
                            "the files they include counted", field="tasks", hint="name fewer or smaller task files")

    def read(path: Path) -> tuple[int, list[Path]]:
        nonlocal parsed_bytes
        if len(parsed) >= MAX_TASK_FILES:
            raise SettingError(f"the task files named include more than {MAX_TASK_FILES} YAML files", field="tasks")
        try:
            size = path.stat().st_size
        except OSError:
            size = 0  # the reader says why it cannot read it
        parsed_bytes += size
        if parsed_bytes > MAX_TASK_BYTES:  # before parsing: this check reads them all once
            raise too_much()
        try:
            document = read_safe_yaml(path, "task file", tags=(_FUNCTION_TAG,))
        except ValueError as err:
            raise SettingError(str(err), field="tasks") from None
        parsed[path] = size, _includes(path, document)
        return parsed[path]

    for top in files:
        seen: set[Path] = set()
        pending: list[tuple[Path, tuple[Path, ...]]] = [(top, ())]
        while pending:
            path, chain = pending.pop()
            if path in chain:
                cycle = " -> ".join(p.name for p in (*chain[chain.index(path):], path))
                raise SettingError(f"task file {shorten(repr(path.name))} includes itself: {shorten(cycle, 240)}",
                                   field="tasks", hint="an include: chain has to end")
            if path in seen:
                raise SettingError(f"task file {shorten(repr(top.name))} includes {shorten(repr(path.name))} twice, which "
                                   "lm-eval refuses", field="tasks", hint="include each file once")
            if len(chain) > MAX_INCLUDE_DEPTH:
                shown = shorten(" -> ".join(p.name for p in chain[:3]) + " -> ...", 240)
                raise SettingError(f"task file {shorten(repr(top.name))} includes files more than {MAX_INCLUDE_DEPTH} "
                                   f"deep ({shown})", field="tasks")
            seen.add(path)
            size, included = parsed[path] if path in parsed else read(path)
            expanded_bytes += size
            if expanded_bytes > MAX_TASK_BYTES:
                raise too_much()
            pending += [(p, (*chain, path)) for p in reversed(included)]


def _includes(path: Path, document: Any) -> list[Path]:
    """The files the task file ``path`` includes, found as lm-eval finds them."""
    if not isinstance(document, dict) or "include" not in document:
        return []
    value = document["include"]
    names = value if isinstance(value, list) else [value]
    if not all(isinstance(name, str) for name in names):
        raise SettingError(f"task file {shorten(repr(str(path)))}: include: must name YAML files (a file name or a list "
                           f"of them), got {shorten(repr(value))}", field="tasks")
    return [_real(path.parent / name) for name in names]  # an absolute name replaces the folder


def _real(path: Path) -> Path:
    """``path`` as lm-eval opens it: ``~`` expanded, links followed."""
    try:
        return path.expanduser().resolve()
    except (OSError, RuntimeError, ValueError) as err:  # a loop of links, an unknown user's home, a NUL byte
        raise SettingError(f"cannot find task file {shorten(repr(str(path)))}: {err}", field="tasks") from None


def _folder_yaml_files(folder: Path) -> list[Path]:
    """The ``*.yaml`` files of ``folder`` at any depth in lm-eval's order, as its index finds
    them (links to folders not followed, ``__pycache__`` skipped), the walk bounded."""
    found, pending, entries = [], [folder], 0
    while pending:
        try:
            listing = os.scandir(pending.pop())
        except OSError:
            continue  # an unreadable folder: lm-eval skips it too
        with listing:
            for entry in listing:
                entries += 1
                if entries > MAX_FOLDER_ENTRIES:
                    raise SettingError(f"task folder {shorten(repr(str(folder)))} holds more than {MAX_FOLDER_ENTRIES} "
                                       "entries: too many to be a task folder", field="tasks",
                                       hint="name the task files or their own folder")
                if entry.is_dir(follow_symlinks=False):
                    if entry.name not in _IGNORED_FOLDERS:
                        pending.append(Path(entry.path))
                elif entry.name.endswith(".yaml"):
                    found.append(Path(entry.path))
                    if len(found) > MAX_TASK_FILES:
                        raise SettingError(f"task folder {shorten(repr(str(folder)))} holds more than {MAX_TASK_FILES} "
                                           "YAML files", field="tasks", hint="name the task files or their own folder")
    return sorted(found, key=Path.as_posix)


def _staged(groups: dict[Path, list[Path]]) -> tuple[tempfile.TemporaryDirectory, dict[Path, set[Path]]]:
    """A private folder of links to the task files of ``groups`` (per named path, in order),
    and the links of each: lm-eval indexes the folder instead of the files' own folders, so
    it reads those files and the files they include, nothing beside them (lm-eval follows a
    link, so each file keeps its own folder for its includes and its Python)."""
    staging = tempfile.TemporaryDirectory(prefix="snows-hf-tasks-")
    links: dict[Path, set[Path]] = {named: set() for named in groups}
    for i, (named, files) in enumerate(groups.items()):
        folder = Path(staging.name) / str(i)
        folder.mkdir()
        for j, file in enumerate(files):
            name = file.name if file.name.endswith(".yaml") else f"{file.name}.yaml"  # what lm-eval's index reads
            link = folder / f"{j:05d}-{name}"
            link.symlink_to(file)
            links[named].add(link)
    return staging, links


def resolve_tasks(specs: list[str]) -> TaskSuite:
    """lm-eval's tasks for ``specs``: task names, and paths of task YAML files or folders
    (every task they define). A name lm-eval does not know is refused, listing the close
    matches; the names are looked up among lm-eval's own tasks only. The files named, and
    those they include, are checked (:func:`check_task_files`) before lm-eval reads them, and
    lm-eval indexes them alone, not the rest of their folders. Building lm-eval's index of
    its own tasks takes seconds, so it is built only when a spec is a name.

    Example:
        >>> resolve_tasks(["arc_esy"])  # doctest: +SKIP
        Traceback (most recent call last):
        snows_hf.fields.SettingError: lm-eval has no task 'arc_esy' (close matches: arc_easy, ...)
    """
    import_lm_eval()
    from lm_eval.tasks import TaskManager

    from .loading import quieted

    names, paths = _task_paths(specs)
    groups = {path: [_real(p) for p in (_folder_yaml_files(path) if path.is_dir() else [path])] for path in paths}
    check_task_files(list(dict.fromkeys(file for files in groups.values() for file in files)))
    staging, links = _staged(groups) if groups else (None, {})
    with quieted("lm_eval"):  # its index warns of tasks of the same name
        manager = TaskManager(include_path=staging.name if staging else None, include_defaults=bool(names))
    index = manager.task_index
    for name in names:
        if name not in index:
            close = difflib.get_close_matches(name, manager.all_tasks, n=5, cutoff=0.6)
            matches = f" (close matches: {', '.join(close)})" if close else " and nothing close to it"
            raise SettingError(f"lm-eval has no task {name!r}{matches}", field="tasks",
                               hint="lm-eval ls tasks lists them all")
    found = list(names)
    for path in paths:
        defined = [name for name, entry in index.items()
                   if entry.yaml_path in links[path] and entry.kind.name in ("TASK", "PY_TASK")]
        if not defined:
            raise SettingError(f"{path.name!r} defines no lm-eval task", field="tasks",
                               hint="a task YAML file needs a task: name (see lm-eval's task guide)")
        found += sorted(defined)
    return TaskSuite(manager, list(dict.fromkeys(found)), staging)


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

    from .devices import model_input_device
    from .loading import quieted

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


def task_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per task and metric of lm-eval's ``results`` (``"acc,none"`` and
    ``"acc_stderr,none"`` become ``{"metric": "acc", "value", "stderr"}``).

    Example:
        >>> task_rows({"results": {"piqa": {"alias": "piqa", "acc,none": 0.75, "acc_stderr,none": 0.25}},
        ...            "n-samples": {"piqa": {"original": 1838, "effective": 4}}})
        [{'task': 'piqa', 'metric': 'acc', 'value': 0.75, 'stderr': 0.25, 'samples': 4}]
    """
    rows = []
    for task, metrics in results.get("results", {}).items():
        samples = (results.get("n-samples") or {}).get(task, {}).get("effective")
        for key, value in metrics.items():
            metric, _, filter_name = key.partition(",")
            if not filter_name or "_stderr" in metric or not isinstance(value, (int, float)):
                continue
            stderr = metrics.get(f"{metric}_stderr,{filter_name}")
            row = {"task": task, "metric": metric, "value": float(value),
                   "stderr": float(stderr) if isinstance(stderr, (int, float)) else None, "samples": samples}
            if filter_name != "none":
                row["filter"] = filter_name
            rows.append(row)
    return rows


def task_datasets(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per task, the dataset lm-eval read: its ``dataset_path`` (a Hub id, or a builder
    such as ``json`` for local files, whose paths stay out), ``dataset_name`` (the
    configuration) and the split scored.

    Example:
        >>> task_datasets({"configs": {"arc_easy": {"dataset_path": "allenai/ai2_arc", "dataset_name": "ARC-Easy",
        ...                                         "test_split": "test"}}})
        {'arc_easy': {'path': 'allenai/ai2_arc', 'name': 'ARC-Easy', 'split': 'test'}}
    """
    from .provenance import public_source

    found = {}
    for task, config in (results.get("configs") or {}).items():
        path = config.get("dataset_path")
        if isinstance(path, str) and path not in LOCAL_BUILDERS:
            source = public_source(path, "dataset")
            path = source.name if source else None
        split = config.get("test_split") or config.get("validation_split")
        found[task] = {"path": path, "name": config.get("dataset_name"), "split": split}
    return found


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
        from .heads import task_of

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


def metric_label(row: dict[str, Any]) -> str:
    """A figure's metric as lm-eval names it, with its filter when not the default one.

    Example:
        >>> metric_label({"metric": "acc"}), metric_label({"metric": "exact_match", "filter": "strict"})
        ('acc', 'exact_match,strict')
    """
    return row["metric"] if not row.get("filter") else f"{row['metric']},{row['filter']}"


def value_text(measured: dict[str, Any] | None, plus_minus: str = "+-") -> str:
    """A figure's value with its standard error (``""`` when not measured).

    Example:
        >>> value_text({"value": 0.75, "stderr": 0.25}), value_text({"value": 0.5}, "±"), value_text(None)
        ('0.7500 +- 0.2500', '0.5000', '')
    """
    if not measured or measured.get("value") is None:
        return ""
    stderr = measured.get("stderr")
    return f"{measured['value']:.4f}" + (f" {plus_minus} {stderr:.4f}" if stderr is not None else "")


def paired_rows(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of task, metric, dense and pruned value (and their difference) from
    :meth:`PairedTasks.figures`; ``model`` stands in for ``pruned`` when only one model ran.

    Example:
        >>> paired_rows({"dense": [{"task": "piqa", "metric": "acc", "value": 0.7, "stderr": 0.01}],
        ...              "pruned": [{"task": "piqa", "metric": "acc", "value": 0.6, "stderr": 0.01}]})[0]["difference"]
        -0.09999999999999998
    """
    pruned = figures.get("pruned") or figures.get("model") or []
    dense = {(r["task"], r["metric"], r.get("filter")): r for r in figures.get("dense") or []}
    rows = []
    for row in pruned:
        base = dense.get((row["task"], row["metric"], row.get("filter")))
        difference = row["value"] - base["value"] if base and base["value"] is not None and row["value"] is not None else None
        rows.append({**{k: row.get(k) for k in ("task", "metric", "filter", "samples")},
                     "dense": base, "pruned": row, "difference": difference})
    return rows


def format_tasks(figures: dict[str, Any]) -> str:
    """The terminal table of lm-eval figures: task, metric, dense and pruned (value +- stderr),
    and the difference.

    Example:
        >>> print(format_tasks({"limit": 4, "dense": [{"task": "piqa", "metric": "acc", "value": 0.75, "stderr": 0.25,
        ...                     "samples": 4}], "pruned": [{"task": "piqa", "metric": "acc", "value": 0.5,
        ...                     "stderr": 0.29, "samples": 4}]}))
        lm-eval task (items scored)  metric             dense            pruned   change
        piqa (4)                     acc     0.7500 +- 0.2500  0.5000 +- 0.2900  -0.2500
    """
    paired = "dense" in figures
    rows = paired_rows(figures)
    names = [f"{r['task']} ({r['samples']})" if r.get("samples") is not None else r["task"] for r in rows]
    metrics = [metric_label(r) for r in rows]
    title = "lm-eval task (items scored)"
    width, metric_width = max([len(title), *map(len, names)]), max([6, *map(len, metrics)])
    columns = ("dense", "pruned", "change") if paired else ("model",)
    lines = [f"{title:<{width}}  {'metric':<{metric_width}} {columns[0]:>17}" + (
        f" {columns[1]:>17} {columns[2]:>8}" if paired else "")]
    for name, metric, row in zip(names, metrics, rows):
        line = f"{name:<{width}}  {metric:<{metric_width}} " + (f"{value_text(row['dense']):>17} " if paired else "")
        line += f"{value_text(row['pruned']):>17}"
        if paired:
            line += f" {row['difference']:>+8.4f}" if row["difference"] is not None else f" {'':>8}"
        lines.append(line)
    return "\n".join(lines)
