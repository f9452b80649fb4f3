"""Mask selector x {mask only, + SNOWS} on the Fashion-MNIST ViT, at 2:4 and 70% unstructured.

The 4-block ViT of benchmarks/fmnist.py (87.6% top-1, cached outside git) is pruned with
each mask selector, once keeping the selector's weights (``--method mask-only``: masked dense
weights, or SparseGPT's own OBS update) and once re-fitted by SNOWS with its defaults.
Printed: top-1 on all 10,000 test images, the drop from dense, and wall time. One run,
one table, written to ``benchmarks/results/mask_selectors.json`` after every row; timings
are comparable within it only.

    python benchmarks/mask_selectors.py [--sparsity 2:4 0.7] [--num-samples 512]
"""

from __future__ import annotations

import argparse
import time

import fmnist
import record
import snows_hf

SELECTORS = ("magnitude", "wanda", "hessian", "sparsegpt")
METHODS = (("mask only", "mask-only"), ("+ SNOWS", "snows"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", nargs="+", default=["2:4", "0.7"])
    parser.add_argument("--num-samples", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    record.out_option(parser, "mask_selectors")
    args = parser.parse_args()
    calib, x_test, y_test = fmnist.benchmark_data(args.num_samples)
    dense_acc = fmnist.accuracy(fmnist.trained_vit(), x_test, y_test)
    rows = []
    for spec in args.sparsity:
        for selector in SELECTORS:
            for label, method in METHODS:
                model = fmnist.trained_vit()
                config = snows_hf.PruneConfig(sparsity=spec, method=method, mask=selector, batch_size=args.batch_size)
                start = time.perf_counter()
                report = snows_hf.prune_(model, config, calib)
                seconds = time.perf_counter() - start
                inits = [layer.metrics.get("init") for layer in report.layers if "init" in layer.metrics]
                diags = [layer.diagnostics for layer in report.layers if layer.diagnostics]
                rows.append({
                    "sparsity": spec, "mask": selector, "method": label,
                    "accuracy": fmnist.accuracy(model, x_test, y_test), "seconds": seconds,
                    "measured_sparsity": report.sparsity, "config": report.config,
                    "inits": {i: inits.count(i) for i in set(inits)},
                    "mean_jaccard_magnitude_vs_hessian": sum(d["jaccard"] for d in diags) / len(diags),
                })
                print(f"  done: {spec} {selector} {label} ({seconds:.0f} s)", flush=True)
                record.write(args.out, {"settings": record.settings(args), "num_samples": args.num_samples,
                                        "test_images": len(x_test), "dense_accuracy": dense_acc, "rows": rows})

    print(f"\nViT (4 blocks) on Fashion-MNIST, dense top-1 {dense_acc:.4f}, {args.num_samples} calibration images")
    head = f"{'sparsity':<9} {'mask':<10} {'method':<10} {'top-1':>7} {'drop':>7} {'seconds':>8}"
    print(head)
    print("-" * len(head))
    for row in rows:
        print(f"{row['sparsity']:<9} {row['mask']:<10} {row['method']:<10} {row['accuracy']:>7.4f} "
              f"{dense_acc - row['accuracy']:>7.4f} {row['seconds']:>8.1f}")
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
