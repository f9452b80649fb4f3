"""Messages name settings as the caller writes them: keywords from Python, flags from the
command line (``snows_hf.fields.setting``), and no ``--flag`` text outside ``cli.py`` and ``cli_options.py``."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

import snows_hf
from snows_hf.cli import build_parser, main
from snows_hf.cli_options import flag_spelling
from snows_hf.output_folder import FILES_KEY
from snows_hf.fields import UNSET, SettingError, setting, spelled

PACKAGE = Path(snows_hf.__file__).parent
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]*")


def _library_modules() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if p.name not in ("cli.py", "cli_options.py")]


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    """Every string constant of a module, f-string parts included, except docstrings."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def _named_settings(tree: ast.AST) -> set[str]:
    """Names passed to ``setting(...)`` and ``field=`` of ``SettingError(...)`` / ``require``."""
    names = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
        if func == "setting" and node.args and isinstance(node.args[0], ast.Constant):
            names.add(node.args[0].value)
        if func == "SettingError":
            names.update(k.value.value for k in node.keywords if k.arg == "field" and isinstance(k.value, ast.Constant))
        if func == "require" and len(node.args) == 3 and isinstance(node.args[1], ast.Constant):
            names.add(node.args[1].value)
    return names


def test_no_flag_text_outside_the_command_line():
    found = [f"{path.relative_to(PACKAGE)}:{line}: {text!r}"
             for path in _library_modules()
             for line, text in _strings(ast.parse(path.read_text()))
             if FLAG.search(text)]
    assert found == []


def test_every_setting_a_message_names_is_an_option_of_the_command_line():
    named = set().union(*(_named_settings(ast.parse(p.read_text())) for p in _library_modules()))
    assert {"output_dir", "overwrite", "resume", "num_samples", "batch_size", "sparsity"} <= named  # the scan works
    spell = flag_spelling(build_parser())
    # arguments of snows_hf.run that the command line never passes, and a recipe's version
    python_only = {"save", "eval_batch_size", "held_out", "config", "data", "config_version"}
    unspelled = sorted(n for n in named - python_only if spell(n, UNSET) == n)
    assert unspelled == []
    prune = flag_spelling(build_parser(), "prune")
    assert prune("model", UNSET) == "MODEL" and prune("model", "my-vit") == "my-vit"


@pytest.mark.parametrize("name, value, python, cli", [
    ("batch_size", None, "batch_size", "--batch-size"),
    ("resume", True, "resume=True", "--resume"),
    ("mask", "sparsegpt", "mask='sparsegpt'", "--mask sparsegpt"),
    ("output_dir", None, "output_dir", "--output-dir"),
    ("trust_remote_code", True, "trust_remote_code=True", "--trust-remote-code"),
    ("not_an_option", 3, "not_an_option=3", "not_an_option=3"),
])
def test_a_setting_is_spelled_for_python_and_for_the_command_line(name, value, python, cli):
    args = (name,) if value is None else (name, value)
    assert setting(*args) == python
    with spelled(flag_spelling(build_parser())):
        assert setting(*args) == cli
    assert setting(*args) == python  # the spelling ends with its block


def test_the_same_refusal_names_the_keyword_in_python_and_the_flag_on_the_command_line(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    # an earlier snows-hf output (its report lists what it wrote): replaced only when asked
    (out / "report.json").write_text(json.dumps({FILES_KEY: ["report.json", "model.safetensors"]}))
    (out / "model.safetensors").write_bytes(b"")
    with pytest.raises(SettingError) as caught:
        snows_hf.run(str(tmp_path / "no-model"), {"sparsity": "2:4"}, output_dir=out)
    assert caught.value.field == "overwrite"
    assert caught.value.hint == "pass overwrite=True to replace it"
    assert "--" not in str(caught.value)

    code = main(["prune", str(tmp_path / "no-model"), "--sparsity", "2:4", "--output-dir", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip() == f"snows-hf: error: output folder {str(out)!r} is not empty; pass --overwrite to replace it"


def test_a_setting_error_survives_pickling_between_processes():
    import pickle

    err = pickle.loads(pickle.dumps(SettingError("too few", field="num_samples", hint="raise num_samples")))
    assert (str(err), err.field, err.hint) == ("too few; raise num_samples", "num_samples", "raise num_samples")
