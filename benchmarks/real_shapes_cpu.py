"""SNOWS per block at real shapes on CPU: ViT-Large and ResNet-50, randomly initialised.

ViT-Large is google/vit-large-patch16-224's config (24 blocks, hidden 1024, MLP 4096, 16
heads, 197 tokens) cut to two blocks; the first is timed. ResNet-50 is transformers'
default ResNetConfig (bottleneck blocks, depths 3-4-6-3) cut to one residual block per
stage, so each stage's block is timed once. Every case and method runs in its own process
so peak memory (max RSS) is its own. 2:4, each of ``--methods``: ``sparsegpt`` (its mask
and update alone, the time baseline), ``snows`` (the defaults of ``snows-hf prune``) and
``snows-block`` and ``snows-group`` (the defaults with ``refit_unit="block"``, and with
``refit_unit="group"``: ViT's q/k/v together; ResNet-50's modules never share an input
with the module before them, so there it re-fits as per module); the JSON records each run's
``config``; ``--samples`` calibration images.

The whole-model projection is per-block time x blocks (ViT-L: 24 equal blocks; ResNet-50:
sum over stages of the stage's block time x its depth; a stage's first block also has
the projection shortcut, so this slightly overstates). Writes
``benchmarks/results/real_shapes_cpu.json``.

    python benchmarks/real_shapes_cpu.py [--samples 32] [--methods sparsegpt snows snows-block snows-group]
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
#: each method's settings beside ``sparsity="2:4"`` (everything else at the defaults)
METHODS = {"sparsegpt": {"method": "mask-only", "mask": "sparsegpt"}, "snows": {},
           "snows-block": {"refit_unit": "block"}, "snows-group": {"refit_unit": "group"}}


def _model(case: str):
    from transformers import ResNetConfig, ResNetForImageClassification, ViTConfig, ViTForImageClassification

    if case == "vit-large":
        return ViTForImageClassification(ViTConfig(
            hidden_size=1024, num_hidden_layers=2, num_attention_heads=16, intermediate_size=4096,
            image_size=224, patch_size=16, num_labels=1000,
        ))
    return ResNetForImageClassification(ResNetConfig(depths=[1, 1, 1, 1], num_labels=1000))


def run_case(case: str, samples: int, method: str = "snows") -> dict:
    """Prune one model with one method in this process; per-block seconds and this
    process's peak RSS."""
    torch.manual_seed(0)
    torch.set_num_threads(THREADS)
    model = _model(case).eval()
    pixels = torch.randn(samples, 3, 224, 224)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    start = time.perf_counter()
    report = snows_hf.prune_(model, snows_hf.PruneConfig.from_dict({"sparsity": "2:4", **METHODS[method]}), pixels)
    total = time.perf_counter() - start
    per_block: dict[int, float] = {}
    for layer in report.layers:
        per_block[layer.block] = per_block.get(layer.block, 0.0) + layer.seconds
    return {
        "case": case, "method": method, "samples": samples, "total_seconds": total, "block_seconds": per_block,
        "layers_per_block": {b: sum(1 for layer in report.layers if layer.block == b) for b in per_block},
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "rss_before_prune_gib": rss_before, "sparsity": report.sparsity, "config": report.config,
        "whole_model_blocks": WHOLE_MODEL[case],
        "projected_seconds": sum(per_block[b] * n for b, n in WHOLE_MODEL[case].items()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--case", choices=list(WHOLE_MODEL), help=argparse.SUPPRESS)
    record.out_option(parser, "real_shapes_cpu")
    args = parser.parse_args()
    if args.case:  # child process
        print(json.dumps(run_case(args.case, args.samples, args.methods[0])))
        return
    results = []
    for case in WHOLE_MODEL:
        for method in args.methods:
            out = subprocess.run([sys.executable, __file__, "--case", case, "--methods", method,
                                  "--samples", str(args.samples)], capture_output=True, text=True, check=True)
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"  done: {case} {method} ({results[-1]['total_seconds']:.0f} s)", flush=True)
            record.write(args.out, {"settings": record.settings(args, threads=THREADS), "cases": results})
    print(f"\n2:4 on CPU ({THREADS} threads), {args.samples} images of 224x224")
    head = f"{'model':<11} {'method':<12} {'block':<22} {'modules':>7} {'seconds':>8} {'peak RSS GiB':>13}"
    print(head)
    print("-" * len(head))
    for r in results:
        blocks = {int(k): v for k, v in r["block_seconds"].items()}  # JSON keys are strings
        modules = {int(k): v for k, v in r["layers_per_block"].items()}
        for b, n in r["whole_model_blocks"].items():
            b = int(b)
            label = f"block 0 of {n}" if r["case"] == "vit-large" else f"stage {b} block (x{n})"
            print(f"{r['case']:<11} {r['method']:<12} {label:<22} {modules[b]:>7} {blocks[b]:>8.1f} "
                  f"{r['peak_rss_gib']:>13.2f}")
        print(f"{r['case']:<11} {r['method']:<12} {'projected whole model':<22} {'':>7} {r['projected_seconds']:>8.0f}")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
