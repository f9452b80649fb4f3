"""Mask only vs SNOWS at several K, and both target conventions, on a trained ViT.

A 4-block ViT trained on Fashion-MNIST (benchmarks/fmnist.py, cached outside git) is
pruned to 2:4 with the ``--mask`` selector (default magnitude), then re-fitted with SNOWS
(the library's defaults but for each row's changes). Printed: test accuracy on all 10,000
test images, the relative error of each block's output against the dense model (on 1,000
test images, so comparable across methods), the mean held-out window loss before/after
the re-fit, and wall time. One run, one table, written to
``benchmarks/results/snows_solver.json`` after every row.

    python benchmarks/snows_solver.py [--sparsity 2:4] [--mask magnitude] [--num-samples 512]
"""

from __future__ import annotations

import argparse
import time

import torch

import fmnist
import record
import snows_hf
from snows_hf.adapters import find_block_list

PROBE = 1000  #: test images whose block outputs are compared
RUNS = [
    ("mask only", {"method": "mask-only"}),
    ("snows K=0 dense-stream", {"method": "snows", "k_step": 0, "target": "dense-stream"}),
    ("snows K=0 official", {"method": "snows", "k_step": 0, "target": "official"}),
    ("snows K=1 dense-stream", {"method": "snows", "k_step": 1, "target": "dense-stream"}),
    ("snows K=3 dense-stream", {"method": "snows", "k_step": 3, "target": "dense-stream"}),
    ("snows K=3 official", {"method": "snows", "k_step": 3, "target": "official"}),
    ("snows K=8 dense-stream", {"method": "snows", "k_step": 8, "target": "dense-stream"}),
    ("snows K=8 official", {"method": "snows", "k_step": 8, "target": "official"}),
    ("snows K=3 ds, no scale", {"method": "snows", "k_step": 3, "target": "dense-stream", "term_scale": "none"}),
    ("snows K=8 ds, no scale", {"method": "snows", "k_step": 8, "target": "dense-stream", "term_scale": "none"}),
    ("snows K=3 ds, exact H", {"method": "snows", "k_step": 3, "target": "dense-stream", "hessian": "exact"}),
    ("snows K=3 ds, mask init", {"method": "snows", "k_step": 3, "target": "dense-stream", "init": "mask"}),
]


@torch.no_grad()
def block_outputs(model, x):
    blocks = find_block_list(model).modules
    outs = []
    hooks = [b.register_forward_hook(lambda m, a, o: outs.append(o if torch.is_tensor(o) else o[0])) for b in blocks]
    try:
        model(pixel_values=x)
    finally:
        for h in hooks:
            h.remove()
    return outs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", default="2:4")
    parser.add_argument("--num-samples", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--mask", default="magnitude", help="the mask every row starts from")
    parser.add_argument("--only", nargs="*", help="run only the rows whose label contains one of these")
    record.out_option(parser, "snows_solver")
    args = parser.parse_args()
    calib, x_test, y_test = fmnist.benchmark_data(args.num_samples)
    probe = x_test[:PROBE]

    dense = fmnist.trained_vit()
    dense_acc = fmnist.accuracy(dense, x_test, y_test)
    dense_blocks = block_outputs(dense, probe)
    rows = [{"method": "dense", "accuracy": dense_acc, "block_err": [0.0] * len(dense_blocks), "seconds": 0.0}]
    for label, options in RUNS:
        if args.only and not any(o in label for o in args.only):
            continue
        model = fmnist.trained_vit()
        config = snows_hf.PruneConfig.from_dict({"sparsity": args.sparsity, "batch_size": args.batch_size, "mask": args.mask, **options})
        start = time.perf_counter()
        report = snows_hf.prune_(model, config, calib)
        seconds = time.perf_counter() - start
        outs = block_outputs(model, probe)
        errs = [float((o - d).pow(2).sum() / d.pow(2).sum()) for o, d in zip(outs, dense_blocks)]
        metrics = [layer.metrics for layer in report.layers if "heldout_loss_before" in layer.metrics]
        row = {
            "method": label,
            "accuracy": fmnist.accuracy(model, x_test, y_test),
            "block_err": errs,
            "seconds": seconds,
            "sparsity": report.sparsity,
            "config": report.config,
            "window_heldout_before": sum(m["heldout_loss_before"] for m in metrics) / len(metrics) if metrics else None,
            "window_heldout_after": sum(m["heldout_loss_after"] for m in metrics) / len(metrics) if metrics else None,
            "line_search_failures": sum(m["line_search_failed"] for m in metrics),
            "layers": [{"name": layer.name, **{k: v for k, v in layer.metrics.items() if k != "window"}} for layer in report.layers],
        }
        rows.append(row)
        print(f"  done: {label} ({seconds:.0f} s)", flush=True)
        _write(args, rows, len(x_test))  # after every row, so an interrupted run keeps what it measured

    n_blocks = len(dense_blocks)
    head = f"{'method':<24} {'top-1':>7} {'drop':>7} " + " ".join(f"{'blk' + str(i) + ' err':>9}" for i in range(n_blocks))
    head += f" {'win loss before->after':>24} {'seconds':>8}"
    print(f"\nViT (4 blocks) on Fashion-MNIST, {args.sparsity}, {args.num_samples} calibration images; "
          "block err = ||out - dense||^2 / ||dense||^2 on 1,000 test images")
    print(head)
    print("-" * len(head))
    for row in rows:
        win = ""
        if row.get("window_heldout_before") is not None:
            win = f"{row['window_heldout_before']:.4f} -> {row['window_heldout_after']:.4f}"
        print(
            f"{row['method']:<24} {row['accuracy']:>7.4f} {dense_acc - row['accuracy']:>7.4f} "
            + " ".join(f"{e:>9.4f}" for e in row["block_err"])
            + f" {win:>24} {row['seconds']:>8.1f}"
        )
    print(f"\nwritten {args.out}")


def _write(args, rows, test_images: int) -> None:
    record.write(args.out, {"settings": record.settings(args), "sparsity": args.sparsity, "mask": args.mask,
                            "num_samples": args.num_samples, "test_images": test_images, "probe_images": PROBE,
                            "rows": rows})


if __name__ == "__main__":
    main()
