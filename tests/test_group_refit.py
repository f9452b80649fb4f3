"""The group re-fit (``refit_unit="group"``): the modules that read one input (q/k/v,
gate/up) in one Newton-CG, found by the tensor they share, checked against a closed form,
the per-module re-fit's masks, and the run's guarantees (resume, the setting's records)."""


import pytest
import torch
from conftest import VOCAB, tiny_bert, tiny_gpt2, tiny_llama, tiny_vit
from test_block_refit import DT, _inputs, _spy_newton, rel_err
from torch import nn
from torch.autograd.functional import hessian

import snows_hf
from snows_hf import PruneConfig
from snows_hf.adapters import BlockList, find_block_list
from snows_hf.blocks import BlockCall
from snows_hf.masks import parse_sparsity, satisfies, to_rows
from snows_hf.methods import ModuleJob, SnowsConfig, SnowsMethod
from snows_hf.methods.snows_report import counted_solves
from snows_hf.block_order import execution_order, module_groups
from snows_hf.pipeline import capture_block_inputs
from snows_hf.solver import HessianOperator, window_loss
from snows_hf.windows import WindowRunner

IDS = torch.randint(4, VOCAB, (16, 12), generator=torch.Generator().manual_seed(0))


def _group(**overrides):
    return {"sparsity": "2:4", "method": "snows", "k_step": 2, "batch_size": 4, "refit_unit": "group", "newton_steps": 1,
            **overrides}


def _first_block(model, inputs):
    blocks = find_block_list(model)
    (call,) = capture_block_inputs(model, blocks.modules[0], [inputs], torch.device("cpu"))
    targets = [(n, m) for n, m in blocks.modules[0].named_modules() if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"]
    return blocks, call, execution_order(blocks.modules[0], targets, call)


# 1. which modules read one input, and their window


@pytest.mark.parametrize("factory, inputs, expected", [
    (tiny_llama, {"input_ids": IDS[:2]},
     [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"], ["mlp.gate_proj", "mlp.up_proj"],
      ["mlp.down_proj"]]),
    (tiny_vit, {"pixel_values": torch.randn(2, 3, 32, 32)},
     [["attention.q_proj", "attention.k_proj", "attention.v_proj"], ["attention.o_proj"], ["mlp.fc1"], ["mlp.fc2"]]),
    (tiny_bert, {"input_ids": IDS[:2]},
     [["attention.self.query", "attention.self.key", "attention.self.value"], ["attention.output.dense"],
      ["intermediate.dense"], ["output.dense"]]),
    (tiny_gpt2, {"input_ids": IDS[:2]}, [["attn.c_attn"], ["attn.c_proj"], ["mlp.c_fc"], ["mlp.c_proj"]]),  # fused already
], ids=["llama", "vit", "bert", "gpt2"])
def test_modules_reading_one_input_are_grouped_in_every_family(factory, inputs, expected):
    model = factory()
    blocks, call, modules = _first_block(model, inputs)
    groups = module_groups(blocks.modules[0], modules, call)
    assert [[name for name, _ in group] for group in groups] == expected
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == 0


def test_two_modules_reading_equal_but_distinct_tensors_are_not_a_group():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 2)

        def forward(self, x):
            return self.a(x) + self.b(x.clone())  # the same values, another tensor

    block = TwoInputs()
    groups = module_groups(block, list(block.named_children()), BlockCall((torch.ones(3, 2),), {}))
    assert [[name for name, _ in group] for group in groups] == [["a"], ["b"]]


