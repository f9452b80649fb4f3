"""The block re-fit (``refit_unit="block"``): one Newton-CG over all of a block's kept
weights, checked against closed forms, autograd, the per-module re-fit and the run's
other guarantees (masks, resume, placement, memory)."""

import json

import pytest
import torch
from conftest import VOCAB, tiny_llama, tiny_vit
from test_solver import FakeMemory
from torch import nn
from torch.autograd.functional import hessian

import snows_hf
import snows_hf.methods.snows_block as refit
from snows_hf import PruneConfig
from snows_hf.adapters import BlockList, find_block_list
from snows_hf.blocks import BlockCall, run_block
from snows_hf.checkpoint import RunCheckpoint
from snows_hf.masks import parse_sparsity, satisfies, to_rows
from snows_hf.methods import ModuleJob, SnowsConfig, SnowsMethod, SnowsPlan, get_method
from snows_hf.methods.snows_report import counted_solves
from snows_hf.pipeline import capture_block_inputs
from snows_hf.solver import FlatLayout, HessianOperator, window_loss
from snows_hf.windows import WindowRunner

DT = torch.float64
IDS = torch.randint(4, VOCAB, (16, 12), generator=torch.Generator().manual_seed(0))


def _block(**overrides):
    # one Newton step and version 4's start rule unless a test says otherwise: the budgets
    # below are counted in steps, and the per-module comparisons start both units alike
    return {"sparsity": "2:4", "method": "snows", "k_step": 2, "batch_size": 4, "refit_unit": "block", "newton_steps": 1,
            "init": "auto", **overrides}


def _inputs(kind, n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind == "vit":
        return {"pixel_values": torch.randn(n, 3, 32, 32, generator=g, dtype=DT)}
    return {"input_ids": torch.randint(4, VOCAB, (n, 12), generator=g)}


def _spy_newton(monkeypatch, check):
    """Run ``check(w0, mask, residual_fn, train, held)`` inside each SNOWS solve, while
    its window runner still has its hooks; the solve then goes on as usual."""
    original = refit.newton_refit
    seen = []

    def spy(w0, mask, residual_fn, train, held, *args, **kwargs):
        seen.append(check(w0, mask, residual_fn, train, held))
        return original(w0, mask, residual_fn, train, held, *args, **kwargs)

    monkeypatch.setattr(refit, "newton_refit", spy)
    return seen


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


# 1. the joint variable


def test_flat_layout_round_trips_and_gradients_flow_through_its_views():
    layout = FlatLayout([torch.zeros(2, 3, dtype=DT), torch.zeros(4, dtype=DT)])
    a, b = torch.randn(2, 3, dtype=DT), torch.randn(4, dtype=DT)
    flat = layout.pack([a, b]).requires_grad_(True)
    parts = layout.unpack(flat)
    assert layout.numel == 10 and torch.equal(parts[0], a) and torch.equal(parts[1], b)
    (grad,) = torch.autograd.grad((parts[0].sum() + 3 * parts[1].pow(2).sum()), flat)
    assert torch.equal(grad, torch.cat([torch.ones(6, dtype=DT), 6 * b]))
    masks = layout.pack([a > 0, b > 0])
    assert masks.dtype == torch.bool and torch.equal(layout.unpack(masks)[1], b > 0)
    assert layout.pack([a, b], torch.float32).dtype == torch.float32
    with pytest.raises(ValueError, match="shape"):
        layout.pack([b, a])
    with pytest.raises(ValueError, match="expected 2 tensors"):
        layout.pack([a])
    with pytest.raises(ValueError, match="flat vector"):
        layout.unpack(torch.zeros(9, dtype=DT))


# 2. the block objective's gradient and Hessian products


def _linear_block():
    """One block of two stacked Linear modules (no bias), four micro-batches of inputs."""
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(4, 8, bias=False), nn.Linear(8, 3, bias=False)).double()
    calls = [BlockCall((torch.randn(6, 4, dtype=DT),), {}) for _ in range(4)]
    blocks = BlockList("layers", nn.ModuleList([block]), ["layers.0"])
    jobs = [ModuleJob(f"layers.0.{i}", block[i], "linear", parse_sparsity("2:4"), 0, block, calls, blocks=blocks,
                      param_name=f"{i}.weight", dense_calls=calls) for i in (0, 1)]
    return block, calls, jobs


