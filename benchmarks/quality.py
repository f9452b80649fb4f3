"""Accuracy kept, time and memory: magnitude, Wanda, SparseGPT and SNOWS on real models.

One model per run; every (sparsity, method) row prunes the dense model afresh with the
same calibration data and is scored on held-out data calibration never saw:

- ``vit`` / ``resnet``: a ViT / ResNet trained on Fashion-MNIST by ``benchmarks/fmnist.py``
  (cached), top-1 on the 10,000 test images; calibration: training images.
- ``minilm``: all-MiniLM-L6-v2 (ASSETS.md), BBC News: mean cosine of pruned to dense
  sentence embeddings and a 5-topic linear probe's accuracy on held-out articles.
- ``smollm2``: SmolLM2-135M-Instruct (fp32 from its GGUF, cached by
  ``benchmarks/smollm2_bbc.py``), perplexity on held-out BBC News sequences.

Methods: ``magnitude``, ``wanda``, ``sparsegpt`` (its mask and its own weight update),
and SNOWS (``snows-k0``, ``snows-k1``, ``snows-k3``: the re-fit over a window of K
operations, on the mask ``--snows-mask``, default the library's own default; ``snows-k3-2x5``:
K=3 with the Newton-CG budget of ``config_version`` 3, 2 steps x 5 CG; ``snows-fast``: the
cheaper preset; ``snows-block``, ``snows-block-1x35``: one re-fit per block, ``refit_unit="block"``,
at 1 x 5 and at 1 x 35 CG, the products the per-module default takes on a Llama block;
``snows-block-h1``: per block at 1 x 5 with the Hessian products on one micro-batch, the
gradient on all; ``snows-group``, ``snows-group-v4``: the modules reading one input (q/k/v,
gate/up) re-fitted together, ``refit_unit="group"``, at the defaults and at version 4's). The time/perplexity frontier of the SNOWS budgets on SmolLM2:

    python benchmarks/quality.py --model smollm2 --sparsity 2:4 50% --methods sparsegpt snows-fast snows-k3 \
        --out benchmarks/results/quality_smollm2_frontier.json
Wall time is the ``prune_`` call; peak memory is the process's resident memory above
what it held just before the call (sampled every 20 ms), on this CPU machine.

Each row also keeps its per-sample record (``per_sample``; the dense model's is
``dense_per_sample``) so that ``benchmarks/readme_results.py`` can put a paired interval on
every difference over the same test items: for the classifiers, which test images it gets
right (a base64 string of the bits packed by ``numpy.packbits``, ``n`` of them); for
``minilm``, each held-out article's cosine to the dense embedding (to 1e-4); for
``smollm2``, each held-out sequence's summed next-token NLL and its number of tokens.

Rows are merged into ``benchmarks/results/quality_<model>.json`` as they finish, so runs
of different rows add up; ``--table`` prints the file without running anything.

    python benchmarks/quality.py --model vit
    python benchmarks/quality.py --model smollm2 --sparsity 2:4 50% --methods magnitude wanda sparsegpt snows-k3
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import record  # noqa: E402
RESULTS = Path(__file__).parent / "results"

V4 = {"init": "auto", "alternative_mask": "none", "newton_tol": 0.0}  # one start, fixed steps: before config_version 5
METHODS = {
    "magnitude": {"method": "mask-only", "mask": "magnitude"},
    "wanda": {"method": "mask-only", "mask": "wanda"},
    "sparsegpt": {"method": "mask-only", "mask": "sparsegpt"},
    "sparsegpt-module": {"method": "mask-only", "mask": "sparsegpt", "statistics": "module"},  # the order before version 3
    "snows-k0": {"method": "snows", "k_step": 0},
    "snows-k1": {"method": "snows", "k_step": 1},
    "snows-k3": {"method": "snows", "k_step": 3},  # the defaults
    "snows-v4": {"method": "snows", "k_step": 3, **V4, "newton_steps": 1},  # the defaults of config_version 4
    "snows-k3-2x5": {"method": "snows", "k_step": 3, **V4, "newton_steps": 2, "cg_iters": 5},  # of config_version 3
    "snows-fast": {"method": "snows-fast"},  # the cheaper preset (K=3, 1 Newton step x at most 2 CG)
    "snows-block": {"method": "snows", "k_step": 3, **V4, "refit_unit": "block", "newton_steps": 1},  # per block, 1 x 5
    "snows-block-1x35": {"method": "snows", "k_step": 3, **V4, "refit_unit": "block", "newton_steps": 1,
                         "cg_iters": 35},  # a Llama block's 7 x 5
    "snows-block-h1": {"method": "snows", "k_step": 3, **V4, "refit_unit": "block", "newton_steps": 1,
                       "hessian_batches": 1},  # per block, 1 x 5, the products on one micro-batch
    # the modules reading one input (q/k/v, gate/up) re-fitted together: at the defaults, and at version 4's
    "snows-group": {"method": "snows", "k_step": 3, "refit_unit": "group"},
    "snows-group-v4": {"method": "snows", "k_step": 3, **V4, "refit_unit": "group", "newton_steps": 1},
    "snows-lsq": {"method": "snows", "k_step": 3, **V4, "newton_steps": 1, "init": "lsq"},  # least squares where better
    "snows-magnitude": {"method": "snows", "k_step": 3, **V4, "newton_steps": 1, "mask": "magnitude"},  # its own mask
    "lsq-magnitude": {"method": "snows", "k_step": 0, "newton_steps": 0, "init": "lsq", "mask": "magnitude"},  # the start alone
    "lsq-sparsegpt": {"method": "snows", "k_step": 0, "newton_steps": 0, "init": "lsq", "mask": "sparsegpt"},
    # the start chosen per module by held-out window loss (the default's start) with 1 step, and with up to 4
    "snows-choose": {"method": "snows", "k_step": 3, "newton_steps": 1},
    "snows-choose-tol": {"method": "snows", "k_step": 3, "newton_steps": 4, "newton_tol": 0.01},
}


class Model:
    """How one benchmark model is loaded, calibrated and scored."""

    name = ""
    metric = ""  # the headline metric
    higher_is_better = True
    patterns: tuple[str, ...] = ()
    batch_size = 8

    def load(self):
        raise NotImplementedError

    def data(self, num_samples: int):
        """``(calibration inputs, held-out data)``."""
        raise NotImplementedError

    def evaluate(self, model, held, dense) -> tuple[dict[str, float], dict]:
        """``(scores, per-sample record)`` of ``model`` on the held-out data."""
        raise NotImplementedError

    def dense_outputs(self, model, held):
        return None


class FashionMNIST(Model):
    metric = "top-1"
    patterns = ("2:4", "4:8", "1:4", "50%", "70%")
    batch_size = 32

    def __init__(self, name: str):
        self.name = name

    def load(self):
        import fmnist

        return fmnist.trained_vit() if self.name == "vit" else fmnist.trained_resnet()

    def data(self, num_samples: int):
        import fmnist

        calib, x_test, y_test = fmnist.benchmark_data(num_samples)
        return {"pixel_values": calib}, (x_test, y_test)

    @torch.no_grad()
    def evaluate(self, model, held, dense, batch: int = 500):
        x, y = held
        correct = torch.cat([model(pixel_values=x[i : i + batch]).logits.argmax(-1) == y[i : i + batch]
                             for i in range(0, len(x), batch)])
        return {"top-1": correct.sum().item() / len(x)}, encode_correct(correct)


class TextModel(Model):
    seq_len = 256
    eval_samples = 128

    def data(self, num_samples: int):
        from smollm2_bbc import bbc_data

        model, tokenizer = self.load(with_tokenizer=True)
        prepared = bbc_data(model, tokenizer, num_samples, self.seq_len, self.eval_samples, self.label_column)
        return prepared.calibration, prepared.evaluation

    def dense_outputs(self, model, held):
        from snows_hf.evaluation import model_outputs

        return model_outputs(model, held)

    def evaluate(self, model, held, dense):
        from snows_hf.evaluation import compute_metrics, cosine_to_reference, model_outputs

        outputs = model_outputs(model, held)
        per_sample = {}
        if "nll" in outputs:
            per_sample = {"nll": [round(float(v), 4) for v in outputs["nll"]],
                          "tokens": [int(t) for t in outputs["tokens"]]}
        elif "embeddings" in outputs and dense is not None:
            cosine = cosine_to_reference(outputs["embeddings"], dense["embeddings"])
            per_sample = {"cosine": [round(float(v), 4) for v in cosine]}
        return compute_metrics(held, outputs, dense), per_sample


class MiniLM(TextModel):
    name = "minilm"
    metric = "cosine_to_dense"
    patterns = ("2:4", "4:8", "50%", "70%")
    seq_len = 128
    eval_samples = 400
    label_column = "category"

    def load(self, with_tokenizer: bool = False):
        from snows_hf.demo import minilm_path
        from snows_hf.loading import load_model

        model, tokenizer = load_model(str(minilm_path()), dtype="float32")
        return (model, tokenizer) if with_tokenizer else model


class SmolLM2(TextModel):
    name = "smollm2"
    metric = "perplexity"
    higher_is_better = False
    patterns = ("2:4", "4:8", "50%", "70%")
    eval_samples = 32
    label_column = None
    batch_size = 4

    def load(self, with_tokenizer: bool = False):
        from smollm2_bbc import smollm2_folder
        from snows_hf.loading import load_model

        model, tokenizer = load_model(str(smollm2_folder()), dtype="float32")
        return (model, tokenizer) if with_tokenizer else model


MODELS = {"vit": FashionMNIST("vit"), "resnet": FashionMNIST("resnet"), "minilm": MiniLM(), "smollm2": SmolLM2()}
DEFAULT_SAMPLES = {"vit": 512, "resnet": 512, "minilm": 128, "smollm2": 32}


def encode_correct(correct: torch.Tensor) -> dict:
    """A bool vector (one entry per test item) as ``{"n": ..., "correct": base64 of packed bits}``.

    Example:
        >>> encode_correct(torch.tensor([True, False, True]))
        {'n': 3, 'correct': 'oA=='}
    """
    packed = np.packbits(correct.cpu().numpy().astype(bool))
    return {"n": int(correct.numel()), "correct": base64.b64encode(packed.tobytes()).decode("ascii")}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak resident memory above the level at entry, sampled in a thread."""

    def __enter__(self):
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def gib(self) -> float:
        return (self.peak - self.base) / 2**30


