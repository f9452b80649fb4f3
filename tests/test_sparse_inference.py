"""2:4 sparse inference: the conversion plan, the swap, the CPU no-op, and `eval --sparse-inference`.

The planner and the swap are checked on CPU with a stand-in back end that has the
cuSPARSELt shape table and treats the CPU as supported; the real kernels only run in the
`gpu` tests at the end.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from snows_hf.cli import main
from snows_hf.masks import parse_sparsity, select_topk
from snows_hf.sparse_inference import KernelBackend, kernel_backend, plan_sparse_inference, sparse_inference_
from snows_hf.workflow import evaluate

from conftest import tiny_gpt2, tiny_llama, tiny_vit

HALF = {torch.float16: (16, 16), torch.bfloat16: (16, 16)}  # cuSPARSELt's table for the float dtypes


def _backend(compress=lambda w: w.clone(), shapes=HALF) -> KernelBackend:
    return KernelBackend("stand-in", shapes, compress, support=lambda device: None)


def _kernels() -> bool:
    from snows_hf.devices import semi_structured_support

    from snows_hf.devices import resolve_device

    return semi_structured_support(resolve_device("auto")) is None


def _two_four_(linear: nn.Linear, pattern: str = "2:4") -> nn.Linear:
    with torch.no_grad():
        linear.weight.mul_(select_topk(linear.weight.abs().float(), parse_sparsity(pattern)))
    return linear


def _prune_model_(model: nn.Module, skip: tuple[str, ...] = ()) -> nn.Module:
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and not any(s in name for s in skip):
            _two_four_(module)
    return model


class _Zoo(nn.Module):
    """One Linear layer per case the planner must tell apart."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        half = torch.float16
        self.ok = _two_four_(nn.Linear(32, 48, dtype=half))
        self.no_bias = _two_four_(nn.Linear(64, 16, bias=False, dtype=half))
        self.sparser = _two_four_(nn.Linear(32, 32, dtype=torch.bfloat16), "1:4")  # fewer than 2 kept is still 2:4
        self.dense = nn.Linear(32, 32, dtype=half)
        self.almost = _two_four_(nn.Linear(32, 32, dtype=half))
        with torch.no_grad():
            self.almost.weight[0, :4] = 1.0  # one group of 256 keeps 4
        self.odd_out = _two_four_(nn.Linear(32, 40, dtype=half))
        self.odd_in = _two_four_(nn.Linear(40, 32, dtype=half))
        self.full_precision = _two_four_(nn.Linear(32, 32))
        self.tied_a = _two_four_(nn.Linear(32, 32, dtype=half))
        self.tied_b = nn.Linear(32, 32, dtype=half)
        self.tied_b.weight = self.tied_a.weight
        self.conv = nn.Conv2d(16, 16, 3, dtype=half)
        with torch.no_grad():
            rows = self.conv.weight.permute(0, 2, 3, 1).reshape(-1, 16)
            keep = select_topk(rows.abs().float(), parse_sparsity("2:4"))
            self.conv.weight.copy_((rows * keep).reshape(16, 3, 3, 16).permute(0, 3, 1, 2))
        self.dense_conv = nn.Conv2d(16, 16, 3, dtype=half)
        self.offloaded = nn.Linear(32, 32, device="meta", dtype=half)
        self.quantized = nn.Linear(32, 32)
        self.quantized.weight = nn.Parameter(torch.zeros(32, 32, dtype=torch.uint8), requires_grad=False)  # packed ints