@pytest.mark.parametrize("kind", ["exact", "gauss-newton"])
def test_linear_block_gradient_and_products_equal_the_closed_form(monkeypatch, kind):
    """y = X W1^T W2^T against the dense block's T: the objective the block re-fit builds
    (unpacking one flat variable into both weights) has the hand-derived gradient and
    Hessian, whose blocks between the two modules are not zero."""
    block, calls, jobs = _linear_block()
    dense = [block[0].weight.detach().clone(), block[1].weight.detach().clone()]

    def check(w0, mask, residual_fn, train, held):
        W1, W2 = w0[:32].view(8, 4), w0[32:].view(3, 8)
        X = torch.cat([calls[b.index].args[0] for b in train])
        R = X @ W1.T @ W2.T - X @ dense[0].T @ dense[1].T
        c = 2.0 / R.numel()
        grad = torch.cat([(c * W2.T @ R.T @ X).reshape(-1), (c * R.T @ (X @ W1.T)).reshape(-1)])
        J1 = torch.einsum("ac,td->tacd", W2, X).reshape(R.numel(), 32)  # d y[t, a] / d W1[c, d]
        J2 = torch.einsum("ab,tc->tabc", torch.eye(3, dtype=DT), X @ W1.T).reshape(R.numel(), 24)
        J = torch.cat([J1, J2], dim=1)
        H = c * J.T @ J
        if kind == "exact":  # d2 y[t, a] / d W1[c, d] d W2[a, c] = X[t, d], weighted by the residuals
            cross = c * torch.einsum("ce,ad->cdae", torch.eye(8, dtype=DT), R.T @ X).reshape(32, 24)
            H[:32, 32:] += cross
            H[32:, :32] += cross.T
            autograd = hessian(lambda w: window_loss(residual_fn, w, train), w0)
            assert rel_err(H, autograd) < 1e-10
        assert H[:32, 32:].abs().max() > 1e-3  # the two modules' curvature is coupled
        op = HessianOperator(residual_fn, w0, train, kind)
        v = torch.randn(56, dtype=DT, generator=torch.Generator().manual_seed(1))
        return rel_err(op.grad, grad), rel_err(op(v), H @ v), op.loss

    seen = _spy_newton(monkeypatch, check)
    config = PruneConfig(sparsity="2:4", method=SnowsConfig(k_step=0, term_scale="none", hessian=kind, refit_unit="block"))
    results = SnowsMethod(config).prune_block(jobs)
    assert len(seen) == 1 and len(results) == 2
    grad_error, product_error, loss = seen[0]
    assert grad_error < 1e-12 and product_error < 1e-12 and loss > 0
    assert results[0].metrics["window"] == ["0"] and results[0].metrics["joint_solve"] == "layers.0.0"


