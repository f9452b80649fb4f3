"""The task registry: every task detected on a tiny model, its card entries, and the rules
of registration."""

import pytest
import transformers

from snows_hf.evaluation import CAUSAL_LM, CLASSIFICATION, EMBEDDING
from snows_hf.heads import TASKS, Task, modality, register_task, task_of

_BERT = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=64)
_VIT = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=16,
            patch_size=8)
_LLAMA = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=64)

# (model class, its config) -> task name, modality, pipeline tag, Auto class, evaluation
CASES = [
    ("ViTForImageClassification", transformers.ViTConfig(**_VIT, num_labels=3),
     "image-classification", "image", "image-classification", "AutoModelForImageClassification", CLASSIFICATION),
    ("BertForSequenceClassification", transformers.BertConfig(**_BERT, num_labels=3),
     "sequence-classification", "text", "text-classification", "AutoModelForSequenceClassification", CLASSIFICATION),
    ("LlamaForCausalLM", transformers.LlamaConfig(**_LLAMA),
     "causal-lm", "text", "text-generation", "AutoModelForCausalLM", CAUSAL_LM),
    ("GPT2LMHeadModel", transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=64),
     "causal-lm", "text", "text-generation", "AutoModelForCausalLM", CAUSAL_LM),
    ("BertForMaskedLM", transformers.BertConfig(**_BERT),
     "masked-lm", "text", "fill-mask", "AutoModelForMaskedLM", EMBEDDING),
    ("BertModel", transformers.BertConfig(**_BERT),
     "embedding", "text", "feature-extraction", "AutoModel", EMBEDDING),
    ("ViTModel", transformers.ViTConfig(**_VIT),
     "image-embedding", "image", "image-feature-extraction", "AutoModel", EMBEDDING),
]


@pytest.mark.parametrize("cls, config, name, kind, pipeline_tag, auto_class, evaluation", CASES, ids=[c[0] for c in CASES])
def test_each_task_is_detected_on_a_tiny_model(cls, config, name, kind, pipeline_tag, auto_class, evaluation):
    model = getattr(transformers, cls)(config)
    task = task_of(model)
    assert (task.name, task.modality, task.pipeline_tag, task.auto_class) == (name, kind, pipeline_tag, auto_class)
    assert task.evaluation is evaluation and modality(model) == kind
    # the card's Auto class builds a model of the same task from the same config
    assert task_of(getattr(transformers, auto_class).from_config(config)) is task


def test_every_registered_task_has_a_case():
    assert {case[2] for case in CASES} == set(TASKS)


def test_report_names_of_the_evaluations_stay_as_they_were():
    """report.json's evaluation.task: a masked LM is measured, and named, as a bare encoder."""
    assert {name: task.evaluation.name for name, task in TASKS.items()} == {
        "image-classification": "classification", "sequence-classification": "classification",
        "causal-lm": "causal-lm", "masked-lm": "embedding", "embedding": "embedding", "image-embedding": "embedding",
    }


@pytest.mark.parametrize("task, message", [
    (Task("causal-lm", "text", "text-generation", "AutoModelForCausalLM", CAUSAL_LM, ("ForCausalGeneration",)),
     "a task named 'causal-lm' is already registered"),
    (Task("other-lm", "text", "text-generation", "AutoModelForCausalLM", CAUSAL_LM, ("ForCausalLM",)),
     "task 'causal-lm' already claims the classes ending in ForCausalLM"),
    (Task("sentence-embedding", "text", "sentence-similarity", "AutoModel", EMBEDDING),
     "task 'embedding' already takes the text models no other task claims"),
])
def test_a_duplicate_registration_is_refused(task, message):
    before = dict(TASKS)
    with pytest.raises(ValueError, match=message):
        register_task(task)
    assert TASKS == before


def test_a_new_task_is_one_registration(monkeypatch):
    monkeypatch.setattr("snows_hf.heads.TASKS", dict(TASKS))
    token = register_task(Task("token-classification", "text", "token-classification", "AutoModelForTokenClassification",
                               CLASSIFICATION, ("ForTokenClassification",)))
    model = transformers.BertForTokenClassification(transformers.BertConfig(**_BERT, num_labels=3))
    assert task_of(model) is token
    # the same class ending on an image model is not this text task
    image = type("ViTForTokenClassification", (transformers.ViTModel,), {})(transformers.ViTConfig(**_VIT))
    assert task_of(image).name == "image-embedding"


def test_a_modality_is_one_of_the_known_ones():
    with pytest.raises(ValueError, match="modality must be one of text, image, got 'audio'"):
        Task("audio-classification", "audio", "audio-classification", "AutoModelForAudioClassification", CLASSIFICATION)