def test_the_planner_picks_exactly_the_2_4_layers_that_meet_the_kernel_constraints():
    decisions = {d.name: d for d in plan_sparse_inference(_Zoo(), _backend())}
    assert sorted(n for n, d in decisions.items() if d.converted) == ["no_bias", "ok", "sparser"]
    reasons = {n: d.reason for n, d in decisions.items()}
    assert reasons["dense"] == reasons["almost"] == "not 2:4"
    assert decisions["dense"].detail == "dense"
    assert decisions["almost"].detail == f"{1 / 256:.1%} of groups keep more than 2"
    wide = nn.Linear(4000, 1)
    with torch.no_grad():
        wide.weight[0, :2] = 0  # 1 of 1000 groups is 2:4: not "100.0%"
    assert plan_sparse_inference(wide, _backend())[0].detail == ">99.9% of groups keep more than 2"
    assert reasons["odd_out"] == reasons["odd_in"] == "shape: stand-in needs out x in features in multiples of 16 x 16"
    assert reasons["full_precision"].startswith("dtype: stand-in kernels take float16/bfloat16 weights")
    assert reasons["tied_a"] == reasons["tied_b"] and reasons["tied_a"].startswith("weight tied to another module")
    assert reasons["conv"] == "2:4 but a Conv2d (the kernels serve Linear layers only)"
    assert "dense_conv" not in decisions  # a dense conv is no candidate: nothing to say about it
    assert reasons["offloaded"].startswith("weights offloaded (on the meta device)")
    assert reasons["quantized"] == "quantized weight (uint8): the kernels take floating-point weights"
    # torch's own CUTLASS table: half precision needs 32 x 64 tiles (none here has them), float32 (as TF32) is accepted
    cutlass = kernel_backend("cutlass")
    cutlass = KernelBackend("cutlass", cutlass.shapes, cutlass.compress, support=lambda device: None)
    picked = sorted(d.name for d in plan_sparse_inference(_Zoo(), cutlass) if d.converted)
    assert picked == ["full_precision"]


def test_the_plan_of_a_pruned_llama_follows_its_shapes_and_its_dense_head():
    model = _prune_model_(tiny_llama(), skip=("lm_head",)).half()  # hidden 32, MLP 72, k/v 16
    decisions = plan_sparse_inference(model, _backend())
    converted = {d.name.rsplit(".", 1)[-1] for d in decisions if d.converted}
    assert converted == {"q_proj", "k_proj", "v_proj", "o_proj"}  # 72 is no multiple of 16
    mlp = [d for d in decisions if d.name.endswith(("gate_proj", "up_proj", "down_proj"))]
    assert len(mlp) == 6 and all(d.reason.startswith("shape:") for d in mlp)
    head = next(d for d in decisions if d.name == "lm_head")
    assert head.reason == "not 2:4" and head.detail == "dense"


def test_on_cpu_the_call_leaves_the_model_unchanged_and_says_why(caplog):
    model = _prune_model_(tiny_vit(), skip=("classifier",)).half()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = [id(p) for p in model.parameters()]
    with caplog.at_level(logging.WARNING, logger="snows_hf"):
        report = sparse_inference_(model)
    assert report.converted == []
    assert [id(p) for p in model.parameters()] == params
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    expected = "model left unchanged: on cpu: 2:4 sparse kernels run on NVIDIA GPUs of compute capability 8.0 or newer"
    assert report.message.startswith(expected)
    assert "(8 linear layers meet every other condition)" in report.message  # 2 blocks x q, k, v, o
    # the MLP (32 -> 68 -> 32) misses cuSPARSELt's tiles of 16 x 16 whatever the device: a
    # CPU-only build plans with the limits of the back end GPU builds use by default
    assert expected in caplog.text
    text = report.format()
    assert text.splitlines()[0] == "2:4 sparse inference (cusparselt on cpu): 0 of 13 linear layers converted (0.0% of their weights)"
    assert "kept dense, not 2:4: 1 layer (classifier 3x32 float16 [dense])" in text
    assert "kept dense, shape: cusparselt needs out x in features in multiples of 16 x 16: 4 layers" in text


def test_the_swap_keeps_outputs_and_touches_only_the_planned_layers():
    model = _Zoo()
    kept = {name: module.weight for name, module in model.named_modules() if hasattr(module, "weight")}
    compressed = []

    def compress(weight):
        compressed.append(weight.shape)
        return weight.clone()

    report = sparse_inference_(model, backend=_backend(compress))
    assert sorted(d.name for d in report.converted) == ["no_bias", "ok", "sparser"]
    assert sorted(compressed) == sorted([(48, 32), (16, 64), (32, 32)])
    for name, module in model.named_modules():
        if not hasattr(module, "weight"):
            continue
        if name in ("no_bias", "ok", "sparser"):
            assert module.weight is not kept[name] and isinstance(module.weight, nn.Parameter)
            assert not module.weight.requires_grad and torch.equal(module.weight, kept[name])
        else:
            assert module.weight is kept[name]
    assert report.format().splitlines()[:2] == [
        "2:4 sparse inference (stand-in on cpu): 3 of 12 linear layers converted (26.9% of their weights)",
        "  converted: 3 layers (ok, no_bias, sparser)"]
    assert report.to_dict()["converted"] == 3