@pytest.mark.parametrize("unit", ["block", "group"])
@pytest.mark.parametrize("kind", ["llama", "vit"])
def test_block_objective_gradient_and_products_agree_with_autograd(monkeypatch, kind, unit):
    """On a real block (float64), re-fitted whole or by groups of modules reading one input
    (the first: q/k/v): the objective is zero at the dense weights (dense-stream
    targets of block 0); the operator's gradient and products equal autograd's own
    (``torch.autograd.functional``: the loss's gradient, ``hvp``, and ``J^T (J v)`` from
    ``jvp`` then ``vjp`` of the residuals), and central differences. Llama's RMSNorm
    computes in float32 inside a float64 model, which bounds the agreement there."""
    from torch.autograd.functional import hvp, jvp, vjp

    model = (tiny_llama() if kind == "llama" else tiny_vit()).double()
    first = find_block_list(model).modules[0]
    linears = [m.weight.detach().reshape(-1) for m in first.modules() if isinstance(m, nn.Linear)]  # in execution order
    eps = 1e-4

    def check(w0, mask, residual_fn, train, held):
        if seen:
            return None  # block 0's first solve only
        sizes = torch.tensor([w.numel() for w in linears]).cumsum(0).tolist()
        dense = torch.cat(linears[:sizes.index(w0.numel()) + 1])  # the solve's modules, the first of the block
        at_dense = window_loss(residual_fn, dense, train + held)
        g = torch.Generator().manual_seed(2)
        w = w0 + 0.01 * torch.randn(w0.shape, generator=g, dtype=DT) * w0.abs().mean()
        v = torch.randn(w0.shape, generator=g, dtype=DT) * w0.abs().mean()

        def loss(x):
            return window_loss(residual_fn, x, train)

        def grad(x):
            x = x.detach().requires_grad_(True)
            return torch.autograd.grad(loss(x), x)[0]

        with torch.enable_grad():
            exact, gn = HessianOperator(residual_fn, w, train, "exact"), HessianOperator(residual_fn, w, train, "gauss-newton")
            products = {"exact": exact(v), "gauss-newton": gn(v)}
            by_autograd = {"gradient": grad(w), "exact": hvp(loss, w, v)[1], "gauss-newton": torch.zeros_like(w)}
            for batch in train:
                residuals = lambda x: tuple(residual_fn(x, batch))  # noqa: E731
                outputs, jv = jvp(residuals, w, v)
                weighted = tuple(2.0 * j / o.numel() for j, o in zip(jv, outputs))
                by_autograd["gauss-newton"] += vjp(residuals, w, weighted)[1] / len(train)
            differences = {"gradient": float((loss(w + eps * v) - loss(w - eps * v)) / (2 * eps)),
                           "exact": (grad(w + eps * v) - grad(w - eps * v)) / (2 * eps)}
        errors = {"gradient": rel_err(exact.grad, by_autograd["gradient"]),
                  "exact": rel_err(products["exact"], by_autograd["exact"]),
                  "gauss-newton": rel_err(products["gauss-newton"], by_autograd["gauss-newton"]),
                  "gradient, differences": abs(float(exact.grad @ v) - differences["gradient"]) / abs(differences["gradient"]),
                  "exact, differences": rel_err(products["exact"], differences["exact"]),
                  "curved": rel_err(products["gauss-newton"], products["exact"])}
        assert gn.grad.equal(exact.grad)
        return float(at_dense), errors

    seen = _spy_newton(monkeypatch, check)
    snows_hf.prune_(model, _block(refit_unit=unit), _inputs(kind))
    at_dense, errors = seen[0]
    assert len(seen) == (4 if unit == "group" and kind == "llama" else 2) and set(seen[1:]) == {None}
    assert at_dense == 0.0
    autograd_tolerance, differences_tolerance = (1e-6, 1e-2) if kind == "llama" else (1e-10, 1e-6)
    assert max(errors["gradient"], errors["exact"], errors["gauss-newton"]) < autograd_tolerance, errors
    assert max(errors["gradient, differences"], errors["exact, differences"]) < differences_tolerance, errors
    assert errors["curved"] > 1e-4, errors  # the window is not linear: the two products differ


# 3. masks, losses, and the per-module re-fit


@pytest.mark.parametrize("settings", [{"mask": "sparsegpt"}, {"mask": "wanda", "sparsity": "0.6"},
                                      {"mask": "magnitude", "sparsity": "1:4"}], ids=["sparsegpt-2of4", "wanda-60", "magnitude-1of4"])
