"""Where a SNOWS re-fit's time goes, against SparseGPT's whole time, on SmolLM2 blocks.

The first ``--blocks`` blocks of SmolLM2-135M-Instruct (ASSETS.md; cached by
``benchmarks/smollm2_bbc.py``), at ``--sparsity`` (2:4) on BBC News calibration (as ``solver_budget.py``).
SparseGPT (mask + update) runs first; then each SNOWS setting runs under ``cProfile``,
which splits its time into phases by the functions that do them:

- mask selection: SparseGPT's solve (``sparsegpt_prune``), which SNOWS's default mask runs too;
- dense targets: the window outputs of the dense network (``dense_targets``);
- least-squares starts: the Gram matrices of the module inputs and the fits on them
  (``input_grams``, ``lsq_start``);
- gradient: the operator's loss and gradient over the training micro-batches, keeping
  their graphs for the products (``_loss_and_grad``; files written before this name
  show 0 here and count it in the rest);
- Hessian products: conjugate gradients (``masked_cg``);
- line search: the held-out window losses of the Armijo search (``_line_search``);
- the rest: statistics forwards, the held-out losses that choose the start, windows, bookkeeping.

Every phase is given as a multiple of SparseGPT's seconds in the same process, so the
table says what each would have to cost for SNOWS to stay within a given multiple. CPU
seconds (``time.process_time``) are recorded beside wall seconds: on a shared machine they
move less. Writes ``benchmarks/results/refit_cost.json``.

    python benchmarks/refit_cost.py [--blocks 1] [--sparsity 2:4] [--configs default block] [--out F]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

CONFIGS = {
    "default": {},
    "version-4": {"init": "auto", "alternative_mask": "none", "newton_steps": 1, "newton_tol": 0.0},
    "block": {"refit_unit": "block"},
    "hessian-1": {"hessian_batches": 1},
    "block-hessian-1": {"refit_unit": "block", "hessian_batches": 1},
    "no-cg": {"newton_steps": 0},
}
PHASES = {  # phase -> the function names whose cumulative time it is
    "mask selection": ("sparsegpt_prune",),
    "dense targets": ("dense_targets",),
    "least-squares starts": ("input_grams", "lsq_start"),
    "gradient": ("_loss_and_grad",),
    "Hessian products": ("masked_cg",),
    "line search": ("_line_search",),
}


def _phase_seconds(stats: pstats.Stats) -> dict[str, float]:
    found = {phase: 0.0 for phase in PHASES}
    for (filename, _, name), (_, _, _, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        for phase, names in PHASES.items():
            for wanted in names:
                function, _, file = wanted.partition("@")
                if name == function and (not file or filename.endswith(file)):
                    found[phase] += cumulative
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=1)
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--sparsity", default="2:4")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=["default", "block"])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "refit_cost.json"))
    args = parser.parse_args()

    import snows_hf
    from smollm2_bbc import bbc_data, truncated_smollm2

    torch.set_num_threads(2)
    model, tokenizer = truncated_smollm2(args.blocks)
    data = bbc_data(model, tokenizer, args.num_samples, args.seq_len, 8)
    common = {"sparsity": args.sparsity, "diagnostics": False, "batch_size": 4}

    def timed(options: dict, profile: cProfile.Profile | None = None) -> tuple[float, float]:
        model, _ = truncated_smollm2(args.blocks)
        wall, cpu = time.perf_counter(), time.process_time()
        if profile is not None:
            profile.enable()
        snows_hf.prune_(model, {**common, **options}, data.calibration)
        if profile is not None:
            profile.disable()
        return time.perf_counter() - wall, time.process_time() - cpu

    base_wall, base_cpu = timed({"method": "mask-only", "mask": "sparsegpt"})
    rows = []
    for name in args.configs:
        profile = cProfile.Profile()
        wall, cpu = timed({"method": "snows", **CONFIGS[name]}, profile)
        phases = _phase_seconds(pstats.Stats(profile))
        phases["the rest"] = max(0.0, wall - sum(phases.values()))
        rows.append({"config": name, "options": CONFIGS[name], "seconds": wall, "cpu_seconds": cpu, "phases": phases})
        print(f"{name}: {wall:.1f} s ({wall / base_wall:.1f}x SparseGPT)", flush=True)
    result = {"sparsity": args.sparsity, "blocks": args.blocks, "num_samples": args.num_samples, "seq_len": args.seq_len,
              "sparsegpt_seconds": base_wall, "sparsegpt_cpu_seconds": base_cpu, "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=2))

    print(f"\nSmolLM2-135M, first {args.blocks} blocks, {args.sparsity}, {args.num_samples} x {args.seq_len} tokens; "
          f"SparseGPT {base_wall:.1f} s ({base_cpu:.1f} CPU s)")
    head = f"{'phase':<22}" + "".join(f"{r['config']:>20}" for r in rows)
    print(head + "\n" + "-" * len(head))
    for phase in [*PHASES, "the rest"]:
        print(f"{phase:<22}" + "".join(f"{r['phases'][phase] / base_wall:>19.2f}x" for r in rows))
    print(f"{'total':<22}" + "".join(f"{r['seconds'] / base_wall:>19.2f}x" for r in rows))
    print(f"{'total (CPU seconds)':<22}" + "".join(f"{r['cpu_seconds'] / base_cpu:>19.2f}x" for r in rows))


if __name__ == "__main__":
    main()
