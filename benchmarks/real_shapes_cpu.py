"""SNOWS per block at real shapes on CPU: ViT-Large and ResNet-50, randomly initialised.

ViT-Large is google/vit-large-patch16-224's config (24 blocks, hidden 1024, MLP 4096, 16
heads, 197 tokens) cut to two blocks; the first is timed. ResNet-50 is transformers'
default ResNetConfig (bottleneck blocks, depths 3-4-6-3) cut to one residual block per
stage, so each stage's block is timed once. Every case runs in its own process so peak
memory (max RSS) is its own. Defaults of ``snows-hf prune``: SNOWS, K=3, 2:4, magnitude
mask; ``--samples`` calibration images in micro-batches of 8.

The whole-model projection is per-block time x blocks (ViT-L: 24 equal blocks; ResNet-50:
sum over stages of the stage's block time x its depth; a stage's first block also has
the projection shortcut, so this slightly overstates).

    python benchmarks/real_shapes_cpu.py [--samples 32]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

import snows_hf

RESNET50_DEPTHS = (3, 4, 6, 3)


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
    torch.set_num_threads(2)
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
        "rss_before_prune_gib": rss_before, "sparsity": report.sparsity,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--case", choices=["vit-large", "resnet-50"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:  # child process
        print(json.dumps(run_case(args.case, args.samples)))
        return
    results = []
    for case in ("vit-large", "resnet-50"):
        out = subprocess.run([sys.executable, __file__, "--case", case, "--samples", str(args.samples)],
                             capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  done: {case}", flush=True)
    print(f"\nSNOWS defaults (K=3, 2:4, magnitude mask) on CPU (2 threads), {args.samples} images of 224x224")
    head = f"{'model':<11} {'block':<22} {'modules':>7} {'seconds':>8} {'peak RSS GiB':>13}"
    print(head)
    print("-" * len(head))
    for r in results:
        blocks = {int(k): v for k, v in r["block_seconds"].items()}  # JSON keys are strings
        modules = {int(k): v for k, v in r["layers_per_block"].items()}
        shown = [0] if r["case"] == "vit-large" else sorted(blocks)
        for b in shown:
            label = "block 0 of 24" if r["case"] == "vit-large" else f"stage {b} block (x{RESNET50_DEPTHS[b]})"
            print(f"{r['case']:<11} {label:<22} {modules[b]:>7} {blocks[b]:>8.1f} {r['peak_rss_gib']:>13.2f}")
        if r["case"] == "vit-large":
            projected = blocks[0] * 24
        else:
            projected = sum(blocks[s] * d for s, d in enumerate(RESNET50_DEPTHS))
        print(f"{r['case']:<11} {'projected whole model':<22} {'':>7} {projected:>8.0f}")

if __name__ == "__main__":
    main()