def test_block_refit_keeps_every_mask_and_never_raises_the_window_loss(settings):
    """Each module's mask is the one the mask-only path chooses from the same block
    statistics (block 0, where both see the same inputs), every pattern holds, the kept
    weights moved, and the line search never leaves the window loss above its start."""
    model, masked = tiny_llama().double(), tiny_llama().double()
    report = snows_hf.prune_(model, _block(**settings), _inputs("llama"))
    snows_hf.prune_(masked, {"sparsity": "2:4", "batch_size": 4, **settings, "method": "mask-only", "statistics": "block"},
                    _inputs("llama"))
    pattern = parse_sparsity(settings.get("sparsity", "2:4"))
    assert len(report.layers) == 14 and report.solver["solves"] == 2 and report.solver["layers"] == 14
    for layer in report.layers:
        weight, reference = model.get_submodule(layer.name).weight, masked.get_submodule(layer.name).weight
        kept = to_rows(weight, "linear") != 0
        assert satisfies(kept, pattern, at_most=True), layer.name
        if layer.block == 0:
            assert torch.equal(weight != 0, reference != 0), layer.name
        m = layer.metrics
        assert m["refit_unit"] == "block" and m["joint_solve"] == f"model.layers.{layer.block}.self_attn.q_proj"
        assert len(m["joint_modules"]) == 7 and layer.name in m["joint_modules"]
        assert m["heldout_loss_after"] <= m["heldout_loss_before"] <= m["heldout_loss_masked"]
    for solve in counted_solves(report):
        assert solve["newton_steps"] == 1 and solve["heldout_loss_after"] < solve["heldout_loss_masked"]
    moved = [rel_err(model.get_submodule(n).weight.detach(), masked.get_submodule(n).weight.detach())
             for n in counted_solves(report)[0]["joint_modules"]]
    assert max(moved) > 1e-3, moved  # re-fitted (q and k, of little weight in the block's output, move least)


def test_nan_in_a_block_keeps_its_best_finite_weights_and_says_so():
    model = tiny_llama(layers=3)
    with torch.no_grad():
        model.model.layers[1].input_layernorm.weight[0] = float("nan")  # NaN from block 1 on
    report = snows_hf.prune_(model, _block(batch_size=3), torch.randint(4, 128, (12, 16), generator=torch.Generator().manual_seed(0)))
    flagged = {layer.block for layer in report.layers if "numerics" in layer.metrics}
    assert flagged == {0, 1, 2}  # block 0's window reaches block 1's norm (K=2)
    assert all("NaN/Inf" in layer.metrics["numerics"] for layer in report.layers)
    assert report.solver["non_finite"] == 21 and report.solver["solves"] == 3
    for layer in report.layers:
        weight = model.get_submodule(layer.name).weight
        assert torch.isfinite(weight).all() and ((weight.reshape(weight.shape[0], -1, 4) != 0).sum(-1) <= 2).all()


def _block0_error(**settings):
    """Relative error of block 0's output on held-out samples after pruning block 0 only,
    and the Hessian-vector products the run took."""
    held = torch.randint(4, VOCAB, (16, 12), generator=torch.Generator().manual_seed(9))
    outputs = []

    def block0(model):
        handle = model.model.layers[0].register_forward_hook(lambda m, a, o: outputs.append(o[0] if isinstance(o, tuple) else o))
        with torch.no_grad():
            model(held)
        handle.remove()
        return outputs.pop()

    dense, model = tiny_llama().double(), tiny_llama().double()
    report = snows_hf.prune_(model, {**_block(**settings), "targets": [r"layers\.0\."]},
                             torch.randint(4, VOCAB, (32, 12), generator=torch.Generator().manual_seed(0)))
    y, y_dense = block0(model), block0(dense)
    return float((y - y_dense).pow(2).sum() / y_dense.pow(2).sum()), sum(sum(m["cg_iterations"]) for m in counted_solves(report))


@pytest.mark.parametrize("mask", ["sparsegpt", "magnitude"])
def test_block_refit_fits_the_block_output_at_least_as_well_as_the_per_module_refit_at_equal_budget(mask):
    """Per module: 7 solves of 1 Newton step x 5 CG iterations (35 products); per block:
    one solve of 1 x 35. Measured (float64 tiny Llama, block 0): 0.00874 vs 0.00811 on
    the SparseGPT mask, 0.00937 vs 0.00767 on the magnitude mask."""
    modules, module_products = _block0_error(refit_unit="module", mask=mask, cg_iters=5)
    joint, joint_products = _block0_error(refit_unit="block", mask=mask, cg_iters=35)
    untouched, _ = _block0_error(refit_unit="block", mask=mask, newton_steps=0)
    assert module_products <= 35 and joint_products <= 35
    assert joint <= modules < untouched, (joint, modules, untouched)