def run_row(bench: Model, spec: str, method: str, calibration, held, dense, snows_mask: str | None) -> dict:
    import snows_hf
    from snows_hf.methods.snows_report import counted_solves

    options = {"sparsity": spec, "batch_size": bench.batch_size, "diagnostics": False, **METHODS[method]}
    if options["method"].startswith("snows") and snows_mask:
        options["mask"] = snows_mask
    model = bench.load()
    with PeakMemory() as memory:
        start, cpu_start = time.perf_counter(), time.process_time()
        report = snows_hf.prune_(model, options, calibration)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    load = os.getloadavg()[0]  # above the core count: the seconds were shared with other work
    scores, per_sample = bench.evaluate(model, held, dense)
    return {
        "sparsity": spec, "method": method, "mask": report.config.get("mask"),
        "scores": scores, "seconds": seconds, "cpu_seconds": cpu_seconds, "load_average_1_min": round(load, 2),
        "peak_memory_gib": memory.gib, "measured_sparsity": report.sparsity, "options": options,
        "config": report.config,  # every setting as run, defaults included (they change between versions)
        "block_forwards": report.block_forwards, "per_sample": per_sample,
        "refits": [{k: m.get(k) for k in ("init", "newton_steps", "cg_iterations", "stop_reason", "heldout_loss_masked",
                                          "heldout_loss_before", "heldout_loss_after", "heldout_losses")}
                   for m in counted_solves(report)],  # what each re-fit chose and spent
    }


