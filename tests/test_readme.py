"""The README's generated blocks are what benchmarks/readme_results.py makes of the JSON files."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _generator(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(repo / "benchmarks" / "readme_results.py"), *args],
                          capture_output=True, text=True, timeout=120)


def _copy(tmp_path: Path) -> Path:
    """The benchmarks, README and documentation pages of this repository, in ``tmp_path``."""
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "benchmarks", copy / "benchmarks", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "docs", copy / "docs")
    shutil.copy(ROOT / "README.md", copy / "README.md")
    return copy


def _page_with(repo: Path, marker: str) -> Path:
    """The README or documentation page that holds ``marker``."""
    return next(p for p in [repo / "README.md", *sorted((repo / "docs").rglob("*.md"))] if marker in p.read_text())


def test_readme_results_match_the_json_files():
    result = _generator(ROOT, "--check")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("block", ["results", "measurements", "headline", "demo", "stream_order", "lmeval", "summary"])
def test_the_check_fails_when_a_page_disagrees(tmp_path, block):
    """Change the first figure of a generated block in a copy of the repository; the check must fail."""
    copy = _copy(tmp_path)
    page = _page_with(copy, f"<!-- {block}:start -->")
    text = page.read_text()
    start = text.index(f"<!-- {block}:start -->")
    figure = next(i for i in range(start, text.index(f"<!-- {block}:end -->")) if text[i].isdigit())
    page.write_text(text[:figure] + ("1" if text[figure] != "1" else "2") + text[figure + 1:])
    result = _generator(copy, "--check")
    assert result.returncode == 1, result.stdout + result.stderr


def test_the_check_fails_when_a_plot_is_stale_and_the_generator_redraws_it(tmp_path):
    copy = _copy(tmp_path)
    plot = copy / "docs" / "images" / "frontier.svg"
    plot.write_text(plot.read_text().replace("<dc:description>", "<dc:description>0", 1))
    result = _generator(copy, "--check")
    assert result.returncode == 1 and "docs/images/frontier.svg" in result.stdout + result.stderr
    assert _generator(copy).returncode == 0 and _generator(copy, "--check").returncode == 0


def test_a_block_in_two_pages_is_refused(tmp_path):
    copy = _copy(tmp_path)
    (copy / "docs" / "extra.md").write_text("<!-- demo:start -->\n<!-- demo:end -->\n")
    result = _generator(copy, "--check")
    assert result.returncode == 1 and "the block demo must be in exactly one" in result.stderr


def test_a_table_without_its_json_file_says_it_is_not_yet_measured(tmp_path):
    copy = _copy(tmp_path)
    (copy / "benchmarks" / "results" / "offload_memory.json").unlink(missing_ok=True)
    result = _generator(copy)
    assert result.returncode == 0, result.stdout + result.stderr
    text = _page_with(copy, "<!-- measurements:start -->").read_text()
    assert ("**Where the activations wait**: not yet measured; `python benchmarks/offload_memory.py --num-samples 128 "
            "256 --seq-len 512 --method magnitude` measures it.") in text


def _python_block(containing: str) -> str:
    """The Python code block of the README or a documentation page that contains ``containing``."""
    text = _page_with(ROOT, containing).read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    return next(b for b in blocks if containing in b)


def test_the_documented_extension_example_registers_what_it_says(registries):
    """Run the README's registration example: its selector prunes as Wanda does (it is Wanda's
    rule), and its architecture entry is found; both registrations are removed after."""
    import torch

    import snows_hf
    from conftest import tiny_llama
    from snows_hf.adapters import ADAPTERS

    exec(_python_block("register_selector("), {})
    assert ADAPTERS["my-arch"].blocks == "encoder.layers"
    inputs = torch.randint(0, 100, (8, 16), generator=torch.Generator().manual_seed(0))
    weights = []
    for mask in ("my-wanda", "wanda"):
        model = tiny_llama()
        snows_hf.prune_(model, {"sparsity": "2:4", "method": "none", "mask": mask, "batch_size": 4}, inputs)
        weights.append(model.model.layers[0].mlp.down_proj.weight.clone())
    assert torch.equal(weights[0], weights[1]) and float((weights[0] == 0).float().mean()) == 0.5


def _readme_results():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import readme_results
    finally:
        sys.path.pop(0)
    return readme_results


def test_the_knee_is_the_point_farthest_below_the_line_from_sparsegpt_to_the_costliest_budget():
    """By hand, SparseGPT at (1x, 100) and the costliest budget at (21x, 60): (6x, 70) lies
    1 - 5/20 - 10/40 = 0.5 below the line between them, (11x, 65) 1 - 10/20 - 5/40 = 0.375."""
    rr = _readme_results()
    point = lambda ratio, ppl, **extra: {"ratio": ratio, "row": {"scores": {"perplexity": ppl}}, **extra}  # noqa: E731
    base, cheap, mid, top = point(1, 100, base=True), point(6, 70), point(11, 65), point(21, 60)
    # below the line: 1 - x - y with x = (r - 1) / 20, y = (p - 60) / 40
    assert 1 - 5 / 20 - 10 / 40 == 0.5 and 1 - 10 / 20 - 5 / 40 == 0.375
    assert rr.knee([cheap, mid, top, base], "perplexity") is cheap
    assert rr.knee([point(20, 61), top, base], "perplexity")["ratio"] == 20
    assert rr.knee([top, base], "perplexity") is None  # one budget: no frontier to bend


@pytest.mark.parametrize("interval, verdict", [((-0.5, 1.2), "met (within noise)"), ((0.3, 2.0), "not met"),
                                               ((-2.0, -0.1), "met"), (None, "no per-sample data: rerun the benchmark")])
def test_no_worse_is_met_unless_the_whole_interval_says_worse(interval, verdict):
    assert _readme_results().no_worse(interval) == verdict


def test_budgets_come_from_the_settings_a_row_recorded():
    rr = _readme_results()
    assert rr.budget_of({"config": {"newton_steps": 1, "cg_iters": 5}}) == "1 x 5"
    assert rr.budget_of({"options": {"newton_steps": 2}}) is None  # what was asked is not what ran
    from snows_hf.methods import SnowsConfig

    assert rr.DEFAULT_BUDGET == f"{SnowsConfig().newton_steps} x {SnowsConfig().cg_iters}"


def test_each_goal_line_needs_only_its_own_file():
    """The real-shape line stands without the solver-speed file, and says what it lacks:
    a file from before ``--methods`` (SNOWS alone) or at another budget has no verdict."""
    rr = _readme_results()
    from snows_hf.methods import SnowsConfig

    today = {k: getattr(SnowsConfig(), k) for k in rr.DEFAULT_KEYS}
    case = {"case": "vit-large", "total_seconds": 120.0, "config": dict(today, newton_steps=2)}
    not_measured = ("- ViT-Large/16 at real shapes on CPU, SNOWS at its defaults at most 3x SparseGPT's time: not "
                    "yet measured (`python benchmarks/real_shapes_cpu.py` times both)")
    assert rr.goals({}, None, shapes={"cases": [case]})[-1] == not_measured
    base = {"case": "vit-large", "method": "sparsegpt", "total_seconds": 40.0, "config": {}}
    assert rr.goals({}, None, shapes={"cases": [case, base]})[-1] == not_measured  # another budget
    case["config"] = dict(today, init="auto")
    assert rr.goals({}, None, shapes={"cases": [case, base]})[-1] == not_measured  # another start, same budget
    case["config"] = today
    assert rr.goals({}, None, shapes={"cases": [case, base]})[-1].endswith(
        "SNOWS at its defaults 120 s vs SparseGPT 40 s = 3.0x (goal at most 3x): **met**")
    block = {"case": "vit-large", "method": "snows-block", "total_seconds": 100.0, "config": today}
    case["total_seconds"] = 130.0
    assert rr.goals({}, None, shapes={"cases": [case, base, block]})[-1].endswith(
        "= 3.2x (goal at most 3x): **not met**; the block re-fit 100 s = 2.5x")
    group = {"case": "vit-large", "method": "snows-group", "total_seconds": 90.0, "config": today}
    assert rr.goals({}, None, shapes={"cases": [case, base, group, block]})[-1].endswith(
        "; the block re-fit 100 s = 2.5x; the group re-fit 90 s = 2.2x")


def test_the_time_goal_divides_the_defaults_seconds_by_sparsegpts_in_the_same_file():
    """60 s against 20 s is 3.0x, met; a row at version 4's settings stands for no default."""
    rr = _readme_results()
    from snows_hf.methods import SnowsConfig

    today = {k: getattr(SnowsConfig(), k) for k in rr.DEFAULT_KEYS}
    nll = {"nll": [2.0, 3.0, 2.5, 1.0], "tokens": [1, 1, 1, 1]}
    row = lambda method, seconds, cpu, config=None: {  # noqa: E731
        "sparsity": "2:4", "method": method, "seconds": seconds, "cpu_seconds": cpu, "config": config or {},
        "scores": {"perplexity": float(np.exp(np.mean(nll["nll"])))}, "per_sample": nll}
    results = {"rows": [row("sparsegpt", 20.0, 40.0), row("snows-k3", 60.0, 100.0, today), row("snows-v4", 50.0, 90.0)]}
    line = rr.default_time_goals(results)[0]
    assert "60 s vs SparseGPT 20 s = 3.0x (2.5x in CPU seconds; goal at most 3x): **met**" in line
    assert line.endswith("difference +0.00, 95% paired interval [+0.00, +0.00], no worse: **met**")
    results["rows"][1]["seconds"] = 61.0
    assert "= 3.0x" in rr.default_time_goals(results)[0] and "**not met**" in rr.default_time_goals(results)[0]
    results["rows"][1]["config"] = dict(today, init="auto")  # not today's default: no figure
    assert "not yet measured" in rr.default_time_goals(results)[0]
    assert all("not yet measured" in line for line in rr.default_time_goals(None))


