"""Calibration tensors from datasets: counts, seeding, columns, and clear errors."""

import json

import datasets
import pytest
import torch
from conftest import tiny_llama, tiny_tokenizer, tiny_vit

from snows_hf.data import (DEFAULT_SEQ_LEN, CalibrationConfig, build_calibration, calibration_from_split, check_seq_len,
                           fit_seq_len, prepare_run_data)
from snows_hf.recipe import load_recipe


def _texts(n=20, words=25):
    return [" ".join(f"w{(i * 13 + j) % 120}" for j in range(words)) for i in range(n)]


def test_text_packing_exact_count_and_seeded():
    model, tok = tiny_llama(), tiny_tokenizer()
    split = datasets.Dataset.from_dict({"text": _texts()})
    cfg = CalibrationConfig(num_samples=5, seq_len=16, seed=3)
    a = calibration_from_split(split, cfg, model, tok)
    b = calibration_from_split(split, cfg, model, tok)
    assert a["input_ids"].shape == (5, 16)
    assert torch.equal(a["input_ids"], b["input_ids"])
    c = calibration_from_split(split, CalibrationConfig(num_samples=5, seq_len=16, seed=4), model, tok)
    assert not torch.equal(a["input_ids"], c["input_ids"])


def test_fewer_samples_than_asked_uses_all(caplog):
    split = datasets.Dataset.from_dict({"text": _texts(n=2, words=20)})
    cal = calibration_from_split(split, CalibrationConfig(num_samples=50, seq_len=8), tiny_llama(), tiny_tokenizer())
    assert cal["input_ids"].shape == (5, 8)  # 2 x 21 tokens -> 5 full sequences
    assert "fewer than the 50 asked for" in caplog.text


def test_seq_len_capped_at_model_positions(caplog):
    with caplog.at_level("INFO", logger="snows_hf"):
        cal = build_calibration(CalibrationConfig(dataset="random", num_samples=2), tiny_llama())  # the default, 512
    assert cal["input_ids"].shape == (2, 128)
    assert [r.levelname for r in caplog.records if "exceeds the model's 128 positions" in r.getMessage()] == ["INFO"]


def test_a_seq_len_that_is_set_is_explicit_and_the_run_records_the_length_used(tmp_path):
    """seq_len=None is the default (shortened to the model's positions); a set one is
    refused beyond them, by the library as by the command line."""
    llama = tiny_llama()  # 128 positions
    with pytest.raises(ValueError, match=r"^seq_len 4096 exceeds the model's 128 positions"):
        build_calibration(CalibrationConfig(dataset="random", num_samples=2, seq_len=4096), llama)
    with pytest.raises(ValueError, match=r"^seq_len 4096 exceeds the model's 128 positions"):
        check_seq_len(CalibrationConfig(seq_len=4096), llama)
    check_seq_len(CalibrationConfig(), llama)  # the default is shortened, not refused
    assert prepare_run_data(CalibrationConfig(dataset="random", num_samples=2), llama, None)[1].seq_len == 128
    assert prepare_run_data(CalibrationConfig(dataset="random", num_samples=2, seq_len=16), llama, None)[1].seq_len == 16
    assert prepare_run_data(CalibrationConfig(dataset="random", num_samples=2), tiny_vit(), None)[1].seq_len == DEFAULT_SEQ_LEN


@pytest.mark.parametrize("written, read", [(512, None), (128, 128), (16, 16)])
def test_a_recipes_seq_len_of_512_reads_as_the_default(tmp_path, written, read):
    """Recipes written while seq_len defaulted to 512 hold 512 also where the model's
    positions shortened it: they rerun as they ran, shortened rather than refused."""
    path = tmp_path / "recipe.yaml"
    path.write_text(f"prune: {{sparsity: '2:4'}}\ndata: {{dataset: random, seq_len: {written}}}\n")
    assert load_recipe(path)[1].seq_len == read
    assert build_calibration(load_recipe(path)[1], tiny_llama())["input_ids"].shape[1] == min(written, 128)


def test_an_explicit_seq_len_beyond_the_positions_is_refused_and_the_default_shortened():
    """One policy for every caller (the command line passes explicit=True for --seq-len)."""
    llama, vit = tiny_llama(), tiny_vit()  # 128 positions; a ViT has no max_position_embeddings
    with pytest.raises(ValueError, match=r"^seq_len 4096 exceeds the model's 128 positions .*use a seq_len of 128 or less$"):
        fit_seq_len(4096, llama, explicit=True)
    assert fit_seq_len(4096, llama) == fit_seq_len(CalibrationConfig().seq_len, llama) == 128
    assert fit_seq_len(128, llama, explicit=True) == 128 and fit_seq_len(4096, vit, explicit=True) == 4096


def test_random_calibration_shapes():
    assert build_calibration(CalibrationConfig(dataset="random", num_samples=3), tiny_vit())["pixel_values"].shape == (3, 3, 32, 32)


def test_jsonl_file_and_column_errors(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"body": t, "n": i}) for i, t in enumerate(_texts())))
    model, tok = tiny_llama(), tiny_tokenizer()
    cal = build_calibration(CalibrationConfig(dataset=str(path), num_samples=3, seq_len=8), model, tok)
    assert cal["input_ids"].shape == (3, 8)
    with pytest.raises(ValueError, match="column 'text' not in the dataset; columns: body, n"):
        build_calibration(CalibrationConfig(dataset=str(path), text_column="text"), model, tok)
    with pytest.raises(ValueError, match="has no split 'test'"):
        build_calibration(CalibrationConfig(dataset=str(path), split="test"), model, tok)
    with pytest.raises(ValueError, match="holds int, not strings"):
        build_calibration(CalibrationConfig(dataset=str(path), text_column="n"), model, tok)


def test_bad_config_values():
    with pytest.raises(ValueError, match="num_samples must be at least 1"):
        CalibrationConfig(num_samples=0)
    with pytest.raises(ValueError, match="empty"):
        calibration_from_split(datasets.Dataset.from_dict({"text": []}), CalibrationConfig(), tiny_llama(), tiny_tokenizer())
