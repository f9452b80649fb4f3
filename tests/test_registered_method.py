"""A method registered from outside the package (this module's own) gets, from its
options' declarations alone, command-line options, recipe keys and Python settings that
all set the same thing, and the same refusal of an out-of-bounds value from each."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import snows_hf
from snows_hf import PruneConfig, SettingError
from snows_hf.cli import main
from snows_hf.fields import config_field
from snows_hf.masks import apply_selector
from snows_hf.methods import Method, MethodConfig, MethodResult, register_method


@dataclass
class ShrinkConfig(MethodConfig):
    """Options of the test's method: an integer with a lower bound, a number with both."""

    name = "shrink-test"
    shrink_rounds: int = config_field(1, "times the kept weights are scaled", minimum=1)
    shrink_scale: float = config_field(1.0, "factor on the kept weights each round", minimum=0, maximum=1)


class Shrink(Method):
    """The magnitude mask, the kept weights scaled by ``shrink_scale ** shrink_rounds``."""

    config_class = ShrinkConfig
    description = "magnitude mask, kept weights shrunk"

    @property
    def fits_data(self) -> bool:
        return False

    def prune_module(self, job):
        weight, mask = apply_selector("magnitude", job.weight_rows(), job.pattern, {})
        options = self.config.method
        return MethodResult(weight_rows=weight * options.shrink_scale ** options.shrink_rounds, mask_rows=mask)


@pytest.fixture
def shrink(registries):
    """The method registered for one test, after the package's own and before ``main`` runs."""
    register_method(Shrink)


COMMON = ["--sparsity", "2:4", "--dataset", "random", "--num-samples", "4", "--batch-size", "4", "--no-eval", "--quiet"]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_the_options_work_from_the_command_line_a_recipe_and_python(shrink, llama_dir, capsys):
    assert main(["prune", str(llama_dir), *COMMON, "--method", "shrink-test", "--shrink-rounds", "3",
                 "--shrink-scale", "0.5", "--output-dir", "cli"]) == 0
    saved = yaml.safe_load(Path("cli/recipe.yaml").read_text())["prune"]
    assert (saved["method"], saved["shrink_rounds"], saved["shrink_scale"]) == ("shrink-test", 3, 0.5)

    # the saved recipe reruns the same options, as does a recipe of one's own
    assert main(["prune", "--recipe", "cli/recipe.yaml", "--no-eval", "--quiet", "--output-dir", "rerun"]) == 0
    Path("mine.yaml").write_text(yaml.safe_dump({"model": str(llama_dir), "prune": {
        "sparsity": "2:4", "method": "shrink-test", "shrink_rounds": 3, "shrink_scale": 0.5, "batch_size": 4},
        "data": {"dataset": "random", "num_samples": 4}}))
    assert main(["prune", "--recipe", "mine.yaml", "--no-eval", "--quiet", "--output-dir", "recipe"]) == 0

    dense, cli = _weights(llama_dir), _weights(Path("cli"))
    name = "model.layers.0.mlp.down_proj.weight"
    kept = cli[name] != 0
    assert ((kept.reshape(kept.shape[0], -1, 4)).sum(-1) == 2).all()
    assert torch.equal(cli[name][kept], dense[name][kept] * 0.125)  # 0.5 ** 3: both options arrived
    for folder in ("rerun", "recipe"):
        assert all(torch.equal(value, cli[key]) for key, value in _weights(Path(folder)).items()), folder

    model = AutoModelForCausalLM.from_pretrained(llama_dir)
    snows_hf.prune_(model, {"sparsity": "2:4", "method": "shrink-test", "shrink_rounds": 3, "shrink_scale": 0.5,
                            "batch_size": 4}, torch.randint(0, 100, (4, 8)), progress=False)
    assert torch.equal(model.model.layers[0].mlp.down_proj.weight, cli[name])
    assert json.loads(Path("cli/report.json").read_text())["config"]["shrink_rounds"] == 3


def test_the_options_are_in_the_help(shrink, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    with pytest.raises(SystemExit):
        main(["prune", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "magnitude mask, kept weights shrunk (with --method shrink-test)" in out
    assert "--shrink-rounds SHRINK_ROUNDS times the kept weights are scaled (default: 1)" in out
    assert "--shrink-scale SHRINK_SCALE factor on the kept weights each round (default: 1.0)" in out


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("name, value, problem", [
    pytest.param("shrink_rounds", 0, "must be at least 1, got 0", id="rounds-0"),
    pytest.param("shrink_rounds", -3, "must be at least 1, got -3", id="rounds-negative"),
    pytest.param("shrink_rounds", 2**64, f"must be at most {2**63 - 1}, got {2**64}", id="rounds-past-int64"),
    pytest.param("shrink_scale", 1.5, "must be from 0 to 1, got 1.5", id="scale-above"),
    pytest.param("shrink_scale", -0.25, "must be from 0 to 1, got -0.25", id="scale-below"),
    pytest.param("shrink_scale", float("nan"), "must be a finite number, got nan", id="scale-nan"),
    pytest.param("shrink_scale", float("inf"), "must be a finite number, got inf", id="scale-inf"),
])
def test_an_out_of_bounds_value_is_refused_with_the_same_message_everywhere(shrink, name, value, problem, llama_dir,
                                                                             tmp_path, capsys):
    settings = {"sparsity": "2:4", "method": "shrink-test", name: value}
    for call in (lambda: PruneConfig.from_dict(settings), lambda: ShrinkConfig(**{name: value}),
                 lambda: snows_hf.prune_(torch.nn.Linear(4, 4), settings, torch.zeros(2, 4))):
        with pytest.raises(SettingError) as caught:
            call()
        assert (str(caught.value), caught.value.field) == (f"{name} {problem}", name)

    before = _tree(tmp_path)
    flag = "--" + name.replace("_", "-")
    assert main(["prune", str(llama_dir), *COMMON, "--method", "shrink-test", flag, str(value), "--output-dir", "out"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [f"snows-hf: error: {flag} {problem}"], err
    assert _tree(tmp_path) == before

    Path("r.yaml").write_text(yaml.safe_dump({"model": str(llama_dir), "prune": settings}))
    before = _tree(tmp_path)
    assert main(["prune", "--recipe", "r.yaml", "--output-dir", "out"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [f"snows-hf: error: recipe 'r.yaml': prune.{name} {problem}"], err
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("option, flag", [
    pytest.param("output_dir", "--output-dir", id="an-option-of-prune-added-after"),
    pytest.param("seed", "--seed", id="a-data-option"),
    pytest.param("debug", "--debug", id="a-common-option"),
])
def test_an_option_named_as_a_command_line_option_is_refused_in_one_line(option, flag, registries, llama_dir, capsys):
    clash = dataclass(type("ClashConfig", (ShrinkConfig,), {"name": "clash-test", "__annotations__": {option: int},
                                                             option: config_field(1, "clashes", minimum=1)}))
    register_method(type("Clash", (Shrink,), {"config_class": clash}))
    assert main(["prune", str(llama_dir), *COMMON, "--output-dir", "out"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"snows-hf: error: method 'clash-test' declares an option {option!r}, but the command line has {flag} for "
        "something else; rename the option"]
    assert not Path("out").exists()
