"""Peak memory and time with calibration activations on the device, in CPU memory, or on disk.

SmolLM2-135M-Instruct (ASSETS.md; cached as an fp32 folder by benchmarks/smollm2_bbc.py)
is pruned at 2:4 on BBC News calibration text, once per place, each in its own process so
the peak RSS (and peak GPU memory, when there is a GPU) is that run's alone.

    python benchmarks/offload_memory.py [--num-samples 128] [--seq-len 512] [--method none --mask wanda]
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


def run(place: str, args: argparse.Namespace) -> dict:
    import torch

    import snows_hf
    from smollm2_bbc import bbc_jsonl, smollm2_folder
    from snows_hf.calibration import CalibrationConfig, load_dataset_split
    from snows_hf.data import prepare_data
    from snows_hf.loading import load_model

    torch.set_num_threads(2)
    model, tokenizer = load_model(str(smollm2_folder()), dtype="float32")
    cfg = CalibrationConfig(dataset=str(bbc_jsonl()), num_samples=args.num_samples, seq_len=args.seq_len)
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
        "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        "activation_gib": args.num_samples * args.seq_len * model.config.hidden_size * 4 / 2**30,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--method", default="none")
    parser.add_argument("--mask", default="wanda")
    parser.add_argument("--place", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.place:
        print(json.dumps(run(args.place, args)))
        return
    rows = []
    for place in ("device", "cpu", "disk"):
        cmd = [sys.executable, __file__, "--place", place, "--num-samples", str(args.num_samples),
               "--seq-len", str(args.seq_len), "--method", args.method, "--mask", args.mask]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  done: {place}", flush=True)
    size = rows[0]["activation_gib"]
    method = args.method if args.method == "magnitude" else f"{args.method} (mask {args.mask})"
    print(f"\nSmolLM2-135M, 2:4, {method}, {args.num_samples} x {args.seq_len} tokens "
          f"(one block's hidden states: {size:.2f} GiB fp32)")
    head = f"{'activations':<12} {'seconds':>8} {'RSS after load GiB':>19} {'peak RSS GiB':>13} {'peak GPU GiB':>13}"
    print(head + "\n" + "-" * len(head))
    for r in rows:
        gpu = f"{r['peak_gpu_gib']:.2f}" if r["peak_gpu_gib"] is not None else "-"
        print(f"{r['place']:<12} {r['seconds']:>8.1f} {r['rss_after_load_gib']:>19.2f} {r['peak_rss_gib']:>13.2f} {gpu:>13}")


if __name__ == "__main__":
    main()
