"""Which column of a split holds the text, the images or the labels: :func:`detect_column`.
"""

from __future__ import annotations

from typing import Any

from ..fields import SettingError, setting
from .order import SplitRows


def detect_column(rows: SplitRows, wanted: str | None, kind: str) -> str | None:
    """The ``kind`` (image, text, label) column: ``wanted`` if given, else detected.

    Images are found by feature type (an ``Image``, or a struct of ``bytes`` and ``path``
    that no metadata declares as one) or, for a stream that declares no features, by the
    first row's values; texts by a string feature (a column of mixed types, which
    ``datasets`` reads as ``Json``, when no column holds only strings: its rows are then
    checked one by one); labels by a ``ClassLabel`` feature or a column named
    ``label``/``labels``, and are optional (``None`` when there is none). When none is
    found, the error says what the columns hold.

    Example:
        >>> detect_column(SplitRows(datasets.Dataset.from_dict({"body": ["x"]})), None, "text")  # doctest: +SKIP
        'body'
    """
    import datasets

    names = rows.column_names
    if wanted is not None:
        if wanted not in names:
            raise ValueError(f"{kind} column {wanted!r} not in the dataset; columns: {', '.join(names)}")
        return wanted
    features = rows.features

    def feature(name: str) -> Any:
        return features[name] if features is not None else None

    if kind == "image":
        found = [n for n in names if isinstance(feature(n), datasets.Image) or _is_image_struct(feature(n))
                 or (features is None and _looks_like_image(rows.first_value(n)))]
    elif kind == "label":
        found = [n for n in names if isinstance(feature(n), datasets.ClassLabel)]
        found = found or [n for n in ("label", "labels") if n in names]
    else:
        strings = [n for n in names if (getattr(feature(n), "dtype", None) in ("string", "large_string")
                                       if features is not None else isinstance(rows.first_value(n), str))]
        mixed = [n for n in names if isinstance(feature(n), datasets.Json)]
        found = next(([n for n in tier if n == "text" or "text" not in names] for tier in (strings, mixed)
                      if any(n == "text" or "text" not in names for n in tier)), [])
    if found or kind == "label":
        return found[0] if found else None
    setting_name = "image_column" if kind == "image" else "text_column"
    if kind == "text" and "text" in names:
        problem = f"column 'text' holds {_holds(rows, 'text')}, not strings"
    else:
        problem = "columns: " + ", ".join(f"{n} ({_holds(rows, n)})" for n in names[:20]) + (", ..." if len(names) > 20 else "")
    raise SettingError(f"no {kind} column found in the dataset: {problem}", field=setting_name, hint=f"pass {setting(setting_name)}")


def _is_image_struct(feature: Any) -> bool:
    """A struct of ``bytes`` (and ``path``), as ``datasets`` stores images, in a file whose
    metadata does not say it is one (a parquet written by pyarrow itself)."""
    return isinstance(feature, dict) and "bytes" in feature and set(feature) <= {"bytes", "path"}


def _holds(rows: SplitRows, name: str) -> str:
    """What column ``name`` holds, in words: ``int64``, ``lists``, ``values of mixed types`` ..."""
    import datasets

    feature = rows.features[name] if rows.features is not None else None
    if feature is None:
        value = rows.first_value(name)
        return {list: "lists", dict: "records", str: "strings"}.get(type(value), type(value).__name__)
    if isinstance(feature, datasets.Value):
        return str(feature.dtype)
    if isinstance(feature, (datasets.List, datasets.LargeList, list)):
        return "lists"
    if isinstance(feature, datasets.Json):
        return "values of mixed types"
    if isinstance(feature, datasets.ClassLabel):
        return "class labels"
    if isinstance(feature, datasets.Image):
        return "images"
    if isinstance(feature, dict):
        return "records of " + ", ".join(list(feature)[:5])
    return type(feature).__name__


def _looks_like_image(value: Any) -> bool:
    if isinstance(value, dict):
        return "bytes" in value or "path" in value
    return type(value).__module__.startswith("PIL")
