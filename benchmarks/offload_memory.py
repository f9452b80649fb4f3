"""Peak memory and time with calibration activations on the device, in CPU memory, or on disk.

SmolLM2-135M-Instruct (ASSETS.md; cached as an fp32 folder by benchmarks/smollm2_bbc.py)
is pruned at 2:4 on BBC News calibration text, once per place and number of samples, each
in its own process so the peak RSS (and peak accelerator memory, when there is one) is
that run's alone. Several ``--num-samples`` show how memory grows with the calibration set.
Writes ``benchmarks/results/offload_memory.json``, a row at a time.

    python benchmarks/offload_memory.py [--num-samples 128 256] [--seq-len 512] [--places device disk]
        [--method none --mask wanda]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import record  # noqa: E402

THREADS = 2


def run(place: str, args: argparse.Namespace) -> dict:
    import torch

    import snows_hf
    from smollm2_bbc import bbc_jsonl, smollm2_folder
    from snows_hf.data import CalibrationConfig, load_dataset_split
    from snows_hf.data import prepare_data
    from snows_hf.loading import load_model

    torch.set_num_threads(THREADS)
    model, tokenizer = load_model(str(smollm2_folder()), dtype="float32")
    cfg = CalibrationConfig(dataset=str(bbc_jsonl()), num_samples=args.num_samples[0], seq_len=args.seq_len)
    calibration = prepare_data(load_dataset_split(cfg), cfg, model, tokenizer).calibration
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    config = {"sparsity": "2:4", "method": args.method, "mask": args.mask, "diagnostics": False,
              "offload_activations": place, "batch_size": 8}
    if args.method == "snows":
        config.update(k_step=1, newton_steps=1, cg_iters=3)
    start = time.perf_counter()
    snows_hf.prune_(model, config, calibration)
    return {
        "place": place, "seconds": time.perf_counter() - start,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "rss_after_load_gib": rss_loaded,
        "peak_gpu_gib": _peak_accelerator_gib(),
        "num_samples": args.num_samples[0],
        "activation_gib": args.num_samples[0] * args.seq_len * model.config.hidden_size * 4 / 2**30,
    }


def _peak_accelerator_gib() -> float | None:
    import torch

    accelerator = getattr(torch, "accelerator", None)
    if accelerator is None or not accelerator.is_available():
        return None
    return accelerator.max_memory_allocated() / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, nargs="+", default=[128])
    parser.add_argument("--places", nargs="+", default=["device", "cpu", "disk"], choices=["device", "cpu", "disk"])
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--method", default="mask-only")
    parser.add_argument("--mask", default="wanda")
    parser.add_argument("--place", help=argparse.SUPPRESS)
    record.out_option(parser, "offload_memory")
    args = parser.parse_args()
    if args.place:
        print(json.dumps(run(args.place, args)))
        return
    rows = []
    for samples in args.num_samples:
        for place in args.places:
            cmd = [sys.executable, __file__, "--place", place, "--num-samples", str(samples),
                   "--seq-len", str(args.seq_len), "--method", args.method, "--mask", args.mask]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"  done: {place}, {samples} samples", flush=True)
            record.write(args.out, {"settings": record.settings(args, threads=THREADS), "rows": rows})
    method = args.method if args.method == "magnitude" else f"{args.method} (mask {args.mask})"
    print(f"\nSmolLM2-135M, 2:4, {method}, sequences of {args.seq_len} tokens")
    head = (f"{'samples':>7} {'hidden GiB':>10} {'activations':<12} {'seconds':>8} {'RSS after load GiB':>19} "
            f"{'peak RSS GiB':>13} {'peak GPU GiB':>13}")
    print(head + "\n" + "-" * len(head))
    for r in rows:
        gpu = f"{r['peak_gpu_gib']:.2f}" if r["peak_gpu_gib"] is not None else "-"
        print(f"{r['num_samples']:>7} {r['activation_gib']:>10.2f} {r['place']:<12} {r['seconds']:>8.1f} "
              f"{r['rss_after_load_gib']:>19.2f} {r['peak_rss_gib']:>13.2f} {gpu:>13}")
    print("hidden GiB: one block's hidden states for all samples (fp32), what device/cpu keep in memory")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
