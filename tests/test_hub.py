"""Pushing to and pruning from a Hub: the real huggingface_hub client against the loopback
server of tests/hub_server.py (HUB_PROTOCOL.md), over real HTTP on 127.0.0.1."""

import json
import logging
import os
import subprocess
import sys

import pytest
import torch
from conftest import tiny_llama, tiny_tokenizer
from hub_server import TOKEN

import snows_hf
from snows_hf.cli import main
from snows_hf.hub import push_folder


def _client_env(server, tmp_path):
    """Environment of a fresh process whose huggingface_hub talks to the loopback hub."""
    return dict(os.environ, HF_ENDPOINT=server.url, HF_HUB_DISABLE_XET="1", HF_HOME=str(tmp_path / "hf-home"),
                HF_HUB_OFFLINE="0", HF_TOKEN=TOKEN)


def _texts(path):
    path.write_text("".join(json.dumps({"text": " ".join(f"w{(i * 7 + j) % 120}" for j in range(30))}) + "\n" for i in range(80)))
    return path


def _prune(llama_dir, out, tmp_path, **options):
    data = {"dataset": str(_texts(tmp_path / "d.jsonl")), "num_samples": 8, "seq_len": 16, "eval_samples": 4}
    snows_hf.run(llama_dir, {"sparsity": "2:4", "method": "mask-only", "mask": "magnitude"}, data, output_dir=out, progress=False, **options)


def _all_pushed_bytes(server):
    return b"".join(data for repo in server.repos.values() for data in repo.files.values())


def test_push_both_formats_then_from_pretrained_by_repo_id(hub, llama_dir, tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    _prune(llama_dir, tmp_path / "dense", tmp_path, push_to_hub="tester/llama-2of4", token=TOKEN)
    _prune(llama_dir, tmp_path / "compact", tmp_path, save_format="compact")
    assert main(["push", str(tmp_path / "compact"), "tester/llama-2of4-compact", "--token", TOKEN, "--quiet"]) == 0
    output = capsys.readouterr()
    assert TOKEN not in output.out + output.err + caplog.text  # the token reaches no log line ...
    assert TOKEN.encode() not in _all_pushed_bytes(hub)  # ... and no pushed file
    for folder in ("dense", "compact"):
        assert TOKEN not in "".join(p.read_text(errors="ignore") for p in (tmp_path / folder).iterdir())

    torch.save({k: v.clone() for k, v in __import__("transformers").AutoModelForCausalLM.from_pretrained(
        tmp_path / "dense").state_dict().items()}, tmp_path / "expected.pt")
    code = (
        "import sys, torch, snows_hf\n"
        "from transformers import AutoModelForCausalLM\n"
        "from huggingface_hub import ModelCard\n"
        f"e = torch.load({str(tmp_path / 'expected.pt')!r}, weights_only=True)\n"
        "for repo in ('tester/llama-2of4', 'tester/llama-2of4-compact'):\n"
        "    m = AutoModelForCausalLM.from_pretrained(repo)\n"
        "    assert all(torch.equal(v, e[k]) for k, v in m.state_dict().items()), repo\n"
        "card = ModelCard.load('tester/llama-2of4')\n"
        "print({r.metric_name: r.metric_value for r in card.data.eval_results})\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=_client_env(hub, tmp_path), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "dense" / "report.json").read_text())
    metrics = eval(result.stdout.strip().splitlines()[-1])
    assert metrics["perplexity (pruned)"] == report["evaluation"]["pruned"]["perplexity"]
    assert metrics["perplexity (dense baseline)"] == report["evaluation"]["dense"]["perplexity"]
    card = hub.repos[("model", "tester/llama-2of4")].files["README.md"].decode()
    assert 'from_pretrained("tester/llama-2of4")' in card


def test_second_push_of_unchanged_files_adds_nothing(hub, llama_dir, tmp_path):
    _prune(llama_dir, tmp_path / "out", tmp_path)
    push_folder(tmp_path / "out", "tester/again", token=TOKEN)
    repo = hub.repos[("model", "tester/again")]
    commits, uploads = len(repo.commits), sum(r.startswith("PUT /lfs/upload") for r in hub.requests)
    push_folder(tmp_path / "out", "tester/again", token=TOKEN)
    assert len(repo.commits) == commits == 1
    assert sum(r.startswith("PUT /lfs/upload") for r in hub.requests) == uploads
    assert not any(r.startswith("POST /api/models/tester/again/commit") for r in hub.requests[-5:])


def test_transient_server_errors_are_retried(hub, llama_dir, tmp_path):
    _prune(llama_dir, tmp_path / "out", tmp_path)
    hub.fail["commit"] = [500, 500]
    url = push_folder(tmp_path / "out", "tester/flaky", token=TOKEN, backoff=0.01)
    assert "tester/flaky" in url and hub.fail["commit"] == []
    assert len(hub.repos[("model", "tester/flaky")].commits) == 1


def test_bad_token_is_one_clear_line_and_keeps_the_output(hub, llama_dir, tmp_path, capsys):
    _prune(llama_dir, tmp_path / "out", tmp_path)
    before = sorted(p.name for p in (tmp_path / "out").iterdir())
    argv = ["prune", str(llama_dir), "--dataset", "random", "--sparsity", "2:4", "--method", "mask-only", "--mask", "magnitude", "--output-dir", str(tmp_path / "new"),
            "--push-to-hub", "tester/denied", "--token", "hf_wrong", "--quiet"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    line = [x for x in err.splitlines() if x.startswith("snows-hf: error:")]
    assert len(line) == 1 and "authentication failed" in line[0] and "HTTP 401" in line[0]
    assert f"snows-hf push {tmp_path / 'new'} tester/denied" in line[0]  # how to retry
    assert (tmp_path / "new" / "model.safetensors").is_file()  # the local output is intact
    assert "hf_wrong" not in err
    assert main(["push", str(tmp_path / "out"), "someone-else/repo", "--token", TOKEN, "--quiet"]) == 1
    assert "permission denied" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == before


def test_prune_a_model_and_a_dataset_by_their_hub_ids(hub, tmp_path):
    from huggingface_hub import HfApi

    base = tmp_path / "base"
    tiny_llama().save_pretrained(base)
    tiny_tokenizer().save_pretrained(base)
    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.create_repo("tester/tiny-llama")
    api.upload_folder(folder_path=str(base), repo_id="tester/tiny-llama")
    data = tmp_path / "data"
    data.mkdir()
    _texts(data / "train.jsonl")
    api.create_repo("tester/texts", repo_type="dataset")
    api.upload_folder(folder_path=str(data), repo_id="tester/texts", repo_type="dataset")
    code = ("import snows_hf\n"
            "snows_hf.run('tester/tiny-llama', {'sparsity': '2:4', 'method': 'mask-only', 'mask': 'magnitude'}, {'dataset': 'tester/texts', "
            f"'num_samples': 4, 'seq_len': 16, 'eval_samples': 2}}, output_dir={str(tmp_path / 'pruned')!r}, progress=False)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_client_env(hub, tmp_path), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "pruned" / "report.json").read_text())
    assert report["source_model"] == "tester/tiny-llama" and report["sparsity"] == pytest.approx(0.5)
    assert report["data"]["dataset"] == "tester/texts" and report["evaluation"]["samples"] == 2
    card = (tmp_path / "pruned" / "README.md").read_text()
    assert "base_model: tester/tiny-llama" in card and "- tester/texts" in card