def test_the_block_refit_goal_times_it_against_sparsegpt_in_its_own_run_and_compares_perplexity():
    """50 s against SparseGPT's 10 s in the same file is 5.0x, not met; its perplexity is set
    against the per-module 2 x 5 row with the paired interval; a sparsity without a block
    row says how to measure it."""
    rr = _readme_results()
    from snows_hf.methods import SnowsConfig

    assert rr.budget_of({"config": {"newton_steps": 1, "cg_iters": 5, "refit_unit": "block"}}) == "1 x 5 per block"
    block_nll = {"nll": [2.0, 3.0, 2.5, 1.0], "tokens": [1, 1, 1, 1]}
    wide_nll = {"nll": [2.1, 3.1, 2.6, 1.1], "tokens": [1, 1, 1, 1]}
    row = lambda method, seconds, nll, **config: {  # noqa: E731
        "sparsity": "2:4", "method": method, "seconds": seconds, "config": {"k_step": 3, **config} if config else {},
        "scores": {"perplexity": float(np.exp(np.mean(nll["nll"])))}, "per_sample": nll}
    block_run = {"rows": [row("sparsegpt", 10.0, wide_nll),
                          row("snows-block", 50.0, block_nll, newton_steps=1, cg_iters=5, refit_unit="block")]}
    two_by_five = {"rows": [row("sparsegpt", 20.0, wide_nll), row("snows-k3", 200.0, wide_nll, newton_steps=2, cg_iters=5)]}
    lines = rr.frontier_goals({}, [two_by_five, block_run])
    assert lines[0].startswith("- whole SmolLM2 at 2:4, the block re-fit (1 x 5 per block): 50 s vs SparseGPT 10 s in "
                               "the same run = 5.0x (goal at most 3x): **not met**; perplexity 8.37; against per module "
                               "at 2 x 5 9.25: -0.88 [")
    assert lines[0].endswith("no worse: **met**")
    assert lines[1] == ("- whole SmolLM2 at 2:4, the group re-fit (modules reading one input together) at most 3x "
                        "SparseGPT's time: not yet measured (`python benchmarks/quality.py --model smollm2 --sparsity 2:4 "
                        "--methods sparsegpt snows-group --out benchmarks/results/quality_smollm2_frontier_group.json`)")
    assert lines[2].startswith("- whole SmolLM2 at 50%, the block re-fit at most 3x SparseGPT's time: not yet measured")
    group_run = {"rows": [row("sparsegpt", 10.0, wide_nll),
                          row("snows-group", 40.0, block_nll, newton_steps=3, cg_iters=5, refit_unit="group")]}
    lines = rr.frontier_goals({}, [two_by_five, block_run, group_run])
    assert lines[1].startswith("- whole SmolLM2 at 2:4, the group re-fit (modules reading one input together) (3 x 5 per "
                               "input group): 40 s vs SparseGPT 10 s in the same run = 4.0x (goal at most 3x): **not met**")
    today = {k: getattr(SnowsConfig(), k) for k in rr.DEFAULT_KEYS}
    block_run["rows"][1]["seconds"] = 30.0
    two_by_five["rows"].append(row("snows-k3", 300.0, block_nll, **today))  # today's default, as good as the block
    line = rr.frontier_goals({}, [two_by_five, block_run])[0]
    assert "= 3.0x (goal at most 3x): **met**" in line
    assert line.endswith("against per module at today's defaults 8.37: +0.00 [+0.00, +0.00], no worse: **met**")


