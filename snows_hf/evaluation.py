"""Before/after measurements of a pruned model against its dense self.

How a model is measured follows its head: an :class:`Evaluation` says what is taken from
each batch and which metrics follow, and how the held-out set is built for it. Each task
of :mod:`snows_hf.heads` names one of :data:`CLASSIFICATION`, :data:`CAUSAL_LM` and
:data:`EMBEDDING`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .devices import model_input_device, synchronize
from .metrics import load_metric

Outputs = dict[str, torch.Tensor]

LABEL_CLASSES = ("model", "dataset")
"""How held-out labels are numbered: by the model's classes (matched by name), or by the
dataset's own classes in sorted order (a linear probe's)."""


@dataclass(frozen=True)
class Evaluation:
    """How models of one kind are measured on held-out samples.

    Attributes:
        name: what report.json calls it (``classification``, ``causal-lm``, ``embedding``).
        outputs: ``(model, batch) -> {name: one tensor row per sample}``, what the metrics
            need from one model on one batch.
        metrics: ``(eval_set, outputs, reference) -> {metric: value}``; ``reference`` is
            the dense model's outputs on the same samples, or ``None``.
        labels: how held-out labels are numbered (one of :data:`LABEL_CLASSES`), or
            ``None`` when none are read.
        packed: held-out text is packed into ``seq_len``-token sequences (one sample per
            sequence) rather than taken one sample per row.

    Example:
        >>> CLASSIFICATION.name, CLASSIFICATION.labels, CAUSAL_LM.packed
        ('classification', 'model', True)
    """

    name: str
    outputs: Callable[[Any, Outputs], Outputs]
    metrics: Callable[[Any, Outputs, Outputs | None], dict[str, float]]
    labels: str | None = None
    packed: bool = False

    def __post_init__(self) -> None:
        if self.labels is not None and self.labels not in LABEL_CLASSES:
            raise ValueError(f"labels must be one of {', '.join(LABEL_CLASSES)} or None, got {self.labels!r}")


def cosine_to_reference(embeddings: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-row cosine similarity between two embedding matrices of the same shape.

    Example:
        >>> cosine_to_reference(torch.eye(2), torch.eye(2))
        tensor([1., 1.])
    """
    return torch.nn.functional.cosine_similarity(embeddings.float(), reference.float(), dim=-1)


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """``||got - expected|| / ||expected||`` in float32 (0 when both are zero).

    Example:
        >>> relative_error(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 1.0]))
        0.7071067690849304
    """
    expected = expected.float()
    return float((got.float() - expected).norm() / expected.norm().clamp_min(1e-12))


@torch.no_grad()
def model_outputs(model: Any, eval_set: Any, batch_size: int = 16) -> dict[str, torch.Tensor]:
    """What the metrics need from one model on an :class:`~snows_hf.data.EvalSet` (its
    evaluation's :attr:`~Evaluation.outputs`, batch by batch).

    ``classification``: ``logits``; ``causal-lm``: summed next-token ``nll`` and scored
    ``tokens`` per sequence; ``embedding``: L2-normalised pooled ``embeddings``.

    Example:
        >>> outs = model_outputs(model, data.evaluation)  # doctest: +SKIP
    """
    device = model_input_device(model)  # offloaded models: accelerate's hooks bring the weights
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    was_training = model.training
    model.eval()
    chunks: dict[str, list[torch.Tensor]] = {}
    try:
        for i in range(0, len(eval_set), batch_size):
            batch = {k: v[i : i + batch_size].to(device, dtype=dtype if v.is_floating_point() else v.dtype)
                     for k, v in eval_set.inputs.items()}
            for key, value in eval_set.evaluation.outputs(model, batch).items():
                chunks.setdefault(key, []).append(value.float().cpu())
    finally:
        model.train(was_training)
    return {k: torch.cat(v) for k, v in chunks.items()}


def throughput(model: Any, eval_set: Any, batch_size: int = 16) -> tuple[dict[str, torch.Tensor], float]:
    """:func:`model_outputs` and the samples per second it ran at, after one warm-up batch
    (first-call set-up, such as kernel selection, is not the model's speed).

    Example:
        >>> outs, per_second = throughput(model, data.evaluation)  # doctest: +SKIP
    """
    device = model_input_device(model)
    warm_up = dataclasses.replace(eval_set, inputs={k: v[:batch_size] for k, v in eval_set.inputs.items()}, labels=None)
    model_outputs(model, warm_up, batch_size)
    synchronize(device)
    start = time.perf_counter()
    outputs = model_outputs(model, eval_set, batch_size)
    synchronize(device)
    return outputs, len(eval_set) / max(time.perf_counter() - start, 1e-9)


def check_reference(model: Any, reference: Any) -> None:
    """Refuse a reference whose outputs cannot be compared with ``model``'s: another
    architecture, or another number of classes or vocabulary entries.

    Example:
        >>> check_reference(pruned_llama, dense_vit)  # doctest: +SKIP
        Traceback (most recent call last):
        ValueError: the reference is a ViTForImageClassification (model_type vit), the model a LlamaForCausalLM ...
    """
    def describe(m: Any) -> str:
        return f"{type(m).__name__} (model_type {getattr(m.config, 'model_type', '?')})"

    if type(model) is not type(reference) or getattr(model.config, "model_type", None) != getattr(reference.config, "model_type", None):
        raise ValueError(f"the reference is a {describe(reference)}, the model a {describe(model)}: "
                         "compare a pruned model with the dense model it came from")
    for size in ("num_labels", "vocab_size"):
        mine, theirs = getattr(model.config, size, None), getattr(reference.config, size, None)
        if mine != theirs:
            raise ValueError(f"the reference has {size} {theirs}, the model {mine}: their outputs cannot be compared")


