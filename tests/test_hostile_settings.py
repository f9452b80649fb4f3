"""Hostile settings (issue 30, items 10, 11 and 20): every field of every settings class,
fed ``None``, a value of the wrong type, or one outside its declared bounds, is refused as
a :class:`~snows_hf.SettingError` naming that field, whichever way it comes in (the config
built directly, :func:`snows_hf.run`, :func:`snows_hf.evaluate`, :func:`snows_hf.prune_`,
a recipe, the command line), never as an error from Python's internals.

The rows are generated from the fields' declarations (their annotations and bounds), so a
field added later is covered without a new row."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Literal, Union, get_args, get_origin

import datasets
import pytest
import torch
import yaml
from torch import nn

from snows_hf import CalibrationConfig, PruneConfig, SettingError
from snows_hf.oneshot import as_batches, prune_
from snows_hf.cli import main
from snows_hf.harness import TaskSettings
from snows_hf.hub import push_folder
from snows_hf.methods import METHODS
from snows_hf.recipe import load_recipe, load_recipe_tasks
from snows_hf.workflow import EvalOptions, PushOptions, evaluate, run
from snows_hf.workflow.options import EVALUATE_KEYWORDS, GROUPS, RUN_KEYWORDS

# Which section of a recipe holds each settings class, with what else it needs.
SECTIONS = {"prune": PruneConfig, "data": CalibrationConfig, "evaluation": TaskSettings}
NAN, INF = float("nan"), float("inf")
POOL = [None, "3", True, 3, 2.5, [3], ["x"], {"k": 1}]  # one of each kind of value YAML and Python give


def _parts(owner: typing.Any, name: str) -> tuple:
    """The types a field or an argument declares, each alternative of a union apart."""
    hints = typing.get_type_hints(owner, localns={"datasets": datasets})  # a name imported for type checking only
    declared = hints[name]
    return get_args(declared) if get_origin(declared) in (Union, types.UnionType) else (declared,)


def _fits(value: typing.Any, part: typing.Any) -> bool:
    if part is type(None):
        return value is None
    if part in (bool, int, str):
        return type(value) is part
    if part is float:
        return type(value) in (int, float)
    if get_origin(part) is list:  # a list of strings also takes one string
        return isinstance(value, (list, str)) and all(isinstance(v, str) for v in value)
    if get_origin(part) is Literal:
        return value in get_args(part)
    return isinstance(part, type) and isinstance(value, part)


def _hostile(owner: typing.Any, name: str, metadata: typing.Mapping) -> list:
    """Values the declaration of ``name`` refuses: None and other types it does not take,
    non-finite numbers, values past its bounds, a value outside its choices."""
    return _hostile_values(_parts(owner, name), metadata)


def _hostile_values(parts: tuple, metadata: typing.Mapping) -> list:
    """Values that types ``parts`` with rules ``metadata`` refuse (see :func:`_hostile`)."""
    values = [v for v in POOL if not any(_fits(v, part) for part in parts)]
    if float in parts:
        values += [NAN, INF, -INF]
    number = float if float in parts else int if int in parts else None
    low, high = metadata.get("minimum"), metadata.get("maximum")
    step = 1 if number is int else 0.25
    if low is not None:
        values.append(low if metadata.get("strict") else low - step)
    if high is not None:
        values.append(high if metadata.get("strict") else high + step)
    elif number is int:
        values.append(2**64)  # past what any generator or tensor index takes
    if metadata.get("choices"):
        values.append("nope")
    return values


def _settings_rows() -> list:
    rows = []
    classes = [(section, cls) for section, cls in SECTIONS.items()]
    classes += [(f"method:{name}", method.config_class) for name, method in METHODS.items()]
    for where, cls in classes:
        for f in dataclasses.fields(cls):
            for value in _hostile(cls, f.name, f.metadata):
                rows.append(pytest.param(where, f.name, value, id=f"{where}.{f.name}={value!r}"))
    return rows


SETTINGS_ROWS = _settings_rows()


def test_the_table_covers_every_field_and_its_bounds():
    ids = {row.id for row in SETTINGS_ROWS}
    for expected in ("prune.batch_size=0", "prune.batch_size=None", "prune.seed=-1", "prune.config_version=True",
                     "method:snows.k_step=-1", "method:snows-fast.cg_iters=0", "method:snows.holdout=1",
                     "method:snows.holdout=0", "method:snows.damping=nan", "method:mask-only.statistics='nope'",
                     "data.num_samples=0", "data.eval_samples=-1", "data.seq_len=0", "data.dataset=3",
                     "evaluation.limit=0", "prune.max_layer_sparsity=1", "prune.max_layer_sparsity=0",
                     "method:snows.newton_steps=2.5", "prune.targets=[3]", "prune.diagnostics='3'"):
        assert expected in ids, expected
    covered = {(row.values[0], row.values[1]) for row in SETTINGS_ROWS}
    for where, cls in SECTIONS.items():
        assert {(where, f.name) for f in dataclasses.fields(cls)} <= covered
    flags = {"prune.batch_size=0", "prune.seed=-1", "method:snows.k_step=-1", "method:snows.holdout=1",
             "method:snows.damping=nan", "method:snows-fast.cg_iters=0", "data.num_samples=0", "data.eval_samples=-1",
             "data.seq_len=0", "evaluation.limit=0", "prune.max_layer_sparsity=0"}
    assert flags <= {row.id for row in COMMAND_LINE_ROWS}  # the flags' table, further down


def _config_kwargs(where: str, name: str, value: typing.Any) -> tuple[type, dict]:
    if where == "prune":
        return PruneConfig, {"sparsity": "2:4"} | {name: value}
    if where.startswith("method:"):
        return METHODS[where.split(":")[1]].config_class, {name: value}
    return SECTIONS[where], {name: value}


def _refused(call: typing.Callable, name: str) -> SettingError:
    with pytest.raises(SettingError) as caught:
        call()
    assert caught.value.field == name, (caught.value.field, str(caught.value))
    assert name in str(caught.value)
    return caught.value


@pytest.mark.parametrize("where, name, value", SETTINGS_ROWS)
def test_a_config_built_directly_names_the_field(where, name, value):
    cls, kwargs = _config_kwargs(where, name, value)
    _refused(lambda: cls(**kwargs), name)


def _flat(where: str, name: str, value: typing.Any) -> dict:
    if where == "prune":
        return {"sparsity": "2:4", name: value}
    return {"sparsity": "2:4", "method": where.split(":")[1], name: value}


@pytest.mark.parametrize("where, name, value", SETTINGS_ROWS)
def test_the_python_entry_points_name_the_field(where, name, value):
    model = nn.Sequential(nn.Linear(4, 4))
    if where == "prune" or where.startswith("method:"):
        config = _flat(where, name, value)
        _refused(lambda: run("no-model", config), name)
        _refused(lambda: prune_(model, config, torch.zeros(2, 4)), name)
        _refused(lambda: PruneConfig.from_dict(config), name)
    elif where == "data":
        _refused(lambda: run("no-model", {"sparsity": "2:4"}, {name: value}), name)
        _refused(lambda: evaluate("no-model", {name: value}), name)
    else:
        _refused(lambda: EvalOptions(tasks={name: value}), name)
        _refused(lambda: run("no-model", {"sparsity": "2:4"}, tasks={name: value}), name)  # the old spelling
        _refused(lambda: evaluate("no-model", tasks={name: value}), name)


def _recipe(where: str, name: str, value: typing.Any) -> tuple[dict, str]:
    """A recipe holding the value, and the key's path in it."""
    if where == "prune" or where.startswith("method:"):
        return {"model": "no-model", "prune": _flat(where, name, value)}, f"prune.{name}"
    return {"model": "no-model", "prune": {"sparsity": "2:4"}, where: {name: value}}, f"{where}.{name}"


