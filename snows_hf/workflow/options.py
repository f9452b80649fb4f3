"""The option groups of :func:`~snows_hf.workflow.run` and :func:`~snows_hf.workflow.evaluate`:
how the model is loaded (:class:`LoadOptions`), whether and where the result is saved
(:class:`SaveOptions`, ``save=None`` for a run kept in memory) and pushed
(:class:`PushOptions`, part of saving), and what is evaluated (:class:`EvalOptions`).

A group checks its fields when it is made, as a config does, so a value that cannot work
is refused before anything is loaded; settings that only a saved run reads live in the
saving group, so an unsaved run that resumes or pushes cannot be written. The flat
keywords the two functions took before the groups (``output_dir=``, ``push_to_hub=``,
``evaluate=`` ...) still work, mapped here into the groups with one ``FutureWarning``
naming the new spelling.

Example:
    >>> SaveOptions("vit-2of4", save_format="compact", push_to_hub=PushOptions("me/vit-2of4"))
    SaveOptions(output_dir='vit-2of4', save_format='compact', overwrite=False, resume=False, push_to_hub=PushOptions(repo_id='me/vit-2of4', private=False))
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass
from typing import Any, Mapping

from ..fields import SettingError, check_fields, check_value, config_field, field_types, setting
from ..harness import TaskSettings


@dataclass(frozen=True)
class LoadOptions:
    """How :func:`~snows_hf.workflow.run` and :func:`~snows_hf.workflow.evaluate` read a
    model given by name (a Hub id or a folder) and its processor.

    Example:
        >>> LoadOptions(processor="google/vit-base-patch16-224", trust_remote_code=True).allow_pickle
        False
    """

    processor: Any = config_field(None, "a tokenizer or image processor (object, folder or Hub id) instead of the "
                                  "model's own")
    trust_remote_code: bool = config_field(False, "allow model code from the Hub")
    allow_pickle: bool = config_field(False, "read pickle (.bin) weights when a model has no safetensors (weights only)")

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class PushOptions:
    """Where a saved run is pushed on the Hub (one commit of its output folder). The token
    is never written anywhere, nor shown in the options' ``repr``.

    Example:
        >>> PushOptions("me/vit-2of4", private=True)
        PushOptions(repo_id='me/vit-2of4', private=True)
    """

    repo_id: str = config_field(dataclasses.MISSING, "the Hub repo (NAME or NAMESPACE/NAME); created if missing")
    private: bool = config_field(False, "create the Hub repo as private")
    token: str | None = dataclasses.field(default=None, repr=False, metadata={
        "help": "Hub token (default: HF_TOKEN or the cached `hf auth login`); never written anywhere"})

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class SaveOptions:
    """Where and how :func:`~snows_hf.workflow.run` saves its result (``save=None``: it
    does not, and keeps the pruned model in memory), and where it pushes it.

    Example:
        >>> SaveOptions(save_format="zip")
        Traceback (most recent call last):
        snows_hf.fields.SettingError: save_format must be dense or compact, got 'zip'
    """

    output_dir: str | os.PathLike | None = config_field(None, "where to save (default: MODEL-NAME-pruned-SPARSITY "
                                                        "in the current folder)")
    save_format: str = config_field("dense", "dense: safetensors with zeros; compact: kept values and codes "
                                    "(from_pretrained reads it after import snows_hf)", choices=("dense", "compact"))
    overwrite: bool = config_field(False, "replace an earlier snows-hf output in output_dir once the new one is complete")
    resume: bool = config_field(False, "continue an interrupted run from its checkpoint (kept beside the output)")
    push_to_hub: PushOptions | None = config_field(None, "push the saved folder to the Hub")

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class EvalOptions:
    """What is evaluated: held-out samples of the run's data (``held_out``; with
    :func:`~snows_hf.workflow.evaluate`, ``tasks`` and no data score the tasks alone),
    lm-evaluation-harness ``tasks``, in forward passes of ``batch_size`` samples.

    Example:
        >>> EvalOptions(tasks="arc_easy,piqa", batch_size=4).tasks.tasks
        ['arc_easy', 'piqa']
    """

    held_out: bool = config_field(True, "evaluate the dense and the pruned model on held-out samples")
    batch_size: int | None = config_field(None, "samples per forward pass (default: the run's batch_size; 8 for "
                                          "evaluate)", minimum=1)
    tasks: Any = config_field(None, "lm-evaluation-harness tasks (causal LMs): a TaskSettings, a dict of its fields, "
                              "or task names and paths of task YAML files or folders (a list, or one "
                              "comma-separated string); needs pip install \"snows-hf[lmeval]\"")

    def __post_init__(self) -> None:
        check_fields(self)
        object.__setattr__(self, "tasks", TaskSettings.of(self.tasks))  # one form from here on


GROUPS: dict[str, type] = {"save": SaveOptions, "push": PushOptions, "load": LoadOptions, "evaluation": EvalOptions}
"""The option groups by the argument that takes them (a push is made inside ``save``)."""

_LOAD = {"processor": ("load", "processor"), "trust_remote_code": ("load", "trust_remote_code"),
         "allow_pickle": ("load", "allow_pickle")}
RUN_KEYWORDS: dict[str, tuple[str, str] | tuple[str, str, tuple]] = {
    "output_dir": ("save", "output_dir"), "save_format": ("save", "save_format"), "overwrite": ("save", "overwrite"),
    "resume": ("save", "resume"), "push_to_hub": ("push", "repo_id", (str, type(None))),  # None: no push
    "private": ("push", "private"), "token": ("push", "token"), **_LOAD, "evaluate": ("evaluation", "held_out"),
    "eval_batch_size": ("evaluation", "batch_size"), "tasks": ("evaluation", "tasks"),
}
"""The keywords :func:`~snows_hf.workflow.run` took before its option groups: the group
and field each one is now (and the types it took, where its field's differ)."""
EVALUATE_KEYWORDS: dict[str, tuple[str, str] | tuple[str, str, tuple]] = {
    **_LOAD, "batch_size": ("evaluation", "batch_size", (int,)), "tasks": ("evaluation", "tasks")}
"""The same for :func:`~snows_hf.workflow.evaluate`."""

_UNSAVED = {"output_dir": None, "save_format": "dense", "overwrite": False, "push_to_hub": None}
"""The flat keywords that only saving reads, with the values that ask for nothing."""


def run_options(save: SaveOptions | bool | None, load: LoadOptions, evaluation: EvalOptions,
                flat: Mapping[str, Any]) -> tuple[SaveOptions | None, LoadOptions, EvalOptions]:
    """The option groups of a :func:`~snows_hf.workflow.run` call, its flat keywords
    (``flat``) and a ``save`` of ``True``/``False`` mapped into them with one
    ``FutureWarning``; a flat value that cannot work is refused under its own name.

    Example:
        >>> run_options(None, LoadOptions(), EvalOptions(), {"resume": True})
        Traceback (most recent call last):
        snows_hf.fields.SettingError: resume=True continues the checkpoint that a saving run keeps beside its output; a run with save=None keeps none; leave out resume=True or save=None
    """
    given = _checked("run", RUN_KEYWORDS, flat)
    old = dict(flat)
    if isinstance(save, bool):
        old["save"] = save
        save = SaveOptions() if save else None
    if save is None:
        _check_unsaved(old.get("save"), flat)  # what is left asks for nothing: dropped
    else:
        push = given.pop("push", {})
        if push:
            current = save.push_to_hub
            repo = push.pop("repo_id", current.repo_id if current else None)
            if repo is None:  # no repo: nothing pushed, whatever else was said
                pushed = None
            elif current is not None:
                pushed = dataclasses.replace(current, repo_id=repo, **push)
            else:
                pushed = PushOptions(repo, **push)
            given.setdefault("save", {})["push_to_hub"] = pushed
        save = dataclasses.replace(save, **given.get("save", {}))
    load = dataclasses.replace(load, **given.get("load", {}))
    evaluation = dataclasses.replace(evaluation, **given.get("evaluation", {}))
    _warn("run", RUN_KEYWORDS, old)
    return save, load, evaluation


def evaluate_options(load: LoadOptions, evaluation: EvalOptions,
                     flat: Mapping[str, Any]) -> tuple[LoadOptions, EvalOptions]:
    """The option groups of an :func:`~snows_hf.workflow.evaluate` call, its flat
    keywords mapped into them as :func:`run_options` maps those of ``run``.

    Example:
        >>> evaluate_options(LoadOptions(), EvalOptions(), {"batch_size": 0})
        Traceback (most recent call last):
        snows_hf.fields.SettingError: batch_size must be at least 1, got 0
    """
    given = _checked("evaluate", EVALUATE_KEYWORDS, flat)
    load = dataclasses.replace(load, **given.get("load", {}))
    evaluation = dataclasses.replace(evaluation, **given.get("evaluation", {}))
    _warn("evaluate", EVALUATE_KEYWORDS, flat)
    return load, evaluation


def _checked(function: str, table: Mapping[str, tuple], flat: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``flat`` by group and field, each value checked as its field is, under its flat name."""
    by_group: dict[str, dict[str, Any]] = {}
    for name, value in flat.items():
        if name not in table:
            raise TypeError(f"{function}() got an unexpected keyword argument {name!r}")
        group, field, *own = table[name]
        declared = {f.name: f for f in dataclasses.fields(GROUPS[group])}[field]
        check_value(name, value, own[0] if own else field_types(GROUPS[group])[field], declared.metadata)
        by_group.setdefault(group, {})[field] = value
    return by_group


def _check_unsaved(save: Any, flat: Mapping[str, Any]) -> None:
    """Refuse, in a run that saves nothing, a flat keyword that only saving reads."""
    unsaved = setting("save", save)
    if flat.get("resume"):
        raise SettingError(f"{setting('resume', True)} continues the checkpoint that a saving run keeps beside its "
                           f"output; a run with {unsaved} keeps none", field="resume",
                           hint=f"leave out {setting('resume', True)} or {unsaved}")
    for name, nothing in _UNSAVED.items():
        if flat.get(name, nothing) != nothing:
            later = "push the folder result.save(...) writes" if name == "push_to_hub" else "pass it to result.save(...)"
            raise SettingError(f"{setting(name, flat[name])} only matters when saving, and a run with {unsaved} "
                               "saves nothing", field=name, hint=f"leave it out, and {later}")


def _warn(function: str, table: Mapping[str, tuple], old: Mapping[str, Any]) -> None:
    """One ``FutureWarning`` line naming the new spelling of the flat keywords in ``old``
    (five frames up: the caller of ``run`` or ``evaluate``, past their argument check)."""
    if not old:
        return
    fields: dict[str, list[str]] = {"save": []} if old.get("save") else {}
    for name in old:
        if name != "save":
            group, field = table[name][:2]
            fields.setdefault(group, []).append(f"{field}=...")
    if "push" in fields:
        fields.setdefault("save", []).append(f"push_to_hub=PushOptions({', '.join(fields.pop('push'))})")
    parts = ["save=None"] if old.get("save") is False else []
    parts += [f"{group}={GROUPS[group].__name__}({', '.join(names)})" for group, names in fields.items()]
    spelled = ", ".join(f"save={old[name]}" if name == "save" else f"{name}=" for name in old)
    verb = "are" if len(old) > 1 else "is"
    warnings.warn(f"snows_hf.{function}: {spelled} {verb} deprecated; write {', '.join(parts)}", FutureWarning,
                  stacklevel=5)
