"""Earlier names still read: the methods ``none`` and ``magnitude`` (today ``mask-only``, the
second with the magnitude mask) from the command line, a saved recipe and the Python API,
and the modules ``snows_hf.api`` and ``snows_hf.tasks``. Each use says so on exactly one
line, naming the new spelling; what it writes uses the new names; the weights are the same."""

from __future__ import annotations

import importlib
import json
import logging
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import snows_hf
from snows_hf import PruneConfig
from snows_hf.cli import main
from snows_hf.recipe import load_recipe, read_recipe_yaml

from conftest import tiny_llama

#: earlier method name -> (the flags it stands for, its settings as Python keywords)
OLD_METHODS = {
    "none": (["--method", "mask-only"], {"method": "mask-only"}),
    "magnitude": (["--method", "mask-only", "--mask", "magnitude"], {"method": "mask-only", "mask": "magnitude"}),
}


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def deprecations():
    """The deprecation lines the ``snows_hf`` logger emits during the test."""
    handler, logger = _Lines(), logging.getLogger("snows_hf")
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield lambda: [line for line in handler.lines if "deprecated" in line]
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def _prune(vit_dir, out, method_flags):
    return main(["prune", str(vit_dir), "--dataset", "random", "--sparsity", "2:4", "--num-samples", "8",
                 "--batch-size", "4", "--no-eval", *method_flags, "--output-dir", out, "--quiet"])


@pytest.mark.parametrize("old", sorted(OLD_METHODS))
def test_an_earlier_method_name_on_the_command_line(vit_dir, capsys, old):
    flags, settings = OLD_METHODS[old]
    assert _prune(vit_dir, "new", flags) == 0
    capsys.readouterr()
    assert _prune(vit_dir, "old", ["--method", old]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "deprecated" in line]
    assert lines == [f"snows-hf: method {old!r} is deprecated and will be removed: use {' '.join(flags[:2])}"
                     + "".join(f" with {' '.join(flags[i:i + 2])}" for i in range(2, len(flags), 2)) + " (same weights)"]
    new, before = load_file("new/model.safetensors"), load_file("old/model.safetensors")
    assert new.keys() == before.keys() and all(torch.equal(new[k], before[k]) for k in new)
    for out in ("old", "new"):  # what is written names today's method
        prune = read_recipe_yaml(f"{out}/recipe.yaml")["prune"]
        assert {key: prune[key] for key in settings} == settings
        assert json.loads(Path(f"{out}/report.json").read_text())["config"]["method"] == "mask-only"
        assert json.loads(Path(f"{out}/config.json").read_text())["sparsity"]["method"] == "mask-only"
    assert Path("old/recipe.yaml").read_text() == Path("new/recipe.yaml").read_text()


@pytest.mark.parametrize("old", sorted(OLD_METHODS))
def test_an_earlier_method_name_in_a_saved_recipe(tmp_path, deprecations, old):
    path = tmp_path / "recipe.yaml"
    path.write_text(f"prune: {{sparsity: '2:4', method: {old}, mask: sparsegpt, statistics: module}}\n")
    prune, _, _ = load_recipe(path)
    mask = OLD_METHODS[old][1].get("mask", "sparsegpt")  # the magnitude method ignored the mask setting
    assert (prune.method.name, prune.mask, prune.method.statistics) == ("mask-only", mask, "module")
    assert len(deprecations()) == 1 and "method='mask-only'" in deprecations()[0]
    assert prune.to_dict()["method"] == "mask-only"


@pytest.mark.parametrize("make", [
    pytest.param(lambda old: PruneConfig(sparsity="2:4", method=old), id="PruneConfig"),
    pytest.param(lambda old: PruneConfig.from_dict({"sparsity": "2:4", "method": old}), id="from_dict"),
    pytest.param(lambda old: PruneConfig.from_dict({"sparsity": "2:4", "method": old, "statistics": "module"}),
                 id="from_dict-with-option"),
])
@pytest.mark.parametrize("old", sorted(OLD_METHODS))
def test_an_earlier_method_name_in_python(deprecations, make, old):
    config = make(old)
    assert len(deprecations()) == 1
    expected = PruneConfig(sparsity="2:4", **OLD_METHODS[old][1])  # today's names: no deprecation line
    assert (config.method.name, config.mask) == (expected.method.name, expected.mask)
    assert config.to_dict() | {"statistics": "block"} == expected.to_dict()
    assert len(deprecations()) == 1
    assert deprecations()[0].startswith(f"method {old!r} is deprecated") and "method='mask-only'" in deprecations()[0]


@pytest.mark.parametrize("old", sorted(OLD_METHODS))
def test_prune_with_an_earlier_method_name_gives_the_same_weights(deprecations, old):
    inputs = torch.randint(0, 128, (8, 16))
    models = [tiny_llama(), tiny_llama()]
    reports = [snows_hf.prune_(models[0], {"sparsity": "2:4", "batch_size": 4, "method": old}, inputs),
               snows_hf.prune_(models[1], {"sparsity": "2:4", "batch_size": 4, **OLD_METHODS[old][1]}, inputs)]
    assert len(deprecations()) == 1
    assert reports[0].config == reports[1].config and reports[0].config["method"] == "mask-only"
    first, second = models[0].state_dict(), models[1].state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_a_method_registered_under_an_earlier_name_takes_it(deprecations):
    """An alias reads an earlier name only while no registered method has it."""
    from dataclasses import dataclass

    from snows_hf.methods import METHODS, MaskOnly, MethodConfig, without_method_alias

    @dataclass
    class NoneConfig(MethodConfig):
        name = "none"

    class Keep(MaskOnly):
        config_class = NoneConfig

    assert without_method_alias({"method": "none"}) == {"method": "mask-only"}
    snows_hf.methods.register_method(Keep)
    try:
        assert without_method_alias({"method": "none"}) == {"method": "none"}
    finally:
        del METHODS["none"]
    assert len(deprecations()) == 1


@pytest.mark.parametrize("old, new, name", [("snows_hf.api", "snows_hf.oneshot", "prune_"),
                                            ("snows_hf.tasks", "snows_hf.heads", "task_of")])
def test_an_earlier_module_name_still_imports(old, new, name):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated.*{new}") as caught:
        module = importlib.import_module(old)
    assert len(caught) == 1
    assert getattr(module, name) is getattr(importlib.import_module(new), name)


@pytest.mark.parametrize("old", sorted(OLD_METHODS))
def test_a_report_of_an_earlier_run_reads_its_method_by_todays_name(deprecations, old):
    """A ``report.json`` written before the rename (read again by ``convert``) describes its run
    as today's names do, silently: the file names the method, the user did not."""
    from snows_hf.report import PruneReport

    config = PruneConfig(sparsity="2:4", **OLD_METHODS[old][1]).to_dict()
    recorded = {"config": {**config, "method": old, "mask": "sparsegpt" if old == "magnitude" else config["mask"]},
                "layers": [], "model_type": "llama", "block_path": "model.layers", "num_blocks": 0, "num_calibration_samples": 8}
    report = PruneReport.from_dict(recorded)
    assert report.config == config
    assert report.sparsity_block()["method"] == "mask-only"
    assert report.sparsity_block()["mask"] == OLD_METHODS[old][1].get("mask", "sparsegpt")
    assert deprecations() == []
