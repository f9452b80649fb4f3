"""GPU check: SNOWS on CUDA, correctness on tiny models and time per block at real shapes.

Run on a machine with a CUDA GPU (prints one table):

    python benchmarks/gpu_check.py [--blocks 2] [--samples 128]

Shapes: ViT-Large (google/vit-large-patch16-224: hidden 1024, MLP 4096, 16 heads, 197
tokens) and SmolLM2-135M (hidden 576, MLP 1536, 9 heads, 3 KV heads), randomly
initialised with only ``--blocks`` blocks: the time is per block, so the whole-model
projection is that times the number of blocks.
"""

from __future__ import annotations

import argparse
import time

import torch

import snows_hf


def _vit(blocks: int):
    from transformers import ViTConfig, ViTForImageClassification

    return ViTForImageClassification(ViTConfig(
        hidden_size=1024, num_hidden_layers=blocks, num_attention_heads=16, intermediate_size=4096,
        image_size=224, patch_size=16, num_labels=1000,
    ))


def _smollm(blocks: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=blocks, num_attention_heads=9,
        num_key_value_heads=3, vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=True,
    ))


def _time_case(name, model, calibration, config, device):
    torch.cuda.reset_peak_memory_stats(device)
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    report = snows_hf.prune_(model, config, calibration)
    torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    per_block = [sum(layer.seconds for layer in report.layers if layer.block == b) for b in range(report.num_blocks)]
    return {
        "case": name,
        "method": config.method + (f" K={config.k_step}" if config.method == "snows" else ""),
        "seconds": seconds,
        "per_block": per_block,
        "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30,
        "sparsity": report.sparsity,
        "cg": sum(sum(layer.metrics.get("cg_iterations", [])) for layer in report.layers),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=512)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run this on a GPU machine")
    device = torch.device("cuda")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(device)}")
    g = torch.Generator().manual_seed(0)
    rows = []
    cases = [
        ("ViT-L/16 shape", _vit, {"pixel_values": torch.randn(args.samples, 3, 224, 224, generator=g)}),
        ("SmolLM2-135M shape", _smollm, {"input_ids": torch.randint(0, 49152, (args.samples // 4, args.seq_len), generator=g)}),
    ]
    for name, factory, calibration in cases:
        for method, k in (("magnitude", 0), ("snows", 0), ("snows", 3)):
            torch.manual_seed(0)
            model = factory(args.blocks).eval()
            config = snows_hf.PruneConfig(sparsity="2:4", method=method, k_step=k, batch_size=8, device="cuda")
            rows.append(_time_case(name, model, calibration, config, device))
            print(f"  done {name} {method} K={k}: {rows[-1]['seconds']:.1f} s", flush=True)
            del model
            torch.cuda.empty_cache()
    print(f"\n2:4, {args.blocks} blocks, fp32, {args.samples} images / {args.samples // 4} x {args.seq_len} tokens, micro-batch 8")
    head = f"{'model':<20} {'method':<14} {'s/block':>9} {'total s':>8} {'peak GiB':>9} {'CG iters':>9} {'sparsity':>9}"
    print(head)
    print("-" * len(head))
    for r in rows:
        per_block = sum(r["per_block"]) / len(r["per_block"])
        print(f"{r['case']:<20} {r['method']:<14} {per_block:>9.2f} {r['seconds']:>8.1f} {r['peak_gib']:>9.2f} {r['cg']:>9d} {r['sparsity']:>9.3f}")


if __name__ == "__main__":
    main()