# 4. memory, resume, placement


def test_out_of_memory_in_a_block_window_holds_fewer_graphs_and_reaches_the_same_weights(monkeypatch, caplog):
    free = tiny_llama().double()
    snows_hf.prune_(free, _block(newton_steps=2), _inputs("llama"))
    original, tight = refit.newton_refit, []

    def squeezed(w0, mask, residual_fn, *args, **kwargs):
        tight.append(FakeMemory(residual_fn, limit=2))
        return original(w0, mask, tight[-1], *args, **kwargs)

    monkeypatch.setattr(refit, "newton_refit", squeezed)
    model = tiny_llama().double()
    with caplog.at_level("INFO", logger="snows_hf"):
        snows_hf.prune_(model, _block(newton_steps=2), _inputs("llama"))
    assert tight[0].ooms == 1 and tight[1].ooms == 0  # the second block starts from the graphs that fitted
    assert any("block 0: out of memory" in r.getMessage() and "holding 1 at a time" in r.getMessage() for r in caplog.records)
    difference = max(float((a - b).abs().max()) for a, b in zip(model.state_dict().values(), free.state_dict().values()))
    assert difference < 1e-9  # summation order only


@pytest.mark.parametrize("unit, hook, stop_at, layers, blocks_done, solves", [
    ("block", "prune_block", 3, 4, 2, 4),  # the third block's solve: blocks 0 and 1 saved
    ("group", "prune_group", 4, 3, 1, 12),  # block 1's gate/up: block 0 saved, block 1 half done; 4 solves a block
])
def test_a_resumed_joint_refit_ends_bit_identical(tmp_path, monkeypatch, unit, hook, stop_at, layers, blocks_done, solves):
    config = _block(k_step=3, batch_size=3, refit_unit=unit)
    reference = tiny_llama(layers=layers)
    snows_hf.prune_(reference, config, IDS[:12])
    cls, calls = get_method("snows"), {"n": 0}
    original = getattr(cls, hook)

    def interrupted(self, jobs):
        calls["n"] += 1
        if calls["n"] == stop_at:
            raise KeyboardInterrupt
        return original(self, jobs)

    monkeypatch.setattr(cls, hook, interrupted)
    with pytest.raises(KeyboardInterrupt):
        snows_hf.prune_(tiny_llama(layers=layers), config, IDS[:12], checkpoint=RunCheckpoint(tmp_path / "ckpt"))
    monkeypatch.setattr(cls, hook, original)
    state = json.loads((tmp_path / "ckpt" / "state.json").read_text())
    assert state["blocks_done"] == blocks_done and len(state["layers"]) == 7 * blocks_done
    model = tiny_llama(layers=layers)
    report = snows_hf.prune_(model, config, IDS[:12], checkpoint=RunCheckpoint(tmp_path / "ckpt", resume=True))
    assert len(report.layers) == 7 * layers and len(counted_solves(report)) == solves
    ref = reference.state_dict()
    assert all(torch.equal(value, ref[key]) for key, value in model.state_dict().items())


@pytest.mark.parametrize("unit", ["block", "group"])
def test_a_small_memory_budget_streams_blocks_and_changes_nothing(llama64_dir, unit):
    from transformers import AutoModelForCausalLM

    config = _block(k_step=4, init="mask", batch_size=3, refit_unit=unit)
    weights = {}
    for budget in (None, "cpu=10KB"):
        model = AutoModelForCausalLM.from_pretrained(llama64_dir)
        report = snows_hf.prune_(model, {**config, "max_memory": budget}, IDS[:12])
        assert report.placement["streamed"] is (budget is not None)
        weights[budget] = model.state_dict()
    assert all(torch.equal(weights[None][k], weights["cpu=10KB"][k]) for k in weights[None])


