"""Model cards: ``README.md`` for a pruned model, from the package's Jinja template.

Rendered with ``huggingface_hub.ModelCard.from_template`` and ``ModelCardData`` so the
Hub reads its metadata: base model, tags, calibration dataset, and the dense and pruned
metrics, held-out and lm-eval tasks', as ``eval_results`` (which become the ``model-index``). A small PNG plots the
per-layer sparsity and, for SNOWS, the per-layer reconstruction error. Models and
datasets appear by Hub id or by local folder or file name, never by path
(:func:`snows_hf.provenance.public_source`): the card is what ``--push-to-hub`` publishes.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from .data import RANDOM
from .methods import METHODS, Method
from .provenance import Source, public_source_here
from .heads import task_of

logger = logging.getLogger(__name__)

TEMPLATE = Path(__file__).parent / "model_cards" / "model_card.md"
PLOT_FILE = "sparsity_per_layer.png"
LM_EVAL_URL = "https://github.com/EleutherAI/lm-evaluation-harness"

_METRIC_NAMES = {"top1_accuracy": "accuracy", "top5_accuracy": "top-5 accuracy", "perplexity": "perplexity",
                 "cosine_to_dense": "cosine to dense embeddings",
                 "cosine_to_dense_min": "worst cosine to dense embeddings", "linear_probe_accuracy": "linear-probe accuracy",
                 "top1_agreement": "top-1 agreement with dense", "nll_per_token": "NLL per token"}


def pipeline_and_auto_class(model: Any) -> tuple[str, str]:
    """The Hub ``pipeline_tag`` and the ``transformers`` Auto class that loads ``model``.

    Example:
        >>> pipeline_and_auto_class(LlamaForCausalLM(config))  # doctest: +SKIP
        ('text-generation', 'AutoModelForCausalLM')
    """
    task = task_of(model)
    return task.pipeline_tag, task.auto_class


def _sources(payload: dict[str, Any]) -> tuple[Source | None, Source | None]:
    """The run's model and dataset as the card may show them: Hub ids, or bare local names.

    A source found on disk is local even when it reads like a Hub id (``org/name`` as a
    relative folder), as it was when the run loaded it; the card is written by that run.

    Example:
        >>> _sources({"source_model": "/home/me/llama", "data": {"dataset": "org/corpus"}})
        (Source(name='llama', on_hub=False), Source(name='org/corpus', on_hub=True))
    """
    dataset = (payload.get("data") or {}).get("dataset")
    if dataset == RANDOM:  # seeded noise, not a dataset
        dataset = None
    return public_source_here(payload.get("source_model"), "model"), public_source_here(dataset, "dataset")


def build_card(model: Any, payload: dict[str, Any], plot: str | None = None, repo_id: str | None = None,
               save_format: str = "dense"):
    """The ``ModelCard`` of a pruned model from its ``report.json`` payload.

    Example:
        >>> card = build_card(model, json.loads(Path("out/report.json").read_text()))  # doctest: +SKIP
        >>> card.data.tags  # doctest: +SKIP
        ['pruned', 'sparse', 'snows', 'sparsity-2of4', 'magnitude']
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    cfg = payload["config"]
    pattern = cfg["sparsity"]
    pipeline_tag, auto_class = pipeline_and_auto_class(model)
    source, dataset = _sources(payload)
    hub_dataset = dataset.name if dataset and dataset.on_hub else None
    data = payload.get("data") or {}
    evaluation = payload.get("evaluation") or {}
    tag = pattern.replace(":", "of")
    name = repo_id or (source.name.split("/")[-1] if source else type(model).__name__) + f"-pruned-{tag}"
    eval_results = []
    for metric, value in (evaluation.get("pruned") or {}).items():
        if metric in _METRIC_NAMES and metric != "nll_per_token":
            for label, number in (("pruned", value), ("dense baseline", (evaluation.get("dense") or {}).get(metric))):
                if number is not None and not math.isfinite(number):
                    logger.warning("the %s model's %s is %s: left out of the card's model-index", label, metric, number)
                elif number is not None:
                    eval_results.append(EvalResult(
                        task_type=pipeline_tag, dataset_type=hub_dataset or "custom",
                        dataset_name=dataset.name if dataset else "held-out data",
                        dataset_split=data.get("split"), metric_type=metric,
                        metric_name=f"{_METRIC_NAMES[metric]} ({label})", metric_value=float(number),
                    ))
    eval_results += _task_results(payload.get("tasks"), pipeline_tag)
    card_data = ModelCardData(
        base_model=source.name if source and source.on_hub else None, library_name="transformers",
        pipeline_tag=pipeline_tag,
        tags=list(dict.fromkeys(["pruned", "sparse", "snows", f"sparsity-{tag}", cfg["method"]])),
        datasets=[hub_dataset] if hub_dataset else None, model_name=name, eval_results=eval_results or None,
    )
    return ModelCard.from_template(
        card_data, template_path=str(TEMPLATE), **_body(payload, model, name, auto_class, plot, repo_id),
        compact=save_format == "compact",
    )


