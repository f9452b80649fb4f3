"""The model card written next to every pruned model."""

import json
from pathlib import Path

import yaml
from conftest import tiny_llama

import snows_hf
from snows_hf.card import build_card
from snows_hf.cli import main


def _texts(n=80):
    return "".join(json.dumps({"text": " ".join(f"w{(i * 7 + j) % 120}" for j in range(30))}) + "\n" for i in range(n))


def test_card_renders_parses_and_carries_eval_results(llama_dir, tmp_path):
    from huggingface_hub import ModelCard

    data = tmp_path / "d.jsonl"
    data.write_text(_texts())
    argv = ["prune", str(llama_dir), "--sparsity", "2:4", "--k-step", "1", "--newton-steps", "1", "--cg-iters", "3",
            "--dataset", str(data), "--num-samples", "16", "--seq-len", "16", "--batch-size", "4",
            "--eval-samples", "4", "--output-dir", "out", "--quiet"]
    assert main(argv) == 0
    text = Path("out/README.md").read_text()
    header = yaml.safe_load(text.split("---")[1])
    assert header["pipeline_tag"] == "text-generation" and header["library_name"] == "transformers"
    assert {"pruned", "sparse", "snows", "sparsity-2of4"} <= set(header["tags"])
    assert "base_model" not in header and "base_model_relation" not in header  # a local source has no Hub id
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
    report = snows_hf.prune_(model, {"sparsity": "0.5", "method": "magnitude", "diagnostics": False},
                             {"input_ids": __import__("torch").randint(0, 100, (4, 8))})
    payload = report.to_dict() | {
        "source_model": "org/tiny-llama", "data": {"dataset": "org/corpus", "split": "validation"},
        "evaluation": {"task": "causal-lm", "samples": 8, "dense": {"perplexity": 10.0}, "pruned": {"perplexity": 12.5}},
    }
    card = build_card(model, payload, repo_id="me/tiny-llama-50pct")
    assert card.data.base_model == "org/tiny-llama" and card.data.datasets == ["org/corpus"]
    assert {r.metric_value for r in card.data.eval_results} == {10.0, 12.5}
    assert "magnitude" in card.data.tags and 'from_pretrained("me/tiny-llama-50pct")' in str(card)
    assert "sparse GPU kernels" not in str(card)  # unstructured 50%: no kernel runs it faster
