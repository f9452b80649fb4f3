"""The README's generated blocks are what benchmarks/readme_results.py makes of the JSON files."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _generator(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(repo / "benchmarks" / "readme_results.py"), *args],
                          capture_output=True, text=True, timeout=120)


def _copy(tmp_path: Path) -> Path:
    """The benchmarks and README of this repository, in ``tmp_path``."""
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "benchmarks", copy / "benchmarks", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "README.md", copy / "README.md")
    return copy


def test_readme_results_match_the_json_files():
    result = _generator(ROOT, "--check")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("block", ["results", "measurements"])
def test_the_check_fails_when_the_readme_disagrees(tmp_path, block):
    """Change the first figure of a generated block in a copy of the repository; the check must fail."""
    copy = _copy(tmp_path)
    text = (copy / "README.md").read_text()
    start = text.index(f"<!-- {block}:start -->")
    figure = next(i for i in range(start, text.index(f"<!-- {block}:end -->")) if text[i].isdigit())
    (copy / "README.md").write_text(text[:figure] + ("1" if text[figure] != "1" else "2") + text[figure + 1:])
    result = _generator(copy, "--check")
    assert result.returncode == 1, result.stdout + result.stderr


def test_a_table_without_its_json_file_says_it_is_not_yet_measured(tmp_path):
    copy = _copy(tmp_path)
    (copy / "benchmarks" / "results" / "offload_memory.json").unlink(missing_ok=True)
    result = _generator(copy)
    assert result.returncode == 0, result.stdout + result.stderr
    text = (copy / "README.md").read_text()
    assert ("**Where the activations wait**: not yet measured; `python benchmarks/offload_memory.py --num-samples 128 "
            "256 --seq-len 512 --method magnitude` measures it.") in text
