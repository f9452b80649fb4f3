"""What ``sparse_inference_`` would do with a ViT-L/16 at 2:4, planned on this machine.

    python benchmarks/sparse_inference_plan.py   # writes benchmarks/results/sparse_inference_plan.txt

Builds ViT-L/16 (ImageNet-1k head) with random weights, prunes its block Linear layers
to 2:4 with the magnitude mask (``snows_hf.prune_``, 2 random images: the mask needs no
data), casts it to bfloat16 and prints ``plan_for_gpu(model).format()``: the layer
decisions the 2:4 GPU kernels' limits give (tiles, dtypes, pattern), which need no GPU.
No GPU has run ``sparse_inference_`` for this project yet; the line a GPU prints is not
shown anywhere until one does.
"""

from __future__ import annotations

from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    from transformers import ViTConfig, ViTForImageClassification

    import snows_hf
    from snows_hf.sparse_inference import plan_for_gpu

    torch.manual_seed(0)
    config = ViTConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                       image_size=224, patch_size=16, num_labels=1000)
    model = ViTForImageClassification(config).eval()
    snows_hf.prune_(model, {"sparsity": "2:4", "method": "mask-only", "mask": "magnitude", "batch_size": 2, "diagnostics": False},
                    {"pixel_values": torch.randn(2, 3, 224, 224)})
    text = plan_for_gpu(model.to(torch.bfloat16)).format()
    print(text)
    out = ROOT / "benchmarks" / "results" / "sparse_inference_plan.txt"
    out.write_text(f"$ python benchmarks/sparse_inference_plan.py\n{text}\n")
    print(f"(written to {out.relative_to(ROOT)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