def test_gpt2_conv1d_layers_become_the_linear_layers_they_stand_for():
    from transformers.pytorch_utils import Conv1D

    model = tiny_gpt2()  # n_embd 32: c_attn 32 -> 96, c_proj 32 -> 32, c_fc 32 -> 128, mlp.c_proj 128 -> 32
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, Conv1D):  # (in, out) storage: 2:4 along the inputs is along dim 0
                module.weight.mul_(select_topk(module.weight.t().abs(), parse_sparsity("2:4")).t())
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        dense = model(ids).logits
    hooked = model.transformer.h[1].mlp.c_fc
    hooked._hf_hook = object()  # what accelerate leaves on a dispatched module
    shapes = []
    report = sparse_inference_(model, backend=_backend(lambda w: shapes.append(tuple(w.shape)) or w.clone(),
                                                       shapes={torch.float32: (16, 16)}))
    assert sorted(shapes) == sorted([(96, 32), (32, 32), (128, 32), (32, 128), (96, 32), (32, 32), (32, 128)])
    assert len(report.converted) == 7 and {d.kind for d in report.converted} == {"Conv1D"}
    hooked_decision = next(d for d in report.layers if d.name == "transformer.h.1.mlp.c_fc")
    assert hooked_decision.reason.startswith("Conv1D under an accelerate hook")
    block = model.transformer.h[0]
    assert type(block.attn.c_attn) is nn.Linear and block.attn.c_attn.weight.shape == (96, 32)
    assert type(model.transformer.h[1].mlp.c_fc) is Conv1D  # the hooked one stays as it was
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, dense, atol=1e-5)
    assert next(d for d in report.layers if d.name == "lm_head").reason.startswith("not 2:4")


def test_a_layer_whose_kernel_disagrees_or_fails_stays_dense():
    wrong = sparse_inference_(nn.Sequential(_two_four_(nn.Linear(32, 32, dtype=torch.float16))),
                              backend=_backend(lambda w: w * 1.5))
    assert wrong.converted == [] and wrong.layers[0].reason == "kernel output differs from the dense layer"
    assert wrong.layers[0].detail == "relative error 0.5"

    def refuse(weight):
        raise RuntimeError("CUDA error: no kernel image is available\nfor execution on the device")

    failed = sparse_inference_(nn.Sequential(_two_four_(nn.Linear(32, 32, dtype=torch.float16))), backend=_backend(refuse))
    assert failed.layers[0].reason == "kernel failed"
    assert failed.layers[0].detail == "CUDA error: no kernel image is available for execution on the device"
    assert failed.message == "model left unchanged: no layer meets the kernels' conditions (below)"
    unchecked = sparse_inference_(nn.Sequential(_two_four_(nn.Linear(32, 32, dtype=torch.float16))),
                                  backend=_backend(lambda w: w * 1.5), verify=False)
    assert len(unchecked.converted) == 1  # verify=False trusts the kernel


