"""The least-squares start solved exactly against by conjugate gradients, on real Grams.

SNOWS's least-squares candidates (``init="best"``) solve one masked system per weight row.
Batched small Cholesky factorisations are slow on a CPU, so above ``EXACT_FLOPS`` the rows
are solved together by conjugate gradients (``snows_hf.solver.lsq.masked_lstsq``). This
script captures every system SNOWS solves on the first ``--blocks`` blocks of
SmolLM2-135M-Instruct at 2:4 (BBC News calibration, as ``solver_budget.py``) and solves each
exactly and by CG at several iteration counts: the seconds, and the share of the exact
solve's gain in layer-wise fit (over the start) that CG reaches. Writes
``benchmarks/results/lsq_solve.json``.

    python benchmarks/lsq_solve.py [--blocks 1] [--iterations 8 16 32 64]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=1)
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--iterations", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "lsq_solve.json"))
    args = parser.parse_args()

    import snows_hf
    from smollm2_bbc import bbc_data, truncated_smollm2
    from snows_hf.methods import refit
    from snows_hf.solver.lsq import exact_flops, masked_lstsq

    torch.set_num_threads(2)
    model, tokenizer = truncated_smollm2(args.blocks)
    data = bbc_data(model, tokenizer, args.num_samples, args.seq_len, 8)
    systems = []

    def capture(gram, cross, weight, mask, **options):
        start = options.get("start")
        systems.append((gram.clone(), cross.clone(), weight.clone(), mask.clone(), None if start is None else start.clone()))
        return masked_lstsq(gram, cross, weight, mask, **options)

    solve, refit.masked_lstsq = refit.masked_lstsq, capture
    try:  # no Newton steps: only the starts are wanted
        snows_hf.prune_(model, {"sparsity": "2:4", "method": "snows", "newton_steps": 0, "diagnostics": False,
                                "batch_size": 4}, data.calibration)
    finally:
        refit.masked_lstsq = solve

    rows = []
    for gram, cross, weight, mask, start in systems:
        begin = (weight if start is None else start) * mask

        def fit(w: torch.Tensor) -> float:  # ||X w^T - X_t W0^T||^2 up to a constant
            return float(((w @ gram) * w).sum() - 2 * ((w @ cross) * weight).sum())

        clock = time.perf_counter()
        exact = masked_lstsq(gram, cross, weight, mask, max_exact_flops=float("inf"))
        row = {"shape": list(weight.shape), "start": "selector's update" if start is not None else "masked weight",
               "exact_flops": exact_flops(mask), "exact_seconds": time.perf_counter() - clock, "cg": {}}
        gain = fit(begin) - fit(exact)
        for iterations in args.iterations:
            clock = time.perf_counter()
            found = masked_lstsq(gram, cross, weight, mask, max_exact_flops=0, cg_iterations=iterations, start=start)
            row["cg"][str(iterations)] = {"seconds": time.perf_counter() - clock,
                                          "share_of_gain": (fit(begin) - fit(found)) / gain if gain > 0 else 1.0}
        rows.append(row)
    Path(args.out).write_text(json.dumps({"blocks": args.blocks, "num_samples": args.num_samples,
                                          "seq_len": args.seq_len, "rows": rows}, indent=2))
    head = f"{'rows x inputs':<14}{'start':<19}{'exact s':>9}" + "".join(f"{f'CG {i}: s, share':>20}" for i in args.iterations)
    print(head + "\n" + "-" * len(head))
    for row in rows:
        print(f"{'x'.join(map(str, row['shape'])):<14}{row['start']:<19}{row['exact_seconds']:>9.2f}" + "".join(
            f"{row['cg'][str(i)]['seconds']:>11.2f} {row['cg'][str(i)]['share_of_gain']:>8.4f}" for i in args.iterations))
    total = lambda key: sum(r["cg"][key]["seconds"] for r in rows)  # noqa: E731
    print(f"{'total':<33}{sum(r['exact_seconds'] for r in rows):>9.2f}"
          + "".join(f"{total(str(i)):>11.2f} {min(r['cg'][str(i)]['share_of_gain'] for r in rows):>8.4f}"
                    for i in args.iterations) + "   (share: the smallest)")


if __name__ == "__main__":
    main()
