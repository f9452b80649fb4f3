"""Where SNOWS spends its time, one HVP against one forward+backward, and SNOWS against SparseGPT.

SmolLM2-135M-Instruct (ASSETS.md; cached by benchmarks/smollm2_bbc.py), its first
``--blocks`` blocks, 2:4, BBC News calibration; both methods in one process on the same
model and data:

- one block forward over every calibration micro-batch, the unit the mask-only goal
  counts in (at most 2.5 of them per block for SparseGPT);
- SparseGPT (mask + its own weight update, ``--method mask-only --mask sparsegpt``);
- SNOWS at the defaults (SparseGPT mask and its update as the start, K=3, 2 Newton steps
  of at most 5 preconditioned CG iterations), timed as it is;
- SNOWS again, instrumented: dense targets, Gram matrices (K=0 start), Hessian-operator
  builds (the forward and the gradient backward whose graphs the products reuse),
  Hessian-vector products, CG, line searches. For every Hessian operator one extra
  forward+backward of the same window on the same micro-batches is timed (not counted in
  the breakdown), so one HVP is given as a multiple of it. Writes ``benchmarks/results/solver_speed.json``.

    python benchmarks/solver_speed.py [--blocks 2] [--num-samples 16] [--seq-len 512]

``--mask-only`` times the block forward and SparseGPT alone (no SNOWS), for the
mask-only goal at realistic token counts (the reference's 128 x 512), into
``benchmarks/results/solver_speed_mask_only.json``:

    python benchmarks/solver_speed.py --mask-only --num-samples 128 --blocks 4
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

TIMES: dict[str, float] = defaultdict(float)
COUNTS: dict[str, int] = defaultdict(int)


def _timed(name, fn):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES[name] += time.perf_counter() - start
            COUNTS[name] += 1

    return wrapper


def _instrument() -> None:
    """Wrap the SNOWS pieces with timers (the benchmark's own process only)."""
    from snows_hf.methods import snows as refit
    from snows_hf.solver import hvp, newton

    class TimedOperator(hvp.HessianOperator):
        def __init__(self, residual_fn, w, batches, *args, **kwargs):
            start = time.perf_counter()  # the reference: one forward + backward of the window, not kept
            probe = w.detach().requires_grad_(True)
            with torch.enable_grad():
                loss = sum(hvp.batch_loss(residual_fn(probe, b)) for b in batches)
                torch.autograd.grad(loss, probe)
            TIMES["reference forward+backward"] += time.perf_counter() - start
            COUNTS["reference forward+backward"] += 1
            start = time.perf_counter()
            super().__init__(residual_fn, w, batches, *args, **kwargs)
            TIMES["operator build (forward + gradient)"] += time.perf_counter() - start
            COUNTS["operator build (forward + gradient)"] += 1

        def __call__(self, v):
            start = time.perf_counter()
            out = super().__call__(v)
            TIMES["Hessian-vector products"] += time.perf_counter() - start
            COUNTS["Hessian-vector products"] += 1
            return out

    newton.HessianOperator = TimedOperator
    newton._line_search = _timed("line searches (held-out forwards)", newton._line_search)
    newton.masked_cg = _timed("CG total (incl. its products)", newton.masked_cg)
    refit.SnowsMethod._targets = _timed("dense targets (once per module)", refit.SnowsMethod._targets)
    refit.SnowsMethod._grams = _timed("Gram matrices (K=0 start)", refit.SnowsMethod._grams)
    refit.masked_lstsq = _timed("least-squares solves (K=0 start)", refit.masked_lstsq)
    refit.newton_refit = _timed("Newton re-fit total", refit.newton_refit)


def block_forward_seconds(model, calibration, batch_size: int, repeats: int = 3) -> float:
    """Seconds of one block forward over every calibration micro-batch (the first block,
    its captured inputs, the median of ``repeats``): the unit the mask-only goal counts in."""
    from snows_hf.adapters import find_block_list
    from snows_hf.oneshot import as_batches
    from snows_hf.blocks import run_block
    from snows_hf.pipeline import capture_block_inputs

    block = find_block_list(model).modules[0]
    calls = capture_block_inputs(model, block, as_batches(calibration, batch_size), torch.device("cpu"))
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            for call in calls:
                run_block(block, call)
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--mask-only", action="store_true", help="time the block forward and SparseGPT only")
    parser.add_argument("--out", default=None, help="default: results/solver_speed[_mask_only].json")
    args = parser.parse_args()
    results = Path(__file__).parent / "results"
    out = Path(args.out or results / ("solver_speed_mask_only.json" if args.mask_only else "solver_speed.json"))

    import snows_hf
    from smollm2_bbc import bbc_data, truncated_smollm2

    torch.set_num_threads(2)

    def truncated():
        return truncated_smollm2(args.blocks)

    model, tokenizer = truncated()
    calibration = bbc_data(model, tokenizer, args.num_samples, args.seq_len).calibration
    common = {"sparsity": "2:4", "diagnostics": False, "batch_size": 4}

    forward = block_forward_seconds(model, calibration, common["batch_size"])
    start = time.perf_counter()
    sparsegpt = snows_hf.prune_(model, {**common, "method": "mask-only", "mask": "sparsegpt"}, calibration)
    sparsegpt_total = time.perf_counter() - start
    if args.mask_only:
        return mask_only_table(args, out, forward, sparsegpt, sparsegpt_total)

    model, _ = truncated()
    start = time.perf_counter()
    snows = snows_hf.prune_(model, {**common, "method": "snows"}, calibration)
    snows_total = time.perf_counter() - start

    _instrument()
    model, _ = truncated()
    start = time.perf_counter()
    snows_hf.prune_(model, {**common, "method": "snows"}, calibration)
    timed_total = time.perf_counter() - start - TIMES["reference forward+backward"]
    TIMES["Newton re-fit total"] -= TIMES["reference forward+backward"]  # the reference passes ran inside it

    per_layer = [
        {"layer": a.name, "sparsegpt_s": a.seconds, "snows_s": b.seconds, "ratio": b.seconds / a.seconds,
         "k": b.metrics["k"], "cg": sum(b.metrics["cg_iterations"]), "steps": b.metrics["newton_steps"]}
        for a, b in zip(sparsegpt.layers, snows.layers)
    ]
    hvp_each = TIMES["Hessian-vector products"] / max(1, COUNTS["Hessian-vector products"])
    fb_each = TIMES["reference forward+backward"] / max(1, COUNTS["reference forward+backward"])
    refit_total = TIMES["Newton re-fit total"]
    result = {
        "blocks": args.blocks, "num_samples": args.num_samples, "seq_len": args.seq_len,
        "sparsegpt_seconds": sparsegpt_total, "snows_seconds": snows_total, "instrumented_seconds": timed_total,
        "per_layer": per_layer, "times": dict(TIMES), "counts": dict(COUNTS),
        "hvp_over_forward_backward": hvp_each / fb_each,
        "block_forward_seconds": forward,  # one block over every calibration micro-batch
        "sparsegpt_block_forwards": sparsegpt.block_forwards,  # counted by the pipeline, per block
        "sparsegpt_seconds_per_block_over_forward": sparsegpt_total / args.blocks / forward,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))

    print(f"\nSmolLM2-135M, first {args.blocks} blocks, 2:4, {args.num_samples} x {args.seq_len} tokens "
          f"(micro-batch 4), 2 CPU threads")
    head = f"{'layer':<32} {'SparseGPT s':>11} {'SNOWS s':>8} {'ratio':>6} {'K':>2} {'steps':>5} {'CG':>4}"
    print(head + "\n" + "-" * len(head))
    for row in per_layer:
        print(f"{row['layer'].removeprefix('model.layers.'):<32} {row['sparsegpt_s']:>11.2f} {row['snows_s']:>8.2f} "
              f"{row['ratio']:>6.1f} {row['k']:>2} {row['steps']:>5} {row['cg']:>4}")
    print(f"{'total (run)':<32} {sparsegpt_total:>11.1f} {result['snows_seconds']:>8.1f} "
          f"{result['snows_seconds'] / sparsegpt_total:>6.1f}")
    print(f"\nSparseGPT: {sparsegpt_total / args.blocks:.2f} s per block = "
          f"{result['sparsegpt_seconds_per_block_over_forward']:.2f} block forwards of {forward:.2f} s "
          f"(the pipeline ran {', '.join(f'{f:g}' for f in sparsegpt.block_forwards)} per block)")
    print(f"\nwhere SNOWS's time goes (instrumented run, {timed_total:.1f} s without the reference passes):")
    for name in ("dense targets (once per module)", "Gram matrices (K=0 start)", "least-squares solves (K=0 start)",
                 "operator build (forward + gradient)",
                 "Hessian-vector products", "CG total (incl. its products)", "line searches (held-out forwards)",
                 "Newton re-fit total"):
        print(f"  {name:<40} {TIMES[name]:>7.1f} s  {100 * TIMES[name] / timed_total:>5.1f}%  "
              f"({COUNTS[name]} calls)")
    rest = timed_total - refit_total - sum(TIMES[k] for k in (
        "dense targets (once per module)", "Gram matrices (K=0 start)", "least-squares solves (K=0 start)"))
    print(f"  {'the rest (trace, masks, start choice, propagation)':<40} {rest:>7.1f} s  {100 * rest / timed_total:>5.1f}%")
    print(f"\none HVP: {1000 * hvp_each:.0f} ms = {result['hvp_over_forward_backward']:.2f} x one forward+backward of "
          f"its window on the same micro-batches ({1000 * fb_each:.0f} ms)")