def _task_results(figures: dict[str, Any] | None, pipeline_tag: str) -> list[Any]:
    """``EvalResult`` entries of lm-eval's figures (:meth:`snows_hf.harness.PairedTasks.figures`):
    per task and metric, the pruned value and the dense baseline, named by the task and its
    dataset (a Hub id and configuration; a local dataset as ``custom``), never by a path.

    Example:
        >>> rows = _task_results({"datasets": {"piqa": {"path": "baber/piqa", "name": None, "split": "validation"}},
        ...                       "pruned": [{"task": "piqa", "metric": "acc", "value": 0.6, "stderr": 0.01}]},
        ...                      "text-generation")
        >>> rows[0].task_name, rows[0].dataset_type, rows[0].metric_type, rows[0].metric_value
        ('piqa', 'baber/piqa', 'acc', 0.6)
    """
    from huggingface_hub import EvalResult

    from .harness import LOCAL_BUILDERS, metric_label, paired_rows

    results = []
    for row in paired_rows(figures or {}):
        dataset = (figures.get("datasets") or {}).get(row["task"]) or {}
        hub_id = dataset.get("path") if dataset.get("path") not in LOCAL_BUILDERS else None
        metric = metric_label(row)
        for label, measured in (("pruned", row["pruned"]), ("dense baseline", row["dense"])):
            value = (measured or {}).get("value")
            if value is None or not math.isfinite(value):
                if measured is not None:
                    logger.warning("the %s model's %s on %s is %s: left out of the card's model-index", label,
                                   metric, row["task"], value)
                continue
            results.append(EvalResult(
                task_type=pipeline_tag, task_name=row["task"], dataset_type=hub_id or "custom",
                dataset_name=row["task"], dataset_config=dataset.get("name"), dataset_split=dataset.get("split"),
                metric_type=metric, metric_name=f"{metric} ({label})", metric_value=float(value),
                source_name="lm-evaluation-harness", source_url=LM_EVAL_URL,
            ))
    return results


def _task_table(figures: dict[str, Any] | None) -> list[tuple[str, str, str, str, str]]:
    """The card's lm-eval rows: task (items scored), metric, dense and pruned (value +- stderr), change."""
    from .harness import metric_label, paired_rows, value_text

    return [(row["task"] + (f" ({row['samples']})" if row.get("samples") is not None else ""),
             metric_label(row), value_text(row["dense"], "±"), value_text(row["pruned"], "±"),
             f"{row['difference']:+.4f}" if row["difference"] is not None else "")
            for row in paired_rows(figures or {})]


