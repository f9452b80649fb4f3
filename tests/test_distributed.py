"""Data-parallel pruning: two processes (torchrun, gloo) give the weights of one process."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from snows_hf.cli import main
from snows_hf.distributed import Processes, current_processes, start_processes
from snows_hf.pipeline import _Shards

torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))


@pytest.mark.skipif(torchrun is None, reason="torchrun is not installed next to this Python")
@pytest.mark.parametrize("options", [
    ["--sparsity", "2:4", "--init", "mask", "--newton-steps", "2"],
    ["--sparsity", "0.6", "--mask", "wanda", "--allocation", "global", "--batches-per-step", "3",
     "--offload-activations", "disk"],
    ["--sparsity", "2:4", "--mask", "magnitude", "--refit-unit", "block", "--newton-steps", "2"],
    ["--sparsity", "2:4", "--refit-unit", "group", "--newton-steps", "2"],
], ids=["2of4-newton", "wanda-global-disk", "2of4-magnitude-block", "2of4-group"])
def test_two_processes_give_the_weights_of_one(llama64_dir, tmp_path, options):
    common = ["prune", str(llama64_dir), "--dataset", "random", *options, "--num-samples", "14", "--seq-len", "16", "--batch-size", "2",
              "--stats-dtype", "float64", "--quiet", "--no-eval"]  # float64 throughout: only summation order differs
    assert main([*common, "--output-dir", str(tmp_path / "one")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "snows_hf", *common, "--output-dir", str(tmp_path / "two")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    one, two = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert one.keys() == two.keys() and one["model.layers.0.mlp.up_proj.weight"].dtype == torch.float64
    difference = max(float((one[k] - two[k]).abs().max()) for k in one)
    print(f"largest weight difference, two processes vs one: {difference:.3g}")
    assert difference < 1e-8  # Newton-CG carries summation-order noise further than a mask alone
    report = json.loads((tmp_path / "two" / "report.json").read_text())
    assert report["processes"] == 2 and report["num_calibration_samples"] == 14
    steps = [layer["metrics"]["newton_steps"] for layer in report["layers"]]
    assert sum(steps) > 0  # the Newton steps (HVP all-reduces) really ran
    reference = json.loads((tmp_path / "one" / "report.json").read_text())
    assert [layer["sparsity"] for layer in report["layers"]] == [layer["sparsity"] for layer in reference["layers"]]
    assert run.stdout.count("saved to") == 1  # only the main process reports and writes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # no activation files left behind


def test_processes_shard_round_robin_and_cover_everything():
    world = [Processes(rank, 3) for rank in range(3)]
    shards = [p.shard(range(8)) for p in world]
    assert shards == [[0, 3, 6], [1, 4, 7], [2, 5]]
    assert all(p.owns(i) for p, shard in zip(world, shards) for i in shard)
    assert sorted(i for s in shards for i in s) == list(range(8))
    assert [p.is_main for p in world] == [True, False, False]
    one = Processes()
    x = torch.ones(2)
    assert one.sum(x) is x and one.batch_shard(lambda b: b).local([1, 2]) == [1, 2]
    with pytest.raises(ValueError, match="outside"):
        Processes(rank=2, world_size=2)


def test_fewer_micro_batches_than_processes_is_a_clear_error():
    with pytest.raises(ValueError, match="3 calibration micro-batches cannot be shared by 4 processes"):
        _Shards(Processes(1, 4), 3)
    assert _Shards(Processes(1, 2), 5).batch_ids == [1, 3]


def test_one_process_needs_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert start_processes(torch.device("cpu")).world_size == 1
    assert current_processes().world_size == 1
    assert Processes(0, 2).device(torch.device("cpu")) == torch.device("cpu")