def mask_only_table(args, out: Path, forward: float, report, seconds: float) -> None:
    """SparseGPT's seconds per block against one block forward, with where they go."""
    solves = [layer.seconds for layer in report.layers]
    result = {
        "blocks": args.blocks, "num_samples": args.num_samples, "seq_len": args.seq_len,
        "block_forward_seconds": forward, "sparsegpt_seconds": seconds,
        "sparsegpt_block_forwards": report.block_forwards,
        "sparsegpt_solve_seconds": sum(solves),
        "sparsegpt_seconds_per_block_over_forward": seconds / args.blocks / forward,
        "solves_per_block_over_forward": sum(solves) / args.blocks / forward,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nSmolLM2-135M, first {args.blocks} blocks, 2:4, {args.num_samples} x {args.seq_len} tokens "
          f"(micro-batch 4), 2 CPU threads")
    print(f"one block forward over the calibration: {forward:.2f} s")
    print(f"SparseGPT: {seconds / args.blocks:.2f} s per block = {result['sparsegpt_seconds_per_block_over_forward']:.2f} "
          f"block forwards (the pipeline ran {', '.join(f'{f:g}' for f in report.block_forwards)} per block; "
          f"the solves {result['solves_per_block_over_forward']:.2f})")


if __name__ == "__main__":
    main()
