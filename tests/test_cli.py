"""End-to-end runs of the `snows-hf` command on tiny models, and its bad-input answers."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import patch_everywhere

from snows_hf.cli import main
from snows_hf.masks import parse_sparsity, satisfies, to_rows

from test_masks import INVALID_SPECS as BAD_SPECS


def _targets(model, block_prefix):
    return {
        name: module for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.startswith(block_prefix)
    }


def _check_output(out, source_dir, auto_cls, block_prefix, spec):
    pruned = auto_cls.from_pretrained(out)
    dense = auto_cls.from_pretrained(source_dir)
    pattern = parse_sparsity(spec)
    targets = _targets(pruned, block_prefix)
    assert targets
    block = json.loads((Path(out) / "config.json").read_text())["sparsity"]
    assert block["pattern"] == str(pattern) and block["method"] == "mask-only" and block["mask"] == "magnitude" and "k_step" not in block
    assert set(block["layers"]) == set(targets)
    for name, module in targets.items():
        assert satisfies(to_rows(module.weight, "linear") != 0, pattern), name
        measured = float((module.weight == 0).float().mean())
        assert block["layers"][name] == pytest.approx(measured, abs=1e-6)
    target_keys = {f"{name}.weight" for name in targets}
    dense_state = dense.state_dict()
    for key, value in pruned.state_dict().items():
        if key not in target_keys:
            assert torch.equal(value, dense_state[key]), key
    assert block["overall"] == pytest.approx(pattern.fraction, abs=1e-6)
    report = json.loads((Path(out) / "report.json").read_text())
    assert len(report["layers"]) == len(targets)
    return pruned


def test_prune_tiny_vit_2of4(vit_dir, capsys):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    assert main(["prune", str(vit_dir), "--dataset", "random", "--sparsity", "2:4", "--method", "mask-only", "--mask", "magnitude", "--output-dir", "out", "--quiet"]) == 0
    assert "overall measured sparsity: 50.00%" in capsys.readouterr().out
    _check_output("out", vit_dir, AutoModelForImageClassification, "vit.layers.", "2:4")
    AutoImageProcessor.from_pretrained("out")  # processor files travel with the model
    # the checkpoint keeps transformers' saved key names, so older loaders read it too
    assert any(k.startswith("vit.encoder.layer.0.") for k in load_file("out/model.safetensors"))


def test_prune_tiny_llama_50pct_from_jsonl(llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = tmp_path / "calib.jsonl"
    rows = [{"text": " ".join(f"w{(i * 7 + j) % 120}" for j in range(40))} for i in range(30)]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    args = ["prune", str(llama_dir), "--sparsity", "50%", "--method", "mask-only", "--mask", "magnitude", "--dataset", str(data), "--num-samples", "6",
            "--seq-len", "32", "--batch-size", "4", "--output-dir", "out", "--quiet"]
    assert main(args) == 0
    _check_output("out", llama_dir, AutoModelForCausalLM, "model.layers.", "50%")
    report = json.loads(Path("out/report.json").read_text())
    assert report["num_calibration_samples"] == 6
    assert report["calibration"]["dataset"] == str(data)
    AutoTokenizer.from_pretrained("out")


def test_prune_vit_from_image_folder(vit_dir, tmp_path):
    from PIL import Image

    for label in ("a", "b"):
        folder = tmp_path / "images" / "train" / label
        folder.mkdir(parents=True)
        for i in range(3):
            Image.fromarray((torch.rand(40, 40, 3) * 255).byte().numpy()).save(folder / f"{i}.png")
    args = ["prune", str(vit_dir), "--sparsity", "4:8", "--method", "mask-only", "--mask", "magnitude", "--dataset", str(tmp_path / "images"),
            "--num-samples", "10", "--output-dir", "out", "--quiet"]
    assert main(args) == 0
    assert json.loads(Path("out/report.json").read_text())["num_calibration_samples"] == 6  # all that exist


def test_overwrite_replaces_only_when_asked(vit_dir):
    args = ["prune", str(vit_dir), "--dataset", "random", "--sparsity", "2:4", "--method", "mask-only", "--mask", "magnitude", "--output-dir", "out", "--quiet"]
    assert main(args) == 0
    first = Path("out/report.json").read_text()
    assert main(args) == 1
    assert Path("out/report.json").read_text() == first
    assert main(args + ["--overwrite"]) == 0
    assert Path("out/report.json").read_text() != first and Path("out/model.safetensors").exists()
    assert [p.name for p in Path(".").iterdir() if p.name.startswith(".")] == []  # no temporary folders left


def test_a_full_disk_is_refused_before_pruning_and_the_old_output_survives(vit_dir, monkeypatch, capsys):
    import shutil
    from collections import namedtuple

    args = ["prune", str(vit_dir), "--dataset", "random", "--sparsity", "2:4", "--output-dir", "out", "--overwrite", "--quiet"]
    assert main(args + ["--method", "mask-only", "--mask", "magnitude"]) == 0  # an earlier output, which --overwrite may replace
    old = Path("out/report.json").read_text()
    capsys.readouterr()
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "not enough free disk space" in err and err.count("\n") == 1
    assert Path("out/report.json").read_text() == old
    assert sorted(p.name for p in Path(".").iterdir()) == ["out", "tiny-vit"]  # no temporary folder, no checkpoint


def test_a_save_failing_halfway_leaves_the_old_output_and_no_temporary_folder(vit_dir, monkeypatch, capsys):
    import snows_hf.card

    old_args = ["prune", str(vit_dir), "--dataset", "random", "--sparsity", "2:4", "--method", "mask-only", "--output-dir", "out", "--quiet"]
    assert main(old_args) == 0  # an earlier output, which --overwrite may replace
    old = {p.name: p.read_bytes() for p in Path("out").iterdir()}

    def card_fails(*args, **kwargs):  # after the weights, before the card: a half-written new folder exists
        raise OSError(28, "No space left on device")

    original = snows_hf.card.write_card
    patch_everywhere(monkeypatch, snows_hf.card, "write_card", card_fails)
    args = ["prune", str(vit_dir), "--dataset", "random", "--sparsity", "2:4", "--method", "mask-only", "--mask", "magnitude", "--output-dir", "out", "--overwrite",
            "--quiet"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "rerun with --resume" in err
    assert {p.name: p.read_bytes() for p in Path("out").iterdir()} == old
    # no .out.tmp-* folder; the pruned blocks wait in the checkpoint, so nothing is computed twice
    assert sorted(p.name for p in Path(".").iterdir()) == [".out.snows-hf-checkpoint", "out", "tiny-vit"]
    patch_everywhere(monkeypatch, snows_hf.card, "write_card", original)
    assert main(args + ["--resume"]) == 0
    assert Path("out/model.safetensors").exists() and Path("out/report.json").read_bytes() != old["report.json"]
    assert sorted(p.name for p in Path(".").iterdir()) == ["out", "tiny-vit"]


@pytest.mark.parametrize("mode, size, suffix", [("L", (8, 8), "png"), ("RGBA", (8, 8), "png"), ("RGB", (1, 1), "png"),
                                               ("I;16", (8, 8), "png"), ("CMYK", (40, 20), "jpg")])
def test_images_of_any_mode_or_size_are_converted_not_refused(vit_dir, mode, size, suffix):
    from PIL import Image

    for label in ("a", "b"):
        (Path("odd") / label).mkdir(parents=True)
        for i in range(3):
            Image.new(mode, size).save(Path("odd") / label / f"{i}.{suffix}")
    assert main(["prune", str(vit_dir), "--sparsity", "2:4", "--method", "mask-only", "--mask", "magnitude", "--dataset", "odd",
                 "--num-samples", "4", "--output-dir", "out", "--quiet"]) == 0
    report = json.loads(Path("out/report.json").read_text())
    assert report["num_calibration_samples"] == 4 and report["evaluation"]["samples"] == 2


def test_a_read_only_output_place_is_refused_before_loading(vit_dir, monkeypatch, capsys):
    import snows_hf.output_folder

    monkeypatch.setattr(snows_hf.output_folder.os, "access", lambda path, mode: False)  # as root, nothing is read-only
    assert main(["prune", str(vit_dir), "--dataset", "random", "--sparsity", "2:4", "--output-dir", "ro/out", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "is not writable; choose another --output-dir" in err and err.count("\n") == 1
    assert not Path("ro").exists()


def test_defaults_run_snows_and_name_the_output(vit_dir):
    assert main(["prune", str(vit_dir), "--dataset", "random", "--sparsity", "50%", "--num-samples", "16", "--quiet"]) == 0
    block = json.loads(Path("tiny-vit-pruned-0.5/config.json").read_text())["sparsity"]
    assert (block["method"], block["k_step"], block["mask"]) == ("snows", 3, "sparsegpt")
    assert block["overall"] == pytest.approx(0.5)


@pytest.mark.parametrize("method, warned", [(["--method", "snows"], True), (["--method", "mask-only", "--mask", "wanda"], True),
                                            (["--method", "mask-only", "--mask", "magnitude"], False), (["--method", "magnitude"], False)])
def test_random_inputs_warn_when_the_method_fits_data(vit_dir, capsys, method, warned):
    assert main(["prune", str(vit_dir), "--dataset", "random", "--sparsity", "2:4", "--num-samples", "8",
                 "--batch-size", "4", "--no-diagnostics", *method, "--output-dir", "out"]) == 0
    err = capsys.readouterr().err
    assert ("fitted to noise, which damages real accuracy" in err) == warned
    assert "random inputs leave nothing to evaluate on" in err
    assert json.loads(Path("out/report.json").read_text())["data"]["dataset"] == "random"


def test_dry_run_of_a_bundled_recipes_model_says_so(capsys):
    code = main(["prune", "google/vit-base-patch16-224", "--sparsity", "2:4", "--dry-run"])
    err = capsys.readouterr().err
    assert "is the model of the bundled recipe vit-base-patch16-224-2of4" in err
    assert code == 1 and "Hugging Face Hub could not serve it" in err  # offline here: the config cannot be fetched


BAD_INPUTS = [
    pytest.param(["prune", "./no/such/model", "--dataset", "random", "--sparsity", "2:4"], "does not exist", id="missing-model"),
    pytest.param(["prune", "{vit}", "--sparsity", "2:4", "--output-dir", "{full}"], "full holds files snows-hf did not write (x)", id="non-empty-output"),
    pytest.param(["prune", "{vit}", "--sparsity", "2:4", "--num-samples", "0"], "--num-samples must be at least 1, got 0", id="num-samples-0"),
    pytest.param(["prune", "{vit}", "--sparsity", "2:4", "--method", "nope"], "invalid choice: 'nope'", id="unknown-method"),
    pytest.param(["prune", "{vit}", "--sparsity", "2:4", "--dataset", "./missing.jsonl"], "does not exist", id="missing-dataset"),
    pytest.param(["prune", "{vit}", "--dataset", "random", "--sparsity", "2:4", "--device", "cuda:7"], "device 'cuda:7'", id="absent-device"),
    pytest.param(["prune", "{vit}", "--dataset", "random"], "--sparsity", id="no-sparsity"),
    pytest.param(["prune", "google/vit-base-patch16-224", "--dataset", "random", "--sparsity", "2:4"], "Hugging Face Hub could not serve it", id="hub-id-offline"),
    pytest.param(["prune", "{vit}", "--dataset", "random", "--sparsity", "2:4", "--method", "mask-only", "--targets", "nope"], "--targets 'nope' matches no", id="targets-unmatched"),
    pytest.param(["prune", "{vit}", "--dataset", "random", "--sparsity", "2:4", "--targets", "("], "not a regular expression", id="targets-bad-regex"),
    pytest.param(["prune", "{vit}", "--dataset", "random", "--sparsity", "2:4", "--method", "mask-only", "--ignore", ".*"], "no module is left to prune", id="ignore-everything"),
    pytest.param(["prune", "{vit}", "--dataset", "random", "--sparsity", "2:4", "--allocation", "global"], "unstructured sparsity", id="global-nm"),
    pytest.param(["prune", "{vit}", "--dataset", "random", "--sparsity", "0.5", "--max-layer-sparsity", "0.9"], "allocation='global' only", id="cap-without-global"),
    pytest.param(["prune", "{vit}", "--dataset", "random", "--sparsity", "0.7", "--allocation", "global", "--max-layer-sparsity", "0.5"], "below the target", id="cap-below-target"),
    pytest.param(["prune", "{vit}", "--dataset", "random", "--sparsity", "0.7", "--allocation", "global", "--max-layer-sparsity", "x"], "invalid float value", id="cap-not-a-number"),
    pytest.param(["prune", "{vit}", "--dataset", "random", "--sparsity", "2:4", "--mask", "obs"], "invalid choice: 'obs'", id="unknown-mask"),
    pytest.param(["prune", "{vit}", "--dataset", "random", "--sparsity", "2:4", "--stats-dtype", "float16"], "invalid choice: 'float16'", id="stats-dtype"),
    pytest.param(["prune", "{vit}", "--dataset", "random", "--sparsity", "2:4", "--refit-unit", "layer"], "invalid choice: 'layer'", id="refit-unit"),
    pytest.param(["prune", "{vit}", "--dataset", "random", "--sparsity", "2:4", "--k-step", "-1"], "--k-step must be at least 0, got -1", id="k-negative"),
    pytest.param(["prune", "noweights", "--dataset", "random", "--sparsity", "2:4"], "cannot load the weights of 'noweights'", id="model-without-weights"),
    pytest.param(["prune", "corrupt", "--dataset", "random", "--sparsity", "2:4"], "corrupt or truncated", id="corrupt-safetensors"),
    pytest.param(["prune", "pickled", "--dataset", "random", "--sparsity", "2:4"], "pass --allow-pickle", id="pickle-only-checkpoint"),
    pytest.param(["prune", "unknown-arch", "--dataset", "random", "--sparsity", "2:4"], "does not recognize this architecture", id="unsupported-architecture"),
    pytest.param(["prune", "{llama}", "--dataset", "random", "--sparsity", "2:4", "--seq-len", "4096"], "exceeds the model's 128 positions", id="seq-len-too-long"),
    pytest.param(["prune", "{vit}", "--dataset", "random", "--sparsity", "2:4", "--resume", "--output-dir", "stale"], "is from a different run", id="resume-other-run"),
    pytest.param(["prune", "{vit}", "--dataset", "random", "--sparsity", "2:4", "--max-memory", "lots"], "not a memory size", id="max-memory-bad"),
    pytest.param(["prune", "{vit}", "--sparsity", "2:4", "--dataset", "nobody/nothing"], "cannot read Hub dataset 'nobody/nothing': Couldn't reach", id="hub-dataset-offline"),
    pytest.param(["prune", "{llama}", "--sparsity", "2:4", "--dataset", "numbers.jsonl", "--split", "test"], "has no split 'test'", id="missing-split"),
    pytest.param(["prune", "{llama}", "--sparsity", "2:4", "--dataset", "numbers.jsonl", "--text-column", "n"], "holds int, not strings", id="text-column-not-strings"),
    pytest.param(["prune", "{llama}", "--sparsity", "2:4", "--dataset", "numbers.jsonl", "--text-column", "body"], "text column 'body' not in the dataset", id="missing-text-column"),
    pytest.param(["eval", "{vit}"], "cannot read Hub dataset 'frgfm/imagenette'", id="eval-default-dataset-offline"),
    pytest.param(["eval", "{vit}", "--dataset", "random"], "eval needs real held-out data", id="eval-random"),
    pytest.param(["prune", "vit-base-patch16-224-2of4", "--sparsity", "2:4"], "names a bundled recipe, not a model; run it "
                 "with --recipe vit-base-patch16-224-2of4", id="recipe-name-as-model"),
    pytest.param(["prune", "{llama}", "--sparsity", "2:4"], "cannot read Hub dataset 'allenai/c4'", id="default-text-dataset-offline"),
    pytest.param(["prune", "{vit}", "--sparsity", "2:4", "--dataset", "empty.jsonl"], "empty", id="empty-dataset"),
    pytest.param(["prune", "{vit}", "--sparsity", "2:4", "--dataset", "broken"], "could be decoded (2 tried)", id="undecodable-images"),
    pytest.param(["prune", "{vit}", "--sparsity", "2:4", "--dataset", "imgs", "--label-column", "nope"], "label column 'nope' not in the dataset", id="missing-label-column"),
    pytest.param(["prune", "{vit}", "--sparsity", "2:4", "--dataset", "imgs", "--eval-samples", "-1"], "--eval-samples must be at least 0, got -1", id="eval-samples-negative"),
    pytest.param(["eval", "{vit}", "--dataset", "imgs", "--num-samples", "6"], "no held-out samples are left", id="eval-nothing-left"),
    pytest.param(["eval", "{vit}", "--dataset", "imgs", "--sparse-inference", "--device", "cuda:7"], "device 'cuda:7'", id="eval-absent-device"),
    pytest.param(["eval", "{vit}", "--dataset", "imgs", "--dtype", "float8"], "argument --dtype: invalid choice: 'float8'", id="eval-bad-dtype"),
    pytest.param(["prune", "{vit}", "--sparsity", "2:4", "--dataset", "imgs", "--processor", "./nowhere"], "holds no tokenizer or image processor", id="bad-processor"),
] + [
    pytest.param(["prune", "{vit}", "--dataset", "random", "--sparsity", spec], "invalid sparsity", id=f"sparsity-{spec or 'empty'}")
    for spec in BAD_SPECS
]


def _bad_model_folders(source):
    """Model folders that cannot be pruned: no weights, corrupt weights, pickles only, unknown type."""
    import shutil

    for name in ("noweights", "corrupt", "pickled", "unknown-arch"):
        shutil.copytree(source, name)
    Path("noweights/model.safetensors").unlink()
    Path("corrupt/model.safetensors").write_bytes(Path("corrupt/model.safetensors").read_bytes()[:100])
    from safetensors.torch import load_file

    torch.save(load_file("pickled/model.safetensors"), "pickled/pytorch_model.bin")
    Path("pickled/model.safetensors").unlink()
    config = json.loads(Path("unknown-arch/config.json").read_text())
    Path("unknown-arch/config.json").write_text(json.dumps(config | {"model_type": "no-such-family", "architectures": ["NoSuch"]}))
    stale = Path(".stale.snows-hf-checkpoint")  # a checkpoint of some other run
    stale.mkdir()
    (stale / "state.json").write_text(json.dumps({"format": 1, "fingerprint": {"config": {"k_step": 9}}}))


def _tiny_image_folder(root, per_class):
    from PIL import Image

    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (8, 8), (40 * i, 80, 120)).save(root / label / f"{i}.png")


@pytest.mark.parametrize("argv, message", BAD_INPUTS)
def test_bad_inputs_one_line_no_output(argv, message, vit_dir, llama_dir, capsys):
    Path("full").mkdir()
    Path("full/x").write_text("x")
    Path("empty.jsonl").write_text("")
    Path("numbers.jsonl").write_text("".join(json.dumps({"text": f"w{i} w{i + 1}", "n": i}) + "\n" for i in range(20)))
    (Path("broken") / "cat").mkdir(parents=True)
    for i in range(2):
        (Path("broken") / "cat" / f"{i}.png").write_bytes(b"garbage")
    _tiny_image_folder(Path("imgs"), 3)
    _bad_model_folders(llama_dir)
    before = sorted(p.name for p in Path(".").iterdir())
    argv = [a.format(vit=vit_dir, llama=llama_dir, full="full") for a in argv]
    try:
        prune = argv[0] == "prune" and "--output-dir" not in argv and len(argv) > 2
        code = main(argv + ["--output-dir", "out"] if prune else argv)
    except SystemExit as exc:  # argparse errors
        code = exc.code
    err = capsys.readouterr().err
    assert code != 0
    errors = [line for line in err.splitlines() if line.startswith("snows-hf: error:")]
    assert len(errors) == 1 and err.rstrip("\n").endswith(errors[0]), err  # one line, and the last
    assert message in errors[0] and "Traceback" not in err
    assert sorted(p.name for p in Path(".").iterdir()) == before  # nothing written
    assert Path("full/x").read_text() == "x"


def _run(*args):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "snows_hf", *args], capture_output=True, text=True, env=env, timeout=300)


def test_method_help_lists_each_registered_method_and_what_it_does(capsys, monkeypatch, registries):
    from dataclasses import dataclass

    from snows_hf.methods import MaskOnly, MethodConfig, register_method

    @dataclass
    class KeepConfig(MethodConfig):
        name = "keep-test"

    class Keep(MaskOnly):
        config_class = KeepConfig
        description = "the mask's weights as they are"

    monkeypatch.setenv("COLUMNS", "400")  # no word broken at a hyphen
    register_method(Keep)
    with pytest.raises(SystemExit):
        main(["prune", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert ("--method {keep-test,mask-only,snows,snows-fast} pruning method: snows (mask, then re-fit over a "
            "K-step window), mask-only (the mask selector's weights, no re-fit), snows-fast (SNOWS with at most 2 CG "
            "iterations: faster, less accurate), keep-test (the mask's weights as they are) (default: snows)") in out
    # an option two methods read shows each one's default
    assert "SNOWS re-fit (with --method snows or snows-fast)" in out
    assert "--cg-iters CG_ITERS SNOWS: conjugate-gradient iterations per Newton step at most (default: 5; snows-fast: 2)" in out


def test_module_entry_point_and_real_process_errors(tmp_path):
    assert "prune" in _run("--help").stdout
    result = _run("prune", str(tmp_path / "missing"), "--dataset", "random", "--sparsity", "2:4")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"snows-hf: error: model folder '{tmp_path / 'missing'}' does not exist"]
    result = _run("prune", str(tmp_path), "--dataset", "random", "--sparsity", "abc")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1


def test_sparsegpt_global_with_targets_from_the_command_line(llama_dir):
    from transformers import AutoModelForCausalLM

    argv = ["prune", str(llama_dir), "--dataset", "random", "--sparsity", "60%", "--method", "mask-only", "--mask", "sparsegpt",
            "--allocation", "global", "--max-layer-sparsity", "0.8", "--targets", "mlp", "--ignore", "down_proj",
            "--stats-dtype", "float64", "--num-samples", "8", "--output-dir", "out", "--quiet"]
    assert main(argv) == 0
    report = json.loads(Path("out/report.json").read_text())
    names = [layer["name"] for layer in report["layers"]]
    assert names == [f"model.layers.{i}.mlp.{p}" for i in range(2) for p in ("gate_proj", "up_proj")]
    assert report["config"]["max_layer_sparsity"] == 0.8 and report["config"]["targets"] == ["mlp"]
    assert all(layer["sparsity"] <= 0.8 + 1e-9 for layer in report["layers"])
    assert report["sparsity"] == pytest.approx(0.6, abs=1e-4)
    assert all(layer["diagnostics"]["jaccard"] <= 1 for layer in report["layers"])
    pruned = AutoModelForCausalLM.from_pretrained("out")
    assert bool((pruned.model.layers[0].mlp.down_proj.weight != 0).all())
