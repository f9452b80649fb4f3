"""recipe.yaml: round trip, strictness."""

import pytest

from snows_hf import PruneConfig
from snows_hf.data import CalibrationConfig
from snows_hf.cli import main
from snows_hf.recipe import load_recipe


def test_every_output_carries_a_recipe_that_reruns_it(llama_dir, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(f'{{"text": "w{i} w{i + 3} w{i + 7} w{i + 1}"}}\n' for i in range(100)))
    argv = ["prune", str(llama_dir), "--sparsity", "60%", "--method", "none", "--mask", "sparsegpt",
            "--allocation", "global", "--targets", "mlp", "--dataset", str(data), "--num-samples", "4",
            "--seq-len", "16", "--eval-samples", "2", "--output-dir", "out", "--quiet"]
    assert main(argv) == 0
    prune, calib, model = load_recipe("out/recipe.yaml")
    assert prune == PruneConfig(sparsity="0.6", method="none", mask="sparsegpt", allocation="global", targets=["mlp"])
    assert calib == CalibrationConfig(dataset=str(data), num_samples=4, seq_len=16, eval_samples=2)
    assert model == str(llama_dir)


@pytest.mark.parametrize(
    "text, message",
    [("prune: {sparsity: '2:4', k_stpe: 2}", "unknown keys prune.k_stpe"),
     ("prune: {sparsity: '2:4'}\nextra: 1", "unknown sections: extra"),
     ("data: {}", "needs a 'prune:' section"),
     ("prune: [1, 2]", "must be a mapping"),
     ("prune: {sparsity: '2:4'\n", "not valid YAML"),
     ("prune: {sparsity: '5:4'}", "invalid sparsity"),
     ("prune: !!python/object:os.system {}", "not valid YAML"),
     ("prune: {sparsity: '2:4', k_step: three}", "prune.k_step must be an int, got 'three'"),
     ("prune: {sparsity: '2:4', targets: 3}", "prune.targets must be a list of regular expressions"),
     ("prune: {sparsity: '2:4', diagnostics: 'no'}", "prune.diagnostics must be a bool")],
)
def test_bad_recipes(tmp_path, text, message):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_recipe(path)


def test_a_version_1_recipe_keeps_meaning_what_it_meant(tmp_path):
    """Defaults changed in version 2 (SparseGPT mask and start, preconditioned CG, 5 CG
    iterations): a recipe written by a version-1 run still describes that run."""
    path = tmp_path / "recipe.yaml"
    path.write_text("prune: {sparsity: '2:4', config_version: 1, k_step: 2}\n")
    prune, _, _ = load_recipe(path)
    assert (prune.mask, prune.init, prune.cg_iters, prune.preconditioner) == ("magnitude", "lsq", 10, "none")
    assert prune.k_step == 2 and prune.config_version == 2
    path.write_text("prune: {sparsity: '2:4', config_version: 1, mask: wanda, cg_iters: 7}\n")
    prune, _, _ = load_recipe(path)
    assert (prune.mask, prune.cg_iters, prune.preconditioner) == ("wanda", 7, "none")
    path.write_text("prune: {sparsity: '2:4'}\n")  # hand-written, no version: today's defaults
    prune, _, _ = load_recipe(path)
    assert (prune.mask, prune.init, prune.cg_iters, prune.preconditioner) == ("sparsegpt", "auto", 5, "input-energy")
