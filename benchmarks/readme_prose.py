"""Figures the README states outside its Results section: the headline command's output
(``headline_offline.txt``), the demo's table and what it shows (``demo.json``), how
many shards a streamed read opens (``stream_order.json``), and lm-eval's task table for
SmolLM2 dense vs pruned (``lmeval_tasks.json``).

Each function returns the Markdown lines of one marked block; ``benchmarks/readme_results.py``
puts them between ``<!-- <name>:start -->`` and ``<!-- <name>:end -->``. A missing file
gives one line saying the figure is not yet measured and the command that measures it.
"""

from __future__ import annotations

import re

from readme_measurements import RESULTS, command, load


def demo() -> list[str]:
    """The table ``snows-hf demo`` printed, and the comparisons it supports."""
    results = load("demo.json")
    if results is None:
        return ["The demo's table: not yet measured (`python benchmarks/demo_figures.py` measures it)."]
    figures, cores = results["figures"], results["settings"]["cpus"]
    methods = figures["methods"]
    snows_label = figures["saved"]
    snows, sgpt, magnitude = methods[snows_label], methods["sparsegpt"], methods["magnitude"]
    probe_n = figures["eval_articles"] - figures["eval_articles"] // 2  # the probe fits on the first half
    probe_gap = round((snows["linear_probe_accuracy"] - sgpt["linear_probe_accuracy"]) * probe_n)
    time_ratio = snows["prune_seconds"] / sgpt["prune_seconds"]
    closer = "closer than" if snows["cosine_mean"] > sgpt["cosine_mean"] else "no closer than"
    worst = ("higher" if snows["cosine_min"] > sgpt["cosine_min"] + 0.005 else
             "lower" if snows["cosine_min"] < sgpt["cosine_min"] - 0.005 else "about the same")
    gap = abs(probe_gap)
    # Without per-article records the discordant articles are unknown; the smallest p-value a
    # gap of ``gap`` articles can have is when all of them go one way: 2 * 0.5 ** gap.
    best_p = min(1.0, 2 * 0.5**gap)
    if gap == 0:
        probe = f"SNOWS and SparseGPT alone score the same number of the {probe_n} articles the probe is scored on"
    elif best_p > 0.05:
        probe = (f"SNOWS scores {gap} article{'s' * (gap != 1)} {'more' if probe_gap > 0 else 'fewer'} of the "
                 f"{probe_n} the probe is scored on than SparseGPT alone, which is within noise: even if every "
                 f"article the two probes disagree on went the same way, McNemar's exact p would be {best_p:.2f}, "
                 "so another machine's float rounding can flip it")
    else:
        probe = (f"SNOWS scores {gap} article{'s' * (gap != 1)} {'more' if probe_gap > 0 else 'fewer'} of the "
                 f"{probe_n} the probe is scored on than SparseGPT alone (the run keeps no per-article record, so "
                 "whether that is more than noise is not known)")
    return [
        f"It printed this here, on {cores} CPU cores (`{results['settings']['command']}` runs the same code with "
        "its defaults and keeps the output in `benchmarks/results/demo.json`; progress bars over blocks and over "
        "the modules of each block show while it runs, and the table's seconds are also in "
        "`snows-hf-demo/report.json`):",
        "",
        "```",
        results["table"],
        "```",
        "",
        f"The {figures['eval_articles']} held-out articles are the rows after the calibration rows in one seeded "
        "order, so they never overlap. The cosine to the dense embeddings shows what each method loses: SNOWS "
        f"keeps the mean {closer} SparseGPT alone ({snows['cosine_mean']:.4f} vs {sgpt['cosine_mean']:.4f}; "
        f"magnitude {magnitude['cosine_mean']:.4f}) at {time_ratio:.1f} times its time, and the worst article "
        f"{worst} ({snows['cosine_min']:.4f} vs {sgpt['cosine_min']:.4f}). BBC's five topics are easy enough that "
        f"a linear probe on the embeddings stays near {figures['dense']['linear_probe_accuracy']:.0%} whatever the "
        f"mask, and {probe} ({snows['linear_probe_accuracy']:.4f} vs {sgpt['linear_probe_accuracy']:.4f}). "
        "The figures depend on the machine (float rounding differs between CPUs and tips some mask choices), "
        "most of all the worst article's cosine and the probe; the seconds depend on its speed. The magnitude "
        "run's time includes the per-layer mask diagnostics (`--no-diagnostics` skips them).",
    ]


