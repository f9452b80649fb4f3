"""Gauss-Newton products two ways: reverse mode twice (what SNOWS does) against forward-mode
``torch.func.jvp`` then one backward, on one SmolLM2-135M block at real shapes.

The window is the block's output, the weights re-fitted are one module's (``--module``);
the residual is the block's output minus a fixed target, as in a K=0 window. Both ways
give ``J^T J v`` for the same ``v``:

- ``double-vjp``: the residual graph and the graph of ``J^T u`` are kept once per Newton
  step; each product is one backward through ``J^T u`` (giving ``J v``) and one through the
  residual graph (``snows_hf.solver.hvp``, the default);
- ``jvp + vjp``: the residual graph is kept; each product runs the block forward again
  with tangents (``torch.func.jvp``, giving ``J v``) and one backward through the graph.

Forward-mode derivatives are missing for some kernels that HF modules call (the CPU
flash kernel of ``scaled_dot_product_attention``, transformers' default attention, has
none), so the block uses eager attention for both ways; the JSON records whether the same
block with SDPA attention took a forward-mode product.
Seconds are the median of ``--repeats`` products after one warm-up; the products of the
two ways must agree. Writes ``benchmarks/results/hvp_modes.json``.

    python benchmarks/hvp_modes.py [--tokens 512] [--batches 4] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.func import functional_call, jvp

from snows_hf.solver.hvp import HessianOperator

sys.path.insert(0, str(Path(__file__).parent))
import record  # noqa: E402

THREADS = 2


def _block(attention: str):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    config = LlamaConfig(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3,
                         num_hidden_layers=1, max_position_embeddings=2048, attn_implementation=attention)
    return LlamaDecoderLayer(config, 0).eval(), LlamaRotaryEmbedding(config)


def _median_seconds(fn, repeats: int) -> tuple[float, torch.Tensor]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--module", default="mlp.gate_proj")
    record.out_option(parser, "hvp_modes")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    block, rotary = _block("eager")
    name = f"{args.module}.weight"
    w0 = dict(block.named_parameters())[name].detach().clone()
    inputs = [torch.randn(1, args.tokens, 576) for _ in range(args.batches)]
    positions = rotary(inputs[0], torch.arange(args.tokens)[None])
    with torch.no_grad():
        targets = [block(x, position_embeddings=positions)[0] + 0.01 * torch.randn(1, args.tokens, 576) for x in inputs]

    def output(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        out = functional_call(block, {name: w}, (x,), {"position_embeddings": positions})
        return out[0] if isinstance(out, tuple) else out

    def residual_fn(w, batch):
        x, y = batch
        return [output(w, x) - y]

    batches = list(zip(inputs, targets))
    v = torch.randn_like(w0)
    rows = []

    start = time.perf_counter()
    op = HessianOperator(residual_fn, w0, batches, "gauss-newton")
    build_double = time.perf_counter() - start
    double_s, double_hv = _median_seconds(lambda: op(v), args.repeats)
    op.close()
    rows.append({"way": "double-vjp", "build_seconds": build_double, "product_seconds": double_s})

    # jvp + vjp: keep only the residual graph; J v by forward mode, then J^T (c J v) by one backward
    start = time.perf_counter()
    w = w0.detach().requires_grad_(True)
    residuals = [residual_fn(w, b)[0] for b in batches]
    coef = [2.0 / len(batches) / r.numel() for r in residuals]
    loss = sum(r.pow(2).mean() for r in residuals) / len(batches)
    grad = torch.autograd.grad(loss, w, retain_graph=True)[0]
    build_jvp = time.perf_counter() - start

    def jvp_product() -> torch.Tensor:
        jv = [jvp(lambda u, x=x: output(u, x), (w0,), (v,))[1] for x in inputs]
        return torch.autograd.grad(residuals, w, [c * j for c, j in zip(coef, jv)], retain_graph=True)[0]

    jvp_s, jvp_hv = _median_seconds(jvp_product, args.repeats)
    rows.append({"way": "jvp + vjp", "build_seconds": build_jvp, "product_seconds": jvp_s})
    forward_backward_s, _ = _median_seconds(
        lambda: torch.autograd.grad(sum(residual_fn(w, b)[0].pow(2).mean() for b in batches), w)[0], args.repeats)
    agree = float((jvp_hv - double_hv).norm() / double_hv.norm())
    del grad

    sdpa, _ = _block("sdpa")
    try:
        jvp(lambda u: functional_call(sdpa, {name: u}, (inputs[0],), {"position_embeddings": positions})[0],
            (w0,), (v,))
        sdpa_note = "works"
    except (NotImplementedError, RuntimeError) as err:
        sdpa_note = str(err).splitlines()[0][:160]
    result = {"settings": record.settings(args, threads=THREADS), "rows": rows,
              "forward_backward_seconds": forward_backward_s, "relative_difference": agree,
              "sdpa_forward_mode": sdpa_note, "module": args.module}
    record.write(args.out, result)
    print(f"\nSmolLM2-135M block, {args.batches} x {args.tokens} tokens, {args.module}, eager attention, "
          f"{THREADS} threads; one forward+backward of the window over all batches {forward_backward_s:.3f} s")
    print(f"{'way':<12} {'build s':>8} {'product s':>10} {'x fwd+bwd':>10}")
    for r in rows:
        print(f"{r['way']:<12} {r['build_seconds']:>8.3f} {r['product_seconds']:>10.3f} "
              f"{r['product_seconds'] / forward_backward_s:>10.2f}")
    print(f"products agree to {agree:.1e} (relative); forward mode with SDPA: {sdpa_note}")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
