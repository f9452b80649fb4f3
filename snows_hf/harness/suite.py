"""Which lm-eval tasks a run scores: :class:`TaskSettings`, and the tasks found for them
(:func:`resolve_tasks`, a :class:`TaskSuite`). Task files are code, so a recipe's tasks are
names only (:func:`check_recipe_tasks`) and the files a caller names are read with the rules
of files from strangers, within bounds (:func:`check_task_files`), then staged alone for
lm-eval to index.
"""

from __future__ import annotations

import difflib
import os
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..fields import SettingError, check_fields, config_field, setting, settings_from, shorten
from ..safe_yaml import read_safe_yaml

INSTALL = 'pip install "snows-hf[lmeval]"'
"""The command that installs lm-eval with the versions snows-hf is tested with."""


MAX_TASK_FILES = 1000  #: YAML files lm-eval may read for the task files and folders named, included ones counted
MAX_TASK_BYTES = 16 * 2**20  #: YAML lm-eval may parse to index them (an included file once per file including it)
MAX_INCLUDE_DEPTH = 8  #: files in one chain of includes (lm-eval's own tasks go 2 deep)
MAX_FOLDER_ENTRIES = 100_000  #: entries of a named task folder walked to find its YAML files
_FUNCTION_TAG = "!function"  # lm-eval's one tag of its own: the Python a task imports
_IGNORED_FOLDERS = ("__pycache__", ".ipynb_checkpoints")  # folders lm-eval's index skips


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

    from ..loading import quieted

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
