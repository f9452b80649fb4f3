"""Bundled recipes, --recipe with overriding flags, --dry-run, `snows-hf recipes`."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_families import FAMILIES

import snows_hf
from snows_hf.cli import main
from snows_hf.recipe import bundled_recipes, load_recipe, resolve_settings

# the tiny random model standing in for each bundled recipe's model (same family)
FAMILY_OF = {"vit": "vit", "deit": "deit", "resnet": "resnet", "convnext": "convnext", "bert": "bert",
             "gpt2": "gpt2", "smollm2": "llama"}


def _family(name: str) -> str:
    return next(f for prefix, f in FAMILY_OF.items() if name.startswith(prefix))


def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with a hash of its bytes (to prove nothing changed)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_every_family_a_recipe_names_has_a_tiny_model():
    assert set(bundled_recipes()) and {_family(n) for n in bundled_recipes()} <= set(FAMILIES)


@pytest.mark.parametrize("name", sorted(bundled_recipes()))
def test_bundled_recipe_validates_and_dry_runs_on_a_tiny_model_of_its_family(name, tmp_path, capsys):
    prune, data, model = load_recipe(name)
    assert isinstance(model, str) and "/" in model  # a Hub id
    assert data is not None and data.dataset and data.num_samples >= 64
    text = bundled_recipes()[name].read_text()
    assert text.startswith("# ") and "Why:" in text and "Cost:" in text  # documented at its top
    folder = tmp_path / "tiny"
    torch.manual_seed(0)
    FAMILIES[_family(name)].build().eval().save_pretrained(folder)
    os.chdir(tmp_path)
    before = _tree(tmp_path)
    assert main(["prune", str(folder), "--recipe", name, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert _tree(tmp_path) == before  # nothing written, nothing changed
    assert f"sparsity {prune.pattern.label}" in out and "to prune" in out and "nothing written" in out
    assert f"{data.num_samples} " in out  # the recipe's calibration size
    assert "traced on no weights (meta device)" in out
    assert len(out.splitlines()) > 8 and max(map(len, out.splitlines())) <= 100


def test_dry_run_plan_lists_modules_windows_and_bounds(llama_dir, tmp_path, capsys):
    os.chdir(tmp_path)
    before = _tree(tmp_path)
    assert main(["prune", str(llama_dir), "--dataset", "random", "--sparsity", "2:4", "--dry-run", "--num-samples", "32",
                 "--seq-len", "16", "--batch-size", "4", "--k-step", "2", "--newton-steps", "3", "--cg-iters", "4"]) == 0
    out = capsys.readouterr().out
    assert _tree(tmp_path) == before
    assert "model.layers.0.self_attn.q_proj" in out and "32x32" in out
    assert "14 to prune" in out and "K=2" in out
    assert "8 micro-batches of 4, 1 held out" in out
    assert f"at most {14 * 3 * 4}" in out  # modules x Newton steps x CG iterations
    assert "32 x 16 tokens of random inputs" in out
    # 32 samples x 16 tokens x hidden 32 x 4 bytes = 64 KiB per stream, two streams (pruned and dense)
    assert "one block's inputs, all 32 samples: 128.0 KiB (pruned and dense streams)" in out
    assert main(["prune", str(llama_dir), "--dataset", "random", "--sparsity", "2:4", "--dry-run", "--num-samples", "32", "--seq-len", "16",
                 "--batch-size", "4", "--hessian-batches", "1"]) == 0
    one = capsys.readouterr().out
    graphs = lambda text: next(line for line in text.splitlines() if "kept graphs" in line).split(": ")[1]
    assert graphs(one) != graphs(out)  # curvature on 1 micro-batch of 7 holds a seventh of the graphs
    assert main(["prune", str(llama_dir), "--dataset", "random", "--sparsity", "2:4", "--dry-run", "--method", "mask-only"]) == 0
    plain = capsys.readouterr().out
    assert "kept graphs" not in plain and "Hessian-vector" not in plain and "streams" not in plain


def test_plan_says_where_the_run_would_save_and_refuses_what_the_run_would(llama_dir, tmp_path):
    from snows_hf import SaveOptions
    from snows_hf.plan import plan

    os.chdir(tmp_path)
    Path("full").mkdir()
    Path("full/x").write_text("x")
    before = _tree(tmp_path)
    found = plan(llama_dir, {"sparsity": "2:4", "method": "mask-only", "mask": "magnitude"}, "random")
    assert found.output_dir == "tiny-llama-pruned-2of4" and found.traced_on == "meta" and found.method == "mask-only"
    assert plan(llama_dir, {"sparsity": "2:4"}, "random", save=SaveOptions(Path("elsewhere"))).output_dir == "elsewhere"
    with pytest.raises(ValueError, match="full holds files snows-hf did not write"):
        plan(llama_dir, {"sparsity": "2:4"}, "random", save=SaveOptions("full"))
    with pytest.raises(ValueError, match="the compact format codes groups of at most 16"):
        plan(llama_dir, {"sparsity": "2:32"}, "random", save=SaveOptions(save_format="compact"))
    assert _tree(tmp_path) == before


def _weights(folder: str) -> dict[str, torch.Tensor]:
    return load_file(Path(folder) / "model.safetensors")


def test_a_runs_recipe_fed_back_reproduces_its_weights_and_flags_override(llama_dir, tmp_path):
    os.chdir(tmp_path)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(f'{{"text": "w{i} w{i + 3} w{i + 7} w{i + 1} w{i + 2}"}}\n' for i in range(60)))
    snows_hf.run(llama_dir, {"sparsity": "2:4", "k_step": 1, "newton_steps": 1, "batch_size": 2},
                 {"dataset": str(data), "num_samples": 8, "seq_len": 16}, output_dir="first", evaluate=False, progress=False)
    snows_hf.run(*resolve_settings(recipe="first/recipe.yaml"), output_dir="again", evaluate=False, progress=False)
    first, again = _weights("first"), _weights("again")
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    assert load_recipe("again/recipe.yaml") == load_recipe("first/recipe.yaml")
    # a flag given with --recipe wins over the recipe's field; the others stay the recipe's
    assert main(["prune", "--recipe", "first/recipe.yaml", "--k-step", "0", "--output-dir", "k0", "--quiet",
                 "--no-eval"]) == 0
    prune, data, model = load_recipe("k0/recipe.yaml")
    base, base_data, base_model = load_recipe("first/recipe.yaml")
    assert prune.method.k_step == 0 and prune.method.newton_steps == 1 and prune.sparsity == base.sparsity
    assert data == base_data and model == base_model
    assert not all(torch.equal(first[k], _weights("k0")[k]) for k in first)


@pytest.mark.parametrize("argv, message", [
    (["prune", "--recipe", "missing.yaml"], "cannot read recipe 'missing.yaml'"),
    (["prune", "--recipe", "no-such-recipe"], "no bundled recipe of that name"),
    (["prune", "--recipe", "typo.yaml"], "unknown keys prune.k_stpe"),
    (["prune", "--recipe", "wrong-type.yaml"], "prune.newton_steps must be an int, got 'two'"),
    (["prune", "--recipe", "wrong-data.yaml"], "data.num_samples must be an int, got '64'"),
    (["prune", "--recipe", "no-model.yaml"], "MODEL is required; or a --recipe whose model: names one"),
    (["prune", "some-model", "--dataset", "random"], "--sparsity is required; e.g. --sparsity 2:4, or a --recipe with prune.sparsity"),
])
def test_bad_recipes_and_missing_arguments_fail_in_one_line(argv, message, tmp_path, capsys):
    os.chdir(tmp_path)
    Path("typo.yaml").write_text("model: m\nprune: {sparsity: '2:4', k_stpe: 2}\n")
    Path("wrong-type.yaml").write_text("model: m\nprune: {sparsity: '2:4', newton_steps: two}\n")
    Path("wrong-data.yaml").write_text("model: m\nprune: {sparsity: '2:4'}\ndata: {num_samples: '64'}\n")
    Path("no-model.yaml").write_text("prune: {sparsity: '2:4'}\n")
    before = _tree(tmp_path)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert _tree(tmp_path) == before


def test_recipes_command_lists_and_shows_the_bundled_recipes(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    for name in bundled_recipes():
        assert name in out
    assert "google/vit-base-patch16-224" in out and max(map(len, out.splitlines())) <= 100
    assert main(["recipes", "gpt2-50pct"]) == 0
    assert capsys.readouterr().out == bundled_recipes()["gpt2-50pct"].read_text()
