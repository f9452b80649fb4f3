"""Hostile settings (issue 30): a recipe's version is an int it can read, and a recipe
gives each key once (YAML would keep the last silently)."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from snows_hf.cli import main


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_error(capsys: typing.Any) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("snows-hf: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


# Item 10: the version of a recipe is an integer it can have, and a key is given once.
@pytest.mark.parametrize("text, message", [
    pytest.param("prune: {sparsity: '2:4', config_version: true}", "prune.config_version must be an int, got True", id="version-true"),
    pytest.param("prune: {sparsity: '2:4', config_version: 1.0}", "prune.config_version must be an int, got 1.0", id="version-float"),
    pytest.param("prune: {sparsity: '2:4', config_version: 3.0}", "prune.config_version must be an int, got 3.0", id="version-float-3"),
    pytest.param("prune: {sparsity: '2:4', config_version: '2'}", "prune.config_version must be an int, got '2'", id="version-str"),
    pytest.param("prune: {sparsity: '2:4', config_version: null}", "prune.config_version must be an int, got None", id="version-null"),
    pytest.param("prune: {sparsity: '2:4', config_version: 0}", "prune.config_version 0 is not supported (this snows-hf reads 1 to 4)", id="version-0"),
    pytest.param("prune: {sparsity: '2:4', config_version: 5}", "prune.config_version 5 is not supported (this snows-hf reads 1 to 4)", id="version-5"),
    pytest.param("prune:\n  sparsity: '2:4'\n  k_step: 1\n  k_step: 2\n", "the key 'k_step' twice (line 4)", id="duplicate-option"),
    pytest.param("prune: {sparsity: '2:4'}\nprune: {sparsity: '50%'}\n", "the key 'prune' twice (line 2)", id="duplicate-section"),
    pytest.param("prune: {sparsity: '2:4', sparsity: '50%'}\n", "the key 'sparsity' twice (line 1)", id="duplicate-flow"),
    pytest.param("prune: {sparsity: '2:4'}\ndata:\n  dataset: a\n  'dataset': b\n", "the key 'dataset' twice (line 4)", id="duplicate-quoted"),
    pytest.param("prune: {sparsity: '2:4', <<: {sparsity: '50%'}}\n", "the key 'sparsity' twice (line 1)", id="duplicate-merged"),
    pytest.param("prune: {sparsity: '2:4'}\nevaluation: {tasks: [piqa], tasks: [boolq]}\n", "the key 'tasks' twice (line 2)", id="duplicate-evaluation"),
    pytest.param("prune: {sparsity: '2:4', targets: [{a: 1, a: 2}]}\n", "the key 'a' twice (line 1)", id="duplicate-deep"),
])
def test_a_recipe_with_a_bad_version_or_a_repeated_key_is_refused(text, message, tmp_path, capsys):
    Path("r.yaml").write_text(text)
    before = _tree(tmp_path)
    assert main(["prune", "no-model", "--recipe", "r.yaml", "--output-dir", "out"]) == 1
    line = _one_error(capsys)
    assert message in line, line
    assert _tree(tmp_path) == before
