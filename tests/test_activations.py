"""Activations on the device, in CPU memory or on disk: same weights, no files left behind."""

import pytest
import torch
from conftest import VOCAB, tiny_llama, tiny_vit

import snows_hf
from snows_hf.methods import MaskOnly


def _inputs(kind):
    g = torch.Generator().manual_seed(0)
    if kind == "vit":
        return {"pixel_values": torch.randn(16, 3, 32, 32, generator=g)}
    ids = torch.randint(4, VOCAB, (16, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 8:] = 0  # attention masks and rotary embeddings must survive the round trip
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("kind", ["llama", "vit"])
@pytest.mark.parametrize("options", [{"k_step": 2}, {"k_step": 2, "target": "official"}, {"k_step": 2, "refit_unit": "block"},
                                     {"k_step": 2, "refit_unit": "group"},
                                     {"method": "mask-only", "mask": "sparsegpt", "sparsity": "0.5", "allocation": "global"}])
def test_cpu_and_disk_offload_give_the_same_weights(kind, options, tmp_path):
    factory = tiny_llama if kind == "llama" else tiny_vit
    weights = {}
    for place in ("device", "cpu", "disk"):
        model = factory()
        snows = {"method": "snows", "newton_steps": 1, "cg_iters": 3} if "method" not in options else {}
        config = {"sparsity": "2:4", "batch_size": 4, "offload_activations": place, "offload_dir": str(tmp_path)} | snows | options
        snows_hf.prune_(model, config, _inputs(kind))
        weights[place] = model.state_dict()
        assert list(tmp_path.iterdir()) == []  # the disk folder is gone
    for place in ("cpu", "disk"):
        for key, value in weights["device"].items():
            assert torch.equal(weights[place][key], value), (place, key)


def test_no_files_remain_after_an_error(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = MaskOnly.prune_module

    def fail_later(self, job):
        calls["n"] += 1
        if calls["n"] == 9:  # in the second block, after activations were written twice
            raise RuntimeError("boom")
        return original(self, job)

    monkeypatch.setattr(MaskOnly, "prune_module", fail_later)
    with pytest.raises(RuntimeError, match="boom"):
        snows_hf.prune_(tiny_llama(), {"sparsity": "2:4", "method": "mask-only", "mask": "magnitude", "batch_size": 4,
                                       "offload_activations": "disk", "offload_dir": str(tmp_path)}, _inputs("llama"))
    assert calls["n"] == 9 and list(tmp_path.iterdir()) == []


def test_a_run_offloads_to_disk_next_to_the_output(llama_dir, tmp_path):
    out = tmp_path / "runs" / "pruned"
    out.parent.mkdir()
    snows_hf.run(llama_dir, {"sparsity": "2:4", "method": "mask-only", "mask": "magnitude", "offload_activations": "disk"}, "random",
                 output_dir=out, progress=False)
    assert sorted(p.name for p in out.parent.iterdir()) == ["pruned"]


def test_bad_offload_place():
    with pytest.raises(ValueError, match="offload_activations must be device, cpu or disk"):
        snows_hf.PruneConfig(sparsity="2:4", offload_activations="ram")


def test_disk_reads_run_one_call_ahead_and_any_order_is_right(tmp_path):
    from snows_hf.activations import ActivationSpace
    from snows_hf.blocks import BlockCall

    with ActivationSpace("disk", torch.device("cpu"), tmp_path) as space:
        store = space.store(BlockCall((torch.full((2,), float(i)),), {"mask": torch.ones(1) * i}) for i in range(5))
        loads = []
        original = store._load
        store._load = lambda i: loads.append(i) or original(i)
        assert store[0].args[0].tolist() == [0.0, 0.0]
        assert store._ahead[0] == 1  # the next call is being read already
        order = [1, 2, 2, 4, -1, 0, 3]
        assert [int(store[i].kwargs["mask"]) for i in order] == [1, 2, 2, 4, 4, 0, 3]
        with pytest.raises(IndexError):
            store[5]
        store.close()
        assert list(space.folder.iterdir()) == []
    assert sorted(set(loads)) == [0, 1, 2, 3, 4] and list(tmp_path.iterdir()) == []
