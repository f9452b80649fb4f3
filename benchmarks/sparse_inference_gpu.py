"""2:4 sparse inference on a GPU: dense vs semi-structured sparse kernels, per layer and end to end.

Run on a machine with an NVIDIA GPU of compute capability 8.0 or newer:

    python benchmarks/sparse_inference_gpu.py [--quick] [--out FILE]   # default benchmarks/results/sparse_inference_gpu.json

Models are randomly initialised on the GPU at real shapes: ViT-B/16 and ViT-L/16 (224
pixels, 197 tokens), a TinyLlama-1.1B-shaped Llama (hidden 2048, MLP 5632, 22 blocks,
4 KV heads) and a Llama-2-7B-shaped one (hidden 4096, MLP 11008, 32 blocks). Every
Linear layer of the blocks is pruned to 2:4 by magnitude (the kernels' speed does not
depend on which weights survive); the head stays dense. For each model and dtype
(float16, bfloat16):

- per layer: ``F.linear`` with each distinct block weight shape, dense (with its zeros)
  vs the weight as a semi-structured sparse tensor, at several token counts;
- end to end: the whole forward pass before and after ``snows_hf.sparse_inference_``
  (images, prefill of 512-token sequences, and a 1-token step for 16 sequences without
  a KV cache), with the relative error of the outputs against the dense-with-zeros model.

Times are medians of 5 repeats of back-to-back calls after a warm-up; dense and 2:4 run
in the same process one after the other, so the speed-up is a ratio measured together.
Everything runs eagerly, as ``from_pretrained`` models do: the sparse weight's Python
dispatch is part of each 2:4 time, which weighs most where a matmul is small.
One table: per model, each block weight shape through ``F.linear``, then the whole model.
``--tiny`` runs the same code on toy shapes (what the CPU test exercises).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import snows_hf
from snows_hf.devices import device_label, resolve_device, synchronize
from snows_hf.evaluation import relative_error
from snows_hf.masks import parse_sparsity, select_topk
from snows_hf.solver.hvp import free_memory
from snows_hf.sparse_inference import kernel_backend, sparse_inference_

sys.path.insert(0, str(Path(__file__).parent))
import record  # noqa: E402

MODELS = {  #: name -> family and shape, in the order they run (the most asked-about first, for --budget)
    "ViT-L/16": {"family": "vit", "hidden": 1024, "mlp": 4096, "blocks": 24, "heads": 16},
    "Llama-4096": {"family": "llama", "hidden": 4096, "mlp": 11008, "blocks": 32, "heads": 32, "kv_heads": 32},
    "ViT-B/16": {"family": "vit", "hidden": 768, "mlp": 3072, "blocks": 12, "heads": 12},
    "Llama-2048": {"family": "llama", "hidden": 2048, "mlp": 5632, "blocks": 22, "heads": 32, "kv_heads": 4},
}
TINY = {
    "ViT-tiny": {"family": "vit", "hidden": 64, "mlp": 128, "blocks": 2, "heads": 2, "image": 32, "patch": 8},
    "Llama-tiny": {"family": "llama", "hidden": 64, "mlp": 128, "blocks": 2, "heads": 2, "kv_heads": 1, "vocab": 256},
}
IMAGES = (1, 8, 64)  #: images per forward pass (197 tokens each at 224 pixels)
SEQUENCES = ((1, 512), (8, 512), (16, 1))  #: (sequences, tokens each) per forward pass
LAYER_TOKENS = {"vit": (197, 1576, 12608), "llama": (16, 512, 4096)}  #: rows of the per-layer matmul


def build(spec: dict, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A randomly initialised model of ``spec``'s shape on ``device``, its blocks' Linear layers at 2:4."""
    from transformers import LlamaConfig, LlamaForCausalLM, ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    if spec["family"] == "vit":
        config = ViTConfig(hidden_size=spec["hidden"], intermediate_size=spec["mlp"], num_hidden_layers=spec["blocks"],
                           num_attention_heads=spec["heads"], image_size=spec.get("image", 224),
                           patch_size=spec.get("patch", 16), num_labels=1000)
        cls = ViTForImageClassification
    else:
        config = LlamaConfig(hidden_size=spec["hidden"], intermediate_size=spec["mlp"], num_hidden_layers=spec["blocks"],
                             num_attention_heads=spec["heads"], num_key_value_heads=spec["kv_heads"],
                             vocab_size=spec.get("vocab", 32000), max_position_embeddings=4096)
        cls = LlamaForCausalLM
    with device:
        model = cls(config).to(dtype).eval()
    head = model.get_output_embeddings() if spec["family"] == "llama" else model.classifier
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module is not head:
                module.weight.mul_(select_topk(module.weight.abs(), parse_sparsity("2:4")))
    return model


