"""MkDocs hook: the reference pages, written from the code at build time.

A page asks for a generated section with a marker on a line of its own,
``<!-- reference:NAME -->``; :data:`SECTIONS` maps each name to the function that writes
it. Nothing in these sections is typed by hand, so the site cannot fall behind the code:
the command line comes from the ``argparse`` parser the ``snows-hf`` command uses, the
Python API from ``snows_hf.__all__`` (through mkdocstrings, from the docstrings), the
recipe fields from the settings dataclasses, the bundled recipes from ``recipes/`` and
the compact format's constants from :mod:`snows_hf.compact_format`.

A marker with no section, or a section no page asks for, fails the build.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^<!-- reference:([a-z-]+) -->$", re.MULTILINE)

#: Public names outside ``snows_hf.__all__`` that the API reference documents: the verbs
#: and extension points a user reaches through a submodule.
MORE_API = {
    "Workflow": ["snows_hf.export.convert", "snows_hf.plan.plan", "snows_hf.workflow.EvalResult", "snows_hf.hub.push_folder",
                 "snows_hf.hub.PushError"],
    "Extension points": ["snows_hf.adapters.register_adapter", "snows_hf.adapters.Adapter",
                         "snows_hf.masks.register_selector", "snows_hf.methods.register_method",
                         "snows_hf.methods.Method", "snows_hf.methods.MethodConfig",
                         "snows_hf.heads.register_task", "snows_hf.heads.Task"],
    "Data": ["snows_hf.data.build_calibration"],
    "lm-eval tasks": ["snows_hf.harness.TaskSettings"],
}


def _escape(text: str) -> str:
    """``text`` for a Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _flags(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`"
    names = ", ".join(f"`{s}`" for s in action.option_strings)
    if action.nargs == 0:
        return names
    metavar = action.metavar or (("{" + ",".join(map(str, action.choices)) + "}") if action.choices else action.dest.upper())
    return f"{names} `{metavar}`"


def _help(command: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The option's help as ``--help`` prints it (``%(default)s`` filled in, ``%%`` as ``%``)."""
    return _escape(command._get_formatter()._expand_help(action)) if action.help else ""


def cli_reference() -> list[str]:
    """Every command of ``snows-hf`` and every one of its options, from its parser."""
    from snows_hf.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help for a in sub._choices_actions}
    lines = ["`snows-hf --version` prints the version; `python -m snows_hf` is the same command.", ""]
    for name, command in sub.choices.items():
        lines += [f"## `snows-hf {name}`", "", _escape(helps.get(name, "")), "", "```", command.format_usage().strip(), "```", ""]
        actions = [a for a in command._actions if not isinstance(a, argparse._HelpAction)]
        if not actions:
            continue
        lines += ["| argument | what it does |", "|---|---|"]
        lines += [f"| {_flags(a)} | {_help(command, a)} |" for a in actions]
        lines.append("")
    return lines


def api_reference() -> list[str]:
    """Every public name of ``snows_hf``, then the extension points, from their docstrings."""
    import snows_hf

    lines = ["## `snows_hf`", "", "Everything `import snows_hf` exports (`snows_hf.__all__`).", ""]
    lines += [f"::: snows_hf.{name}" for name in snows_hf.__all__ if name != "__version__"]
    lines.append("")
    for title, names in MORE_API.items():
        lines += [f"## {title}", ""] + [f"::: {name}" for name in names] + [""]
    return lines


def _type(f: dataclasses.Field) -> str:
    return str(f.type).replace("typing.", "")


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return f"`{f.default!r}`" if f.default is not None else "none"
    if f.default_factory is not dataclasses.MISSING:
        return f"`{f.default_factory()!r}`"
    return "required"


def _field_rows(cls: type, skip: tuple[str, ...] = ()) -> list[str]:
    rows = ["| key | type | default | what it sets |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        help_ = f.metadata.get("help", "")
        choices = f.metadata.get("choices")
        if choices:
            help_ += f" (one of: {', '.join(f'`{c}`' for c in choices)})"
        rows.append(f"| `{f.name}` | `{_escape(_type(f))}` | {_escape(_default(f))} | {_escape(help_)} |")
    return rows


def recipe_fields() -> list[str]:
    """The keys of each recipe section, from the dataclasses that read them."""
    from snows_hf.config import CONFIG_VERSION, PruneConfig
    from snows_hf.data import CalibrationConfig
    from snows_hf.harness import TaskSettings
    from snows_hf.methods import METHODS

    lines = [f"Recipes of `config_version` {CONFIG_VERSION} (the one this version writes). A key that is not "
             "listed here is refused, naming it.", "",
             "## `prune`", "", "The settings every method shares (`snows_hf.PruneConfig`).", ""]
    lines += _field_rows(PruneConfig, skip=("method",))
    lines += ["", "`method` names the method; its options sit beside the shared keys, flat.", ""]
    for name, method in METHODS.items():
        lines += [f"### options of `{name}`", "", _escape(method.description), "", *_field_rows(method.config_class), ""]
    lines += ["## `data`", "", "Calibration and held-out data (`snows_hf.CalibrationConfig`).", ""]
    lines += _field_rows(CalibrationConfig)
    lines += ["", "## `evaluation`", "", "lm-eval tasks scored dense and pruned (`snows_hf.harness.TaskSettings`).", ""]
    lines += _field_rows(TaskSettings)
    lines.append("")
    return lines


def bundled_recipes() -> list[str]:
    """Each recipe shipped in ``recipes/``, with its own comments, as ``snows-hf recipes NAME`` shows it."""
    from snows_hf.recipe import bundled_recipes as recipes

    lines = []
    for name, path in sorted(recipes().items()):
        lines += [f"## `{name}`", "", f"`snows-hf prune --recipe {name}` (file `recipes/{path.name}`)", "",
                  "```yaml", path.read_text(encoding="utf-8").rstrip(), "```", ""]
    return lines


def compact_constants() -> list[str]:
    """The identifiers and limits a compact checkpoint carries, from the code that writes it."""
    from snows_hf import compact_format
    from snows_hf.masks import compact

    legacy = ", ".join(f"`{name}` (version {version})" for name, version in compact_format.LEGACY_METHODS.items())
    return [
        "| what | value |", "|---|---|",
        f"| `quantization_config.quant_method` | `{compact_format.QUANT_METHOD}` |",
        f"| format version written | {compact_format.FORMAT_VERSION} |",
        f"| earlier names still read | {legacy or 'none'} |",
        f"| widest N:M group stored compactly | {compact.MAX_GROUP} inputs |",
        f"| what a reader without snows-hf is told | {_escape(compact_format.LOADER)} |",
        "",
    ]


def compact_example() -> list[str]:
    """What a compact checkpoint holds, read back from one written now: a tiny Llama pruned
    2:4 and one pruned 50%, saved compact; every tensor of one layer with its dtype and
    shape, and the ``quantization_config`` (its ``layers`` cut to one entry)."""
    import json
    import tempfile

    import torch
    from safetensors import safe_open
    from transformers import LlamaConfig, LlamaForCausalLM

    import snows_hf

    lines = []
    for sparsity in ("2:4", "50%"):
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, num_key_value_heads=2))
        calibration = torch.randint(0, 64, (4, 8), generator=torch.Generator().manual_seed(0))
        report = snows_hf.prune_(model, {"sparsity": sparsity, "method": "magnitude", "batch_size": 4}, calibration)
        with tempfile.TemporaryDirectory() as folder:
            out = snows_hf.save_pruned(model, report, f"{folder}/out", save_format="compact")
            config = json.loads((out / "config.json").read_text())["quantization_config"]
            layer = next(iter(config["layers"].values()))
            prefix = layer["key"]
            with safe_open(str(out / "model.safetensors"), "pt") as f:
                rows = [f"| `{name}` | `{str(f.get_slice(name).get_dtype())}` | `{list(f.get_slice(name).get_shape())}` |"
                        for name in sorted(f.keys()) if name.startswith(prefix)]
        config["layers"] = {name: meta for name, meta in list(config["layers"].items())[:1]}
        lines += [f"### {sparsity}: layer `{prefix}`, dense shape `{layer['shape']}`", "",
                  "| tensor | dtype | shape |", "|---|---|---|", *rows, "",
                  "`config.json`, `quantization_config`:", "", "```json", json.dumps(config, indent=2), "```", ""]
    return lines


SECTIONS: dict[str, Callable[[], list[str]]] = {
    "cli": cli_reference,
    "api": api_reference,
    "recipe-fields": recipe_fields,
    "recipes": bundled_recipes,
    "compact-constants": compact_constants,
    "compact-example": compact_example,
}


def expand(markdown: str, where: str = "a page") -> str:
    """``markdown`` with each reference marker replaced by its generated section.

    Example:
        >>> "`snows-hf prune`" in expand("<!-- reference:cli -->")
        True
    """
    def section(match: re.Match) -> str:
        name = match.group(1)
        if name not in SECTIONS:
            raise ValueError(f"{where} asks for an unknown reference section {name!r}")
        return "\n".join(SECTIONS[name]())

    return MARKER.sub(section, markdown)


_asked: set[str] = set()


def on_pre_build(config: Any) -> None:  # noqa: ARG001 - MkDocs hook signature
    _asked.clear()


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:  # noqa: ARG001
    _asked.update(MARKER.findall(markdown))
    return expand(markdown, page.file.src_path)


def on_post_build(config: Any) -> None:  # noqa: ARG001
    missing = set(SECTIONS) - _asked
    if missing:
        raise ValueError(f"no page asks for the reference sections {sorted(missing)}")
