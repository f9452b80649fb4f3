"""Hostile and unlucky inputs (issue 20): each case is one clear line on stderr, a non-zero
exit, and nothing written or lost; or, where the input is legal, a run that says what it
did instead of publishing something wrong."""

import json
import math
from pathlib import Path

import pytest

from snows_hf.cli import main


def _texts(path: Path, n: int = 40, words: int = 30) -> Path:
    path.write_text("".join(json.dumps({"text": " ".join(f"w{(i * 7 + j) % 120}" for j in range(words))}) + "\n"
                            for i in range(n)))
    return path


def _image_folder(root: Path, classes: int, per_class: int = 2) -> Path:
    import torch
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray((torch.rand(16, 16, 3, generator=g) * 255).to(torch.uint8).numpy()).save(root / f"class{c}" / f"{i}.png")
    return root


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _setup(tmp_path: Path) -> None:
    Path("empty.jsonl").write_text("")
    Path("blank.jsonl").write_text("\n\n")
    Path("latin1.txt").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1") * 20)
    _texts(Path("d.jsonl"))
    _image_folder(Path("seven"), classes=7)
    Path("foreign").mkdir()
    Path("foreign/report.json").write_text('{"hello": 1}')


HOSTILE = [
    pytest.param(["prune", "{llama}", "--sparsity", "2:4", "--dataset", "empty.jsonl"], "dataset file 'empty.jsonl' is empty", id="empty-jsonl"),
    pytest.param(["prune", "{llama}", "--sparsity", "2:4", "--dataset", "blank.jsonl"], "cannot load dataset 'blank.jsonl': it holds no rows", id="blank-jsonl"),
    pytest.param(["eval", "{llama}", "--dataset", "empty.jsonl"], "dataset file 'empty.jsonl' is empty", id="eval-empty-jsonl"),
    pytest.param(["prune", "{llama}", "--sparsity", "2:4", "--dataset", "latin1.txt"], "it is not UTF-8 text (byte b'\\xe9' at position 3)", id="not-utf8"),
    pytest.param(["prune", "{llama}", "--sparsity", "2:4", "--dataset", "random", "--seed", str(2**70)], "seed must be an integer from 0 to", id="seed-overflow"),
    pytest.param(["prune", "{llama}", "--sparsity", "2:4", "--dataset", "random", "--seed", "-1"], "seed must be an integer from 0 to", id="seed-negative"),
    pytest.param(["eval", "{llama}", "--dataset", "d.jsonl", "--num-samples", "2", "--seq-len", "16", "--reference", "{vit}"], "the reference is a ViTForImageClassification (model_type vit), the model a LlamaForCausalLM", id="reference-other-architecture"),
    pytest.param(["convert", "foreign", "--to", "compact"], "foreign/report.json' is not a snows-hf report (no 'config')", id="convert-foreign-report"),
    pytest.param(["prune", "{vit}", "--sparsity", "2:4", "--dataset", "seven", "--num-samples", "4", "--method", "mask-only", "--mask", "magnitude"],
                 "labels in column 'label' (3, 4, 5, 6) are outside the model's 3 classes", id="labels-outside-classes"),
]


@pytest.mark.parametrize("argv, message", HOSTILE)
def test_hostile_input_is_one_line_and_nothing_is_written_or_lost(argv, message, vit_dir, llama_dir, tmp_path, capsys):
    _setup(tmp_path)
    before = _snapshot(tmp_path)
    argv = [a.format(vit=vit_dir, llama=llama_dir) for a in argv]
    code = main(argv + (["--output-dir", "out"] if argv[0] == "prune" else []))
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("snows-hf: error:")]
    assert code == 1 and len(errors) == 1 and "Traceback" not in err, err
    assert message in errors[0], errors[0]
    assert _snapshot(tmp_path) == before  # nothing written, nothing lost


def test_non_finite_metrics_make_valid_json_and_stay_out_of_the_model_index(llama_dir, tmp_path, capsys):
    """--seq-len 1 leaves a causal LM no next token to score: perplexity is NaN."""
    import yaml

    _texts(tmp_path / "d.jsonl")
    assert main(["prune", str(llama_dir), "--sparsity", "2:4", "--method", "mask-only", "--mask", "magnitude", "--dataset", "d.jsonl",
                 "--seq-len", "1", "--num-samples", "4", "--eval-samples", "4", "--output-dir", "out"]) == 0
    text = Path("out/report.json").read_text()
    report = json.loads(text, parse_constant=lambda token: pytest.fail(f"report.json holds {token}"))
    assert report["evaluation"]["pruned"]["perplexity"] is None  # strict JSON: null, not NaN
    card = Path("out/README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    values = [m["value"] for entry in header.get("model-index", []) for r in entry["results"] for m in r["metrics"]]
    assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
    assert "left out of the card's model-index" in capsys.readouterr().err


def test_calibration_using_every_row_says_evaluation_was_skipped(llama_dir, tmp_path, capsys):
    _texts(tmp_path / "d.jsonl", n=6)
    assert main(["prune", str(llama_dir), "--sparsity", "2:4", "--method", "mask-only", "--mask", "magnitude", "--dataset", "d.jsonl",
                 "--seq-len", "16", "--num-samples", "64", "--output-dir", "out"]) == 0
    err = capsys.readouterr().err
    assert "no held-out evaluation samples are left after the 6 calibration rows" in err
    report = json.loads(Path("out/report.json").read_text())
    assert report["data"]["evaluation_skipped"] == "no held-out rows are left after the calibration rows"
    assert report["data"]["eval_samples"] == 0 and report["evaluation"] is None


def test_a_model_offloaded_to_disk_is_evaluated_through_accelerates_hooks(llama_dir, tmp_path, capsys):
    _texts(tmp_path / "d.jsonl")
    common = ["--sparsity", "2:4", "--method", "mask-only", "--mask", "magnitude", "--dataset", "d.jsonl", "--num-samples", "8",
              "--seq-len", "16", "--eval-samples", "4", "--quiet"]
    assert main(["prune", str(llama_dir), *common, "--output-dir", "in-memory"]) == 0
    assert main(["prune", str(llama_dir), *common, "--max-memory", "cpu=1KB", "--output-dir", "offloaded"]) == 0, \
        capsys.readouterr().err
    plain, offloaded = (json.loads(Path(f"{d}/report.json").read_text())["evaluation"] for d in ("in-memory", "offloaded"))
    for label in ("dense", "pruned"):
        assert offloaded[label]["perplexity"] == pytest.approx(plain[label]["perplexity"], rel=1e-5)


def test_push_with_no_token_anywhere_is_one_line_at_once(vit_dir, tmp_path, monkeypatch, capsys):
    import time

    import huggingface_hub.constants

    assert main(["prune", str(vit_dir), "--dataset", "random", "--sparsity", "2:4", "--method", "mask-only", "--mask", "magnitude",
                 "--num-samples", "4", "--output-dir", "out", "--quiet"]) == 0
    capsys.readouterr()
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-here"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: no request may be needed
    before, start = _snapshot(tmp_path / "out"), time.monotonic()
    assert main(["push", "out", "tester/x"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "snows-hf: error: no Hub token found: pass --token, set HF_TOKEN, or run `hf auth login`"
    assert time.monotonic() - start < 5 and _snapshot(tmp_path / "out") == before