def stream_order() -> list[str]:
    """Shards and bytes a streamed read of a sharded dataset opens, by order."""
    results = load("stream_order.json")
    if results is None:
        return ["(How many shards a streamed read opens: not yet measured; `python benchmarks/stream_order.py`.)"]
    ways = {r["way"]: r for r in results["results"]}
    shuffled = [r for name, r in ways.items() if name.startswith("shuffle")]
    sizes = " or ".join(name.split("buffer_size=")[1] for name in ways if name.startswith("shuffle"))
    ours, storage = ways["snows-hf"], ways["storage"]
    opened = {r["shards_read"] for r in shuffled}
    shares = {f"{r['share']:.1%}" for r in shuffled}
    return [
        f"`datasets`' own `shuffle` is not used: reading {results['rows_read']} rows of a {results['shards']}-shard "
        f"parquet dataset over the loopback Hub, it opened {'/'.join(map(str, sorted(opened)))} shards and "
        f"{'/'.join(sorted(shares))} of the bytes (with `buffer_size` {sizes}), against {ours['shards_read']} "
        f"shard{'s' * (ours['shards_read'] != 1)} and {ours['share']:.1%} in snows-hf's order and "
        f"{storage['shards_read']} shard{'s' * (storage['shards_read'] != 1)} and {storage['share']:.1%} in storage "
        f"order ({command(results) if 'settings' in results else '`python benchmarks/stream_order.py`'}, "
        "`benchmarks/results/stream_order.json`).",
    ]


def headline() -> list[str]:
    """What ``python benchmarks/headline_offline.py`` wrote: the headline command and its output."""
    path = RESULTS / "headline_offline.txt"
    if not path.is_file():
        return ["The headline command's output: not yet measured (`python benchmarks/headline_offline.py`)."]
    output = path.read_text().rstrip("\n")
    counted = re.search(r"accuracy is measured on the (\d+) of (\d+) held-out samples", output)
    scope = (f"so accuracy counts {int(counted[1]):,} of the {int(counted[2]):,} held-out images and agreement "
             "counts all" if counted else "so accuracy counts every held-out image")
    return [
        "No machine here reaches the Hub, so `python benchmarks/headline_offline.py` runs the command exactly as "
        "typed against the loopback Hub of the tests, which serves a *tiny random* ViT (2 blocks, hidden 32, 3 "
        "classes named like ImageNet's: tench, goldfish, golf ball) under the id `google/vit-large-patch16-224` and "
        "a stand-in of `frgfm/imagenette` (1,600 random 24x24 images in Imagenette's layout and class names). The "
        "figures are a random model's on random images; what it shows is the flow: the bundled recipe taken as the "
        "base, the data streamed, labels matched by name (2 of Imagenette's 10 classes are this model's, "
        f"{scope}). Progress bars left out; the output it wrote, `benchmarks/results/headline_offline.txt`:",
        "",
        "```",
        output,
        "```",
    ]


def lmeval() -> list[str]:
    """What ``python benchmarks/lmeval_tasks.py`` printed: lm-eval's table for SmolLM2-135M
    dense vs pruned on the local task, on every item and with ``--limit``, and what the limit trades."""
    results = load("lmeval_tasks.json")
    if results is None:
        return ["The table of a real run: not yet measured (`python benchmarks/lmeval_tasks.py` measures it: "
                "SmolLM2-135M dense vs 50% magnitude-pruned on a local BBC News topic task)."]
    full, quick = results["runs"]["all"], results["runs"]["limit"]
    limit = quick["tasks"]["limit"]

    def acc(run: dict, label: str) -> dict:
        return next(r for r in run["tasks"][label] if r["metric"] == "acc")

    widen = acc(quick, "pruned")["stderr"] / acc(full, "pruned")["stderr"]
    return [
        "No machine here reaches the Hub, so ARC, HellaSwag and the other lm-eval tasks cannot fetch their data: "
        f"{command(results)} writes a *local* lm-eval task instead, BBC News topic classification as zero-shot "
        f"multiple choice ({results['items']} articles spread over the topics; the first 60 words of each, then "
        "`Topic:`, the five topics as the choices), prunes SmolLM2-135M-Instruct (fp32, from the GGUF asset) to 50% "
        "by magnitude on BBC calibration text, and scores dense and pruned with `snows-hf eval --reference --tasks "
        f"FOLDER`, on every item ({full['cpu_seconds']:.0f} CPU seconds for both models, loading included) and "
        f"with `--limit {limit}` ({quick['cpu_seconds']:.0f} CPU seconds). It printed "
        "(`benchmarks/results/lmeval_tasks.json`):",
        "",
        "```",
        "$ snows-hf eval PRUNED --reference SmolLM2-135M-Instruct --tasks FOLDER",
        full["table"],
        f"$ snows-hf eval PRUNED --reference SmolLM2-135M-Instruct --tasks FOLDER --limit {limit}",
        quick["table"],
        "```",
        "",
        f"`--limit {limit}` scores the first {limit} items of each task: it takes "
        f"{quick['cpu_seconds'] / full['cpu_seconds']:.0%} of the CPU time here (loading both models included), "
        f"and the standard error of the pruned model's acc is {widen:.1f} times as wide "
        f"({acc(quick, 'pruned')['stderr']:.4f} against {acc(full, 'pruned')['stderr']:.4f}); the first items need not be a fair sample of a task, so a "
        "limited run is a quick look, not a figure to publish.",
    ]
