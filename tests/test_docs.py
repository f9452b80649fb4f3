"""The documentation site builds strictly, and its reference covers the code: every flag
of every command, every public name of ``snows_hf``. The README stays short."""

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import docs_reference  # noqa: E402
import griffe_docstrings  # noqa: E402


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built once with ``mkdocs build --strict`` (skipped without the docs extra)."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return out


def _page(site: Path, name: str) -> str:
    return (site / name / "index.html").read_text(encoding="utf-8")


def test_every_flag_of_every_command_is_in_the_cli_reference(site):
    from snows_hf.cli import build_parser

    page = _page(site, "reference/cli")
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"{name} {flag}" for name, command in sub.choices.items()
               for action in command._actions for flag in action.option_strings
               if f"<code>{flag}</code>" not in page and flag not in ("-h", "--help")]
    headings = [name for name in sub.choices if f"snows-hf {name}" not in page]
    assert not missing and not headings, (missing, headings)


def test_every_public_name_is_in_the_api_reference(site):
    import snows_hf

    page = _page(site, "reference/api")
    missing = [name for name in snows_hf.__all__ if name != "__version__" and f'id="snows_hf.{name}"' not in page]
    assert not missing, missing
    for name in docs_reference.MORE_API.values():
        assert all(f'id="{n}"' in page for n in name), name


def test_every_recipe_field_and_bundled_recipe_is_documented(site):
    from dataclasses import fields

    from snows_hf.config import PruneConfig
    from snows_hf.data import CalibrationConfig
    from snows_hf.methods import METHODS
    from snows_hf.recipe import bundled_recipes

    page = _page(site, "reference/recipe-fields")
    names = [f.name for cls in (PruneConfig, CalibrationConfig) for f in fields(cls) if f.name != "method"]
    names += [f.name for method in METHODS.values() for f in fields(method.config_class)]
    assert all(f"<code>{n}</code>" in page for n in names), [n for n in names if f"<code>{n}</code>" not in page]
    recipes = _page(site, "reference/recipes")
    assert all(f"<code>{name}</code>" in recipes for name in bundled_recipes())


def test_every_image_a_page_shows_exists_and_comes_from_the_generator():
    pages = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]
    shown = {(page, m) for page in pages for m in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page.read_text())}
    assert shown
    for page, link in shown:
        image = (page.parent / link).resolve()
        assert image.is_file(), f"{page.name} shows {link}, which does not exist"
        assert "<dc:description>" in image.read_text(), f"{link} was not written by benchmarks/readme_plots.py"


def test_the_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_an_unknown_reference_section_is_an_error():
    with pytest.raises(ValueError, match="unknown reference section 'nope'"):
        docs_reference.expand("<!-- reference:nope -->", "page.md")


def test_docstrings_show_examples_as_code_and_roles_as_names():
    text = "Run :func:`~snows_hf.run` or :class:`PruneConfig`.\n\n    Example:\n        >>> [1, 2]\n        [1, 2]\n"
    assert griffe_docstrings.rewrite(text) == (
        "Run `snows_hf.run` or `PruneConfig`.\n\n    Examples:\n        >>> [1, 2]\n        [1, 2]\n")