def _names_key(message: str, key: str) -> bool:
    """Whether the message names the recipe's key: its path (``prune.seed``), or, when
    about the field in words of its own, its name (``invalid sparsity 'x'``)."""
    section, name = key.split(".")
    return key in message or re.search(rf"(?<![.\w]){name}\b", message) is not None and f".{name}" not in message


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_error(capsys: typing.Any) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("snows-hf: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


@pytest.mark.parametrize("where, name, value", SETTINGS_ROWS)
def test_a_recipe_names_the_key_in_python_and_on_the_command_line(where, name, value, tmp_path, capsys):
    recipe, key = _recipe(where, name, value)
    Path("r.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    with pytest.raises(ValueError) as caught:
        load_recipe("r.yaml") if where != "evaluation" else load_recipe_tasks("r.yaml")
    assert _names_key(str(caught.value), key), str(caught.value)
    before = _tree(tmp_path)
    assert main(["prune", "--recipe", "r.yaml", "--output-dir", "out"]) == 1
    line = _one_error(capsys)
    assert _names_key(line, key) and len(line) < 600, line
    assert _tree(tmp_path) == before


# Arguments of the entry points themselves, generated from their signatures: each
# annotated one, fed what its annotation does not take.
ENTRY_POINTS = {
    "run": (run, lambda **kw: run("no-model", {"sparsity": "2:4"}, **kw)),
    "evaluate": (evaluate, lambda **kw: evaluate("no-model", **kw)),
    "prune_": (prune_, lambda **kw: prune_(nn.Linear(4, 4), {"sparsity": "2:4"}, torch.zeros(2, 4), **kw)),
    "as_batches": (as_batches, lambda **kw: as_batches(torch.zeros(2, 4), **({"batch_size": 1} | kw))),
    "push_folder": (push_folder, lambda **kw: push_folder(**({"folder": "no-folder", "repo_id": "me/repo"} | kw))),
}
CHECKED = (bool, int, str, float, type(None))


def _argument_rows() -> list:
    rows = []
    for label, (func, _) in ENTRY_POINTS.items():
        for name in list(typing.get_type_hints(func))[:-1]:  # the last hint is the return value
            parts = _parts(func, name)
            if not all(part in CHECKED for part in parts):
                continue
            for value in _hostile(func, name, {}):
                rows.append(pytest.param(label, name, value, id=f"{label}.{name}={value!r}"))
    # the keywords run and evaluate took before their option groups, refused by their own names
    for label, table in (("run", RUN_KEYWORDS), ("evaluate", EVALUATE_KEYWORDS)):
        for name, (group, field, *own) in table.items():
            cls = GROUPS[group]
            parts = own[0] if own else _parts(cls, field)
            if not all(part in CHECKED for part in parts):
                continue
            metadata = {f.name: f for f in dataclasses.fields(cls)}[field].metadata
            for value in _hostile_values(parts, metadata):
                rows.append(pytest.param(label, name, value, id=f"{label}.{name}={value!r}"))
    rows += [pytest.param("run", "save", "3", id="run.save='3'"),
             pytest.param("as_batches", "batch_size", 0, id="as_batches.batch_size=0"),
             pytest.param("push_folder", "retries", -1, id="push_folder.retries=-1"),
             pytest.param("push_folder", "backoff", -1.0, id="push_folder.backoff=-1.0")]
    return rows


ARGUMENT_ROWS = _argument_rows()


def test_the_argument_table_covers_the_entry_points():
    ids = {row.id for row in ARGUMENT_ROWS}
    for expected in ("run.overwrite='3'", "run.save='3'", "run.eval_batch_size=2.5", "run.eval_batch_size=0",
                     "evaluate.batch_size=None", "evaluate.batch_size=0", "evaluate.sparse_inference=3",
                     "prune_.progress=None", "run.save_format=3", "run.save_format='nope'", "run.push_to_hub=3",
                     "run.evaluate=None", "evaluate.allow_pickle='3'"):
        assert expected in ids, expected


@pytest.mark.parametrize("label, name, value", ARGUMENT_ROWS)
def test_an_entry_points_arguments_are_named(label, name, value):
    _, call = ENTRY_POINTS[label]
    _refused(lambda: call(**{name: value}), name)


def _group_rows() -> list:
    """Each field of each option group, fed what its declaration does not take."""
    rows = []
    for cls in GROUPS.values():
        for f in dataclasses.fields(cls):
            if all(part in CHECKED for part in _parts(cls, f.name)):
                rows += [pytest.param(cls, f.name, value, id=f"{cls.__name__}.{f.name}={value!r}")
                         for value in _hostile(cls, f.name, f.metadata)]
    return rows


GROUP_ROWS = _group_rows()


def test_the_group_table_covers_every_group():
    ids = {row.id for row in GROUP_ROWS}
    for expected in ("SaveOptions.overwrite=None", "SaveOptions.save_format='nope'", "PushOptions.repo_id=None",
                     "PushOptions.token=3", "LoadOptions.trust_remote_code='3'", "EvalOptions.batch_size=0",
                     "EvalOptions.held_out=None"):
        assert expected in ids, expected


@pytest.mark.parametrize("cls, name, value", GROUP_ROWS)
def test_an_option_groups_fields_are_named(cls, name, value):
    required = {"repo_id": "me/repo"} if cls is PushOptions else {}
    _refused(lambda: cls(**(required | {name: value})), name)


@pytest.mark.parametrize("call, name", [
    pytest.param(lambda: run("no-model", 3), "config", id="run-config-int"),
    pytest.param(lambda: run("no-model", {"sparsity": "2:4", "k_stpe": 1}), "k_stpe", id="run-config-unknown-key"),
    pytest.param(lambda: run("no-model", {"sparsity": "2:4"}, 3), "data", id="run-data-int"),
    pytest.param(lambda: run("no-model", {"sparsity": "2:4"}, {"num_sample": 8}), "num_sample", id="run-data-unknown-key"),
    pytest.param(lambda: run("no-model", {"sparsity": "2:4"}, tasks={"limt": 8}), "limt", id="run-tasks-unknown-key"),
    pytest.param(lambda: evaluate("no-model", {"sed": 1}), "sed", id="evaluate-data-unknown-key"),
    pytest.param(lambda: evaluate("no-model", tasks=3), "tasks", id="evaluate-tasks-int"),
    pytest.param(lambda: PruneConfig(sparsity="2:4", method="nope"), "method", id="unknown-method"),
    pytest.param(lambda: PruneConfig(sparsity="2:4", mask="nope"), "mask", id="unknown-mask"),
    pytest.param(lambda: PruneConfig(sparsity="nope"), "sparsity", id="bad-sparsity"),
    pytest.param(lambda: PruneConfig(sparsity="2:4", max_memory="lots"), "max_memory", id="bad-max-memory"),
    pytest.param(lambda: PruneConfig(sparsity="2:4", config_version=3), "config_version", id="old-config-version"),
    pytest.param(lambda: PruneConfig.from_dict({"sparsity": "2:4", 3: 1}), "3", id="from-dict-int-key"),
    pytest.param(lambda: prune_(nn.Linear(4, 4), 3, torch.zeros(2, 4)), "config", id="prune-config-int"),
    pytest.param(lambda: prune_(None, {"sparsity": "2:4"}, torch.zeros(2, 4)), "model", id="prune-model-none"),
])
def test_whole_arguments_of_the_wrong_kind_are_named(call, name):
    _refused(call, name)


# Item 10: the version of a recipe is an integer it can have, and a key is given once.
@pytest.mark.parametrize("text, message", [
    pytest.param("prune: {sparsity: '2:4', config_version: true}", "prune.config_version must be an int, got True", id="version-true"),
    pytest.param("prune: {sparsity: '2:4', config_version: 1.0}", "prune.config_version must be an int, got 1.0", id="version-float"),
    pytest.param("prune: {sparsity: '2:4', config_version: 3.0}", "prune.config_version must be an int, got 3.0", id="version-float-3"),
    pytest.param("prune: {sparsity: '2:4', config_version: '2'}", "prune.config_version must be an int, got '2'", id="version-str"),
    pytest.param("prune: {sparsity: '2:4', config_version: null}", "prune.config_version must be an int, got None", id="version-null"),
    pytest.param("prune: {sparsity: '2:4', config_version: 0}", "prune.config_version 0 is not supported (this snows-hf reads 1 to 5)", id="version-0"),
    pytest.param("prune: {sparsity: '2:4', config_version: 6}", "prune.config_version 6 is not supported (this snows-hf reads 1 to 5)", id="version-6"),
    pytest.param("prune:\n  sparsity: '2:4'\n  k_step: 1\n  k_step: 2\n", "the key 'k_step' twice (line 4)", id="duplicate-option"),
    pytest.param("prune: {sparsity: '2:4'}\nprune: {sparsity: '50%'}\n", "the key 'prune' twice (line 2)", id="duplicate-section"),
    pytest.param("prune: {sparsity: '2:4', sparsity: '50%'}\n", "the key 'sparsity' twice (line 1)", id="duplicate-flow"),
    pytest.param("prune: {sparsity: '2:4'}\ndata:\n  dataset: a\n  'dataset': b\n", "the key 'dataset' twice (line 4)", id="duplicate-quoted"),
    pytest.param("prune: {sparsity: '2:4', <<: {sparsity: '50%'}}\n", "the key 'sparsity' twice (line 1)", id="duplicate-merged"),
    pytest.param("prune: {sparsity: '2:4'}\nevaluation: {tasks: [piqa], tasks: [boolq]}\n", "the key 'tasks' twice (line 2)", id="duplicate-evaluation"),
    pytest.param("prune: {sparsity: '2:4', targets: [{a: 1, a: 2}]}\n", "the key 'a' twice (line 1)", id="duplicate-deep"),
])
def test_a_recipe_with_a_bad_version_or_a_repeated_key_is_refused(text, message, tmp_path, capsys):
    Path("r.yaml").write_text(text)
    before = _tree(tmp_path)
    assert main(["prune", "no-model", "--recipe", "r.yaml", "--output-dir", "out"]) == 1
    line = _one_error(capsys)
    assert message in line, line
    assert _tree(tmp_path) == before


# Item 20: an option of another method than the one chosen is refused, not ignored.
@pytest.mark.parametrize("argv, message", [
    pytest.param(["--method", "mask-only", "--mask", "magnitude", "--k-step", "3"], "--k-step is an option of snows and snows-fast, not of mask-only", id="cli-k-step-mask-only"),
    pytest.param(["--method", "none", "--cg-iters", "2"], "--cg-iters is an option of snows and snows-fast, not of mask-only", id="cli-cg-iters-none"),
    pytest.param(["--method", "magnitude", "--k-step", "3"], "--k-step is an option of snows and snows-fast, not of mask-only", id="cli-k-step-magnitude"),
    pytest.param(["--statistics", "module"], "--statistics is an option of mask-only, not of snows", id="cli-statistics-default-method"),
    pytest.param(["--method", "snows-fast", "--statistics", "block"], "--statistics is an option of mask-only, not of snows-fast", id="cli-statistics-fast"),
    pytest.param(["--recipe", "magnitude.yaml", "--holdout", "0.2"], "--holdout is an option of snows and snows-fast, not of mask-only", id="cli-over-a-recipes-method"),
    pytest.param(["--recipe", "foreign.yaml"], "prune.k_step is an option of snows and snows-fast, not of mask-only", id="recipe-k-step-mask-only"),
    pytest.param(["--recipe", "old.yaml"], "prune.k_step is an option of snows and snows-fast, not of mask-only", id="recipe-k-step-magnitude"),
])
def test_an_option_of_another_method_is_refused(argv, message, tmp_path, capsys):
    Path("magnitude.yaml").write_text("prune: {sparsity: '2:4', method: mask-only, mask: magnitude}\n")
    Path("foreign.yaml").write_text("prune: {sparsity: '2:4', method: mask-only, mask: magnitude, k_step: 7}\n")
    Path("old.yaml").write_text("prune: {sparsity: '2:4', method: magnitude, k_step: 7}\n")  # an earlier name
    before = _tree(tmp_path)
    assert main(["prune", "no-model", "--sparsity", "2:4", *argv, "--output-dir", "out"]) == 1
    line = _one_error(capsys)
    assert message in line, line
    assert _tree(tmp_path) == before


def test_the_command_line_parses_a_methods_options_as_they_are_declared(registries):
    """An out-of-tree method's options get their type on the command line from the
    declaration alone, as SNOWS's do (their bounds: the table below)."""
    from snows_hf.cli import build_parser
    from snows_hf.fields import config_field
    from snows_hf.methods import MaskOnly, MethodConfig, register_method

    @dataclasses.dataclass
    class KeepConfig(MethodConfig):
        name = "keep"
        keep_blocks: int = config_field(2, "blocks kept dense", minimum=1)
        keep_share: float = config_field(0.5, "share kept", minimum=0, maximum=1)
        keep_bias: bool = config_field(False, "keep the biases too")

    class Keep(MaskOnly):
        config_class = KeepConfig

    register_method(Keep)
    args = build_parser().parse_args(["prune", "m", "--method", "keep", "--keep-blocks", "3", "--keep-share", "0.25",
                                      "--keep-bias", "--k-step", "2", "--holdout", "0.5"])
    assert (args.keep_blocks, args.keep_share, args.keep_bias, args.k_step, args.holdout) == (3, 0.25, True, 2, 0.5)
    assert type(args.keep_blocks) is int and type(args.keep_share) is float


def _command_line_rows() -> list:
    """The rows of the settings table that a flag can give: a number the option parses,
    past the field's bounds or not finite."""
    from snows_hf.cli import build_parser
    from snows_hf.cli_options import field_argument, flag_spelling
    from snows_hf.fields import UNSET

    spell = flag_spelling(build_parser(), "prune")
    rows = []
    for row in SETTINGS_ROWS:
        where, name, value = row.values
        cls = _config_kwargs(where, name, value)[0]
        parses = field_argument(cls, name).get("type")
        if spell(name, UNSET) == name or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if parses is float or parses is int and isinstance(value, int):
            rows.append(pytest.param(where, name, parses(str(value)), spell(name, UNSET), id=row.id))  # as the flag reads it
    return rows


COMMAND_LINE_ROWS = _command_line_rows()


@pytest.mark.parametrize("where, name, value, flag", COMMAND_LINE_ROWS)
def test_a_flag_past_its_bounds_is_refused_in_the_words_of_a_python_call(where, name, value, flag, tmp_path, capsys):
    """A value past a field's bounds, given by a flag: exit 1 and one line, the words of the
    refusal the same as from Python (and from a recipe), the setting named as the flag."""
    cls, kwargs = _config_kwargs(where, name, value)
    python = _refused(lambda: cls(**kwargs), name)
    method = ["--method", where.split(":")[1]] if where.startswith("method:") else []
    before = _tree(tmp_path)
    assert main(["prune", "no-model", "--sparsity", "2:4", *method, f"{flag}={value}", "--output-dir", "out"]) == 1
    assert _one_error(capsys) == "snows-hf: error: " + str(python).replace(name, flag, 1)
    assert _tree(tmp_path) == before