# 5. the setting: recipe, command line, report, card, plan


@pytest.mark.parametrize("unit, solves, recorded", [
    ("block", 2, {"block"}),  # 2 blocks
    ("group", 8, {"group", None}),  # q/k/v, o, gate/up, down in each: o and down re-fit alone
])
def test_the_unit_is_a_setting_of_the_recipe_the_report_and_the_card(llama_dir, tmp_path, unit, solves, recorded):
    from snows_hf.cli import main
    from snows_hf.recipe import load_recipe

    out = tmp_path / "out"
    code = main(["prune", str(llama_dir), "--dataset", "random", "--num-samples", "8", "--seq-len", "8", "--batch-size", "4",
                 "--sparsity", "2:4", "--refit-unit", unit, "--no-eval", "--quiet", "--output-dir", str(out)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["refit_unit"] == unit and report["solver"]["solves"] == solves
    assert {layer["metrics"].get("refit_unit") for layer in report["layers"]} == recorded
    assert f"| re-fit unit | {unit} |" in (out / "README.md").read_text()
    prune, _, _ = load_recipe(out / "recipe.yaml")
    assert prune.method.refit_unit == unit and PruneConfig.from_dict(prune.to_dict()) == prune
    assert PruneConfig(sparsity="2:4").method.refit_unit == "module"  # the default
    with pytest.raises(ValueError, match="refit_unit must be module, group or block, got 'layer'"):
        SnowsConfig(refit_unit="layer")


def test_the_plan_counts_one_refit_per_block():
    from snows_hf.plan import ModulePlan

    modules = [ModulePlan(f"b.{b}.{m}", m, b, (4, 4), "linear", "2:4", [m], 100) for b in range(3) for m in "qkv"]
    per_block = get_method("snows")(PruneConfig(sparsity="2:4", method=SnowsConfig(refit_unit="block"))).plan(8)
    per_module = get_method("snows")(PruneConfig(sparsity="2:4")).plan(8)
    assert isinstance(per_block, SnowsPlan) and "one re-fit per block" in per_block.settings
    assert per_block.footer(modules, 4)[1] == "Hessian-vector products: at most 45"  # 3 blocks x 3 x 5
    assert per_module.footer(modules, 4)[1] == "Hessian-vector products: at most 135"  # 9 modules x 3 x 5
    per_group = get_method("snows")(PruneConfig(sparsity="2:4", method=SnowsConfig(refit_unit="group"))).plan(8)
    assert "one re-fit per group of modules reading one input" in per_group.settings
    assert per_group.footer(modules, 4)[1] == "Hessian-vector products: at most 135"  # groups unknown before a forward


def test_a_blocks_window_is_its_output_and_the_operations_after_it():
    model = tiny_llama()
    blocks = find_block_list(model)
    (call,) = capture_block_inputs(model, blocks.modules[0], [{"input_ids": IDS[:2]}], torch.device("cpu"))
    weights = {f"{name}.weight": m.weight for name, m in blocks.modules[0].named_modules() if isinstance(m, nn.Linear)}
    with WindowRunner(blocks, 0) as runner:
        assert runner.trace_block(call, weights, 3).names() == ["0", "1.input_layernorm", "1.self_attn.q_proj",
                                                                "1.self_attn.k_proj"]
        with pytest.raises(ValueError, match="without a param_name"):
            runner.trace(call, weights["mlp.up_proj.weight"], 1)
    last = {f"{name}.weight": m.weight for name, m in blocks.modules[1].named_modules() if isinstance(m, nn.Linear)}
    with torch.no_grad():
        following = blocks.next_call(blocks.modules[0], call, run_block(blocks.modules[0], call))
    with WindowRunner(blocks, 1) as runner:
        assert runner.trace_block(following, last, 5).names() == ["1"]  # the network ends there
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0