def test_the_cost_sentence_names_the_cheapest_ratio_and_where_todays_defaults_gain_nothing(monkeypatch):
    """Version 4's defaults at 10x, today's at 15x with the same per-sequence losses: the
    goal is not met at 10.0x, and at 2:4 the cheaper settings are named; the block re-fit's
    ratio comes from its own file's SparseGPT."""
    rr = _readme_results()
    from snows_hf.methods import SnowsConfig

    today = {k: getattr(SnowsConfig(), k) for k in rr.DEFAULT_KEYS}
    nll = {"nll": [2.0, 3.0, 2.5, 1.0], "tokens": [1, 1, 1, 1]}
    row = lambda method, seconds, config=None: {  # noqa: E731
        "sparsity": "2:4", "method": method, "seconds": seconds, "config": config or {},
        "scores": {"perplexity": 8.0}, "per_sample": nll}
    files = {"quality_smollm2_regimes.json": {"rows": [row("sparsegpt", 10.0), row("snows-v4", 100.0),
                                                       row("snows-k3", 150.0, today)]},
             "quality_smollm2_frontier_block.json": {"rows": [row("sparsegpt", 20.0), row(
                 "snows-block", 120.0, {"newton_steps": 1, "cg_iters": 5, "refit_unit": "block"})]},
             "quality_smollm2_frontier_group.json": {"rows": [row("sparsegpt", 20.0), row(
                 "snows-group", 140.0, {"newton_steps": 3, "cg_iters": 5, "refit_unit": "group"})]}}
    monkeypatch.setattr(rr, "load", files.get)
    (text,) = rr.cost_sentence()
    assert "version 4's defaults 100 s (10.0x, perplexity 8.00) and with today's 150 s (15.0x" in text
    assert "the block re-fit (`--refit-unit block`, 1 x 5 per block, its own run) 6.0x its SparseGPT's time" in text
    assert "the group re-fit (`--refit-unit group`, 3 x 5 per input group, its own run) 7.0x its SparseGPT's time" in text
    assert "the goal of at most 3x SparseGPT's time is not met: the cheapest of these is 6.0x" in text
    assert "at 2:4 today's defaults cost more than version 4's for no better perplexity beyond noise" in text
    files["quality_smollm2_regimes.json"]["rows"][2]["seconds"] = 90.0  # cheaper than version 4: nothing to say
    assert "cost more" not in rr.cost_sentence()[0]