def _body(payload: dict[str, Any], model: Any, name: str, auto_class: str, plot: str | None, repo_id: str | None) -> dict:
    cfg = payload["config"]
    source, dataset = _sources(payload)  # never the raw strings: those can be private local paths
    data = payload.get("data") or {}
    calibration = payload.get("calibration") or {}
    evaluation = payload.get("evaluation") or {}
    method = METHODS.get(cfg["method"], Method)  # a method this session has not registered: the plain words
    settings = [("pattern", cfg["sparsity"]), *method.card_settings(cfg)]
    if cfg.get("allocation") == "global":
        settings.append(("allocation", f"global, at most {cfg['max_layer_sparsity']} per layer"))
    text_model = getattr(model, "main_input_name", "input_ids") == "input_ids"
    where = f" of {dataset.name} (split {data.get('split')})" if dataset else " (random inputs)"
    tokens = f", {calibration['seq_len']} tokens each" if text_model and calibration.get("seq_len") else ""
    settings.append(("calibration", f"{payload['num_calibration_samples']} samples{where}{tokens}"))
    results = []
    for metric in (evaluation.get("pruned") or {}):
        dense = (evaluation.get("dense") or {}).get(metric, 1.0 if metric in ("cosine_to_dense", "cosine_to_dense_min", "top1_agreement") else None)
        results.append((_METRIC_NAMES.get(metric, metric), "" if dense is None else f"{dense:.4f}",
                        f"{evaluation['pruned'][metric]:.4f}"))
    snows = any("heldout_loss_after" in layer.get("metrics", {}) for layer in payload["layers"])
    layers = []
    for layer in payload["layers"]:
        m = layer.get("metrics", {})
        error = f"{m['heldout_loss_masked']:.4g} -> {m['heldout_loss_after']:.4g}" if "heldout_loss_after" in m else ""
        layers.append((layer["name"], "x".join(map(str, layer["shape"])), f"{layer['sparsity']:.2%}", error))
    return {
        "title": f"{name}",
        "source_line": (f"[{source.name}](https://huggingface.co/{source.name})" if source and source.on_hub
                        else f"`{source.name}`" if source else "A model"),
        "pattern": cfg["sparsity"], "method_line": method.card_paragraph, "settings": settings,
        "results": results, "eval_samples": evaluation.get("samples"),
        "task_rows": _task_table(payload.get("tasks")), "task_limit": (payload.get("tasks") or {}).get("limit"),
        "eval_source": f"{dataset.name}, split {data.get('split')}" if dataset else "",
        "overall": f"{payload['sparsity']:.2%}", "plot": plot,
        "error_header": "line-search window loss (micro-batches kept out of the Newton steps, not out of the mask statistics), masked -> re-fitted" if snows else "reconstruction error (not measured without a re-fit)",
        "layers": layers, "auto_class": auto_class, "repo_hint": repo_id or "path/to/this/model",
        "sparse_kernels": cfg["sparsity"] in ("2:4", "1:4"),  # at most 2 of every 4: what the GPU kernels take
    }


def plot_layers(payload: dict[str, Any], path: str | Path) -> bool:
    """Save a PNG of per-layer sparsity (and SNOWS reconstruction error); False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: the model card has no plot")
        return False
    layers = payload["layers"]
    x = range(len(layers))
    refit = [layer.get("metrics", {}) for layer in layers]
    has_error = all("heldout_loss_after" in m for m in refit)
    fig, axes = plt.subplots(2 if has_error else 1, 1, figsize=(8, 4.5 if has_error else 2.5), sharex=True, squeeze=False)
    axes[0][0].bar(x, [layer["sparsity"] for layer in layers], color="#4c72b0")
    axes[0][0].set_ylabel("sparsity")
    axes[0][0].set_ylim(0, 1)
    if has_error:
        ax = axes[1][0]
        ax.plot(x, [m["heldout_loss_masked"] for m in refit], "o-", ms=3, label="mask only", color="#c44e52")
        ax.plot(x, [m["heldout_loss_after"] for m in refit], "o-", ms=3, label="SNOWS", color="#55a868")
        ax.set_yscale("log")
        ax.set_ylabel("line-search window loss")
        ax.legend(fontsize=8)
    axes[-1][0].set_xlabel("pruned layer (execution order)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def write_card(folder: str | Path, model: Any, payload: dict[str, Any], repo_id: str | None = None,
               save_format: str = "dense") -> Path:
    """Write ``README.md`` (and the plot) into ``folder``; returns the card's path."""
    folder = Path(folder)
    plot = PLOT_FILE if plot_layers(payload, folder / PLOT_FILE) else None
    card = build_card(model, payload, plot, repo_id, save_format)
    card.save(folder / "README.md")
    return folder / "README.md"
