"""Datasets -> calibration + disjoint held-out evaluation, and the before/after figures."""

import json
import logging
from pathlib import Path

import datasets
import pytest
import torch
from conftest import tiny_tokenizer, tiny_vit, tiny_llama

import snows_hf
from snows_hf.data import CalibrationConfig, load_dataset_split, prepare_data
from snows_hf.evaluation import compute_metrics, model_outputs


def _texts(n=40, words=30):
    return [" ".join(f"w{(i * 7 + j * 3) % 120}" for j in range(words)) for i in range(n)]


def _image_folder(root: Path, per_class=6, broken=0):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for label in ("cat", "dog", "fox"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            pixels = (torch.rand(20, 20, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    for i in range(broken):
        (root / "cat" / f"broken{i}.png").write_bytes(b"not a png")
    return root


def _vit_processor():
    from transformers import ViTImageProcessor

    return ViTImageProcessor(size={"height": 32, "width": 32})


def test_image_folder_calibration_and_labelled_eval_never_overlap(tmp_path, caplog):
    root = _image_folder(tmp_path / "imgs", broken=2)
    cfg = CalibrationConfig(dataset=str(root), num_samples=10, seed=1)
    split = load_dataset_split(cfg)
    with caplog.at_level(logging.WARNING):  # 18 good images, 2 broken: every row is visited
        data = prepare_data(split, cfg, tiny_vit(), _vit_processor(), eval_samples=8)
    assert data.calibration["pixel_values"].shape == (10, 3, 32, 32)
    assert len(data.evaluation) == 8 and data.evaluation.task == "classification"
    assert not set(data.source["calibration_rows"]) & set(data.source["eval_rows"])
    assert data.source["skipped_images"] == 2 and "skipped 2 images" in caplog.text
    labels = [split.data[r]["label"] for r in data.source["eval_rows"]]
    assert data.evaluation.labels.tolist() == labels
    again = prepare_data(split, cfg, tiny_vit(), _vit_processor(), eval_samples=8)
    assert torch.equal(again.calibration["pixel_values"], data.calibration["pixel_values"])
    metrics = compute_metrics(data.evaluation, model_outputs(tiny_vit(), data.evaluation))
    assert 0 <= metrics["top1_accuracy"] <= 1 and "top5_accuracy" not in metrics  # 3 classes


def test_all_images_broken_is_an_error(tmp_path):
    root = tmp_path / "bad" / "cat"
    root.mkdir(parents=True)
    for i in range(3):
        (root / f"{i}.png").write_bytes(b"garbage")
    cfg = CalibrationConfig(dataset=str(tmp_path / "bad"), num_samples=2)
    with pytest.raises(ValueError, match=r"no image in column 'image' could be decoded \(3 tried\)"):
        prepare_data(load_dataset_split(cfg), cfg, tiny_vit(), _vit_processor())


def test_jsonl_causal_lm_eval_packs_the_rows_after_calibration(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in _texts()))
    cfg = CalibrationConfig(dataset=str(path), num_samples=4, seq_len=16, seed=0)
    data = prepare_data(load_dataset_split(cfg), cfg, tiny_llama(), tiny_tokenizer(), eval_samples=5)
    assert data.calibration["input_ids"].shape == (4, 16)
    assert data.evaluation.inputs["input_ids"].shape == (5, 16) and data.evaluation.task == "causal-lm"
    assert not set(data.source["calibration_rows"]) & set(data.source["eval_rows"])
    metrics = compute_metrics(data.evaluation, model_outputs(tiny_llama(), data.evaluation))
    assert 50 < metrics["perplexity"] < 1000  # a random model over 128 tokens: about the vocabulary size


def test_parquet_sequence_classifier_and_in_memory_bare_encoder(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    texts = _texts(30)
    labels = [i % 3 for i in range(30)]
    path = tmp_path / "d.parquet"
    datasets.Dataset.from_dict({"sentence": texts, "label": labels}).to_parquet(str(path))
    torch.manual_seed(0)
    bert = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=128)
    classifier = BertForSequenceClassification(BertConfig(**bert, num_labels=3)).eval()
    cfg = CalibrationConfig(dataset=str(path), num_samples=4, seq_len=16)
    data = prepare_data(load_dataset_split(cfg), cfg, classifier, tiny_tokenizer(), eval_samples=10)
    assert data.evaluation.task == "classification" and data.evaluation.inputs["input_ids"].shape[0] == 10
    assert data.evaluation.labels.tolist() == [labels[r] for r in data.source["eval_rows"]]

    topics = ["sport", "tech"] * 15
    split = datasets.Dataset.from_dict({"text": texts, "topic": topics})
    bare = BertModel(BertConfig(**bert)).eval()
    cfg = CalibrationConfig(num_samples=3, seq_len=16, label_column="topic")
    data = prepare_data(split, cfg, bare, tiny_tokenizer(), eval_samples=12)
    dense = model_outputs(bare, data.evaluation)
    metrics = compute_metrics(data.evaluation, dense, dense)
    assert metrics["cosine_to_dense"] == pytest.approx(1.0) and metrics["cosine_to_dense_min"] == pytest.approx(1.0)
    assert 0 <= metrics["linear_probe_accuracy"] <= 1
    assert set(data.evaluation.labels.tolist()) <= {0, 1}


def test_embedding_metrics_give_the_worst_cosine_beside_the_mean():
    from snows_hf.data import EvalSet
    from snows_hf.evaluation import EMBEDDING

    eval_set = EvalSet(EMBEDDING, {"input_ids": torch.zeros(3, 4, dtype=torch.long)})
    dense = {"embeddings": torch.eye(3)}
    pruned = {"embeddings": torch.tensor([[0.0, 1.0, 0.0], [0.0, 2.0, 0.0], [1.0, 0.0, 1.0]])}  # cosines 0, 1, 1/sqrt(2)
    metrics = compute_metrics(eval_set, pruned, dense)
    assert metrics == {"cosine_to_dense": pytest.approx((1 + 0.5 ** 0.5) / 3), "cosine_to_dense_min": pytest.approx(0.0)}


def test_a_run_reports_before_after_and_evaluate_reproduces_it(llama_dir, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in _texts(60)))
    data = {"dataset": str(path), "num_samples": 8, "seq_len": 16, "eval_samples": 6}
    out = snows_hf.run(llama_dir, {"sparsity": "50%", "method": "mask-only", "mask": "magnitude"}, data, output_dir="out",
                       progress=False).format()
    assert "perplexity" in out and "dense" in out and "pruned" in out and "overall measured sparsity" in out
    report = json.loads(Path("out/report.json").read_text())
    figures = report["evaluation"]
    assert figures["task"] == "causal-lm" and figures["samples"] == 6
    assert figures["pruned"]["perplexity"] > figures["dense"]["perplexity"] > 1
    assert report["data"]["split"] == "train" and report["data"]["dataset"] == str(path)
    assert not set(report["data"]["calibration_rows"]) & set(report["data"]["eval_rows"])
    assert list(report["phases"]) == ["load", "data", "dense eval", "prune", "pruned eval"]  # written while saving

    again = snows_hf.evaluate("out", data, reference=llama_dir).figures
    assert again["pruned"]["perplexity"] == pytest.approx(figures["pruned"]["perplexity"], rel=1e-5)
    assert again["dense"]["perplexity"] == pytest.approx(figures["dense"]["perplexity"], rel=1e-5)
    assert again["data"]["eval_rows"] == report["data"]["eval_rows"]


def test_no_eval_and_image_classifier(vit_dir, tmp_path):
    root = _image_folder(tmp_path / "imgs")
    config = {"sparsity": "2:4", "method": "mask-only", "mask": "magnitude"}
    snows_hf.run(vit_dir, config, {"dataset": str(root), "num_samples": 6, "eval_samples": 6}, output_dir="a",
                 progress=False)
    figures = json.loads(Path("a/report.json").read_text())["evaluation"]
    assert set(figures["pruned"]) == {"top1_accuracy", "top1_agreement"}
    snows_hf.run(vit_dir, config, {"dataset": str(root), "num_samples": 6}, evaluate=False, output_dir="b", progress=False)
    report = json.loads(Path("b/report.json").read_text())
    assert report["evaluation"] is None and report["data"]["eval_rows"] == []