def load_results(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {"rows": []}


def merge(results: dict, row: dict) -> None:
    results["rows"] = [r for r in results["rows"] if (r["sparsity"], r["method"]) != (row["sparsity"], row["method"])]
    results["rows"].append(row)


def print_table(results: dict) -> None:
    metric, dense = results["metric"], results["dense"]
    higher = results["higher_is_better"]
    print(f"\n{results['title']}")
    print(f"dense {metric}: {dense[metric]:.4f}" + "".join(f", {k}: {v:.4f}" for k, v in dense.items() if k != metric))
    extra = [k for k in dense if k != metric]
    head = f"{'sparsity':<8} {'method':<10} {metric:>15} {'drop':>8} " + "".join(f"{k:>22}" for k in extra)
    head += f" {'seconds':>8} {'peak GiB':>8}"
    print(head + "\n" + "-" * len(head))
    for row in results["rows"]:
        value = row["scores"][metric]
        drop = (dense[metric] - value) if higher else (value - dense[metric])
        cells = "".join(f"{row['scores'].get(k, float('nan')):>22.4f}" for k in extra)
        print(f"{row['sparsity']:<8} {row['method']:<10} {value:>15.4f} {drop:>8.4f} {cells} "
              f"{row['seconds']:>8.1f} {row['peak_memory_gib']:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), required=True)
    parser.add_argument("--sparsity", nargs="+", help="patterns (default: the model's set)")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--num-samples", type=int, help="calibration samples (default: per model)")
    parser.add_argument("--snows-mask", help="mask under SNOWS (default: the library's default)")
    parser.add_argument("--table", action="store_true", help="print the saved results and stop")
    parser.add_argument("--out", help="JSON file (default: benchmarks/results/quality_<model>.json)")
    args = parser.parse_args()

    bench = MODELS[args.model]
    out = Path(args.out or RESULTS / f"quality_{args.model}.json")
    results = load_results(out)
    if args.table:
        print_table(results)
        return
    torch.set_num_threads(2)
    num_samples = args.num_samples or DEFAULT_SAMPLES[args.model]
    calibration, held = bench.data(num_samples)
    dense_model = bench.load()
    dense = bench.dense_outputs(dense_model, held)
    dense_scores, dense_per_sample = bench.evaluate(dense_model, held, dense)
    del dense_model
    shape = {k: list(v.shape) for k, v in calibration.items() if hasattr(v, "shape")}
    if results["rows"] and results.get("dense_per_sample") != dense_per_sample:
        # Another dense model (a retrained classifier differs from machine to machine) or other
        # held-out items: the earlier rows cannot be paired with new ones, so they go.
        print(f"the dense model or its held-out data changed: {len(results['rows'])} earlier rows of {out} dropped")
        results["rows"] = []
    results.update({
        "model": args.model, "metric": bench.metric, "higher_is_better": bench.higher_is_better,
        "dense": dense_scores, "dense_per_sample": dense_per_sample,
        "calibration": shape, "title": f"{args.model}: calibration {shape}, 2 CPU threads",
    })
    for spec in args.sparsity or bench.patterns:
        for method in args.methods:
            row = run_row(bench, spec, method, calibration, held, dense, args.snows_mask)
            merge(results, row)
            results["settings"] = record.settings(args)  # the load average says whether the seconds were shared
            record.write(out, results)
            print(f"  {spec} {method}: {row['scores']} ({row['seconds']:.1f} s, {row['peak_memory_gib']:.2f} GiB)",
                  flush=True)
    print_table(results)


if __name__ == "__main__":
    main()
