"""Bytes on disk: dense vs compact sparse safetensors, fp32 and fp16, at 2:4 and 50%.

all-MiniLM-L6-v2 and SmolLM2-135M-Instruct (ASSETS.md) are pruned by magnitude (a
data-free mask, so random calibration inputs suffice); each pruned weight is then stored
dense or compact (:mod:`snows_hf.masks.compact`: kept values + each group's kept set as
one of C(M, N) codes for N:M, 3 bits per 2:4 group; kept values + 1-bit mask for
unstructured). Sizes are of real safetensors files (the pruned tensors alone, and the
whole checkpoint, where embeddings and heads stay dense), plus the ratio of the tensors'
own bytes without the safetensors headers.

    python benchmarks/compact_size.py   # writes benchmarks/results/compact_size.json
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

import snows_hf
from snows_hf.masks import parse_sparsity, to_rows
from snows_hf.masks.compact import encode

sys.path.insert(0, str(Path(__file__).parent))
import record  # noqa: E402


def _models():
    from transformers import AutoModel, AutoModelForCausalLM

    from smollm2_bbc import smollm2_folder
    from snows_hf.demo import minilm_path

    yield "all-MiniLM-L6-v2", lambda: AutoModel.from_pretrained(minilm_path(), dtype=torch.float32)
    yield "SmolLM2-135M", lambda: AutoModelForCausalLM.from_pretrained(smollm2_folder(), dtype=torch.float32)


def _bytes(tensors: dict[str, torch.Tensor]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "t.safetensors")
        save_file({k: v.contiguous() for k, v in tensors.items()}, path)
        return os.path.getsize(path)


def measure(model, report, pattern, dtype) -> dict[str, int]:
    state, seen = {}, set()
    for key, value in model.state_dict().items():  # tied weights (SmolLM2's lm_head) are stored once
        if value.data_ptr() not in seen:
            seen.add(value.data_ptr())
            state[key] = value.to(dtype) if value.is_floating_point() else value
    pruned = {f"{layer.name}.weight": layer.layout for layer in report.layers}
    dense_pruned = {k: state[k] for k in pruned}
    compact_pruned = {}
    for key, layout in pruned.items():
        for part, tensor in encode(to_rows(state[key], layout), pattern).items():
            compact_pruned[f"{key}.{part}"] = tensor
    rest = {k: v for k, v in state.items() if k not in pruned}
    payload = sum(t.numel() * t.element_size() for t in compact_pruned.values())
    return {
        "pruned_payload": payload / sum(t.numel() * t.element_size() for t in dense_pruned.values()),
        "pruned_dense": _bytes(dense_pruned), "pruned_compact": _bytes(compact_pruned),
        "all_dense": _bytes(state), "all_compact": _bytes(rest | compact_pruned),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    record.out_option(parser, "compact_size")
    args = parser.parse_args()
    rows = []
    for name, load in _models():
        for spec in ("2:4", "0.5"):
            model = load().eval()
            ids = {"input_ids": torch.randint(0, model.config.vocab_size, (2, 16))}
            report = snows_hf.prune_(model, {"sparsity": spec, "method": "mask-only", "mask": "magnitude", "diagnostics": False}, ids)
            for dtype in (torch.float32, torch.float16):
                rows.append((name, spec, str(dtype).split(".")[-1], measure(model, report, parse_sparsity(spec), dtype)))
            print(f"  done: {name} {spec}", flush=True)
            record.write(args.out, {"settings": record.settings(args), "rows": [
                {"model": name, "sparsity": spec, "dtype": dtype, **m} for name, spec, dtype, m in rows]})
    mib = 2**20
    head = (f"{'model':<17} {'sparsity':<8} {'dtype':<8} {'pruned dense MiB':>16} {'compact':>8} {'ratio':>6}"
            f" {'tensor bytes ratio':>18} {'checkpoint dense MiB':>20} {'compact':>8} {'ratio':>6}")
    print("\n" + head + "\n" + "-" * len(head))
    for name, spec, dtype, m in rows:
        print(f"{name:<17} {spec:<8} {dtype:<8} {m['pruned_dense'] / mib:>16.2f} {m['pruned_compact'] / mib:>8.2f} "
              f"{m['pruned_compact'] / m['pruned_dense']:>6.4f} {m['pruned_payload']:>18.4f} {m['all_dense'] / mib:>20.2f} "
              f"{m['all_compact'] / mib:>8.2f} {m['all_compact'] / m['all_dense']:>6.4f}")
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
