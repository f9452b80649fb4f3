"""The paired uncertainty behind the README's verdicts (benchmarks/readme_results.py), on closed forms."""

import base64
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rr():
    spec = importlib.util.spec_from_file_location("readme_results", ROOT / "benchmarks" / "readme_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def packed(correct) -> dict:
    """The record benchmarks/quality.py writes for a 0/1 correctness vector."""
    bits = np.packbits(np.asarray(correct, dtype=bool))
    return {"n": len(correct), "correct": base64.b64encode(bits.tobytes()).decode("ascii")}


def test_identical_correctness_gives_a_zero_width_interval_at_zero(rr):
    right = np.random.default_rng(1).random(10_000) < 0.87
    assert rr.accuracy_difference_interval(right, right) == (0.0, 0.0)


def test_the_interval_width_matches_the_paired_normal_approximation(rr):
    # 10,000 items, 300 that only a gets right and 200 that only b does: the per-item difference
    # d has mean 0.01 and variance (300 + 200) / n - 0.01**2, so the 95% half-width is 1.96 sd / sqrt(n).
    n, only_a, only_b = 10_000, 300, 200
    a = np.zeros(n, dtype=bool)
    b = np.zeros(n, dtype=bool)
    a[:only_a] = True
    b[only_a : only_a + only_b] = True
    a[1000:9000] = b[1000:9000] = True
    low, high = rr.accuracy_difference_interval(a, b)
    half = 1.96 * math.sqrt((only_a + only_b) / n - 0.01**2) / math.sqrt(n)
    assert low < 0.01 < high
    assert (high - low) / 2 == pytest.approx(half, rel=0.1)
    assert (low + high) / 2 == pytest.approx(0.01, abs=half / 5)


def test_the_interval_is_seeded_and_antisymmetric(rr):
    rng = np.random.default_rng(2)
    a, b = rng.random(2000) < 0.8, rng.random(2000) < 0.8
    first = rr.accuracy_difference_interval(a, b)
    assert rr.accuracy_difference_interval(a, b) == first
    assert rr.accuracy_difference_interval(b, a) == pytest.approx((-first[1], -first[0]))
    assert rr.accuracy_difference_interval(a, b, seed=1) != first


def test_mcnemar_exact_matches_the_binomial_tail_by_hand(rr):
    # 3 items only a gets right, 9 only b does, 20 both, 8 neither.
    a = [1] * 3 + [0] * 9 + [1] * 20 + [0] * 8
    b = [0] * 3 + [1] * 9 + [1] * 20 + [0] * 8
    by_hand = 2 * sum(math.comb(12, i) for i in range(4)) / 2**12
    assert rr.mcnemar_exact(a, b) == pytest.approx(by_hand, rel=1e-12)
    assert rr.mcnemar_exact(b, a) == pytest.approx(by_hand, rel=1e-12)
    assert rr.mcnemar_exact(a, a) == 1.0  # no discordant item
    assert rr.mcnemar_exact([1] * 6 + [0] * 6, [0] * 6 + [1] * 6) == 1.0  # balanced: capped at 1


def test_packed_correctness_round_trips(rr):
    right = np.random.default_rng(3).random(10_001) < 0.5
    assert rr.decode_correct(packed(right)).tolist() == right.astype(float).tolist()


def _vision_results(dense, snows, sgpt, mag) -> dict:
    rows = [{"sparsity": "2:4", "method": m, "scores": {"top-1": float(np.mean(c))}, "per_sample": packed(c)}
            for m, c in (("snows-k3", snows), ("sparsegpt", sgpt), ("magnitude", mag))]
    return {"metric": "top-1", "higher_is_better": True, "dense": {"top-1": float(np.mean(dense))},
            "dense_per_sample": packed(dense), "rows": rows}


def _drop_goal(rr, results) -> str:
    rows = {(r["sparsity"], r["method"]): r for r in results["rows"]}
    return rr.drop_goal_line("vit", "2:4", results, rows)


def _dense_minus(dense, count):
    """The dense model's correctness with its first ``count`` right answers made wrong."""
    out = dense.copy()
    out[np.flatnonzero(out)[:count]] = False
    return out


def test_a_tiny_difference_is_not_distinguishable(rr):
    # On 10,000 images: SNOWS drops 16, SparseGPT 32, magnitude 104 -- a 16-image gap.
    dense = np.arange(10_000) < 9000
    line = _drop_goal(rr, _vision_results(dense, _dense_minus(dense, 16), _dense_minus(dense, 32),
                                          _dense_minus(dense, 104)))
    assert line.endswith("**not distinguishable**"), line


def test_a_large_difference_is_met_and_its_opposite_not_met(rr):
    dense = np.arange(10_000) < 9000
    met = _drop_goal(rr, _vision_results(dense, _dense_minus(dense, 10), _dense_minus(dense, 500),
                                         _dense_minus(dense, 2000)))
    assert met.endswith("**met**"), met
    assert "margin to SparseGPT [+0.02" in met
    not_met = _drop_goal(rr, _vision_results(dense, _dense_minus(dense, 500), _dense_minus(dense, 510),
                                             _dense_minus(dense, 2000)))
    assert not_met.endswith("**not met**"), not_met


def test_no_per_sample_data_gives_no_verdict(rr):
    dense = np.arange(1000) < 900
    results = _vision_results(dense, _dense_minus(dense, 1), _dense_minus(dense, 50), _dense_minus(dense, 200))
    del results["rows"][1]["per_sample"]
    assert _drop_goal(rr, results).endswith("**no per-sample data: rerun the benchmark**")
    goals = "\n".join(rr.goals({"vit": results}, None))
    assert "**met**" not in goals and "not met" not in goals


def test_perplexity_goal_uses_the_per_sequence_records(rr):
    rng = np.random.default_rng(4)
    tokens = rng.integers(200, 256, size=32)

    def row(method, per_token):
        nll = tokens * per_token
        per_sample = {"nll": nll.round(4).tolist(), "tokens": tokens.tolist()}
        return {"sparsity": "2:4", "method": method, "per_sample": per_sample,
                "scores": {"perplexity": float(np.exp(nll.sum() / tokens.sum()))}}

    base = rng.normal(3.5, 0.2, size=32)
    results = {"metric": "perplexity", "higher_is_better": False, "dense": {"perplexity": 30.0},
               "rows": [row("snows-k3", base + 0.3), row("sparsegpt", base + 0.6)]}
    rows = {(r["sparsity"], r["method"]): r for r in results["rows"]}
    line = rr.perplexity_goal_line("2:4", results, rows)
    assert line.endswith("**met**") and "per-sequence perplexity difference" in line, line
    results["rows"][1] = row("sparsegpt", base + 0.3 + rng.normal(0, 0.05, size=32))
    rows = {(r["sparsity"], r["method"]): r for r in results["rows"]}
    assert rr.perplexity_goal_line("2:4", results, rows).endswith("**not distinguishable**")


def test_the_benchmark_record_decodes_to_what_it_encoded(rr):
    import torch

    spec = importlib.util.spec_from_file_location("quality", ROOT / "benchmarks" / "quality.py")
    quality = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quality)
    right = torch.rand(1237, generator=torch.Generator().manual_seed(5)) < 0.9
    assert rr.decode_correct(quality.encode_correct(right)).tolist() == right.float().tolist()
