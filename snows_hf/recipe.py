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
    """``(PruneConfig, CalibrationConfig or None, model or None)`` from a recipe file.

    Example:
        >>> prune, data, model = load_recipe("vit-2of4/recipe.yaml")  # doctest: +SKIP
    """
    import yaml

    from .calibration import CalibrationConfig
    from .config import PruneConfig

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
        raise ValueError(f"recipe {str(path)!r} has unknown sections: {', '.join(sorted(unknown))}")
    prune = _build(PruneConfig, raw["prune"], "prune", path)
    data = _build(CalibrationConfig, raw["data"], "data", path) if raw.get("data") is not None else None
    return prune, data, raw.get("model")


def _build(cls: type, values: Any, section: str, path: Any) -> Any:
    if not isinstance(values, dict):
        raise ValueError(f"recipe {str(path)!r}: '{section}:' must be a mapping")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"recipe {str(path)!r}: unknown {section} keys: {', '.join(sorted(unknown))}")
    return cls(**values)
