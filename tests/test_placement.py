"""Blocks brought to the device a window at a time; accelerate-offloaded models pruned in place."""

import hashlib

import pytest
import torch
from transformers import AutoModelForCausalLM

from snows_hf import PruneConfig, prune_, run
from snows_hf.cli import main
from snows_hf.workflow import placement
from snows_hf.distributed import Processes
from snows_hf.methods import SnowsConfig
from snows_hf.placement import block_budget, parse_max_memory, parse_size

CAL = torch.randint(0, 64, (12, 16), generator=torch.Generator().manual_seed(0))
CONFIG = dict(sparsity="2:4", method=SnowsConfig(k_step=4, init="mask", newton_steps=1), batch_size=3)


@pytest.fixture(scope="module")
def checkpoint(llama64_dir):
    return llama64_dir


@pytest.fixture(scope="module")
def reference(checkpoint):
    """The model pruned with every block resident (the plain way)."""
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    report = prune_(model, PruneConfig(**CONFIG), CAL)
    assert report.placement == {"streamed": False, "peak_blocks_on_device": 3}
    return model


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _max_diff(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return max(float((sa[k] - sb[k]).abs().max()) for k in sb)


def test_a_small_budget_streams_blocks_and_changes_nothing(checkpoint, reference):
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    report = prune_(model, PruneConfig(**CONFIG, max_memory="cpu=10KB"), CAL)
    assert report.placement == {"streamed": True, "peak_blocks_on_device": 2}  # a window, never all three
    assert _max_diff(model, reference) == 0.0


def test_disk_offloaded_model_is_pruned_in_place_without_touching_its_checkpoint(checkpoint, reference, tmp_path):
    before = _digest(checkpoint / "model.safetensors")
    model = AutoModelForCausalLM.from_pretrained(
        checkpoint, device_map="auto", max_memory={"cpu": 60_000}, offload_folder=str(tmp_path / "offload"))
    layer = model.model.layers[1].mlp.up_proj
    assert layer.weight.device.type == "meta" and layer._hf_hook.offload
    report = prune_(model, PruneConfig(**CONFIG), CAL)
    assert report.placement["streamed"] and report.placement["peak_blocks_on_device"] <= 2
    assert layer.weight.device.type == "meta" and layer._hf_hook.offload  # hooks back on, weights offloaded
    assert _digest(checkpoint / "model.safetensors") == before
    assert all(p.name.startswith("snows-hf-pruned.") for p in (tmp_path / "offload").iterdir())
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, reference(ids).logits, atol=1e-12)
    model.save_pretrained(tmp_path / "saved")
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    assert _max_diff(saved, reference) == 0.0
    assert float((saved.model.layers[1].mlp.up_proj.weight == 0).double().mean()) == 0.5


def test_a_run_with_max_memory_offloads_to_a_folder_it_removes(checkpoint, reference, tmp_path):
    out = tmp_path / "out"
    run(checkpoint, CONFIG | {"max_memory": "cpu=60KB"}, {"dataset": "random", "num_samples": 12, "seq_len": 16},
        evaluate=False, output_dir=out, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the offload folder is gone
    import json

    assert json.loads((out / "report.json").read_text())["placement"]["streamed"] is True


@pytest.mark.parametrize("value, message", [
    ("lots", "not a memory size"), ("gpu=2GB", "not a device"), (",", "empty"),
])
def test_bad_max_memory_is_one_line(checkpoint, tmp_path, capsys, value, message):
    code = main(["prune", str(checkpoint), "--dataset", "random", "--sparsity", "2:4", "--max-memory", value, "--output-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1 and message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_max_memory_is_refused_with_several_processes(tmp_path):
    config = PruneConfig(sparsity="2:4", max_memory="2GB")
    with pytest.raises(ValueError, match="several processes"):
        with placement(config, torch.device("cpu"), Processes(0, 2), str(tmp_path / "o")):
            pass


def test_sizes_and_budgets():
    assert parse_size("1KiB") == 1024 and parse_size("2.5 MB") == 2_500_000 and parse_size("7") == 7
    assert parse_max_memory("0=1GB,cpu=2GB", torch.device("cpu")) == {0: 10**9, "cpu": 2 * 10**9}
    assert block_budget(None, torch.device("cpu")) is None
    assert block_budget("0=1GB", torch.device("cpu")) is None  # names another device only
    assert block_budget("5GB", torch.device("cpu")) == 5 * 10**9


def test_an_error_mid_run_leaves_hooks_on_and_no_offload_folder(checkpoint, tmp_path, monkeypatch, capsys):
    from snows_hf.methods import MagnitudeMethod

    calls = {"n": 0}
    original = MagnitudeMethod.prune_module

    def fail_in_block_two(self, job):
        calls["n"] += 1
        if calls["n"] == 9:
            raise RuntimeError("boom")
        return original(self, job)

    monkeypatch.setattr(MagnitudeMethod, "prune_module", fail_in_block_two)
    model = AutoModelForCausalLM.from_pretrained(
        checkpoint, device_map="auto", max_memory={"cpu": 60_000}, offload_folder=str(tmp_path / "offload"))
    with pytest.raises(RuntimeError, match="boom"):
        prune_(model, PruneConfig(sparsity="2:4", method="mask-only", mask="magnitude", batch_size=3), CAL)
    layer = model.model.layers[1].mlp.up_proj
    assert layer.weight.device.type == "meta" and layer._hf_hook.offload
    with torch.no_grad():
        assert torch.isfinite(model(CAL[:1]).logits).all()  # the model still runs through its hooks

    calls["n"] = 0
    code = main(["prune", str(checkpoint), "--dataset", "random", "--sparsity", "2:4", "--method", "mask-only", "--mask", "magnitude", "--no-eval", "--quiet",
                 "--max-memory", "cpu=60KB", "--output-dir", str(tmp_path / "out"), "--offload-dir", str(tmp_path)])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("snows-hf: error:")]
    assert code == 1 and len(errors) == 1 and "boom" in errors[0] and "rerun with --resume" in errors[0]
    # no .snows-hf-offload-* folder, no output; the first block's checkpoint stays for --resume
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.snows-hf-checkpoint", "offload"]
