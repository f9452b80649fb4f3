"""Recipes: the YAML that reruns a pruning job, written next to every output.

Written by :func:`snows_hf.export.save_pruned`. A recipe holds the ``PruneConfig`` fields (``prune:``), the calibration settings
(``data:``) and, when known, the source model (``model:``). Unknown keys are an error,
so a typo never silently falls back to a default. Read with ``yaml.safe_load`` only.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

RECIPE_FILE = "recipe.yaml"
_SECTIONS = ("model", "prune", "data", "snows_hf_version")


def recipe_dict(prune: Any, data: Any = None, model: str | None = None) -> dict[str, Any]:
    """The recipe of a run as plain data.

    Example:
        >>> from snows_hf import PruneConfig
        >>> recipe_dict(PruneConfig(sparsity="2:4"), model="my-vit")["prune"]["sparsity"]
        '2:4'
    """
    from . import __version__

    out: dict[str, Any] = {"snows_hf_version": __version__}
    if model is not None:
        out["model"] = model
    out["prune"] = dataclasses.asdict(prune)
    if data is not None:
        out["data"] = dataclasses.asdict(data)
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
    import yaml

    from .calibration import CalibrationConfig
    from .config import PruneConfig

    path = resolve_recipe(path)
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise ValueError(f"cannot read recipe {str(path)!r}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ValueError(f"recipe {str(path)!r} is not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(raw, dict) or "prune" not in raw:
        raise ValueError(f"recipe {str(path)!r} needs a 'prune:' section")
    unknown = set(raw) - set(_SECTIONS)
    if unknown:
        raise ValueError(f"recipe {str(path)!r} has unknown sections: {', '.join(sorted(map(str, unknown)))}")
    model = raw.get("model")
    if model is not None and not isinstance(model, str):
        raise ValueError(f"recipe {str(path)!r}: model must be a Hub id or a folder (a string), got {model!r}")
    prune = _build(PruneConfig, _upgrade(raw["prune"]), "prune", path)
    data = _build(CalibrationConfig, raw["data"], "data", path) if raw.get("data") is not None else None
    return prune, data, model


# What version 1 of the settings meant by a key it did not have (or had another default
# for): a recipe written then keeps producing the same weights.
_V1_DEFAULTS = {"preconditioner": "none", "mask": "magnitude", "init": "lsq", "cg_iters": 10}


def _upgrade(values: Any) -> Any:
    """Fill the keys a recipe of an older ``config_version`` lacks with that version's meaning."""
    if not isinstance(values, dict) or values.get("config_version") != 1:
        return values
    from .config import CONFIG_VERSION

    return {**_V1_DEFAULTS, **values, "config_version": CONFIG_VERSION}


def _build(cls: type, values: Any, section: str, path: Any) -> Any:
    if not isinstance(values, dict):
        raise ValueError(f"recipe {str(path)!r}: '{section}:' must be a mapping")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(map(str, set(values) - names))
    if unknown:
        raise ValueError(f"recipe {str(path)!r}: unknown keys {', '.join(f'{section}.{k}' for k in unknown)}")
    try:
        return cls(**values)
    except ValueError as err:
        message = str(err)
        # Errors of one field start with its name: give the key's whole path in the file.
        if message.split(" ", 1)[0] in names:
            message = f"{section}.{message}"
        raise ValueError(f"recipe {str(path)!r}: {message}") from None


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
    import yaml

    wanted = model.rstrip("/").lower()
    found = []
    for path in bundled_recipes().values():
        raw = yaml.safe_load(path.read_text())
        if str(raw.get("model", "")).lower() == wanted:
            found.append((str(raw["prune"].get("sparsity")) != str(sparsity), path))
    return min(found)[1] if found else None


def data_settings_of(folder: str | Path) -> Any:
    """The ``CalibrationConfig`` of the run that wrote ``folder`` (its ``recipe.yaml``), or
    ``None`` when the folder holds no recipe with a ``data:`` section.

    Example:
        >>> data_settings_of("llama-pruned-2of4").num_samples  # doctest: +SKIP
        128
    """
    path = Path(folder).expanduser() / RECIPE_FILE
    if not path.is_file():
        return None
    _, data, _ = load_recipe(path)
    return data
