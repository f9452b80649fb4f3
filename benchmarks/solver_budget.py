"""How much Newton-CG the SNOWS re-fit needs: time against accuracy for solver budgets.

SmolLM2-135M-Instruct (ASSETS.md; cached by benchmarks/smollm2_bbc.py), its first
``--blocks`` blocks, 2:4 on BBC News calibration. Every row prunes the same truncated
model with the same data, one after another in one process:

- SparseGPT (mask + its own update) and SNOWS with no Newton step (the closed-form K=0
  least-squares start alone) bracket the budgets;
- SNOWS at K=3 on the magnitude or SparseGPT mask with Newton steps x CG iterations,
  plain CG or preconditioned by each input feature's energy (PCG), with sub-sampled
  curvature (``hessian_batches``: the gradient uses every training micro-batch, the
  Hessian-vector products only that many), or starting from SparseGPT's own update
  instead of the closed-form least-squares fit;
- the block re-fit (``refit_unit="block"``): one Newton-CG over all seven modules of a
  block on the block's window, at several budgets.

Accuracy is the relative error ``||h - h_dense||^2 / ||h_dense||^2`` of the truncated
model's last hidden state on ``--eval-samples`` held-out BBC sequences (never seen in
calibration), and the mean over re-fits (modules, or blocks) of the held-out window loss after the re-fit
divided by that with the mask selector's weight before any re-fit (SparseGPT's own update,
or the masked weight). Writes ``benchmarks/results/solver_budget.json``.

    python benchmarks/solver_budget.py [--blocks 2] [--num-samples 16] [--seq-len 512]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

SPARSEGPT_MASK = {"mask": "sparsegpt"}
PLAIN, JACOBI = {"preconditioner": "none"}, {"preconditioner": "input-energy"}
UPDATE = {"mask": "sparsegpt", "init": "mask"}  # SparseGPT's mask, its own update as the start
BLOCK = {"refit_unit": "block"}  # one re-fit per block instead of per module
VARIANTS = [
    ("SparseGPT (mask + update)", {"method": "mask-only", "mask": "sparsegpt"}),
    ("SNOWS, magnitude mask, least-squares start, 2 x 10 CG", {"mask": "magnitude", "init": "lsq", "newton_steps": 2,
                                                               "cg_iters": 10, **PLAIN}),
    ("SNOWS, SparseGPT mask, K=0 least-squares start only", {**SPARSEGPT_MASK, "init": "lsq", "newton_steps": 0}),
    ("SNOWS, SparseGPT mask + update start, 2 x 10 CG", {**UPDATE, "newton_steps": 2, "cg_iters": 10, **PLAIN}),
    ("SNOWS, SparseGPT mask + update start, 2 x 10 PCG", {**UPDATE, "newton_steps": 2, "cg_iters": 10, **JACOBI}),
    ("SNOWS, SparseGPT mask + update start, 2 x 5 PCG (the defaults before config_version 4)",
     {**UPDATE, "newton_steps": 2, "cg_iters": 5, **JACOBI}),
    ("SNOWS, SparseGPT mask + update start, 1 x 10 PCG", {**UPDATE, "newton_steps": 1, "cg_iters": 10, **JACOBI}),
    ("SNOWS, SparseGPT mask + update start, 1 x 5 PCG (the defaults)", {**UPDATE, "newton_steps": 1, "cg_iters": 5, **JACOBI}),
    ("SNOWS, SparseGPT mask + update start, 2 x 5 PCG, Hessian on 1 micro-batch",
     {**UPDATE, "newton_steps": 2, "cg_iters": 5, "hessian_batches": 1, **JACOBI}),
    ("SNOWS, SparseGPT mask, least-squares start, 2 x 5 PCG",
     {**SPARSEGPT_MASK, "init": "lsq", "newton_steps": 2, "cg_iters": 5, **JACOBI}),
    ("SNOWS, the defaults with the exact Hessian (not Gauss-Newton)",
     {**UPDATE, "newton_steps": 2, "cg_iters": 5, "hessian": "exact", **JACOBI}),
    ("SNOWS, SparseGPT mask + update start, 1 x 3 PCG", {**UPDATE, "newton_steps": 1, "cg_iters": 3, **JACOBI}),
    ("SNOWS, SparseGPT mask + update start, 1 x 2 PCG (snows-fast)", {**UPDATE, "newton_steps": 1, "cg_iters": 2, **JACOBI}),
    ("SNOWS, SparseGPT mask + update start, 1 x 1 PCG", {**UPDATE, "newton_steps": 1, "cg_iters": 1, **JACOBI}),
    ("SNOWS, SparseGPT mask + update start, 2 x 5 PCG, 2 micro-batches per step",
     {**UPDATE, "newton_steps": 2, "cg_iters": 5, "batches_per_step": 2, **JACOBI}),
    ("SNOWS, SparseGPT mask + update start, 3 x 5 PCG, 2 micro-batches per step",
     {**UPDATE, "newton_steps": 3, "cg_iters": 5, "batches_per_step": 2, **JACOBI}),
    # The block re-fit (issue 31): one Newton-CG over a block's seven modules together.
    # 1 x 35 takes as many Hessian-vector products as the per-module default (7 x 1 x 5).
    ("SNOWS per block, SparseGPT mask + update start, 1 x 5 PCG", {**UPDATE, **BLOCK, "newton_steps": 1, "cg_iters": 5, **JACOBI}),
    ("SNOWS per block, SparseGPT mask + update start, 1 x 10 PCG", {**UPDATE, **BLOCK, "newton_steps": 1, "cg_iters": 10, **JACOBI}),
    ("SNOWS per block, SparseGPT mask + update start, 2 x 5 PCG", {**UPDATE, **BLOCK, "newton_steps": 2, "cg_iters": 5, **JACOBI}),
    ("SNOWS per block, SparseGPT mask + update start, 1 x 35 PCG", {**UPDATE, **BLOCK, "newton_steps": 1, "cg_iters": 35, **JACOBI}),
    ("SNOWS per block, SparseGPT mask + update start, 1 x 5 CG", {**UPDATE, **BLOCK, "newton_steps": 1, "cg_iters": 5, **PLAIN}),
    ("SNOWS per block, magnitude mask, least-squares start, 1 x 10 PCG",
     {"mask": "magnitude", "init": "lsq", **BLOCK, "newton_steps": 1, "cg_iters": 10, **JACOBI}),
    # the two levers left toward 3x SparseGPT's time: fewer products, and products on fewer micro-batches
    ("SNOWS per block, SparseGPT mask + update start, 1 x 2 PCG", {**UPDATE, **BLOCK, "newton_steps": 1, "cg_iters": 2, **JACOBI}),
    ("SNOWS per block, SparseGPT mask + update start, 1 x 5 PCG, Hessian on 1 micro-batch",
     {**UPDATE, **BLOCK, "newton_steps": 1, "cg_iters": 5, "hessian_batches": 1, **JACOBI}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--eval-samples", type=int, default=8)
    parser.add_argument("--sparsity", default="2:4")
    parser.add_argument("--only", nargs="*", type=int, help="indices of the rows to run (default: all)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "solver_budget.json"))
    args = parser.parse_args()

    import snows_hf
    from smollm2_bbc import bbc_data, truncated_smollm2
    from snows_hf.methods.snows_report import counted_solves

    torch.set_num_threads(2)

    def truncated():
        return truncated_smollm2(args.blocks)

    def hidden(model, inputs):
        with torch.no_grad():
            return torch.cat([model.model(input_ids=inputs[i : i + 4]).last_hidden_state for i in range(0, len(inputs), 4)])

    model, tokenizer = truncated()
    data = bbc_data(model, tokenizer, args.num_samples, args.seq_len, args.eval_samples)
    held = data.evaluation.inputs["input_ids"][: args.eval_samples]
    dense = hidden(model, held)
    # every Newton step of a budget is taken (newton_tol 0, as before the option existed): "2 x 5" means 2 x 5
    common = {"sparsity": args.sparsity, "diagnostics": False, "batch_size": 4, "newton_tol": 0.0}

    rows = []
    for index, (name, overrides) in enumerate(VARIANTS):
        if args.only and index not in args.only:
            continue
        model, _ = truncated()
        start = time.perf_counter()
        report = snows_hf.prune_(model, {**common, "method": "snows", **overrides}, data.calibration)
        seconds = time.perf_counter() - start
        error = float((hidden(model, held) - dense).pow(2).sum() / dense.pow(2).sum())
        solves = counted_solves(report)  # a block re-fit once, not once per module
        ratios = [m["heldout_loss_after"] / m["heldout_loss_masked"] for m in solves if m.get("heldout_loss_masked")]
        rows.append({
            "variant": name, "config": overrides, "seconds": seconds, "output_error": error,
            "window_loss_vs_mask": sum(ratios) / len(ratios) if ratios else None,
            "hessian_vector_products": sum(sum(m.get("cg_iterations", [])) for m in solves),
        })
        print(f"[{index}] {name}: {seconds:.1f} s, output error {error:.5f}", flush=True)

    result = {"blocks": args.blocks, "num_samples": args.num_samples, "seq_len": args.seq_len,
              "sparsity": args.sparsity, "eval_samples": len(held), "rows": rows}
    out = Path(args.out)
    if args.only and out.is_file():  # a partial run replaces its own rows of a run with the same settings
        old = json.loads(out.read_text())
        if all(old.get(k) == result[k] for k in ("blocks", "num_samples", "seq_len", "sparsity", "eval_samples")):
            names = [name for name, _ in VARIANTS]
            done = {r["variant"] for r in rows}
            kept = [r for r in old["rows"] if r["variant"] not in done and r["variant"] in names]  # renamed: gone
            rows = sorted(kept + rows, key=lambda r: names.index(r["variant"]))
            result["rows"] = rows
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))

    base = next((r["seconds"] for r in rows if r["config"].get("method") in ("none", "mask-only")), None)
    print(f"\nSmolLM2-135M, first {args.blocks} blocks, {args.sparsity}, {args.num_samples} x {args.seq_len} tokens "
          f"(micro-batch 4), {len(held)} held-out sequences, 2 CPU threads")
    head = f"{'variant':<50} {'output error':>12} {'loss after/selector':>20} {'HVPs':>5} {'seconds':>8} {'x SparseGPT':>11}"
    print(head + "\n" + "-" * len(head))
    for r in rows:
        loss = "" if r["window_loss_vs_mask"] is None else f"{r['window_loss_vs_mask']:.4f}"
        times = "" if base is None else f"{r['seconds'] / base:.1f}"
        print(f"{r['variant']:<50} {r['output_error']:>12.5f} {loss:>20} {r['hessian_vector_products']:>5} "
              f"{r['seconds']:>8.1f} {times:>11}")


if __name__ == "__main__":
    main()
