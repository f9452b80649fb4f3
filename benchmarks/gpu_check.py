"""GPU check: SNOWS at real shapes on an accelerator, with and without offload (one table).

Run on a machine with a GPU:

    python benchmarks/gpu_check.py [--blocks 2] [--samples 128] [--quick]

Models are randomly initialised with only ``--blocks`` blocks (time is per block, so a
whole model costs that times its number of blocks): ViT-Base/16 and ViT-Large/16 (hidden
768 / 1024, MLP 4x, 197 tokens) and SmolLM2-135M (hidden 576, MLP 1536, 9 heads, 3 KV
heads). Every case is 2:4 at the defaults (SNOWS, K=3) unless the row says otherwise;
SparseGPT (its mask and update) is each model's time baseline (``x SparseGPT``):

- activations on the device, in pinned CPU memory, or on disk (``offload_activations``);
- blocks streamed: the model stays in CPU memory and ``max_memory`` lets one window of
  blocks onto the device at a time;
- the block re-fit (``refit_unit="block"``: one Newton-CG over all of a block's kept
  weights) beside the per-module default, on ViT-L/16 and SmolLM2.

``max |dW|`` compares each case's pruned weights with the first SNOWS row of its model and
re-fit unit: offload changes where tensors wait, never the result. Writes
``benchmarks/results/gpu_check.json`` after every case.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import snows_hf
from snows_hf.devices import device_label

sys.path.insert(0, str(Path(__file__).parent))
import record  # noqa: E402

WHOLE_MODEL_BLOCKS = {"ViT-B/16": 12, "ViT-L/16": 24, "SmolLM2-135M": 30}


def _vit(blocks: int, hidden: int = 1024, heads: int = 16):
    from transformers import ViTConfig, ViTForImageClassification

    return ViTForImageClassification(ViTConfig(
        hidden_size=hidden, num_hidden_layers=blocks, num_attention_heads=heads, intermediate_size=4 * hidden,
        image_size=224, patch_size=16, num_labels=1000,
    ))


def _vit_base(blocks: int):
    return _vit(blocks, hidden=768, heads=12)


def _smollm(blocks: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=blocks, num_attention_heads=9,
        num_key_value_heads=3, vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=True,
    ))


def _block_weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu") for k, v in model.state_dict().items() if ".layer" in k and k.endswith("weight")}


def _case(model, calibration, options: dict, device: torch.device) -> dict:
    accelerator = torch.accelerator
    accelerator.synchronize(device)
    accelerator.empty_cache()
    accelerator.reset_peak_memory_stats(device)
    config = snows_hf.PruneConfig.from_dict({"sparsity": "2:4", "device": str(device), "batch_size": 8, **options})
    start = time.perf_counter()
    report = snows_hf.prune_(model, config, calibration)
    accelerator.synchronize(device)
    seconds = time.perf_counter() - start
    per_block = [sum(layer.seconds for layer in report.layers if layer.block == b) for b in range(report.num_blocks)]
    return {
        "seconds": seconds,
        "per_block": sum(per_block) / len(per_block),
        "peak_gib": accelerator.max_memory_allocated(device) / 2**30,
        "sparsity": report.sparsity,
        "streamed": report.placement.get("streamed", False),
        "weights": _block_weights(model),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--quick", action="store_true", help="ViT-Large only, fewer cases")
    record.out_option(parser, "gpu_check")
    args = parser.parse_args()
    if not torch.accelerator.is_available():
        raise SystemExit("no accelerator: run this on a GPU machine")
    device = torch.device(torch.accelerator.current_accelerator())
    print(f"torch {torch.__version__}, snows-hf {snows_hf.__version__}, {device}", flush=True)
    g = torch.Generator().manual_seed(0)
    one_block = "1MB"  # below any block: the device holds the current window only
    images = {"pixel_values": torch.randn(args.samples, 3, 224, 224, generator=g)}
    sparsegpt = {"method": "mask-only", "mask": "sparsegpt"}
    block = {"refit_unit": "block"}  # one re-fit per block, beside the per-module default
    cases = [
        ("ViT-B/16", _vit_base, images, [
            ("sparsegpt (mask + update)", sparsegpt, True),
            ("snows, activations device", {}, True),
        ]),
        ("ViT-L/16", _vit, images, [
            ("magnitude", {"method": "mask-only", "mask": "magnitude"}, True),
            ("sparsegpt (mask + update)", sparsegpt, True),
            ("snows, activations device", {}, True),
            ("snows, activations cpu", {"offload_activations": "cpu"}, True),
            ("snows, activations disk", {"offload_activations": "disk"}, not args.quick),
            ("snows, blocks streamed + cpu", {"offload_activations": "cpu", "max_memory": f"{device}={one_block}"}, True),
            ("snows, block re-fit", block, True),
        ]),
        ("SmolLM2-135M", _smollm, {"input_ids": torch.randint(0, 49152, (args.samples // 4, args.seq_len), generator=g)}, [
            ("sparsegpt (mask + update)", sparsegpt, True),
            ("snows, activations device", {}, True),
            ("snows, activations cpu", {"offload_activations": "cpu"}, not args.quick),
            ("snows, block re-fit", block, True),
        ]),
    ]
    rows = []
    for name, factory, calibration, variants in cases:
        references, base = {}, None  # weights per re-fit unit: offload must not change them
        for label, options, wanted in variants:
            if not wanted:
                continue
            torch.manual_seed(0)
            model = factory(args.blocks).eval()
            if "max_memory" not in options:
                model.to(device)  # resident; the streamed case leaves the model in CPU memory
            row = _case(model, calibration, options, device)
            if label.startswith("sparsegpt"):
                base = row["per_block"]
            if label.startswith("snows"):
                reference = references.setdefault(options.get("refit_unit", "module"), row["weights"])
                row["max_dw"] = max(float((row["weights"][k] - reference[k]).abs().max()) for k in reference)
                row["x_sparsegpt"] = row["per_block"] / base if base else None
            rows.append({"model": name, "case": label, **row})
            print(f"  done {name} / {label}: {row['seconds']:.1f} s", flush=True)
            record.write(args.out, {"settings": record.settings(args), "device": device_label(device),
                                    "whole_model_blocks": WHOLE_MODEL_BLOCKS,
                                    "rows": [{k: v for k, v in r.items() if k != "weights"} for r in rows]})
            del model
    print(f"\n2:4, {args.blocks} blocks, fp32, {args.samples} images / {args.samples // 4} x {args.seq_len} tokens, micro-batch 8")
    head = (f"{'model':<13} {'case':<30} {'s/block':>8} {'x SparseGPT':>11} {'total s':>8} {'peak GiB':>9} "
            f"{'sparsity':>9} {'max |dW|':>9}")
    print(head + "\n" + "-" * len(head))
    for r in rows:
        dw = f"{r['max_dw']:.1e}" if "max_dw" in r else "-"
        ratio = f"{r['x_sparsegpt']:.1f}" if r.get("x_sparsegpt") else "-"
        print(f"{r['model']:<13} {r['case']:<30} {r['per_block']:>8.2f} {ratio:>11} {r['seconds']:>8.1f} "
              f"{r['peak_gib']:>9.2f} {r['sparsity']:>9.3f} {dw:>9}")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