@pytest.mark.parametrize("jvp_seconds, verdict", [(0.3, "3.0x as long here, so SNOWS keeps the double vjp"),
                                                  (0.05, "0.5x as long here: faster, but SNOWS does not use it yet")])
def test_the_product_comparison_says_which_way_is_faster_from_the_figures(jvp_seconds, verdict):
    rr = _readme_results()
    results = {"settings": {"command": "python benchmarks/hvp_modes.py", "threads": 2,
                            "arguments": {"batches": 4, "tokens": 512, "repeats": 5}},
               "rows": [{"way": "double-vjp", "build_seconds": 0.2, "product_seconds": 0.1},
                        {"way": "jvp + vjp", "build_seconds": 0.1, "product_seconds": jvp_seconds}],
               "forward_backward_seconds": 0.2, "relative_difference": 1e-7, "sdpa_forward_mode": "works",
               "module": "mlp.gate_proj"}
    lines = rr.readme_measurements.hvp_modes(results)
    assert "| double-vjp | 0.200 | 0.100 | 0.50 |" in lines
    assert verdict in lines[-1] and lines[-1].endswith("this block: works.")


def test_least_squares_rows_equal_to_the_mask_alone_are_told_apart_sample_for_sample():
    rr = _readme_results()
    row = lambda spec, method, samples: {"sparsity": spec, "method": method, "per_sample": samples}  # noqa: E731
    same = {"rows": [row("2:4", "magnitude", [1, 0, 1]), row("2:4", "lsq-magnitude", [1, 0, 1])]}
    assert rr.lsq_is_mask_alone(same)
    same["rows"].append(row("95%", "lsq-magnitude", [1, 1, 1]))  # no magnitude row to compare with
    assert not rr.lsq_is_mask_alone(same)
    assert not rr.lsq_is_mask_alone({"rows": [row("2:4", "magnitude", [1, 0]), row("2:4", "lsq-magnitude", [0, 1])]})
    assert not rr.lsq_is_mask_alone(None) and not rr.lsq_is_mask_alone({"rows": []})
