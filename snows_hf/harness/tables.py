"""lm-eval's results as rows and tables: one row per task and metric (:func:`task_rows`), the
datasets read (:func:`task_datasets`), a dense and a pruned model side by side
(:func:`paired_rows`) and the terminal table (:func:`format_tasks`).
"""

from __future__ import annotations

from typing import Any


LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow", "pandas", "webdataset", "xml", "sql")
"""``dataset_path`` values that are ``datasets``' builders for local files, not Hub datasets."""


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
    from ..provenance import public_source

    found = {}
    for task, config in (results.get("configs") or {}).items():
        path = config.get("dataset_path")
        if isinstance(path, str) and path not in LOCAL_BUILDERS:
            source = public_source(path, "dataset")
            path = source.name if source else None
        split = config.get("test_split") or config.get("validation_split")
        found[task] = {"path": path, "name": config.get("dataset_name"), "split": split}
    return found


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
