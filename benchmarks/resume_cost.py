"""What resumable runs cost: checkpoint writes during a run, and recomputing activations on resume
versus storing them.

SmolLM2-135M-Instruct (ASSETS.md; cached by benchmarks/smollm2_bbc.py), 2:4, BBC News
calibration. Three runs in one process: without a checkpoint, with one (interrupted at
``--stop-at`` blocks), and resumed from it. The last table compares, per block, the
recomputation a resume does (one block forward per micro-batch, for the pruned and the
dense stream) with what storing each block's activations would cost instead (writing
both streams to disk after every block, reading them once on resume). Writes
``benchmarks/results/resume_cost.json``.

    python benchmarks/resume_cost.py [--num-samples 64] [--seq-len 512] [--stop-at 15] [--method magnitude]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import record  # noqa: E402


class _Stop(Exception):
    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--stop-at", type=int, default=15)
    parser.add_argument("--method", default="mask-only")
    parser.add_argument("--mask", default="magnitude")
    record.out_option(parser, "resume_cost")
    args = parser.parse_args()

    import snows_hf
    from smollm2_bbc import bbc_jsonl, smollm2_folder
    from snows_hf.activations import ActivationSpace
    from snows_hf.data import CalibrationConfig, load_dataset_split
    from snows_hf.checkpoint import RunCheckpoint
    from snows_hf.data import prepare_data
    from snows_hf.loading import load_model
    from snows_hf.methods import get_method
    from snows_hf.pipeline import capture_block_inputs

    torch.set_num_threads(2)
    folder = str(smollm2_folder())
    model, tokenizer = load_model(folder, dtype="float32")
    cfg = CalibrationConfig(dataset=str(bbc_jsonl()), num_samples=args.num_samples, seq_len=args.seq_len)
    calibration = prepare_data(load_dataset_split(cfg), cfg, model, tokenizer).calibration
    config = snows_hf.PruneConfig(sparsity="2:4", method=args.method, mask=args.mask, diagnostics=False, batch_size=8)
    blocks = model.config.num_hidden_layers

    start = time.perf_counter()
    snows_hf.prune_(model, config, calibration)
    plain = time.perf_counter() - start
    reference = {k: v.clone() for k, v in model.state_dict().items()}

    with tempfile.TemporaryDirectory() as tmp:
        ckpt_dir = Path(tmp) / "ckpt"
        method = get_method(config.method)
        original = method.prune_module

        def stopping(self, job):
            if job.block_index >= args.stop_at:
                raise _Stop
            return original(self, job)

        method.prune_module = stopping
        model, _ = load_model(folder, dtype="float32")
        start = time.perf_counter()
        try:
            snows_hf.prune_(model, config, calibration, checkpoint=RunCheckpoint(ckpt_dir))
        except _Stop:
            pass
        interrupted = time.perf_counter() - start
        method.prune_module = original
        checkpoint_mib = sum(p.stat().st_size for p in ckpt_dir.iterdir()) / 2**20

        model, _ = load_model(folder, dtype="float32")
        start = time.perf_counter()
        report = snows_hf.prune_(model, config, calibration, checkpoint=RunCheckpoint(ckpt_dir, resume=True))
        resumed = time.perf_counter() - start
        identical = all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())

        # per block: one forward over the calibration set (what a resume recomputes, per stream) ...
        model, _ = load_model(folder, dtype="float32")
        layers = model.model.layers
        calls = capture_block_inputs(model, layers[0], [
            {k: v[i : i + 8] for k, v in calibration.items()} for i in range(0, args.num_samples, 8)], torch.device("cpu"))
        start = time.perf_counter()
        with torch.no_grad():
            outputs = [layers[0](*c.args, **c.kwargs) for c in calls]
        forward = time.perf_counter() - start
        # ... against writing that block's inputs to disk after every block and reading them back once
        with ActivationSpace("disk", torch.device("cpu"), tmp) as space:
            start = time.perf_counter()
            store = space.store(calls)
            write = time.perf_counter() - start
            start = time.perf_counter()
            for i in range(len(store)):
                store[i]
            read = time.perf_counter() - start
        del outputs

    per_block = args.num_samples * args.seq_len * model.config.hidden_size * 4 / 2**20
    print(f"\nSmolLM2-135M, 2:4 {args.method}, {args.num_samples} x {args.seq_len} tokens, {blocks} blocks, "
          f"stopped after {args.stop_at}; resumed weights bit-identical: {identical}")
    print(f"{'run':<40} {'seconds':>8}")
    print("-" * 49)
    print(f"{'no checkpoint':<40} {plain:>8.1f}")
    print(f"{f'with checkpoint, stopped at block {args.stop_at}':<40} {interrupted:>8.1f}")
    print(f"{f'resumed ({args.stop_at} blocks restored)':<40} {resumed:>8.1f}")
    print(f"checkpoint on disk after {args.stop_at} blocks: {checkpoint_mib:.1f} MiB; "
          f"report covers {len(report.layers)} layers")
    print(f"\nper block and stream ({per_block:.0f} MiB of hidden states):")
    print(f"  resume recomputes: one forward            {forward:6.2f} s (only when resuming)")
    print(f"  storing instead: write after every block  {write:6.2f} s (every run), read on resume {read:6.2f} s")
    record.write(args.out, {
        "settings": record.settings(args), "blocks": blocks, "bit_identical": identical,
        "seconds": {"no checkpoint": plain, "with checkpoint, stopped": interrupted, "resumed": resumed},
        "checkpoint_mib": checkpoint_mib, "report_layers": len(report.layers), "hidden_states_mib": per_block,
        "per_block_and_stream": {"forward": forward, "write": write, "read": read},
    })
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
