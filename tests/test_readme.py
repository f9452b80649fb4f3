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


@pytest.mark.parametrize("block", ["results", "measurements", "headline", "demo", "stream_order", "lmeval"])
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


def _python_block(containing: str) -> str:
    """The README's Python code block that contains ``containing``."""
    text = (ROOT / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    return next(b for b in blocks if containing in b)


def test_the_readme_extension_example_registers_what_it_says():
    """Run the README's registration example: its selector prunes as Wanda does (it is Wanda's
    rule), and its architecture entry is found; both registrations are removed after."""
    import torch

    import snows_hf
    from conftest import tiny_llama
    from snows_hf.adapters import ADAPTERS
    from snows_hf.masks import SELECTORS

    try:
        exec(_python_block("register_selector("), {})
        assert ADAPTERS["my-arch"].blocks == "encoder.layers"
        inputs = torch.randint(0, 100, (8, 16), generator=torch.Generator().manual_seed(0))
        weights = []
        for mask in ("my-wanda", "wanda"):
            model = tiny_llama()
            snows_hf.prune_(model, {"sparsity": "2:4", "method": "none", "mask": mask, "batch_size": 4}, inputs)
            weights.append(model.model.layers[0].mlp.down_proj.weight.clone())
        assert torch.equal(weights[0], weights[1]) and float((weights[0] == 0).float().mean()) == 0.5
    finally:
        ADAPTERS.pop("my-arch", None)
        SELECTORS.pop("my-wanda", None)