def inputs(spec: dict, device: torch.device, dtype: torch.dtype, quick: bool) -> list[tuple[str, dict, int]]:
    """``(label, forward kwargs, samples)`` per input size; samples are images or tokens."""
    g = torch.Generator().manual_seed(0)
    if spec["family"] == "vit":
        side = spec.get("image", 224)
        counts = (IMAGES[0], IMAGES[-1]) if quick else IMAGES
        return [(f"{b} image{'s' if b > 1 else ''}", {"pixel_values": torch.randn(b, 3, side, side, generator=g).to(device, dtype)}, b)
                for b in counts]
    vocab = spec.get("vocab", 32000)
    shapes = (SEQUENCES[0], SEQUENCES[-1]) if quick else SEQUENCES
    return [(f"{b} x {t} tokens", {"input_ids": torch.randint(0, vocab, (b, t), generator=g).to(device), "use_cache": False},
             b * t) for b, t in shapes]


def median_seconds(fn, device: torch.device, min_seconds: float, repeats: int = 5) -> float:
    """Median time of one ``fn()`` call over ``repeats`` batches of back-to-back calls."""
    fn()
    synchronize(device)
    calls = 1
    while True:  # enough calls per batch that one batch lasts min_seconds / repeats
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        synchronize(device)
        if time.perf_counter() - start >= min_seconds / repeats or calls >= 4096:
            break
        calls *= 2
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        synchronize(device)
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times)


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes the parameters hold: a semi-structured weight counts its packed values and metadata."""
    total = 0
    for param in model.parameters():
        parts = [getattr(param, name, None) for name in ("packed", "meta", "packed_t", "meta_t", "compressed_swizzled_bitmask")]
        parts = [t for t in parts if isinstance(t, torch.Tensor)]
        total += sum(t.numel() * t.element_size() for t in parts) if parts else param.numel() * param.element_size()
    return total


@torch.no_grad()
def end_to_end(name: str, spec: dict, dtype: torch.dtype, device: torch.device, backend, args) -> tuple[list[dict], dict]:
    """Rows of the end-to-end table for one model and dtype, and its distinct block weight shapes."""
    model = build(spec, device, dtype)
    head = model.get_output_embeddings() if spec["family"] == "llama" else model.classifier
    shapes: dict[tuple[int, int], dict] = {}
    for module_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module is not head:
            entry = shapes.setdefault(tuple(module.weight.shape), {"layers": [], "bias": module.bias is not None})
            parts = module_name.split(".")
            leaf = ".".join(parts[-2:]) if parts[-1] == "dense" else parts[-1]  # ViT's output.dense, intermediate.dense
            if leaf not in entry["layers"]:
                entry["layers"].append(leaf)
    cases = inputs(spec, device, dtype, args.quick)
    dense_bytes = weight_bytes(model)
    dense = {}
    for label, kwargs, _ in cases:
        dense[label] = (model(**kwargs).logits, median_seconds(lambda: model(**kwargs), device, args.min_time))
    report = sparse_inference_(model, backend=backend)
    sparse_bytes = weight_bytes(model)
    rows = []
    for label, kwargs, samples in cases:
        logits, dense_s = dense[label]
        got = model(**kwargs).logits
        sparse_s = median_seconds(lambda: model(**kwargs), device, args.min_time)
        rows.append({
            "model": name, "dtype": str(dtype).replace("torch.", ""), "input": label, "samples": samples,
            "converted": f"{len(report.converted)}/{len(report.layers)}",
            "dense_ms": dense_s * 1e3, "sparse_ms": sparse_s * 1e3, "speedup": dense_s / sparse_s,
            "dense_per_s": samples / dense_s, "sparse_per_s": samples / sparse_s,
            "dense_gib": dense_bytes / 2**30, "sparse_gib": sparse_bytes / 2**30,
            "rel_err": relative_error(got, logits),
            "top1_agree": float((got.argmax(-1) == logits.argmax(-1)).float().mean()),
        })
    return rows, shapes


@torch.no_grad()
def per_layer(name: str, spec: dict, shapes: dict, dtype: torch.dtype, device: torch.device, backend, args) -> list[dict]:
    """Rows of the per-layer table: F.linear with each distinct weight shape, dense vs 2:4."""
    g = torch.Generator().manual_seed(0)
    tokens = LAYER_TOKENS[spec["family"]]
    tokens = (tokens[0], tokens[-1]) if args.quick else tokens
    if args.tiny:
        tokens = tuple(dict.fromkeys(min(t, 64) for t in tokens))
    rows = []
    for (out_features, in_features), entry in shapes.items():
        weight = torch.randn(out_features, in_features, generator=g).to(device, dtype)
        weight *= select_topk(weight.abs(), parse_sparsity("2:4"))
        bias = torch.randn(out_features, generator=g).to(device, dtype) if entry["bias"] else None
        sparse = backend.compress(weight)
        for count in tokens:
            x = torch.randn(count, in_features, generator=g).to(device, dtype)
            dense_s = median_seconds(lambda: F.linear(x, weight, bias), device, args.min_time / 2)
            sparse_s = median_seconds(lambda: F.linear(x, sparse, bias), device, args.min_time / 2)
            rows.append({
                "model": name, "layer": "/".join(entry["layers"]), "shape": f"{out_features}x{in_features}",
                "tokens": count, "dtype": str(dtype).replace("torch.", ""),
                "dense_us": dense_s * 1e6, "sparse_us": sparse_s * 1e6, "speedup": dense_s / sparse_s,
                "sparse_tflops": 2 * count * out_features * in_features / sparse_s / 1e12,
                "rel_err": relative_error(F.linear(x, sparse, bias), F.linear(x, weight, bias)),
            })
    return rows


def _duration(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} us" if seconds < 1e-3 else f"{seconds * 1e3:.2f} ms"


def _rate(per_second: float, unit: str) -> str:
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if per_second >= scale:
            return f"{per_second / scale:.2f}{prefix} {unit}/s"
    return f"{per_second:.1f} {unit}/s"


def format_table(layers: list[dict], models: list[dict], header: str) -> str:
    """One table: per model, its block weight shapes through ``F.linear``, then the whole model."""
    head = (f"{'model':<11} {'part':<28} {'shape / input':>16} {'dtype':>8} {'dense':>10} {'2:4':>10} {'speed-up':>8} "
            f"{'2:4 throughput':>16} {'GiB dense/2:4':>13} {'rel err':>8} {'top-1 =':>7}")
    lines = [header, "dense weight (with its zeros) vs 2:4 sparse weight; layer rows: F.linear on TOKENS rows; "
             "model rows: the whole forward pass (blocks at 2:4, head dense)", "", head, "-" * len(head)]
    for name in dict.fromkeys(r["model"] for r in layers + models):
        for r in (r for r in layers if r["model"] == name):
            lines.append(f"{name:<11} {r['layer'][:28]:<28} {r['shape'] + ' x ' + str(r['tokens']):>16} {r['dtype']:>8} "
                         f"{_duration(r['dense_us'] / 1e6):>10} {_duration(r['sparse_us'] / 1e6):>10} {r['speedup']:>7.2f}x "
                         f"{_rate(r['tokens'] * 1e6 / r['sparse_us'], 'tok'):>16} {'-':>13} {r['rel_err']:>8.1e} {'-':>7}")
        for r in (r for r in models if r["model"] == name):
            unit = "img" if "image" in r["input"] else "tok"
            memory = f"{r['dense_gib']:.2f}/{r['sparse_gib']:.2f}"
            lines.append(f"{name:<11} {'model (' + r['converted'] + ' converted)':<28} {r['input']:>16} {r['dtype']:>8} "
                         f"{_duration(r['dense_ms'] / 1e3):>10} {_duration(r['sparse_ms'] / 1e3):>10} {r['speedup']:>7.2f}x "
                         f"{_rate(r['sparse_per_s'], unit):>16} {memory:>13} {r['rel_err']:>8.1e} {r['top1_agree']:>7.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None, backend=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two input sizes per model instead of three")
    parser.add_argument("--tiny", action="store_true", help="toy shapes (exercises the code; figures mean nothing)")
    parser.add_argument("--models", help=f"comma-separated subset of {', '.join(MODELS)}")
    parser.add_argument("--dtypes", default="float16,bfloat16", help="comma-separated (default float16,bfloat16)")
    parser.add_argument("--device", default="auto", help="the GPU to measure on (default: the first accelerator)")
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds each end-to-end timing lasts at least")
    parser.add_argument("--budget", type=float, metavar="SECONDS",
                        help="start no new model and dtype after this many seconds (the table shows what ran)")
    parser.add_argument("--out", "--json", metavar="FILE", help="write every row to this JSON file, after each case "
                        "(default: benchmarks/results/sparse_inference_gpu.json; with --tiny, no file)")
    parser.add_argument("--from-json", metavar="FILE", help="print the table of an earlier run's JSON and exit")
    args = parser.parse_args(argv)
    if args.from_json:
        payload = json.loads(Path(args.from_json).read_text())
        print(format_table(payload["layers"], payload["models"], payload["header"]))
        return 0
    out = args.out or (None if args.tiny else str(record.RESULTS / "sparse_inference_gpu.json"))
    try:
        device = resolve_device(args.device)
        backend = backend or kernel_backend()
        catalogue = TINY if args.tiny else MODELS
        names = args.models.split(",") if args.models else list(catalogue)
        unknown = [n for n in names if n not in catalogue]
        if unknown:
            raise ValueError(f"unknown model {unknown[0]!r}; choose from {', '.join(catalogue)}")
        dtypes = [getattr(torch, d, None) for d in args.dtypes.split(",")]
        if not all(isinstance(d, torch.dtype) for d in dtypes):
            raise ValueError(f"--dtypes {args.dtypes!r}: use float16, bfloat16")
    except ValueError as exc:
        print(f"sparse_inference_gpu: {exc}", file=sys.stderr)
        return 2
    missing = backend.support(device)
    if missing:
        print(f"sparse_inference_gpu: nothing to measure here: {missing}", file=sys.stderr)
        return 1
    cusparselt = getattr(torch.backends, "cusparselt", None)
    version = cusparselt.version() if cusparselt is not None and cusparselt.is_available() else None
    header = (f"torch {torch.__version__}, snows-hf {snows_hf.__version__}, {device_label(device)}, back end "
              f"{backend.name}{f' (cuSPARSELt {version})' if version else ''}; medians of 5")
    print(header, flush=True)
    layers, models, failures, skipped = [], [], [], []
    began = time.perf_counter()
    for name in names:
        for dtype in dtypes:
            start = time.perf_counter()
            if args.budget is not None and start - began > args.budget:
                skipped.append(f"{name} {str(dtype).replace('torch.', '')}")
                continue
            try:  # one failing case must not cost the others their figures (GPU time is scarce)
                rows, shapes = end_to_end(name, catalogue[name], dtype, device, backend, args)
                models += rows
                layers += per_layer(name, catalogue[name], shapes, dtype, device, backend, args)
            except (RuntimeError, NotImplementedError, ValueError) as exc:
                failures.append(f"{name} {str(dtype).replace('torch.', '')}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
                print(f"  FAILED {failures[-1]}", flush=True)
                free_memory()
                continue
            free_memory()  # the model is gone: its memory goes back before the next one
            print(f"  done {name} {str(dtype).replace('torch.', '')}: {time.perf_counter() - start:.0f} s", flush=True)
            if out:  # what ran survives a run stopped from outside
                _write(out, args, header, layers, models, failures)
    print()
    print(format_table(layers, models, header))
    for failure in failures:
        print(f"failed: {failure}")
    if skipped:
        print(f"not run (past --budget {args.budget:g} s): {', '.join(skipped)}")
    if out:
        _write(out, args, header, layers, models, failures)
    return 1 if failures else 0


def _write(path: str, args, header: str, layers: list[dict], models: list[dict], failures: list[str]) -> None:
    record.write(path, {"settings": record.settings(args), "header": header, "layers": layers, "models": models,
                        "failures": failures})


if __name__ == "__main__":
    sys.exit(main())