def _logits(model: Any, batch: Outputs) -> Outputs:
    return {"logits": model(**batch).logits}


def _next_token_nll(model: Any, batch: Outputs) -> Outputs:
    logits = model(**batch).logits[:, :-1]
    targets = batch["input_ids"][:, 1:]
    keep = batch["attention_mask"][:, 1:].bool()
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2).float(), targets, reduction="none")
    return {"nll": (nll * keep).sum(1), "tokens": keep.sum(1)}


def _pooled_embeddings(model: Any, batch: Outputs) -> Outputs:
    out = model(**batch, output_hidden_states=True)
    # a bare encoder's own output, else (a masked-LM head's output) the states the head reads
    hidden = out.last_hidden_state if getattr(out, "last_hidden_state", None) is not None else out.hidden_states[-1]
    if hidden.dim() == 3 and "attention_mask" in batch:  # text: masked mean, as sentence-transformers does
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    elif getattr(out, "pooler_output", None) is not None:
        pooled = out.pooler_output.flatten(1)
    else:
        pooled = hidden.flatten(2).mean(-1) if hidden.dim() == 4 else hidden.mean(1)
    return {"embeddings": torch.nn.functional.normalize(pooled.float(), dim=-1)}


def compute_metrics(eval_set: Any, outputs: Outputs, reference: Outputs | None = None) -> dict[str, float]:
    """Metrics of one model's ``outputs`` (from :func:`model_outputs`), through ``evaluate``
    (its evaluation's :attr:`~Evaluation.metrics`).

    ``reference`` is the dense model's outputs on the same samples: it adds top-1
    agreement for classifiers and, for embeddings, their cosine similarity (mean and
    worst sample).

    Example:
        >>> compute_metrics(data.evaluation, model_outputs(pruned, data.evaluation), dense_outputs)  # doctest: +SKIP
        {'top1_accuracy': 0.87, 'top5_accuracy': 0.99, 'top1_agreement': 0.95}
    """
    return eval_set.evaluation.metrics(eval_set, outputs, reference)


def _perplexity(eval_set: Any, outputs: Outputs, reference: Outputs | None) -> dict[str, float]:
    result = load_metric("perplexity_from_nll").compute(
        predictions=outputs["nll"].double().tolist(), references=outputs["tokens"].long().tolist()
    )
    return {"perplexity": result["perplexity"], "nll_per_token": result["nll_per_token"]}


def _classification_metrics(eval_set: Any, outputs: Outputs, reference: Outputs | None) -> dict[str, float]:
    metrics: dict[str, float] = {}
    logits = outputs["logits"]
    labelled = eval_set.labels >= 0 if eval_set.labels is not None else None  # -1: a class the model lacks
    if labelled is not None and bool(labelled.any()):
        accuracy = load_metric("top_k_accuracy")
        for k in (1, 5) if logits.shape[1] > 5 else (1,):
            metrics.update(accuracy.compute(predictions=logits[labelled].tolist(),
                                            references=eval_set.labels[labelled].tolist(), k=k))
    if reference is not None:
        metrics["top1_agreement"] = float((logits.argmax(1) == reference["logits"].argmax(1)).float().mean())
    return metrics


def _embedding_metrics(eval_set: Any, outputs: Outputs, reference: Outputs | None) -> dict[str, float]:
    metrics: dict[str, float] = {}
    embeddings = outputs["embeddings"]
    if reference is not None:
        cosine = cosine_to_reference(embeddings, reference["embeddings"])
        metrics["cosine_to_dense"] = float(cosine.mean())
        metrics["cosine_to_dense_min"] = float(cosine.min())  # the worst sample: a mean hides a few broken ones
    if eval_set.labels is not None:
        metrics["linear_probe_accuracy"] = linear_probe_accuracy(embeddings, eval_set.labels)
    return metrics


def linear_probe_accuracy(embeddings: torch.Tensor, labels: torch.Tensor, ridge: float = 1e-2) -> float:
    """Accuracy of a ridge-regression probe fitted on the first half, scored on the second.

    Example:
        >>> x = torch.cat([torch.ones(10, 2), -torch.ones(10, 2)])[torch.arange(20) % 2 * 10 + torch.arange(20) // 2]
        >>> linear_probe_accuracy(x, (torch.arange(20) % 2))
        1.0
    """
    n = len(labels) // 2
    if n < 2:
        raise ValueError("a linear probe needs at least 4 labelled evaluation samples")
    x = torch.cat([embeddings.double(), torch.ones(len(embeddings), 1, dtype=torch.float64)], dim=1)
    targets = torch.nn.functional.one_hot(labels.long(), int(labels.max()) + 1).double()
    a = x[:n].T @ x[:n] + ridge * n * torch.eye(x.shape[1], dtype=torch.float64)
    weights = torch.linalg.solve(a, x[:n].T @ targets[:n])
    scores = x[n:] @ weights
    return load_metric("top_k_accuracy").compute(predictions=scores.tolist(), references=labels[n:].tolist(), k=1)["top1_accuracy"]


CLASSIFICATION = Evaluation("classification", _logits, _classification_metrics, labels="model")
"""Classifiers: accuracy against labels matched to the model's classes, top-1 agreement with the dense model."""

CAUSAL_LM = Evaluation("causal-lm", _next_token_nll, _perplexity, packed=True)
"""Causal language models: perplexity of held-out sequences packed like the calibration ones."""

EMBEDDING = Evaluation("embedding", _pooled_embeddings, _embedding_metrics, labels="dataset")
"""Encoders: cosine to the dense model's pooled embeddings (mean and worst), and a linear probe on the dataset's labels."""
