"""The README's generated results block is what benchmarks/readme_results.py makes of the JSON."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_results_match_the_json_files():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "readme_results.py"), "--check"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_check_fails_when_the_readme_disagrees(tmp_path):
    """Run the generator's check on a copy of the repository whose README has one figure changed."""
    import shutil

    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "benchmarks", copy / "benchmarks", ignore=shutil.ignore_patterns("__pycache__"))
    text = (ROOT / "README.md").read_text()
    start = text.index("<!-- results:start -->")
    figure = next(i for i in range(start, len(text)) if text[i].isdigit())
    altered = text[:figure] + ("1" if text[figure] != "1" else "2") + text[figure + 1:]
    (copy / "README.md").write_text(altered)
    result = subprocess.run([sys.executable, str(copy / "benchmarks" / "readme_results.py"), "--check"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