def _semi_structured(out_features: int, in_features: int) -> torch.Tensor:
    """A CUTLASS semi-structured tensor built on CPU from its parts (compressing one needs a GPU)."""
    from torch.sparse import SparseSemiStructuredTensorCUTLASS

    return SparseSemiStructuredTensorCUTLASS(
        torch.Size([out_features, in_features]), packed=torch.zeros(out_features, in_features // 2, dtype=torch.float16),
        meta=torch.zeros(out_features, in_features // 16, dtype=torch.int16), packed_t=None, meta_t=None,
        compressed_swizzled_bitmask=None)


@pytest.mark.filterwarnings("ignore:The PyTorch API of SparseSemiStructuredTensor is in prototype stage")
def test_a_second_call_leaves_converted_layers_alone():
    model = nn.Sequential(_two_four_(nn.Linear(64, 32, dtype=torch.float16)), _two_four_(nn.Linear(32, 64, dtype=torch.float16)))
    model[0].weight = nn.Parameter(_semi_structured(32, 64), requires_grad=False)
    sparse = model[0].weight
    report = sparse_inference_(model, backend=_backend())
    assert [(d.name, d.reason) for d in report.layers] == [("0", "already a 2:4 sparse weight (converted earlier)"), ("1", "")]
    assert model[0].weight is sparse
    assert _benchmark().weight_bytes(model[:1]) == 32 * 32 * 2 + 32 * 4 * 2 + 32 * 2  # packed + meta + bias


def test_a_dense_model_is_told_to_be_pruned_first():
    report = sparse_inference_(tiny_vit())
    assert report.message == "model left unchanged: no linear layer is 2:4 (prune it with sparsity='2:4' first)"
    half = sparse_inference_(_two_four_(nn.Linear(30, 30)).half())  # 2:4 but on CPU and of no tile
    assert half.message.startswith("model left unchanged: on cpu: 2:4 sparse kernels run on NVIDIA GPUs")
    assert half.message.endswith(", and no layer meets the other conditions (below)")
    assert "[dense]" in report.format()  # each layer's own figure, in brackets


def test_filter_fn_leaves_layers_out():
    report = sparse_inference_(_Zoo(), backend=_backend(), filter_fn=lambda module, name: name != "ok")
    assert sorted(d.name for d in report.converted) == ["no_bias", "sparser"]
    assert next(d for d in report.layers if d.name == "ok").reason == "left out by filter_fn"


def test_back_end_names_are_checked(monkeypatch):
    import snows_hf.sparse_inference as module

    with pytest.raises(ValueError, match="unknown 2:4 kernel back end 'tensorrt'"):
        kernel_backend("tensorrt")
    monkeypatch.setattr(module, "semi_structured_backends", lambda: ["cutlass"])  # a CUDA build without cuSPARSELt
    assert kernel_backend().name == "cutlass"
    with pytest.raises(ValueError, match="this torch build has no cusparselt kernels; use cutlass"):
        kernel_backend("cusparselt")
    monkeypatch.setattr(module, "semi_structured_backends", lambda: [])  # CPU-only: plans with the default's limits
    assert kernel_backend().name == "cusparselt" and kernel_backend().shapes[torch.bfloat16] == (16, 16)
    assert kernel_backend("cutlass").shapes[torch.float16] == (32, 64)


def _image_folder(root: Path) -> Path:
    from PIL import Image

    for label in ("a", "b", "c"):
        (root / label).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (40, 40), color=(40 * i, 90 if label == "a" else 10, 200 if label == "c" else 5)).save(
                root / label / f"{i}.png")
    return root


@pytest.mark.skipif(_kernels(), reason="checks the path without 2:4 kernels")
def test_eval_sparse_inference_on_cpu_runs_the_model_unchanged(tmp_path, capsys):
    from transformers import ViTImageProcessor

    model = _prune_model_(tiny_vit(), skip=("classifier",))
    model.save_pretrained("vit24")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained("vit24")
    data = ["--dataset", str(_image_folder(tmp_path / "imgs")), "--num-samples", "4", "--eval-samples", "12"]
    assert main(["eval", "vit24", *data, "--json", "plain.json", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["eval", "vit24", *data, "--sparse-inference", "--json", "sparse.json"]) == 0
    out, err = capsys.readouterr()
    assert "model left unchanged" not in err  # said once, in the summary, not again as a warning
    assert "0 of 13 linear layers converted" in out and "model left unchanged: on cpu" in out
    assert "samples_per_second" in out
    plain, sparse = json.loads(Path("plain.json").read_text()), json.loads(Path("sparse.json").read_text())
    assert sparse["dtype"] == plain["dtype"] == "float32"  # no half precision where no kernel would use it
    assert sparse["sparse_inference"]["converted"] == 0
    assert sparse["model"]["top1_accuracy"] == plain["model"]["top1_accuracy"]
    assert sparse["model"]["samples_per_second"] > 0


def test_evaluate_runs_in_the_dtype_asked_for(vit_dir, tmp_path):
    data = {"dataset": str(_image_folder(tmp_path / "imgs")), "num_samples": 4, "eval_samples": 12}
    figures = evaluate(vit_dir, data, reference=vit_dir, dtype="bfloat16").figures
    assert figures["dtype"] == "bfloat16"
    assert figures["pruned"]["top1_agreement"] == 1.0  # the same model in the same precision


@pytest.mark.gpu
@pytest.mark.skipif(not _kernels(), reason="needs an NVIDIA GPU of compute capability 8.0 or newer")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_on_a_gpu_converted_models_match_their_dense_selves(dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    from snows_hf.devices import resolve_device

    device = resolve_device("auto")
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=512)
    model = _prune_model_(LlamaForCausalLM(config), skip=("lm_head",)).to(device=device, dtype=dtype).eval()
    ids = torch.randint(0, 512, (2, 64), device=device)
    with torch.no_grad():
        dense = model(ids).logits.float()
        report = sparse_inference_(model)
        sparse = model(ids).logits.float()
    assert len(report.converted) == 14  # 2 blocks x 7 projections; the head is dense
    assert float((sparse - dense).norm() / dense.norm()) < (1e-2 if dtype == torch.float16 else 3e-2)


def _benchmark():
    import importlib.util

    path = Path(__file__).parents[1] / "benchmarks" / "sparse_inference_gpu.py"
    spec = importlib.util.spec_from_file_location("sparse_inference_gpu", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gpu_benchmark_runs_its_whole_table_on_toy_shapes(capsys):
    bench = _benchmark()
    code = bench.main(["--tiny", "--dtypes", "bfloat16", "--device", "cpu", "--min-time", "0.005", "--json", "b.json"],
                      backend=_backend())
    assert code == 0
    rows = json.loads(Path("b.json").read_text())
    assert rows["failures"] == []
    assert {(r["model"], r["layer"]) for r in rows["layers"]} >= {("ViT-tiny", "fc1"), ("Llama-tiny", "down_proj")}
    assert [(r["model"], r["input"], r["converted"]) for r in rows["models"]] == [
        ("ViT-tiny", "1 image", "12/13"), ("ViT-tiny", "8 images", "12/13"), ("ViT-tiny", "64 images", "12/13"),
        ("Llama-tiny", "1 x 512 tokens", "14/15"), ("Llama-tiny", "8 x 512 tokens", "14/15"),
        ("Llama-tiny", "16 x 1 tokens", "14/15")]
    assert all(r["rel_err"] == 0.0 and r["top1_agree"] == 1.0 for r in rows["models"])  # the stand-in is dense
    assert all(r["dense_ms"] > 0 and r["sparse_ms"] > 0 for r in rows["models"])
    assert all(r["dense_gib"] == r["sparse_gib"] > 0 for r in rows["models"])  # a dense stand-in saves nothing
    table = capsys.readouterr().out
    assert "model (14/15 converted)" in table and "fc2" in table
    assert bench.main(["--from-json", "b.json"]) == 0
    again = capsys.readouterr().out
    assert again.strip() and again.strip() in table  # the same table, reprinted from the file
    assert bench.main(["--tiny", "--dtypes", "bfloat16", "--device", "cpu", "--budget", "0"], backend=_backend()) == 0
    assert "not run (past --budget 0 s): ViT-tiny bfloat16, Llama-tiny bfloat16" in capsys.readouterr().out


def test_the_gpu_benchmark_refuses_a_machine_without_kernels(capsys):
    bench = _benchmark()
    if _kernels():
        pytest.skip("this machine has the kernels")
    assert bench.main(["--tiny"]) == 1
    assert "nothing to measure here: on cpu: 2:4 sparse kernels run on NVIDIA GPUs" in capsys.readouterr().err
    assert bench.main(["--tiny", "--models", "GPT-9"], backend=_backend()) == 2
    assert "unknown model 'GPT-9'; choose from ViT-tiny, Llama-tiny" in capsys.readouterr().err
