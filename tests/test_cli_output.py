"""What a user sees and keeps: progress and per-layer lines, the run's log file, inspect."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from snows_hf.cli import main

RUN = ["--dataset", "random", "--sparsity", "2:4", "--num-samples", "16", "--seq-len", "16", "--batch-size", "4", "--k-step", "1",
       "--newton-steps", "1", "--no-eval"]


def test_verbose_prints_a_line_per_layer_and_the_log_file_keeps_them(llama_dir, capsys):
    assert main(["prune", str(llama_dir), *RUN, "--output-dir", "v", "--verbose"]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "window loss" in line]
    assert len(lines) == 14 and all("CG " in line and " s" in line for line in lines)  # 2 blocks x 7 modules
    assert "model.layers.0.self_attn.q_proj: 50.0% sparse, window loss " in lines[0]
    log = Path("v/snows-hf.log").read_text()
    assert log.count("snows_hf.layers") == 14 and "captured 4 micro-batches" in log
    assert all(line[:4].isdigit() for line in log.splitlines())  # timestamped
    report = json.loads(Path("v/report.json").read_text())
    first = report["layers"][0]["metrics"]
    assert f"{first['heldout_loss_after']:.3g}" in lines[0]


def test_default_shows_progress_but_no_layer_lines_quiet_shows_neither(llama_dir, capsys):
    assert main(["prune", str(llama_dir), *RUN, "--output-dir", "d"]) == 0
    err = capsys.readouterr().err
    assert "window loss" not in err and "blocks: 100%" in err  # the tqdm bar over blocks
    assert Path("d/snows-hf.log").read_text().count("snows_hf.layers") == 14  # the log has them anyway
    assert main(["prune", str(llama_dir), *RUN, "--output-dir", "q", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "window loss" not in err and "blocks:" not in err and "captured" not in err


def test_quiet_and_verbose_exclude_each_other(llama_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["prune", str(llama_dir), *RUN, "--quiet", "--verbose"])
    assert exit_info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["dense", "compact"])
def test_inspect_checks_every_layer_and_catches_a_broken_group(llama_dir, capsys, fmt):
    assert main(["prune", str(llama_dir), *RUN, "--output-dir", "out", "--save-format", fmt, "--quiet"]) == 0
    capsys.readouterr()
    assert main(["inspect", "out", "--json", "found.json"]) == 0
    out = capsys.readouterr().out
    assert "written by snows-hf" in out and "pattern 2:4, method snows" in out and f"format {fmt}" in out
    assert "size on disk" in out
    assert "14 layers, 50.00% of their weights are zero; every layer follows its pattern" in out
    # hidden 32 and k/v 16 fit cuSPARSELt's 16 x 16 tiles, the 72-wide MLP does not; the head is dense
    assert "2:4 GPU kernels (cusparselt, float16/bfloat16): 8 of 15 linear layers would run on them" in out
    assert "  kept dense, shape: cusparselt needs out x in features in multiples of 16 x 16: 6" in out
    assert "  kept dense, not 2:4: 1" in out
    assert max(map(len, out.splitlines())) <= 100
    found = json.loads(Path("found.json").read_text())
    assert found["valid"] and len(found["layers"]) == 14 and found["files"]["model.safetensors"] > 0
    assert found["sparse_kernels"] == {"backend": "cusparselt", "ready": 8, "linear": 15, "kept_dense": {
        "shape: cusparselt needs out x in features in multiples of 16 x 16": 6, "not 2:4": 1}}
    if fmt == "compact":
        assert main(["convert", "out", "--to", "dense"]) == 0
        assert capsys.readouterr().out == "wrote dense checkpoint of 14 pruned layers to out-dense\n"
        return
    weights = load_file("out/model.safetensors")
    name = "model.layers.1.mlp.up_proj.weight"
    weights[name][0, :4] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # a kept weight that is zero itself: still 2:4
    save_file(weights, "out/model.safetensors", metadata={"format": "pt"})
    assert main(["inspect", "out"]) == 0
    capsys.readouterr()
    weights[name][0, :4] = torch.tensor([1.0, 2.0, 3.0, 4.0])  # one group of four keeps all four
    save_file(weights, "out/model.safetensors", metadata={"format": "pt"})
    assert main(["inspect", "out"]) == 1
    out = capsys.readouterr().out
    assert "model.layers.1.mlp.up_proj" in out and "NO" in out and "1 break their pattern" in out


def test_inspect_a_plain_model_folder_and_bad_folders(llama_dir, capsys, tmp_path):
    assert main(["inspect", str(llama_dir)]) == 0
    out = capsys.readouterr().out
    assert "no snows-hf metadata" in out and "0 layers" in out and "GPU kernels" not in out  # dense: nothing to say
    # a plain (dense) folder whose weights happen to hold zeros: reported, never failed
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(llama_dir)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[:, 1::2] = 0  # 1:2 zeros: 2:4 and 4:8 hold, 1:4 not
        model.model.layers[0].mlp.down_proj.weight[0, 0] = 0  # one zero: no N:M pattern
    model.save_pretrained(tmp_path / "plain")
    assert main(["inspect", str(tmp_path / "plain")]) == 0
    out = capsys.readouterr().out
    up = next(line for line in out.splitlines() if line.startswith("model.layers.0.mlp.up_proj"))
    down = next(line for line in out.splitlines() if line.startswith("model.layers.0.mlp.down_proj"))
    assert "50.00%" in up and " 2:4  yes" in up and " -  yes" in down and "2 layers" in out
    assert main(["inspect", "nowhere"]) == 1
    err = capsys.readouterr().err
    assert "not a model folder" in err and len(err.strip().splitlines()) == 1
