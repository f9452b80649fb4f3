"""The code style the project holds itself to: ruff with the configuration in pyproject.toml."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> list[str]:
    found = shutil.which("ruff") or shutil.which("ruff", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("ruff is not installed: pip install -e '.[test]' installs it")
    return [found]


def test_ruff_finds_nothing():
    done = subprocess.run([*_ruff(), "check", "snows_hf", "tests", "benchmarks", "tools"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_ruff_reads_the_projects_configuration(tmp_path):
    """The check above is not vacuous: the configured rules catch an unused import."""
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n")
    done = subprocess.run([*_ruff(), "check", "--config", str(ROOT / "pyproject.toml"), str(bad)],
                          capture_output=True, text=True)
    assert done.returncode == 1 and "F401" in done.stdout
