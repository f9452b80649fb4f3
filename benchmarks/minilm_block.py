"""Per-module SNOWS cost and held-out window loss on one real MiniLM block.

Prunes only block 0 of all-MiniLM-L6-v2 (BBC News calibration, 128-token sequences)
with the given PruneConfig options and prints, per module: which start the re-fit used,
held-out window loss of the masked weight, at the start and after Newton, and seconds.

    python benchmarks/minilm_block.py --num-samples 64 --set newton_steps=2 cg_iters=10
    python benchmarks/minilm_block.py --num-samples 64 --set init=mask newton_steps=3 cg_iters=50
"""

from __future__ import annotations

import argparse
import random
import time

import datasets
import torch
import yaml

import snows_hf
from snows_hf.data import CalibrationConfig, calibration_from_split
from snows_hf.demo import bbc_articles, minilm_path
from snows_hf.loading import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--set", nargs="*", default=[], help="PruneConfig fields as key=value")
    args = parser.parse_args()
    torch.set_num_threads(2)
    options = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    model, tokenizer = load_model(str(minilm_path()), dtype="float32")
    model.encoder.layer = model.encoder.layer[:1]
    texts = [text for _, text in bbc_articles()]
    random.Random(0).shuffle(texts)
    cal_cfg = CalibrationConfig(num_samples=args.num_samples, seq_len=128)
    calibration = calibration_from_split(datasets.Dataset.from_dict({"text": texts[300:]}), cal_cfg, model, tokenizer)
    config = snows_hf.PruneConfig.from_dict({"sparsity": "2:4", "method": "snows", "batch_size": 8, **options})
    start = time.perf_counter()
    report = snows_hf.prune_(model, config, calibration)
    print(f"block 0 of all-MiniLM-L6-v2, 2:4, {args.num_samples} x 128 tokens, {options or 'defaults'}: "
          f"{time.perf_counter() - start:.1f} s")
    print(f"{'module':<24} {'init':<5} {'masked':>8} {'start':>8} {'after':>8} {'steps':>6} {'CG':>10} {'seconds':>8}")
    for layer in report.layers:
        m = layer.metrics
        print(f"{layer.name.split('layer.0.')[1]:<24} {m['init']:<5} {m['heldout_loss_masked']:>8.4f} "
              f"{m['heldout_loss_before']:>8.4f} {m['heldout_loss_after']:>8.4f} {m['newton_steps']:>6} "
              f"{str(m['cg_iterations']):>10} {layer.seconds:>8.1f}")


if __name__ == "__main__":
    main()