def test_a_groups_window_is_every_members_output_and_the_operations_after_them():
    model = tiny_llama()
    blocks, call, modules = _first_block(model, {"input_ids": IDS[:2]})
    weights = {f"{name}.weight": m.weight for name, m in modules}
    qkv = {k: weights[k] for k in ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight")}
    gate_up = {k: weights[k] for k in ("mlp.gate_proj.weight", "mlp.up_proj.weight")}
    with WindowRunner(blocks, 0) as runner:
        assert runner.trace_group(call, qkv, 2).names() == ["0.self_attn.q_proj", "0.self_attn.k_proj", "0.self_attn.v_proj",
                                                            "0.self_attn.o_proj", "0.post_attention_layernorm"]
        # the activation between gate and up is downstream of gate: it counts among the K
        assert runner.trace_group(call, gate_up, 0).names() == ["0.mlp.gate_proj", "0.mlp.act_fn", "0.mlp.up_proj"]
        assert runner.trace_group(call, gate_up, 2).names() == ["0.mlp.gate_proj", "0.mlp.act_fn", "0.mlp.up_proj",
                                                                "0.mlp.down_proj"]
        assert runner.trace_group(call, gate_up, 3).names()[-1] == "0"  # the block's output
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0


# 2. the group objective: closed form and autograd


class _Fork(nn.Module):
    """``c(a(x) + b(x))``: ``a`` and ``b`` read one input, ``c`` couples them."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = (nn.Linear(4, 8, bias=False), nn.Linear(4, 8, bias=False), nn.Linear(8, 3, bias=False))

    def forward(self, x):
        return self.c(self.a(x) + self.b(x))


@pytest.mark.parametrize("kind", ["exact", "gauss-newton"])
def test_a_linear_groups_gradient_and_products_equal_the_closed_form(monkeypatch, kind):
    """Window (K=1): ``a``'s output, ``b``'s, then ``c``'s. The residuals are linear in
    (A, B), so both Hessians are ``2/n J^T J`` per term; ``c`` couples A and B."""
    torch.manual_seed(0)
    block = _Fork().double()
    calls = [BlockCall((torch.randn(6, 4, dtype=DT),), {}) for _ in range(4)]
    blocks = BlockList("layers", nn.ModuleList([block]), ["layers.0"])
    jobs = [ModuleJob(f"layers.0.{n}", getattr(block, n), "linear", parse_sparsity("2:4"), 0, block, calls, blocks=blocks,
                      param_name=f"{n}.weight", dense_calls=calls) for n in "ab"]
    A0, B0, C = (getattr(block, n).weight.detach().clone() for n in "abc")

    def check(w0, mask, residual_fn, train, held):
        A, B = w0[:32].view(8, 4), w0[32:].view(8, 4)
        X = torch.cat([calls[b.index].args[0] for b in train])
        ra, rb = X @ (A - A0).T, X @ (B - B0).T
        rc = (ra + rb) @ C.T
        ca, cc = 2.0 / ra.numel(), 2.0 / rc.numel()
        grad = torch.cat([(ca * ra.T @ X + cc * C.T @ rc.T @ X).reshape(-1), (ca * rb.T @ X + cc * C.T @ rc.T @ X).reshape(-1)])
        Ja = torch.einsum("ac,td->tacd", torch.eye(8, dtype=DT), X).reshape(ra.numel(), 32)  # d a(x)[t, a] / d A[c, d]
        Jc = torch.einsum("ac,td->tacd", C, X).reshape(rc.numel(), 32)  # d c(.)[t, a] / d A[c, d], and the same for B
        zero = torch.zeros_like(Ja)
        H = ca * torch.cat([torch.cat([Ja, zero], 1), torch.cat([zero, Ja], 1)]).T @ torch.cat(
            [torch.cat([Ja, zero], 1), torch.cat([zero, Ja], 1)]) + cc * torch.cat([Jc, Jc], 1).T @ torch.cat([Jc, Jc], 1)
        autograd = hessian(lambda w: window_loss(residual_fn, w, train), w0)
        assert rel_err(H, autograd) < 1e-10 and H[:32, 32:].abs().max() > 1e-3  # coupled through c
        op = HessianOperator(residual_fn, w0, train, kind)
        v = torch.randn(64, dtype=DT, generator=torch.Generator().manual_seed(1))
        return rel_err(op.grad, grad), rel_err(op(v), H @ v)

    seen = _spy_newton(monkeypatch, check)
    config = PruneConfig(sparsity="2:4", method=SnowsConfig(k_step=1, term_scale="none", hessian=kind, refit_unit="group"))
    results = SnowsMethod(config).prune_group(jobs)
    assert len(seen) == 1 and len(results) == 2
    assert max(seen[0]) < 1e-12, seen[0]
    assert results[1].metrics["window"] == ["0.a", "0.b", "0.c"] and results[1].metrics["joint_solve"] == "layers.0.a"
    assert results[0].metrics["refit_unit"] == "group" and results[0].metrics["joint_modules"] == ["layers.0.a", "layers.0.b"]


# 3. masks, losses, and the per-module re-fit


@pytest.mark.parametrize("kind", ["llama", "vit"])
@pytest.mark.parametrize("settings", [{"mask": "sparsegpt"}, {"mask": "wanda", "sparsity": "0.6"}], ids=["sparsegpt-2of4", "wanda-60"])
def test_group_refit_keeps_every_mask_and_never_raises_the_window_loss(kind, settings):
    """Every pattern holds; a group's modules share one solve and a lone module has its
    own; block 0's q/k/v masks are the per-module run's (the same inputs, as pruning q
    does not change k's); the line search never leaves the window loss above its start."""
    factory = tiny_llama if kind == "llama" else tiny_vit
    model, alone = factory().double(), factory().double()
    report = snows_hf.prune_(model, _group(**settings), _inputs(kind))
    snows_hf.prune_(alone, _group(**settings, refit_unit="module"), _inputs(kind))
    pattern = parse_sparsity(settings.get("sparsity", "2:4"))
    solves = counted_solves(report)
    assert len(report.layers) == (14 if kind == "llama" else 12) and len(solves) == 8
    for layer in report.layers:
        weight = model.get_submodule(layer.name).weight
        assert satisfies(to_rows(weight, "linear") != 0, pattern, at_most=True), layer.name
        m = layer.metrics
        assert m["heldout_loss_after"] <= m["heldout_loss_before"] <= m["heldout_loss_masked"]
        if layer.name.endswith(("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")):
            assert m["refit_unit"] == "group" and layer.name in m["joint_modules"], layer.name
            # every candidate start's joint held-out loss is kept, and the chosen one is the lowest
            assert set(m["start_losses"]) == {"sparsegpt" if settings["mask"] == "sparsegpt" else "mask", "lsq",
                                              "lsq-magnitude"}, m["start_losses"]
            assert m["start_losses"][m["init"]] == min(m["start_losses"].values())
        else:
            assert "joint_solve" not in m, layer.name
    first = solves[0]["joint_modules"]
    assert len(first) == 3
    for name in first:
        assert torch.equal(model.get_submodule(name).weight != 0, alone.get_submodule(name).weight != 0), name
    moved = [rel_err(model.get_submodule(n).weight.detach(), alone.get_submodule(n).weight.detach()) for n in first]
    assert max(moved) > 1e-6, moved  # the joint solve is not the per-module one (float64: far above round-off)


# 4. what a group shares


def test_a_groups_shared_input_gives_each_member_the_statistics_and_grams_it_would_compute_alone():
    """q/k/v's Gram matrices come from one product per call and their selector statistics
    from one pass, and equal what each module computes on its own, to the bit."""
    from snows_hf.methods.refit import input_grams

    model = tiny_llama().double()
    blocks, _, modules = _first_block(model, {"input_ids": IDS[:2]})
    calls = capture_block_inputs(model, blocks.modules[0], [{"input_ids": IDS[i:i + 4]} for i in (0, 4, 8)],
                                 torch.device("cpu"))

    def jobs(shared=None):  # the pipeline hands a group's members one statistics dict
        return [ModuleJob(f"model.layers.0.{n}", m, "linear", parse_sparsity("2:4"), 0, blocks.modules[0], calls,
                          blocks=blocks, param_name=f"{n}.weight", dense_calls=calls, stats_dtype=DT,
                          **({} if shared is None else {"stats": shared}))
                for n, m in modules[:3]]

    together, alone = jobs({}), jobs()
    for target in ("dense-stream", "official"):
        shared = input_grams(together, [0, 1, 2], target)
        for job, (gram, cross) in zip(alone, shared, strict=True):
            ((own_gram, own_cross),) = input_grams([job], [0, 1, 2], target)
            assert torch.equal(gram, own_gram) and torch.equal(cross, own_cross) and gram.abs().sum() > 0
    together[0].input_stats(["gram", "input_sq"])  # one pass, for every member
    for job, own in zip(together, alone):
        assert set(job.stats) == {"gram", "input_sq"}
        for key, value in job.stats.items():
            assert torch.equal(value, own.input_stats([key])[key]), (job.name, key)
