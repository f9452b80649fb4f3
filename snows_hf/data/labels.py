"""Held-out labels as the model's class indices: by number, or by name matched to the model's
class names (:func:`match_class_names`), with what could not be matched said once.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import torch

from ..fields import SettingError, setting
from .order import SplitRows

logger = logging.getLogger(__name__)


def class_indices(values: list, column: str | None, rows: SplitRows, model: Any, classes: str | None,
                  source: dict) -> torch.Tensor | None:
    """Class indices for ``values`` of the label column, numbered as ``classes`` says
    (:attr:`Evaluation.labels <snows_hf.evaluation.Evaluation.labels>`).

    ``"dataset"`` (bare encoders): the dataset's classes in sorted order (a linear probe's
    classes). ``"model"`` (classifiers): the model's classes; when both the dataset
    (``ClassLabel`` names, or string labels) and the model (``id2label``) name their
    classes, labels are matched by name; rows whose class the model lacks get -1 (left out
    of accuracy) and, when no name matches, there are no labels at all (only top-1
    agreement with the dense model is reported). Unnamed integer labels are taken as the
    model's indices and must lie within its classes. What was done is recorded in
    ``source["labels"]``.

    Example:
        >>> source = {}
        >>> class_indices(["dog", "cat", "bird"], "label", rows, vit_cats_and_dogs, "model", source)  # doctest: +SKIP
        tensor([ 1,  0, -1])
        >>> source["labels"]  # doctest: +SKIP
        'matched by name: 2 of 3 samples (not: bird)'
    """
    if column is None or not values:
        return None
    import datasets

    feature = rows.features[column] if rows.features is not None and column in rows.features else None
    names = feature.names if isinstance(feature, datasets.ClassLabel) else None
    integers = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    if classes == "dataset":
        numbers = {v: i for i, v in enumerate(sorted(set(map(str, values))))}
        return torch.tensor([numbers[str(v)] for v in values], dtype=torch.long)
    model_names = _class_names(model)
    if integers and (names is None or model_names is None):  # nothing to match by name
        num = int(getattr(model.config, "num_labels", 0) or 0)
        declared = range(len(names)) if names is not None else ()  # a ClassLabel's classes, seen or not
        outside = sorted({v for v in [*values, *declared] if not 0 <= v < num})
        if outside:
            shown = ", ".join(map(str, outside[:8])) + (", ..." if len(outside) > 8 else "")
            raise SettingError(f"labels in column {column!r} ({shown}) are outside the model's {num} classes "
                               f"(0..{num - 1})", field="label_column", hint=f"pass {setting('label_column')} with the right column")
        source["labels"] = "dataset class indices taken as the model's"
        return torch.tensor(values, dtype=torch.long)
    if integers:
        values = [names[v] if 0 <= v < len(names) else str(v) for v in values]
    if model_names is None:
        raise SettingError(f"labels in column {column!r} are names, but the model's classes are unnamed "
                           "(config.id2label)", field="label_column", hint=f"pass {setting('label_column')} with integer labels")
    lookup = match_class_names(sorted(set(map(str, values)) | set(names or [])), model_names)
    matched = [lookup.get(str(v)) for v in values]
    known = sum(m is not None for m in matched)
    missing = sorted({str(v) for v, m in zip(values, matched) if m is None})
    if known == 0:
        logger.warning("no label name of column %r (%s) is one of the model's classes: reporting top-1 agreement "
                       "with the dense model only, not accuracy", column, _listed(missing))
        source["labels"] = f"no label name matched the model's classes ({_listed(missing)}): agreement only"
        return None
    if missing:
        logger.warning("accuracy is measured on the %d of %d held-out samples whose label is one of the model's "
                       "classes; not: %s", known, len(values), _listed(missing))
    source["labels"] = f"matched by name: {known} of {len(values)} samples" + (f" (not: {_listed(missing)})" if missing else "")
    return torch.tensor([-1 if m is None else m for m in matched], dtype=torch.long)


def _listed(names: list[str], most: int = 5) -> str:
    return ", ".join(map(_short, names[:most])) + (f", ... ({len(names)} in all)" if len(names) > most else "")


def _short(name: str, most: int = 40) -> str:
    return name if len(name) <= most else name[: most - 3] + "..."


def _class_names(model: Any) -> dict[int, str] | None:
    """The model's ``id2label``, or ``None`` when its classes are unnamed (``LABEL_0`` ...)."""
    id2label = getattr(model.config, "id2label", None) or {}
    if not id2label or all(re.fullmatch(r"LABEL_\d+", str(name)) for name in id2label.values()):
        return None
    return {int(i): str(name) for i, name in id2label.items()}


def _normal(name: str) -> str:
    return " ".join(re.sub(r"[_\-]+", " ", name).lower().split())


def match_class_names(dataset_names: list[str], model_names: dict[int, str]) -> dict[str, int]:
    """Dataset class name -> model class index, where the names agree.

    Names are compared without case, ``_`` or ``-``; a name matches the model's whole
    label first, then its first comma-separated synonym, then any synonym (ImageNet's
    ``"tench, Tinca tinca"``), and only where exactly one model class answers. Dataset
    names that are one name once compared so (``golf_ball`` and ``Golf Ball``) are
    matched to nothing, said in one warning line: which of them the model's class
    stands for is a guess.

    Example:
        >>> match_class_names(["tench", "golf_ball", "cat"], {0: "tench, Tinca tinca", 1: "golf ball", 2: "dog"})
        {'tench': 0, 'golf_ball': 1}
    """
    whole = {i: _normal(name) for i, name in model_names.items()}
    synonyms = {i: [_normal(part) for part in name.split(",") if part.strip()] for i, name in model_names.items()}
    levels = (
        lambda i, n: whole[i] == n,
        lambda i, n: bool(synonyms[i]) and synonyms[i][0] == n,
        lambda i, n: n in synonyms[i],
    )
    spellings: dict[str, list[str]] = {}
    for name in dict.fromkeys(dataset_names):
        spellings.setdefault(_normal(name), []).append(name)
    groups = [names for names in spellings.values() if len(names) > 1]
    if groups:
        shown = " and ".join(repr(_short(n)) for n in groups[0][:3]) + (", ..." if len(groups[0]) > 3 else "")
        others = f" (and {len(groups) - 1} more such groups of names)" if len(groups) > 1 else ""
        logger.warning("dataset classes %s are one name once case, '_' and '-' are ignored%s: %s matched to a model "
                       "class", shown, others, "neither is" if len(groups) == 1 and len(groups[0]) == 2 else "none of them is")
    found = {}
    for name in dataset_names:
        wanted = _normal(name)
        if len(spellings[wanted]) > 1:
            continue
        for level in levels:
            hits = [i for i in model_names if level(i, wanted)]
            if len(hits) == 1:
                found[name] = hits[0]
                break
            if hits:  # ambiguous at this level: no guess
                break
    return found
