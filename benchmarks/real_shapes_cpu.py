"""SNOWS per block at real shapes on CPU: ViT-Large and ResNet-50, randomly initialised.

ViT-Large is google/vit-large-patch16-224's config (24 blocks, hidden 1024, MLP 4096, 16
heads, 197 tokens) cut to two blocks; the first is timed. ResNet-50 is transformers'
default ResNetConfig (bottleneck blocks, depths 3-4-6-3) cut to one residual block per
stage, so each stage's block is timed once. Every case runs in its own process so peak
memory (max RSS) is its own. 2:4 at the defaults of ``snows-hf prune`` (the JSON records
them: ``config``); ``--samples`` calibration images.

The whole-model projection is per-block time x blocks (ViT-L: 24 equal blocks; ResNet-50:
sum over stages of the stage's block time x its depth; a stage's first block also has
the projection shortcut, so this slightly overstates). Writes
``benchmarks/results/real_shapes_cpu.json``.

    python benchmarks/real_shapes_cpu.py [--samples 32]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

import snows_hf

sys.path.insert(0, str(Path(__file__).parent))
import record  # noqa: E402

THREADS = 2
#: how many blocks of the whole model each timed block stands for, by block index
WHOLE_MODEL = {"vit-large": {0: 24}, "resnet-50": dict(enumerate((3, 4, 6, 3)))}


def _model(case: str):
    from transformers import ResNetConfig, ResNetForImageClassification, ViTConfig, ViTForImageClassification

    if case == "vit-large":
        return ViTForImageClassification(ViTConfig(
            hidden_size=1024, num_hidden_layers=2, num_attention_heads=16, intermediate_size=4096,
            image_size=224, patch_size=16, num_labels=1000,
        ))
    return ResNetForImageClassification(ResNetConfig(depths=[1, 1, 1, 1], num_labels=1000))


def run_case(case: str, samples: int) -> dict:
    """Prune one model in this process; per-block seconds and this process's peak RSS."""
    torch.manual_seed(0)
    torch.set_num_threads(THREADS)
    model = _model(case).eval()
    pixels = torch.randn(samples, 3, 224, 224)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    start = time.perf_counter()
    report = snows_hf.prune_(model, snows_hf.PruneConfig(sparsity="2:4"), pixels)
    total = time.perf_counter() - start
    per_block: dict[int, float] = {}
    for layer in report.layers:
        per_block[layer.block] = per_block.get(layer.block, 0.0) + layer.seconds
    return {
        "case": case, "samples": samples, "total_seconds": total, "block_seconds": per_block,
        "layers_per_block": {b: sum(1 for layer in report.layers if layer.block == b) for b in per_block},
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "rss_before_prune_gib": rss_before, "sparsity": report.sparsity, "config": report.config,
        "whole_model_blocks": WHOLE_MODEL[case],
        "projected_seconds": sum(per_block[b] * n for b, n in WHOLE_MODEL[case].items()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--case", choices=list(WHOLE_MODEL), help=argparse.SUPPRESS)
    record.out_option(parser, "real_shapes_cpu")
    args = parser.parse_args()
    if args.case:  # child process
        print(json.dumps(run_case(args.case, args.samples)))
        return
    results = []
    for case in WHOLE_MODEL:
        out = subprocess.run([sys.executable, __file__, "--case", case, "--samples", str(args.samples)],
                             capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  done: {case}", flush=True)
        record.write(args.out, {"settings": record.settings(args, threads=THREADS), "cases": results})
    cfg = results[0]["config"]
    print(f"\nSNOWS defaults (K={cfg['k_step']}, 2:4, {cfg['mask']} mask, {cfg['newton_steps']} Newton steps x "
          f"{cfg['cg_iters']} CG) on CPU ({THREADS} threads), {args.samples} images of 224x224")
    head = f"{'model':<11} {'block':<22} {'modules':>7} {'seconds':>8} {'peak RSS GiB':>13}"
    print(head)
    print("-" * len(head))
    for r in results:
        blocks = {int(k): v for k, v in r["block_seconds"].items()}  # JSON keys are strings
        modules = {int(k): v for k, v in r["layers_per_block"].items()}
        for b, n in r["whole_model_blocks"].items():
            b = int(b)
            label = f"block 0 of {n}" if r["case"] == "vit-large" else f"stage {b} block (x{n})"
            print(f"{r['case']:<11} {label:<22} {modules[b]:>7} {blocks[b]:>8.1f} {r['peak_rss_gib']:>13.2f}")
        print(f"{r['case']:<11} {'projected whole model':<22} {'':>7} {r['projected_seconds']:>8.0f}")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
