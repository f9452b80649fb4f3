"""Resumable runs: killed or interrupted mid-loop, resumed, and bit-identical to a run never stopped."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_llama
from safetensors.torch import load_file

import snows_hf
from snows_hf.checkpoint import RunCheckpoint
from snows_hf.cli import main
from snows_hf.workflow import checkpoint_dir
from snows_hf.methods import get_method

CAL = torch.randint(4, 128, (12, 16), generator=torch.Generator().manual_seed(0))


def _interrupt_at(monkeypatch, method: str, call: int):
    cls = get_method(method)
    original, seen = cls.prune_module, {"n": 0}

    def prune_module(self, job):
        seen["n"] += 1
        if seen["n"] == call:
            raise KeyboardInterrupt
        return original(self, job)

    monkeypatch.setattr(cls, "prune_module", prune_module)
    return lambda: monkeypatch.setattr(cls, "prune_module", original)


@pytest.mark.parametrize("config", [
    {"sparsity": "2:4", "k_step": 3, "batch_size": 3},
    {"sparsity": "0.6", "mask": "wanda", "allocation": "global", "target": "official", "batch_size": 3},
], ids=["2of4-dense-stream", "global-official"])
def test_a_resumed_run_ends_bit_identical(tmp_path, monkeypatch, config):
    reference = tiny_llama(layers=4)
    snows_hf.prune_(reference, config, CAL)
    undo = _interrupt_at(monkeypatch, "snows", call=17)  # in block 2 of 4
    with pytest.raises(KeyboardInterrupt):
        snows_hf.prune_(tiny_llama(layers=4), config, CAL, checkpoint=RunCheckpoint(tmp_path / "ckpt"))
    undo()
    state = json.loads((tmp_path / "ckpt" / "state.json").read_text())
    assert state["blocks_done"] == 2 and len(state["layers"]) == 14
    model = tiny_llama(layers=4)
    report = snows_hf.prune_(model, config, CAL, checkpoint=RunCheckpoint(tmp_path / "ckpt", resume=True))
    assert len(report.layers) == 28 and [layer.name for layer in report.layers][:2] == [
        "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj"]
    ref = reference.state_dict()
    assert all(torch.equal(value, ref[key]) for key, value in model.state_dict().items())


def test_a_checkpoint_of_another_run_is_refused_saying_what_differs(tmp_path, monkeypatch):
    config = {"sparsity": "2:4", "k_step": 3, "batch_size": 3}
    undo = _interrupt_at(monkeypatch, "snows", call=9)
    with pytest.raises(KeyboardInterrupt):
        snows_hf.prune_(tiny_llama(layers=4), config, CAL, checkpoint=RunCheckpoint(tmp_path / "c"))
    undo()
    with pytest.raises(ValueError, match=r"different run: config\.k_step \(3 then, 2 now\)"):
        snows_hf.prune_(tiny_llama(layers=4), config | {"k_step": 2}, CAL, checkpoint=RunCheckpoint(tmp_path / "c", True))
    with pytest.raises(ValueError, match=r"model\.weights_sha256"):
        snows_hf.prune_(tiny_llama(seed=1, layers=4), config, CAL, checkpoint=RunCheckpoint(tmp_path / "c", True))
    with pytest.raises(ValueError, match="calibration"):
        snows_hf.prune_(tiny_llama(layers=4), config, CAL + 1, checkpoint=RunCheckpoint(tmp_path / "c", True))
    with pytest.raises(ValueError, match=r"pass resume=True to continue it"):
        snows_hf.prune_(tiny_llama(layers=4), config, CAL, checkpoint=RunCheckpoint(tmp_path / "c"))
    # placement settings may change between the runs
    snows_hf.prune_(tiny_llama(layers=4), config | {"offload_activations": "cpu"}, CAL,
                    checkpoint=RunCheckpoint(tmp_path / "c", resume=True))


@pytest.fixture(scope="module")
def six_blocks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume") / "tiny6"
    tiny_llama(layers=6).save_pretrained(folder)
    return folder


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def uninterrupted(six_blocks):
    out = six_blocks.parent / "whole"
    subprocess.run(_command(six_blocks, out), env=ENV, check=True, capture_output=True, timeout=600)
    return load_file(out / "model.safetensors")


def _command(model, out, *extra):
    return [sys.executable, "-m", "snows_hf", "prune", str(model), "--dataset", "random", "--sparsity", "2:4", "--num-samples", "24",
            "--seq-len", "32", "--batch-size", "4", "--newton-steps", "3", "--no-eval", "--quiet",
            "--output-dir", str(out), *extra]


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_cli_killed_mid_loop_resumes_to_the_same_weights(six_blocks, uninterrupted, tmp_path, how):
    out = tmp_path / "out"
    state = Path(checkpoint_dir(str(out))) / "state.json"
    # SIGINT as a terminal's Ctrl-C finds it: a suite started in the background of a
    # non-interactive shell ignores SIGINT, and a child would inherit that and run to the end
    run = subprocess.Popen(_command(six_blocks, out), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while not state.exists() and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.02)
    run.send_signal(how)
    _, err = run.communicate(timeout=120)
    assert not out.exists(), f"the run finished before it could be stopped (exit {run.returncode}): {err[-800:]}"
    assert json.loads(state.read_text())["blocks_done"] < 6
    if how == signal.SIGINT:
        assert run.returncode == 130 and "--resume" in err
    again = subprocess.run(_command(six_blocks, out, "--resume"), env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    first, second = uninterrupted, load_file(out / "model.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert not state.parent.exists()  # a finished run leaves no checkpoint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_cli_refuses_to_start_over_a_checkpoint(six_blocks, tmp_path, capsys):
    folder = tmp_path / ".out.snows-hf-checkpoint"
    folder.mkdir()
    (folder / "state.json").write_text("{}")
    code = main(["prune", str(six_blocks), "--dataset", "random", "--sparsity", "2:4", "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and "pass --resume to continue it" in err and err.count("\n") == 1
    assert (folder / "state.json").read_text() == "{}"
