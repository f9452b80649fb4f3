"""Model heads as data: what a model's head does (its task: ``causal-lm``,
``image-classification``, ...), how it is recognised, measured and published. (Not the
lm-eval tasks a run may score: those are :mod:`snows_hf.harness`'s.)

One :class:`Task` per kind of head, added by one :func:`register_task` call that refuses
a second entry of the same name or the same detection. :func:`task_of` finds a model's
task from its class name and :func:`modality` whether it reads images or text; data
preparation (:mod:`snows_hf.data`), the evaluation (:mod:`snows_hf.evaluation`, through
:attr:`Task.evaluation`) and the model card ask them instead of guessing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .evaluation import CAUSAL_LM, CLASSIFICATION, EMBEDDING, Evaluation

MODALITIES = ("text", "image")
"""What a model reads: token ids (``input_ids``) or images (``pixel_values``)."""


@dataclass(frozen=True)
class Task:
    """One kind of model head.

    Attributes:
        name: the registry key (``causal-lm``).
        modality: what such models read, one of :data:`MODALITIES` (see :func:`modality`).
        pipeline_tag: the Hub's pipeline tag, written into the model card.
        auto_class: the ``transformers`` Auto class that loads such a model (the card's
            usage example).
        evaluation: how such models are measured on held-out samples; tasks measured
            alike share one (image and sequence classifiers).
        class_suffixes: endings of the model class names of this task (``ForCausalLM``).
            Empty: the task of every model of its modality that no other entry claims.

    Example:
        >>> task_of(vit).pipeline_tag, task_of(vit).auto_class  # doctest: +SKIP
        ('image-classification', 'AutoModelForImageClassification')
    """

    name: str
    modality: str
    pipeline_tag: str
    auto_class: str
    evaluation: Evaluation
    class_suffixes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {', '.join(MODALITIES)}, got {self.modality!r}")


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add a task. A second task of the same name is an error, and so is one that claims a
    class-name ending, or the fallback of a modality, that another task already claims.

    Example:
        >>> from snows_hf.evaluation import CLASSIFICATION
        >>> register_task(Task("token-classification", "text", "token-classification",
        ...                    "AutoModelForTokenClassification", CLASSIFICATION, ("ForTokenClassification",)))  # doctest: +SKIP
    """
    if task.name in TASKS:
        raise ValueError(f"a task named {task.name!r} is already registered")
    for other in TASKS.values():
        if other.modality != task.modality:
            continue
        if not task.class_suffixes and not other.class_suffixes:
            raise ValueError(f"task {other.name!r} already takes the {task.modality} models no other task claims")
        shared = set(task.class_suffixes) & set(other.class_suffixes)
        if shared:
            raise ValueError(f"task {other.name!r} already claims the classes ending in {', '.join(sorted(shared))}")
    TASKS[task.name] = task
    return task


def modality(model: Any) -> str:
    """``"image"`` for models that read ``pixel_values``, else ``"text"``.

    Example:
        >>> from types import SimpleNamespace
        >>> modality(SimpleNamespace(main_input_name="pixel_values")), modality(SimpleNamespace())
        ('image', 'text')
    """
    return "image" if getattr(model, "main_input_name", "input_ids") == "pixel_values" else "text"


def task_of(model: Any) -> Task:
    """The task of ``model``: the registered task of its modality whose class-name endings
    end its class name, else its modality's fallback (bare encoders: embeddings).

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> task_of(LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        ...                                      num_attention_heads=2, vocab_size=64))).name
        'causal-lm'
    """
    name, kind = type(model).__name__, modality(model)
    fallback = None
    for task in TASKS.values():
        if task.modality != kind:
            continue
        if not task.class_suffixes:
            fallback = task
        elif name.endswith(task.class_suffixes):
            return task
    if fallback is None:
        raise ValueError(f"no registered task takes {name}, a model of {kind}")
    return fallback


for _task in (
    Task("image-classification", "image", "image-classification", "AutoModelForImageClassification", CLASSIFICATION,
         ("ForImageClassification",)),
    Task("sequence-classification", "text", "text-classification", "AutoModelForSequenceClassification",
         CLASSIFICATION, ("ForSequenceClassification",)),
    Task("causal-lm", "text", "text-generation", "AutoModelForCausalLM", CAUSAL_LM, ("ForCausalLM", "LMHeadModel")),
    # evaluated as bare encoders are, as when masked LMs had no task of their own
    Task("masked-lm", "text", "fill-mask", "AutoModelForMaskedLM", EMBEDDING, ("ForMaskedLM",)),
    Task("embedding", "text", "feature-extraction", "AutoModel", EMBEDDING),
    Task("image-embedding", "image", "image-feature-extraction", "AutoModel", EMBEDDING),
):
    register_task(_task)
