"""The README's "More measurements": every table and every figure of its prose, from the JSON files.

Each section reads ``benchmarks/results/<script>.json`` (written by that benchmark, with the
command that ran it in ``settings``) and returns Markdown lines; the comparisons its prose
states are computed here, so a rerun that changes a figure changes the sentence with it.
A file that is missing gives one line: the table is not yet measured, and the command
that measures it. ``benchmarks/readme_results.py`` puts the sections between
``<!-- measurements:start -->`` and ``<!-- measurements:end -->``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def load(name: str) -> dict | None:
    """``benchmarks/results/<name>``, parsed, or ``None`` when there is no such file."""
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table.

    Example:
        >>> table(["a", "b"], [["1", "2"]])
        ['| a | b |', '|---|---|', '| 1 | 2 |']
    """
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def span(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    """``values`` as one figure when they print alike, else as their range.

    Example:
        >>> span([0.5469, 0.54688]), span([9.1, 12.4], "{:.0f}"), span([-3.0, 2.0], "{:+.0f}")
        ('0.55', '9-12', '-3 to +2')
    """
    low, high = fmt.format(min(values)), fmt.format(max(values))
    return low if low == high else f"{low} to {high}" if "+" in fmt or min(values) < 0 else f"{low}-{high}"


def spec_name(spec: str) -> str:
    """A sparsity as the README writes it: N:M as given, a fraction as a percentage.

    Example:
        >>> spec_name("2:4"), spec_name("0.7"), spec_name("50%")
        ('2:4', '70%', '50%')
    """
    return spec if ":" in spec or spec.endswith("%") else f"{float(spec):.0%}"


def command(results: dict) -> str:
    return f"`{results['settings']['command']}`"


def not_measured(title: str, how: str) -> list[str]:
    return [f"{title}: not yet measured; {how} measures it."]


def snows_settings(config: dict) -> str:
    """The solver settings of a run's resolved config, as words."""
    return (f"{config['newton_steps']} Newton steps x {config['cg_iters']} CG iterations"
            f"{', preconditioned by input energy' if config.get('preconditioner') == 'input-energy' else ''}")


STARTS = {"lsq": "the least-squares fit", "mask": "the selector's own weights"}  #: a re-fit's ``init``, as words


def starts(inits: Sequence[str]) -> str:
    """Where the re-fits of a run started, from their layers' ``init``.

    Example:
        >>> starts(["lsq", "lsq"]), starts(["mask", "lsq"])
        ('the least-squares fit', "the least-squares fit or the selector's own weights")
    """
    return " or ".join(STARTS.get(i, i) for i in sorted(set(inits)))


# --- SNOWS variants on the Fashion-MNIST ViT (snows_solver.py) ---------------------------------------------------

SOLVER_LABELS = {
    "snows K=3 ds, no scale": "SNOWS K=3 dense-stream, no term scale",
    "snows K=8 ds, no scale": "SNOWS K=8 dense-stream, no term scale",
    "snows K=3 ds, exact H": "SNOWS K=3 dense-stream, exact Hessian",
    "snows K=3 ds, mask init": "SNOWS K=3 dense-stream, masked start",
}


def _block_error(rows: dict, label: str) -> float | None:
    row = rows.get(label)
    return None if row is None else sum(row["block_err"]) / len(row["block_err"])


def solver_record(layers: Sequence[dict]) -> str:
    """What the re-fits of a run did, from its per-layer records: start, Newton steps, CG iterations.

    Example:
        >>> solver_record([{"init": "lsq", "newton_steps": 2, "cg_iterations": [5, 4]}])
        'starting from the least-squares fit, at most 2 Newton steps x 5 CG iterations'
    """
    refits = [layer for layer in layers if "newton_steps" in layer]
    return (f"starting from {starts([layer['init'] for layer in refits])}, at most "
            f"{max(layer['newton_steps'] for layer in refits)} Newton steps x "
            f"{max(i for layer in refits for i in layer['cg_iterations'])} CG iterations")


def snows_solver(results: dict, first: bool) -> list[str]:
    dense, rows = results["rows"][0], {r["method"]: r for r in results["rows"][1:]}
    alone = next(label for label in rows if "mask only" in label)  # "magnitude (mask only)" in files before --mask
    mask = results.get("mask")
    default = rows.get("snows K=3 dense-stream") or next(r for label, r in rows.items() if label != alone)
    default_start = starts([layer["init"] for layer in default["layers"] if "init" in layer])
    threads = results["settings"].get("threads")
    if first:
        head = (f"**SNOWS on a trained ViT** (4 blocks, hidden 96, trained on Fashion-MNIST by `benchmarks/fmnist.py`, "
                f"{dense['accuracy']:.2%} test top-1), {results['sparsity']}"
                + (f", every row on the {mask} mask" if mask else "") +
                f", {results['num_samples']} calibration images, SNOWS at the library's defaults but for what the row "
                f"names (its layers' records: {solver_record(default['layers'])}); block error is "
                "`||out - dense||^2 / ||dense||^2` of each block's output on "
                + (f"{results['probe_images']:,} test images; top-1 on all {results['test_images']:,} test images"
                   if "test_images" in results else "held-out test images; top-1 on the test set")
                + (f"; {threads} CPU threads" if threads else "") + f". {command(results)}")
    else:
        head = f"The same network at {results['sparsity']}: {command(results)}"
    body = [[f"{mask} (mask only)" if label == "mask only" else SOLVER_LABELS.get(label, label.replace("snows", "SNOWS")),
             f"{r['accuracy']:.4f}", f"{dense['accuracy'] - r['accuracy']:+.4f}",
             " ".join(f"{e:.4f}" for e in r["block_err"]), f"{r['seconds']:.1f}"] for label, r in rows.items()]
    lines = [head, "", *table(["method", "top-1", "drop", "block 0..3 error", "seconds"], body), ""]
    drops = [dense["accuracy"] - r["accuracy"] for label, r in rows.items() if label != alone]
    text = (f"The mask alone loses {100 * (dense['accuracy'] - rows[alone]['accuracy']):.2f} points of top-1; the SNOWS "
            f"rows end {span([100 * d for d in drops], '{:+.2f}')} points from dense"
            + (f" (one test image is {100 / results['test_images']:.2f} points)." if "test_images" in results else "."))
    by_k = {k: _block_error(rows, f"snows K={k} dense-stream") for k in (0, 1, 3, 8)}
    by_k = {k: e for k, e in by_k.items() if e is not None}
    if len(by_k) > 1:
        falling = all(a > b for a, b in zip(list(by_k.values()), list(by_k.values())[1:]))
        text += (f" Mean block error {'falls with every larger K' if falling else 'by K'} (dense-stream: "
                 + ", ".join(f"K={k} {e:.5f}" for k, e in by_k.items()) + ").")
    official = {k: (_block_error(rows, f"snows K={k} dense-stream"), _block_error(rows, f"snows K={k} official"))
                for k in (0, 3, 8)}
    official = {k: v for k, v in official.items() if None not in v}
    if official:
        below = [100 * (1 - ds / off) for ds, off in official.values()]
        accuracy = [100 * (rows[f"snows K={k} dense-stream"]["accuracy"] - rows[f"snows K={k} official"]["accuracy"])
                    for k in official]
        text += (f" At the same K ({', '.join(f'K={k}' for k in official)}), dense-stream targets leave "
                 f"{span(below, '{:.0f}')}% {'less' if min(below) > 0 else 'more' if max(below) < 0 else 'less or more'} "
                 f"block error than the official ones, and their top-1 differs from the official ones' by "
                 f"{span(accuracy, '{:+.2f}')} points.")
    masked = _block_error(rows, "snows K=3 ds, mask init")
    if masked is not None:
        gain = 100 * (1 - _block_error(rows, "snows K=3 dense-stream") / masked)
        text += (f" Starting from {default_start} leaves {abs(gain):.0f}% {'less' if gain > 0 else 'more'} block error "
                 "than starting from the masked weights, at the same Newton budget.")
    return lines + [text]


# --- mask selectors with and without the re-fit (mask_selectors.py) ----------------------------------------------

MASK_NAMES = {"magnitude": "magnitude", "wanda": "Wanda", "hessian": "Hessian-scaled", "sparsegpt": "SparseGPT"}


def mask_selectors(results: dict) -> list[str]:
    dense = results["dense_accuracy"]
    cells = {(r["sparsity"], r["mask"], r["method"]): r for r in results["rows"]}
    masks = list(dict.fromkeys(r["mask"] for r in results["rows"]))
    specs = [s for s in dict.fromkeys(r["sparsity"] for r in results["rows"])  # those the run finished
             if all((s, m, method) in cells for m in masks for method in ("mask only", "+ SNOWS"))]
    if not specs:
        return not_measured("**Mask selectors, with and without the SNOWS re-fit**", f"finishing {command(results)}")
    config = next(r.get("config") for r in results["rows"] if r["method"] == "+ SNOWS")
    by_start: dict[str, list[str]] = {}
    for m in masks:
        inits = [i for r in results["rows"] if r["mask"] == m and r["method"] == "+ SNOWS" for i in r["inits"]]
        by_start.setdefault(starts(inits), []).append(MASK_NAMES.get(m, m))
    lines = [f"**Mask selectors, with and without the SNOWS re-fit** (same ViT, {results['num_samples']} calibration "
             f"images, SNOWS at the library's defaults" + (f": K={config['k_step']}, {snows_settings(config)}" if config
                                                           else " when the file was written (it does not record them)")
             + ", starting from "
             + "; ".join(f"{start} after {', '.join(names)}" for start, names in by_start.items())
             + f"): {command(results)}", ""]
    body = []
    for spec in specs:
        for mask in masks:
            alone, refit = cells[(spec, mask, "mask only")], cells[(spec, mask, "+ SNOWS")]
            body.append([spec_name(spec), MASK_NAMES.get(mask, mask)] +
                        [f"{r['accuracy']:.4f} ({dense - r['accuracy']:+.4f})" for r in (alone, refit)] +
                        [f"{alone['seconds']:.1f} / {refit['seconds']:.1f}"])
    lines += table(["sparsity", "mask", "mask only: top-1 (drop)", "+ SNOWS: top-1 (drop)",
                    "seconds (mask only / + SNOWS)"], body) + [""]

    def accuracy(spec, mask, method="mask only"):
        return cells[(spec, mask, method)]["accuracy"]

    best = {spec: max(masks, key=lambda m: accuracy(spec, m)) for spec in specs}
    if len(set(best.values())) == 1:
        sentences = [f"Of the masks alone {MASK_NAMES[best[specs[0]]]} is best at every sparsity"
                     + (", and it alone also updates the kept weights" if best[specs[0]] == "sparsegpt" else "")]
    else:
        sentences = ["Of the masks alone " + ", ".join(f"{MASK_NAMES[m]} is best at {spec_name(s)}" for s, m in best.items())]
    beats = {m: [spec_name(s) for s in specs if accuracy(s, m) > accuracy(s, "magnitude")] for m in ("wanda", "hessian")}
    if not any(beats.values()):
        sentences.append("the data-aware scores that make no update (Wanda, Hessian-scaled) beat magnitude at no "
                         "sparsity here")
    else:
        sentences.append("of the data-aware scores that make no update, " + ", ".join(
            f"{MASK_NAMES[m]} beats magnitude at {', '.join(s) if s else 'no sparsity here'}" for m, s in beats.items()))
    after = [dense - accuracy(s, m, "+ SNOWS") for s in specs for m in masks]
    spread = {when: max(100 * (max(accuracy(s, m, when) for m in masks) - min(accuracy(s, m, when) for m in masks))
                        for s in specs) for when in ("mask only", "+ SNOWS")}
    sentences.append(f"after the re-fit every mask lands {span([100 * d for d in after], '{:+.2f}')} points from dense, "
                     f"and the masks differ by at most {spread['+ SNOWS']:.2f} points at a sparsity, against "
                     f"{spread['mask only']:.2f} before it"
                     + (": here the re-fit, not the mask, carries the result" if spread["+ SNOWS"] < spread["mask only"] / 2
                        else ""))
    text = "; ".join(sentences) + "."
    equal = [s for s in specs if ":" in s and accuracy(s, "wanda") == accuracy(s, "hessian")]
    if equal:
        text += (f" At {', '.join(equal)}, Wanda and Hessian scaling rank weights within a row identically "
                 "(`|W| sqrt(H_jj)` vs its square), hence their equal mask-only figures.")
    return lines + [text]


# --- magnitude vs Hessian-scaled importance in least squares (importance_linear.py) ------------------------------

def _best_rows(scenario: dict) -> str:
    """Which pruned method has the lowest risk at each sparsity, as words."""
    risk = {m: row for m, row in scenario["risk"].items() if not m.startswith("dense")}
    wins = {p: min(risk, key=lambda m: risk[m][p]) for p in next(iter(risk.values()))}
    if len(set(wins.values())) == 1:
        return f"{next(iter(wins.values()))} at every sparsity"
    return ", ".join(f"{m} at {spec_name(p)}" for p, m in wins.items())


def importance_linear(results: dict) -> list[str]:
    specs = results["sparsities"]
    scenarios = {s["inputs"]: s for s in results["scenarios"]}
    args = results["settings"]["arguments"]
    lines = ["**Magnitude vs Hessian-scaled importance in least squares** (the weight-importance paper's setting: "
             f"{args['dim']} inputs, {args['train']:,} training rows, input variances over four decades, true weights "
             "`c_j / sqrt(v_j)`, so the important weights are the small ones): relative excess test risk, 0 = perfect, "
             f"1 = the zero predictor; {command(results)}", ""]
    body = []
    for name, s in scenarios.items():
        label = f"correlated (AR(1) {s['rho']})" if s["rho"] else name
        body += [[label, method] + [f"{row[p]:.4f}" for p in specs]
                 for method, row in s["risk"].items() if not method.startswith("dense")]
    lines += table(["inputs", "method"] + [spec_name(p) for p in specs], body) + [""]

    def risk(inputs, method, spec):
        return scenarios[inputs]["risk"][method][spec]

    half = specs[0]
    ratios = {n: risk(n, "magnitude", half) / risk(n, "hessian", half) for n in ("independent", "correlated")}
    text = (f"At {spec_name(half)} magnitude has {ratios['independent']:.1f}x the excess risk of the Hessian-scaled mask "
            f"on independent anisotropic inputs and {ratios['correlated']:.1f}x on correlated ones.")
    repair = [risk("independent", "magnitude + re-fit", p) - risk("independent", "magnitude", p) for p in specs]
    if min(repair) >= 0:
        text += (" With independent inputs a re-fit cannot repair a mask that removed the important weights: there is "
                 f"nothing for it to shift onto, and it raises magnitude's risk by {span(repair, '{:.4f}')} (sample "
                 "noise).")
    recovered = [risk("correlated", "magnitude", p) - risk("correlated", "magnitude + re-fit", p) for p in specs]
    text += (f" With correlated inputs the re-fit lowers magnitude's risk by {span(recovered, '{:.4f}')}; the best row "
             f"there is {_best_rows(scenarios['correlated'])}.")
    anisotropic = [(n, p) for n in ("independent", "correlated") for p in specs]
    under_magnitude = sum(risk(n, "sparsegpt", p) < risk(n, "magnitude", p) for n, p in anisotropic)
    under_hessian = sum(risk(n, "sparsegpt", p) < risk(n, "hessian", p) for n, p in anisotropic)
    text += (f" On the anisotropic inputs SparseGPT's risk is below magnitude's in {under_magnitude} of "
             f"{len(anisotropic)} cells and below plain Hessian scaling's in {under_hessian or 'none'}; its per-block quota "
             "(each block of columns prunes its own share) may bind harder in this one-output problem than in a layer "
             "with many rows, which is not measured here.")
    gap = max(abs(risk("isotropic", "magnitude", p) - risk("isotropic", "hessian", p)) for p in specs)
    text += (" On isotropic inputs magnitude and Hessian scaling " +
             ("coincide (to 4 decimals)." if gap < 5e-5 else f"differ by at most {gap:.4f}."))
    return lines + [text]


# --- SmolLM2 through the command line (smollm2_bbc.py) -----------------------------------------------------------

QUALITY_METHOD = {("magnitude", "magnitude"): "magnitude", ("none", "magnitude"): "magnitude",  # recorded before
                  ("none", "wanda"): "wanda", ("none", "sparsegpt"): "sparsegpt",   # mask-only had its name
                  ("mask-only", "magnitude"): "magnitude", ("mask-only", "wanda"): "wanda",
                  ("mask-only", "sparsegpt"): "sparsegpt"}


def _run_name(row: dict) -> str:
    mask = "magnitude" if row["method"] == "magnitude" else row["mask"]
    return f"{row['sparsity']} {MASK_NAMES.get(mask, mask)} mask" + (" + SNOWS" if row["method"] == "snows" else "")


def _quality_twin(row: dict, quality: dict | None) -> dict | None:
    """The row of ``quality_smollm2.json`` with the same setup as ``row`` of ``smollm2_bbc.json``, if any."""
    if quality is None:
        return None
    args = row["settings"]["arguments"]
    same_data = quality["calibration"].get("input_ids") == [int(args["num_samples"]), int(args["seq_len"])]
    same_held_out = abs(quality["dense"]["perplexity"] / row["dense"]["perplexity"] - 1) < 1e-6  # its fingerprint
    if not (same_data and same_held_out):
        return None
    method = QUALITY_METHOD.get((row["method"], row["mask"]))
    return next((q for q in quality["rows"] if q["sparsity"] == row["sparsity"] and q["method"] == method), None)


def smollm2_bbc(results: dict) -> list[str]:
    quality = load("quality_smollm2.json")
    rows = results["rows"]
    args = rows[0]["settings"]["arguments"]
    twins = [(r, t) for r in rows if (t := _quality_twin(r, quality))]
    shown = [r for r in rows if not _quality_twin(r, quality)]
    lines = ["**SmolLM2-135M on BBC News through the command line** (fp32 from the GGUF asset, mask only, calibration "
             f"{args['num_samples']} x {args['seq_len']} tokens; perplexity on {rows[0]['samples']} held-out sequences of "
             f"{args['seq_len']} tokens measured by `snows-hf eval --reference`, each run against its own dense "
             "reference):", ""]
    lines += table(["run", "dense perplexity", "pruned perplexity", "command"],
                   [[_run_name(r), f"{r['dense']['perplexity']:.2f}", f"{r['pruned']['perplexity']:.2f}",
                     f"`{r['settings']['command']}`"] for r in shown]) + [""]
    text = ""
    if twins:
        gaps = [abs(r["pruned"]["perplexity"] / t["scores"]["perplexity"] - 1) for r, t in twins]
        text += (f"The {' and '.join(_run_name(r) for r, _ in twins)} runs of this script ("
                 + ", ".join(f"`{r['settings']['command']}`" for r, _ in twins)
                 + ") have the setups of cells of the SmolLM2 table in Results, which is where their perplexities are "
                 f"shown; through the command line they come within {max(gaps):.2%} of those cells. ")
    for r in rows:
        if r["mask"] == "magnitude" or r["method"] == "magnitude":
            ratio = [r["pruned"]["perplexity"] / s["pruned"]["perplexity"] for s in rows if s["mask"] == "hessian"]
            text += (f"By the {_run_name(r)} run's own diagnostics (its warning), in {r['magnitude_much_worse_layers']} "
                     f"of its {r['diagnosed_layers']} layers magnitude removes far more Hessian-weighted importance than "
                     "the Hessian-scaled mask would" + (f", and its perplexity is {ratio[0]:.1f}x the Hessian-scaled "
                                                         "mask's." if ratio else "."))
    snows = [q for q in (quality or {}).get("rows", []) if q["method"] == "snows-k3"]
    if snows:
        text += (f" (SNOWS K=3 on the whole model, at {', '.join(q['sparsity'] for q in snows)}, is in the SmolLM2 "
                 "table of Results: "
                 f"{span([q['seconds'] / 60 for q in snows], '{:.0f}')} minutes a run.)")
    return lines + [text.strip()] if text else lines[:-1]


# --- compact checkpoints (compact_size.py) -----------------------------------------------------------------------

def compact_size(results: dict) -> list[str]:
    mib, rows = 2**20, results["rows"]
    lines = ["**Compact checkpoint sizes** (magnitude-pruned; sizes of real safetensors files, plus the compact tensors' "
             f"own bytes without safetensors headers): {command(results)}", ""]
    body = [[r["model"], spec_name(r["sparsity"]), r["dtype"].replace("float", "fp"),
             f"{r['pruned_dense'] / mib:.2f}", f"{r['pruned_compact'] / mib:.2f}",
             f"{r['pruned_compact'] / r['pruned_dense']:.4f}", f"{r['pruned_payload']:.4f}",
             f"{r['all_dense'] / mib:.2f}", f"{r['all_compact'] / mib:.2f}", f"{r['all_compact'] / r['all_dense']:.4f}"]
            for r in rows]
    lines += table(["model", "sparsity", "dtype", "pruned tensors dense MiB", "compact", "ratio", "tensor bytes ratio",
                    "whole checkpoint dense MiB", "compact", "ratio"], body) + [""]

    def fp16(structured):
        return [r for r in rows if r["dtype"] == "float16" and (":" in r["sparsity"]) == structured]

    headers = [r["pruned_compact"] / r["pruned_dense"] - r["pruned_payload"] for r in rows]
    models = {m: [r for r in rows if r["model"] == m] for m in dict.fromkeys(r["model"] for r in rows)}
    whole = [f"{m} ({1 - rs[0]['pruned_dense'] / rs[0]['all_dense']:.0%} of its bytes outside the pruned layers) to "
             f"{span([r['all_compact'] / r['all_dense'] for r in rs])}x" for m, rs in models.items()]
    text = (f"2:4 stores each group of four as its two values plus which of the six possible pairs it keeps (3 bits: "
            f"{span([r['pruned_payload'] for r in fp16(True)], '{:.4f}')}x of fp16); unstructured stores the kept values "
            f"plus a 1-bit mask ({span([r['pruned_payload'] for r in fp16(False)], '{:.4f}')}x of fp16 at "
            f"{span([float(r['sparsity']) * 100 for r in fp16(False)], '{:.0f}')}%); the safetensors headers add "
            f"{span(headers, '{:.4f}')} on top. Embeddings and heads stay dense, so whole checkpoints shrink less: "
            f"{', '.join(whole)}.")
    return lines + [text]


# --- where the activations wait (offload_memory.py) --------------------------------------------------------------

PLACES = {"device": "on the device", "cpu": "in CPU memory", "disk": "on disk"}


def offload_memory(results: dict) -> list[str]:
    rows, args = results["rows"], results["settings"]["arguments"]
    method = args["method"] if args["method"] == "magnitude" else f"{args['method']} (mask {args['mask']})"
    gpu = any(r["peak_gpu_gib"] is not None for r in rows)
    lines = [f"**Where the activations wait** (SmolLM2-135M, 2:4 {method}, {args['seq_len']}-token sequences of BBC "
             f"News, one process per row, {results['settings']['threads']} CPU threads; on a CPU machine \"device\" and "
             f"\"cpu\" are the same memory): {command(results)}", ""]
    body = [[str(r["num_samples"]), f"{r['activation_gib']:.2f}", r["place"], f"{r['seconds']:.1f}",
             f"{r['rss_after_load_gib']:.2f}", f"{r['peak_rss_gib']:.2f}"]
            + ([f"{r['peak_gpu_gib']:.2f}" if r["peak_gpu_gib"] is not None else ""] if gpu else []) for r in rows]
    lines += table(["samples", "one block's hidden states GiB", "activations", "seconds", "RSS after loading GiB",
                    "peak RSS GiB"] + (["peak GPU GiB"] if gpu else []), body) + [""]
    cell = {(r["num_samples"], r["place"]): r for r in rows}
    sizes, places = sorted({r["num_samples"] for r in rows}), list(dict.fromkeys(r["place"] for r in rows))
    text = ""
    if len(sizes) > 1:
        low, high = sizes[0], sizes[-1]
        moves = [f"{cell[(high, p)]['peak_rss_gib'] - cell[(low, p)]['peak_rss_gib']:+.2f} GiB {PLACES.get(p, p)}"
                 for p in places if (low, p) in cell and (high, p) in cell]
        text = (f"Going from {low} to {high} samples moves the peak RSS by {', '.join(moves[:-1])}"
                f"{' and ' if len(moves) > 1 else ''}{moves[-1]} (where the activations wait).")
    if "device" in places and "disk" in places:
        extra = [100 * (cell[(n, "disk")]["seconds"] / cell[(n, "device")]["seconds"] - 1)
                 for n in sizes if (n, "disk") in cell and (n, "device") in cell]
        longer = (f"{span(extra, '{:.0f}')}% longer" if min(extra) > 0 else
                  f"{span([-e for e in extra], '{:.0f}')}% shorter" if max(extra) < 0 else f"{span(extra, '{:+.0f}')}%")
        text += (f" With them on disk the runs take {longer} than on the device (at {' and '.join(map(str, sizes))} "
                 "samples; reads run one micro-batch ahead).")
    return lines + [text.strip()]


# --- what resuming costs (resume_cost.py) ------------------------------------------------------------------------

def resume_cost(results: dict) -> list[str]:
    args, seconds, blocks = results["settings"]["arguments"], results["seconds"], results["blocks"]
    stop, step = args["stop_at"], results["per_block_and_stream"]
    lines = [f"**What resuming costs** (SmolLM2-135M, 2:4 {args['method']}, {args['num_samples']} x {args['seq_len']} "
             f"tokens, {blocks} blocks, one process, stopped after block {stop}): {command(results)}", ""]
    lines += table(["run", "seconds"], [
        ["no checkpoint", f"{seconds['no checkpoint']:.1f}"],
        [f"with checkpoint, stopped after {stop} blocks", f"{seconds['with checkpoint, stopped']:.1f}"],
        [f"resumed ({stop} blocks restored, their outputs recomputed)", f"{seconds['resumed']:.1f}"]]) + [""]
    saved = 1 - seconds["resumed"] / seconds["no checkpoint"]
    text = (f"The resumed weights are {'bit-identical to' if results['bit_identical'] else 'not the same as'} the "
            f"uninterrupted run's; the checkpoint holds {results['checkpoint_mib'] / stop:.1f} MiB per block (the "
            f"pruned weights). With the checkpoint a block took {seconds['with checkpoint, stopped'] / stop:.2f} s, "
            f"without it {seconds['no checkpoint'] / blocks:.2f} s. A resume recomputes one block forward per stream "
            f"({step['forward']:.2f} s here); storing each block's hidden states instead would cost a "
            f"{results['hidden_states_mib']:.0f} MiB write after every block ({step['write']:.2f} s) in every run, to "
            f"save that on the rare resume. The resumed run took {seconds['resumed']:.1f} s against "
            f"{seconds['no checkpoint']:.1f} s uninterrupted, so with the {args['method']} mask resuming "
            + (f"saves {saved:.0%} here" if saved >= 0.1 else "saves nothing measurable here")
            + f": pruning a block took {seconds['no checkpoint'] / blocks:.2f} s, "
            f"{seconds['no checkpoint'] / blocks / step['forward']:.1f}x the forward a resume recomputes per stream.")
    snows = [q for q in (load("quality_smollm2.json") or {}).get("rows", []) if q["method"] == "snows-k3"]
    if snows:
        n, seq = next(iter(load("quality_smollm2.json")["calibration"].values()))
        text += (f" SNOWS K=3 took {span([q['seconds'] / blocks for q in snows], '{:.0f}')} s per block in the SmolLM2 "
                 f"table of Results (on {n} x {seq} tokens), so there a resume saves most of the finished blocks' time.")
    return lines + [text]


# --- SNOWS at real shapes on CPU (real_shapes_cpu.py) ------------------------------------------------------------

MODEL_NAMES = {"vit-large": "ViT-Large/16", "resnet-50": "ResNet-50"}


METHOD_NAMES = {"sparsegpt": "SparseGPT", "snows": "SNOWS", "snows-block": "SNOWS, block re-fit",
                "snows-group": "SNOWS, group re-fit"}


def real_shape_runs(results: dict) -> dict[str, dict[str, dict]]:
    """Each model's runs by method (files written before ``--methods`` hold SNOWS only)."""
    runs: dict[str, dict[str, dict]] = {}
    for case in results["cases"]:
        runs.setdefault(case["case"], {})[case.get("method", "snows")] = case
    return runs


def real_shapes_cpu(results: dict) -> list[str]:
    runs, threads = real_shape_runs(results), results["settings"]["threads"]
    first = next(iter(next(iter(runs.values())).values()))
    config = next((m["snows"]["config"] for m in runs.values() if "snows" in m), first["config"])
    methods = list(dict.fromkeys(k for m in runs.values() for k in m))
    lines = [f"**SNOWS at real shapes on CPU** (randomly initialised, {threads} threads, {first['samples']} images of "
             f"224x224, 2:4; SNOWS at the defaults of `snows-hf prune`: K={config['k_step']}, {config['mask']} mask, "
             f"{snows_settings(config)}; each model and method in a process of its own): {command(results)}", ""]
    body = []
    for name, by_method in runs.items():
        some = next(iter(by_method.values()))
        for block, count in some["whole_model_blocks"].items():
            where = f"block {block} of {count}" if name == "vit-large" else f"stage {block} residual block (x{count})"
            body.append([MODEL_NAMES.get(name, name), where, str(some["layers_per_block"][block])]
                        + [f"{by_method[m]['block_seconds'][block]:.1f}" if m in by_method else "not run" for m in methods])
        base = by_method.get("sparsegpt")
        body.append([MODEL_NAMES.get(name, name), f"whole run: seconds{' (x SparseGPT)' if base else ''}, peak RSS GiB", ""]
                    + [f"{by_method[m]['total_seconds']:.0f}"
                       + (f" ({by_method[m]['total_seconds'] / base['total_seconds']:.1f}x)" if base else "")
                       + f", {by_method[m]['peak_rss_gib']:.2f}" if m in by_method else "not run" for m in methods])
    lines += table(["model", "block", "modules"] + [f"{METHOD_NAMES.get(m, m)} s" for m in methods], body) + [""]
    projected = [f"{MODEL_NAMES.get(name, name)}: " + ", ".join(
        f"{METHOD_NAMES.get(m, m)} about {r['projected_seconds']:,.0f} s"
        + (f" ({r['projected_seconds'] / 3600:.1f} h)" if r["projected_seconds"] >= 3600 else "")
        for m, r in by_method.items()) for name, by_method in runs.items()]
    return lines + ["Block seconds are the methods' own work on the block (the statistics forwards they share are "
                    "outside them); the whole run's seconds include everything. Projected whole models (each timed "
                    f"block times the blocks it stands for) on {threads} CPU threads: " + "; ".join(projected) + "."]


# --- Gauss-Newton products two ways (hvp_modes.py) ----------------------------------------------------------------

def hvp_modes(results: dict) -> list[str]:
    args, rows = results["settings"]["arguments"], results["rows"]
    fb = results["forward_backward_seconds"]
    lines = [f"**Gauss-Newton products two ways** (one SmolLM2-135M block at real shapes, randomly initialised, eager "
             f"attention, {args['batches']} x {args['tokens']} tokens, the weights of `{results['module']}`, "
             f"{results['settings']['threads']} threads; median of {args['repeats']} products): {command(results)}", ""]
    lines += table(["way", "build s (once per Newton step)", "product s", "x a forward+backward"],
                   [[r["way"], f"{r['build_seconds']:.3f}", f"{r['product_seconds']:.3f}",
                     f"{r['product_seconds'] / fb:.2f}"] for r in rows])
    by_way = {r["way"]: r["product_seconds"] for r in rows}
    return lines + ["", f"The two ways' products agree to {results['relative_difference']:.1e} (relative). Forward mode "
                        f"reruns the window's forward for every product where the double vjp reuses the kept graph: its "
                        f"product takes {by_way['jvp + vjp'] / by_way['double-vjp']:.1f}x as long here"
                        + (", so SNOWS keeps the double vjp" if by_way["jvp + vjp"] >= by_way["double-vjp"] else
                           ": faster, but SNOWS does not use it yet") + ". Forward mode through the SDPA attention of "
                        "this block: "
                        f"{results['sdpa_forward_mode']}."]


# --- GPU runs (gpu_check.py, sparse_inference_gpu.py) ------------------------------------------------------------

def gpu_check(results: dict) -> list[str]:
    rows, args = results["rows"], results["settings"]["arguments"]
    lines = [f"**SNOWS on {results['device']}** (randomly initialised weights of the real shapes, {args['blocks']} "
             f"blocks, fp32, 2:4, micro-batch 8; {args['samples']} images for the ViTs, {args['samples'] // 4} x "
             f"{args['seq_len']} tokens for SmolLM2-135M; torch {results['settings']['torch']}; max |dW| against the "
             f"model's first SNOWS row): {command(results)}", ""]
    lines += table(["model shape", "case", "s/block", "x SparseGPT", "peak GiB", "max abs dW"], [
        [r["model"], r["case"], f"{r['per_block']:.2f}", f"{r['x_sparsegpt']:.1f}" if r.get("x_sparsegpt") else "",
         f"{r['peak_gib']:.2f}", f"{r['max_dw']:.1e}" if "max_dw" in r else ""] for r in rows]) + [""]
    whole = [f"{r['model']} ({results['whole_model_blocks'][r['model']]} blocks) about "
             f"{r['per_block'] * results['whole_model_blocks'][r['model']]:.0f} s"
             for r in rows if r["case"] == "snows, activations device"]
    return lines + ([f"Whole models at these settings, from the resident SNOWS rows: {', '.join(whole)}."] if whole else [])


def _duration(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} us" if seconds < 1e-3 else f"{seconds * 1e3:.2f} ms"


def sparse_inference_gpu(results: dict) -> list[str]:
    lines = [f"**2:4 sparse kernels on a GPU** ({results['header']}; dense weight with its zeros vs 2:4 sparse weight; "
             "layer rows: `F.linear` on that many token rows; model rows: the whole forward pass, blocks at 2:4, head "
             f"dense; eager mode): {command(results)}", ""]
    body = []
    for name in dict.fromkeys(r["model"] for r in results["layers"] + results["models"]):
        body += [[name, r["layer"], f"{r['shape']} x {r['tokens']}", r["dtype"], _duration(r["dense_us"] / 1e6),
                  _duration(r["sparse_us"] / 1e6), f"{r['speedup']:.2f}x", "", f"{r['rel_err']:.1e}", ""]
                 for r in results["layers"] if r["model"] == name]
        body += [[name, f"model ({r['converted']} converted)", r["input"], r["dtype"], _duration(r["dense_ms"] / 1e3),
                  _duration(r["sparse_ms"] / 1e3), f"{r['speedup']:.2f}x", f"{r['dense_gib']:.2f} / {r['sparse_gib']:.2f}",
                  f"{r['rel_err']:.1e}", f"{r['top1_agree']:.3f}"] for r in results["models"] if r["model"] == name]
    lines += table(["model", "part", "shape / input", "dtype", "dense", "2:4", "speed-up", "weights GiB dense / 2:4",
                    "rel err", "top-1 agreement"], body)
    return lines + ["", f"Failed: {'; '.join(results['failures'])}."] if results["failures"] else lines


# --- the section ---------------------------------------------------------------------------------------------------

SECTIONS: list[tuple[str, str, str, Callable[[dict], list[str]]]] = [
    # JSON file; title and how to measure it, for when the file is missing; renderer
    ("snows_solver.json", "**SNOWS on a trained ViT**", "`python benchmarks/snows_solver.py`",
     lambda r: snows_solver(r, first=True)),
    ("snows_solver_1of4.json", "**SNOWS on a trained ViT at 1:4**",
     "`python benchmarks/snows_solver.py --sparsity 1:4 --out benchmarks/results/snows_solver_1of4.json`",
     lambda r: snows_solver(r, first=False)),
    ("mask_selectors.json", "**Mask selectors, with and without the SNOWS re-fit**",
     "`python benchmarks/mask_selectors.py`", mask_selectors),
    ("importance_linear.json", "**Magnitude vs Hessian-scaled importance in least squares**",
     "`python benchmarks/importance_linear.py`", importance_linear),
    ("smollm2_bbc.json", "**SmolLM2-135M on BBC News through the command line**",
     "`python benchmarks/smollm2_bbc.py --method none --mask hessian`", smollm2_bbc),
    ("compact_size.json", "**Compact checkpoint sizes**", "`python benchmarks/compact_size.py`", compact_size),
    ("offload_memory.json", "**Where the activations wait**",
     "`python benchmarks/offload_memory.py --num-samples 128 256 --seq-len 512 --method magnitude`", offload_memory),
    ("resume_cost.json", "**What resuming costs**",
     "`python benchmarks/resume_cost.py --num-samples 64 --seq-len 512 --stop-at 15`", resume_cost),
    ("real_shapes_cpu.json", "**SNOWS at real shapes on CPU**", "`python benchmarks/real_shapes_cpu.py`",
     real_shapes_cpu),
    ("hvp_modes.json", "**Gauss-Newton products two ways**", "`python benchmarks/hvp_modes.py`", hvp_modes),
    ("gpu_check.json", "**SNOWS at real shapes on a GPU** (time per block and peak memory of magnitude, SparseGPT and "
     "SNOWS, with activations on the device, in pinned CPU memory, on disk, and with blocks streamed from CPU memory)",
     "on a machine with a GPU, `python benchmarks/gpu_check.py` (or `bash benchmarks/device_checks.sh`, which runs it "
     "with `--quick`)", gpu_check),
    ("sparse_inference_gpu.json", "**2:4 sparse kernels on a GPU** (dense vs 2:4 `F.linear` for every block weight "
     "shape of ViT-B/16, ViT-L/16 and Llama models at several token counts, and the whole forward pass before and "
     "after `sparse_inference_`, in float16 and bfloat16, with the weights' memory and the outputs' error against the "
     "dense-with-zeros model)", "on an NVIDIA GPU of compute capability 8.0 or newer, "
     "`python benchmarks/sparse_inference_gpu.py` (or `bash benchmarks/device_checks.sh`)", sparse_inference_gpu),
]


def render() -> list[list[str]]:
    """Every section of "More measurements", in README order: one list of lines each."""
    parts = []
    for name, title, how, renderer in SECTIONS:
        results = load(name)
        if results is not None and "settings" not in results:  # a file from before ``settings``: its command is ours
            results["settings"] = {"command": how.strip("`")}
        parts.append(not_measured(title, how) if results is None else renderer(results))
    return parts
