"""Recipes: the YAML that reruns a pruning job, written next to every output.

Written by :func:`snows_hf.export.save_pruned`. A recipe holds the ``PruneConfig`` fields (``prune:``), the calibration settings
(``data:``), when known, the source model (``model:``) and, when a run scores lm-eval
tasks, which (``evaluation:``, :class:`~snows_hf.harness.TaskSettings`). Unknown keys are
an error, so a typo never silently falls back to a default. Recipes are shared files: they
are read by :func:`read_recipe_yaml` only (safe YAML, no aliases, no key twice, a regular
file of at most 1 MiB: :mod:`snows_hf.safe_yaml`), and a value quoted in an error message is
cut short.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import stat
from pathlib import Path
from typing import Any, Callable, Mapping

from .fields import QUOTE_CHARS, SettingError, check_keys, python_spelling, setting, shorten, spelled
from .safe_yaml import read_safe_yaml
from .version import __version__

logger = logging.getLogger("snows_hf")

RECIPE_FILE = "recipe.yaml"
_SECTIONS = ("model", "prune", "data", "evaluation", "snows_hf_version")


def recipe_dict(prune: Any, data: Any = None, model: str | None = None, tasks: Any = None) -> dict[str, Any]:
    """The recipe of a run as plain data (``tasks``: its lm-eval
    :class:`~snows_hf.harness.TaskSettings`, written when they name tasks).

    Example:
        >>> from snows_hf import PruneConfig
        >>> recipe_dict(PruneConfig(sparsity="2:4"), model="my-vit")["prune"]["sparsity"]
        '2:4'
    """
    out: dict[str, Any] = {"snows_hf_version": __version__}
    if model is not None:
        out["model"] = model
    out["prune"] = prune.to_dict()
    if data is not None:
        out["data"] = data.to_dict()
    if tasks is not None and tasks.tasks:
        out["evaluation"] = tasks.to_dict()
    return out


def load_recipe(path: str | Path) -> tuple[Any, Any, str | None]:
    """``(PruneConfig, CalibrationConfig or None, model or None)`` from a recipe file or
    the name of a bundled recipe (``snows-hf recipes`` lists them).

    Every key is checked: an unknown one or a value of the wrong type is an error that
    names its path in the file (``prune.k_step``).

    Example:
        >>> prune, data, model = load_recipe("smollm2-135m-2of4")
        >>> prune.sparsity, model
        ('2:4', 'HuggingFaceTB/SmolLM2-135M')
    """
    from .data import CalibrationConfig, read_recipe_data
    from .config import PruneConfig
    from .methods import without_method_alias

    path = resolve_recipe(path)
    raw = read_recipe_yaml(path)
    where = _quote(str(path))
    if not isinstance(raw, dict) or "prune" not in raw:
        raise ValueError(f"recipe {where} needs a 'prune:' section")
    unknown = set(raw) - set(_SECTIONS)
    if unknown:
        raise ValueError(f"recipe {where} has unknown sections: {_names(unknown)}")
    model = raw.get("model")
    if model is not None and not isinstance(model, str):
        raise ValueError(f"recipe {where}: model must be a Hub id or a folder (a string), got {_quote(model)}")
    prune = _build(lambda values: PruneConfig.from_dict(_upgrade(without_method_alias(values))), PruneConfig.flat_keys(),
                   raw["prune"], "prune", path)
    data_keys = [f.name for f in dataclasses.fields(CalibrationConfig)]
    data = (_build(lambda values: CalibrationConfig(**values), data_keys, read_recipe_data(raw["data"]), "data", path)
            if raw.get("data") is not None else None)
    return prune, data, model


def load_recipe_tasks(path: str | Path, **overrides: Any) -> Any:
    """The lm-eval :class:`~snows_hf.harness.TaskSettings` of a recipe's ``evaluation:``
    section, checked like its other sections, with ``overrides`` (the caller's own fields)
    on top; ``None`` when neither names any. A recipe is a file from strangers and a task
    file is code: the recipe's tasks may be lm-eval's registered names only
    (:func:`~snows_hf.harness.check_recipe_tasks`), unless the caller names the tasks.

    Example:
        >>> load_recipe_tasks("smollm2-135m-2of4") is None
        True
        >>> load_recipe_tasks("smollm2-135m-2of4", tasks="piqa,boolq").tasks
        ['piqa', 'boolq']
    """
    from .harness import TaskSettings, check_recipe_tasks

    path = resolve_recipe(path)
    raw = read_recipe_yaml(path)
    section = raw.get("evaluation") if isinstance(raw, dict) else None
    if section is None:
        return TaskSettings(**overrides) if overrides else None
    keys = [f.name for f in dataclasses.fields(TaskSettings)]
    settings = _build(lambda values: TaskSettings(**values), keys, section, "evaluation", path)
    if "tasks" not in overrides:
        check_recipe_tasks(settings.tasks or [], f"recipe {_quote(str(path))}")
    return dataclasses.replace(settings, **overrides) if overrides else settings


def read_recipe_yaml(path: str | Path, data: bytes | None = None) -> Any:
    """The YAML document of the recipe file ``path``, read the safe way a shared file needs
    (:func:`~snows_hf.safe_yaml.read_safe_yaml`): plain YAML only, no aliases (``*name``:
    a few hundred bytes of nested aliases expand to gigabytes), no mapping that gives a key
    twice, at any depth, a regular file of at most 1 MiB. Every failure is a ``ValueError``
    of one short line. ``data``: the file's bytes, when the caller has read them from a file
    it opened itself (a push).

    Example:
        >>> read_recipe_yaml(bundled_recipes()["smollm2-135m-2of4"])["prune"]["sparsity"]
        '2:4'
    """
    return read_safe_yaml(path, "recipe", data=data)


def _quote(value: Any) -> str:
    """``repr(value)``, cut short: recipe values reach error messages."""
    return shorten(repr(value))


def _names(keys: Any, prefix: str = "") -> str:
    return shorten(", ".join(prefix + shorten(str(key)) for key in sorted(map(str, keys))), 4 * QUOTE_CHARS)


# What version 1 of the settings meant by a key it did not have (or had another default
# for): a recipe written then keeps producing the same weights.
#: per older ``config_version``, what the keys it lacks meant then (defaults changed since)
#: what files before version 5 wrote for an option at its default, where a missing key meant otherwise
_WRITTEN = {"init": "auto"}
_BEFORE_5 = {"init": "auto", "alternative_mask": "none", "newton_tol": 0.0}  # one start, a fixed number of steps
_OLD_MEANINGS = {
    1: {**_BEFORE_5, "preconditioner": "none", "mask": "magnitude", "init": "lsq", "cg_iters": 10,
        "statistics": "module", "newton_steps": 2},
    2: {**_BEFORE_5, "statistics": "module", "newton_steps": 2},
    3: {**_BEFORE_5, "newton_steps": 2},
    4: {**_BEFORE_5, "newton_steps": 1},
}


def _upgrade(values: dict[str, Any]) -> dict[str, Any]:
    """A ``prune:`` section of an older ``config_version`` (an int from 1 up) as today's: the
    keys it lacks hold what its version meant by them, and the options of methods other
    than its own that hold what its version wrote for them then (every recipe holds every
    method's options) are left out, as today's defaults are by
    :meth:`~snows_hf.config.PruneConfig.from_dict`.

    Example:
        >>> _upgrade({"sparsity": "2:4", "method": "magnitude", "newton_steps": 2, "config_version": 3})
        {'sparsity': '2:4', 'method': 'magnitude', 'config_version': 5}
    """
    from .config import CONFIG_VERSION, option_owners

    if "config_version" not in values:
        return values
    version = values["config_version"]
    if type(version) is not int:  # a bool or a float is no version: true == 1.0 == 1 to Python
        raise SettingError(f"config_version must be an int, got {_quote(version)}", field="config_version")
    if not 1 <= version <= CONFIG_VERSION:
        raise SettingError(f"config_version {version} is not supported (this snows-hf reads 1 to {CONFIG_VERSION})",
                           field="config_version")
    if version == CONFIG_VERSION:
        return values
    then = _OLD_MEANINGS[version]
    upgraded = {**then, **values, "config_version": CONFIG_VERSION}
    method = upgraded.get("method", "snows")
    owners = option_owners()
    return {key: value for key, value in upgraded.items()
            if not (key in owners and method not in owners[key]
                    and ((key in then and value == then[key]) or (key in _WRITTEN and value == _WRITTEN[key])))}


def _build(make: Callable[[dict], Any], keys: list[str], values: Any, section: str, path: Any) -> Any:
    """The settings ``make`` builds from the mapping of section ``section``, whose keys must be among ``keys``."""
    where = _quote(str(path))
    if not isinstance(values, dict):
        raise ValueError(f"recipe {where}: '{section}:' must be a mapping")
    names = set(keys)
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"recipe {where}: unknown keys {_names(unknown, f'{section}.')}")
    try:
        with spelled(python_spelling):  # a recipe's keys are the settings' Python names
            return make(values)
    except ValueError as err:
        message = _clip_values(str(err), values.values())
        # Give the key's whole path in the file: errors of one field start with its name, or are
        # about a field they may not name.
        field = getattr(err, "field", None)
        if message.split(" ", 1)[0] in names:
            message = f"{section}.{message}"
        elif field in names and not re.search(rf"\b{re.escape(field)}\b", message):
            message = f"{section}.{field}: {message}"
        raise ValueError(f"recipe {where}: {message}") from None


def _clip_values(message: str, values: Any) -> str:
    """``message`` with each long value it quotes (as ``repr`` or ``str``) cut short, and
    itself at most a few values long."""
    for value in values:
        for text in {repr(value), str(value)}:
            if len(text) > QUOTE_CHARS and text in message:
                message = message.replace(text, shorten(text))
    return shorten(message, 4 * QUOTE_CHARS)


def bundled_recipes() -> dict[str, Path]:
    """The recipes shipped with snows-hf, by name (file name without ``.yaml``).

    Example:
        >>> "vit-base-patch16-224-2of4" in bundled_recipes()
        True
    """
    folder = Path(__file__).parent / "recipes"
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def resolve_recipe(name_or_path: str | Path) -> Path:
    """A recipe file path, or the bundled recipe of that name when no such file exists."""
    path = Path(name_or_path)
    if path.exists() or path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        return path
    bundled = bundled_recipes()
    if str(name_or_path) in bundled:
        return bundled[str(name_or_path)]
    raise ValueError(f"no recipe file {str(name_or_path)!r} and no bundled recipe of that name "
                     f"(snows-hf recipes lists them: {', '.join(bundled)})")


def recipe_summary(path: Path) -> str:
    """The first line of a recipe's leading comment (what it is for)."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            text = line.lstrip("#").strip()
            if text:
                return text
        elif line.strip():
            break
    return ""


def recipe_for_model(model: str, sparsity: str | None = None) -> Path | None:
    """The bundled recipe whose ``model:`` is ``model`` (a Hub id, compared without case),
    preferring one with ``sparsity`` when several are; ``None`` when none is.

    Example:
        >>> recipe_for_model("HuggingFaceTB/SmolLM2-135M", "50%").name
        'smollm2-135m-50pct.yaml'
        >>> recipe_for_model("my-org/my-model") is None
        True
    """
    wanted = model.rstrip("/").lower()
    found = []
    for path in bundled_recipes().values():
        raw = read_recipe_yaml(path)
        if str(raw.get("model", "")).lower() == wanted:
            found.append((str(raw["prune"].get("sparsity")) != str(sparsity), path))
    return min(found)[1] if found else None


def data_settings_of(folder: str | Path) -> Any:
    """The ``CalibrationConfig`` of the run that wrote ``folder`` (the ``data:`` section of
    its ``recipe.yaml``), or ``None`` when the folder holds no recipe, or one without a
    ``data:`` section.

    Only what that takes is read, the safe way (:func:`read_recipe_yaml`): the names of the
    sections, the version of the settings and the data section; the pruning settings are
    not checked. A file that is not a snows-hf recipe of a version this one knows (another
    tool's ``recipe.yaml``, a newer ``config_version``, a key it does not know, no mapping,
    no regular file) is a ``ValueError`` of one line saying why.

    Example:
        >>> data_settings_of("llama-pruned-2of4").num_samples  # doctest: +SKIP
        128
    """
    from .config import CONFIG_VERSION
    from .data import CalibrationConfig, read_recipe_data

    path = Path(folder).expanduser() / RECIPE_FILE
    where = _quote(str(path))
    if not os.path.lexists(path):
        return None
    try:
        regular = stat.S_ISREG(path.stat().st_mode)  # of what a link points to: what would be read
    except OSError as err:
        raise ValueError(f"cannot read recipe {where}: {err.strerror}") from None
    if not regular:  # a folder, a FIFO (whose reading never ends), a device
        raise ValueError(f"recipe {where} is not a regular file")
    raw = read_recipe_yaml(path)
    if not isinstance(raw, dict):
        raise ValueError(f"recipe {where} is not a mapping of sections")
    unknown = set(raw) - set(_SECTIONS)
    if unknown:
        raise ValueError(f"recipe {where} has unknown sections: {_names(unknown)}")
    prune = raw.get("prune")
    version = prune.get("config_version", CONFIG_VERSION) if isinstance(prune, dict) else CONFIG_VERSION
    if type(version) is not int or not 1 <= version <= CONFIG_VERSION:  # a newer one may mean other things
        raise ValueError(f"recipe {where} is of config_version {_quote(version)}; this snows-hf reads 1 to "
                         f"{CONFIG_VERSION}")
    if raw.get("data") is None:
        return None
    keys = [f.name for f in dataclasses.fields(CalibrationConfig)]
    return _build(lambda values: CalibrationConfig(**values), keys, read_recipe_data(raw["data"]), "data", path)


def resolve_settings(model: str | None = None, recipe: str | Path | None = None, prune: Mapping[str, Any] | None = None,
                     data: Mapping[str, Any] | None = None) -> tuple[str, Any, Any]:
    """``(model, PruneConfig, CalibrationConfig)`` of a run: the recipe's settings, with
    ``prune`` (flat ``PruneConfig`` keys, :meth:`~snows_hf.config.PruneConfig.to_dict`'s
    form) and ``data`` (``CalibrationConfig`` fields) on top, and the recipe's model unless
    ``model`` names one; what ``snows-hf prune`` runs. An option in ``prune`` of another
    method than the one run is refused; a ``method`` in ``prune`` that is not the recipe's
    leaves the recipe's method options out.

    ``recipe`` is a recipe file or a bundled recipe's name. Without one, a ``model`` that
    is the ``model:`` of a bundled recipe takes that recipe as the base, unless ``data``
    names a dataset. A bundled recipe's name given as ``model`` is refused, and so are a
    run without a model or without a sparsity (:class:`~snows_hf.fields.SettingError`).

    Example:
        >>> model, prune, data = resolve_settings("HuggingFaceTB/SmolLM2-135M", prune={"k_step": 1})
        >>> model, prune.sparsity, prune.method.k_step, data.dataset
        ('HuggingFaceTB/SmolLM2-135M', '2:4', 1, 'Salesforce/wikitext')
    """
    from .config import PruneConfig, check_method_options, option_owners
    from .data import CalibrationConfig
    from .methods import without_method_alias

    prune, data = without_method_alias(prune or {}), dict(data or {})
    check_keys([f.name for f in dataclasses.fields(CalibrationConfig)], data)
    if model in bundled_recipes() and not os.path.exists(model):
        raise SettingError(f"{model!r} names a bundled recipe, not a model", field="model",
                           hint=f"run it with {setting('recipe', model)}")
    if recipe is None and model and "dataset" not in data:
        found = recipe_for_model(model, prune.get("sparsity"))
        if found is not None:
            logger.info("%s is the model of the bundled recipe %s: it is the base of this run (flags override its "
                        "fields; snows-hf recipes %s shows it)", model, found.stem, found.stem)
            recipe = found
    base_prune, base_data, base_model = load_recipe(recipe) if recipe is not None else (None, None, None)
    model = model or base_model
    if model is None:
        raise SettingError(f"{setting('model')} is required", field="model",
                           hint=f"or a {setting('recipe')} whose model: names one")
    if base_prune is None and "sparsity" not in prune:
        raise SettingError(f"{setting('sparsity')} is required", field="sparsity",
                           hint=f"e.g. {setting('sparsity', '2:4')}, or a {setting('recipe')} with prune.sparsity")
    method = prune.get("method", base_prune.method.name if base_prune else PruneConfig.method)
    base = base_prune.to_dict() if base_prune else {}
    if isinstance(method, str):
        check_method_options(method, prune)  # each one given, whatever its value: it would be ignored
        # the base's options of other methods than the one run (the base's own, when the method changes) go
        owners = option_owners()
        base = {key: value for key, value in base.items() if key not in owners or method in owners[key]}
    config = PruneConfig.from_dict(base | prune)
    cal_cfg = dataclasses.replace(base_data, **data) if base_data else CalibrationConfig(**data)
    return model, config, cal_cfg
