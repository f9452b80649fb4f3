"""What a run will do, before it does it: the plan ``snows-hf prune --dry-run`` prints.

The plan traces one forward of the blocks on a single example input to find the
targeted modules, their shapes and patterns and each module's re-fit window. It runs on
a model without weights (PyTorch's ``meta`` device: shapes only, no memory, no time)
and falls back to the real weights only when a family's code needs values to run.
Nothing is written and the model is left unchanged.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .methods import MethodPlan, get_method
from .placement import format_size

logger = logging.getLogger(__name__)


@dataclass
class ModulePlan:
    """One targeted module: where it is, its weight, its pattern and its window."""

    name: str
    rel_name: str  #: the name inside its block
    block: int
    shape: tuple[int, ...]
    layout: str
    pattern: str
    window: list[str]
    window_bytes: int  #: one sample's operation outputs in the blocks the window spans (its graph, at most)


@dataclass
class RunPlan:
    """Everything ``--dry-run`` reports; sizes are bytes. ``part`` is the method's own part
    (:meth:`Method.plan <snows_hf.methods.Method.plan>`): its settings, its calibration
    note, its windows and the lines that end the plan."""

    model_type: str | None
    block_path: str
    num_blocks: int
    method: str
    mask: str
    sparsity: str
    calibration: str
    num_samples: int
    batch_size: int
    micro_batches: int
    part: MethodPlan = field(default_factory=MethodPlan)
    modules: list[ModulePlan] = field(default_factory=list)
    block_activation_bytes: int = 0  #: one block's inputs for every calibration sample, per stream
    traced_on: str = "meta"
    streams: int = 1  #: 2 when the method also propagates the dense network's own activations
    output_dir: str | None = None  #: where the run would save

    def format(self) -> str:
        """The plan as the terminal shows it (fits in 100 columns)."""
        lines = [
            f"model: {self.model_type or '?'}, {self.num_blocks} blocks at {self.block_path} "
            f"(traced on {'no weights (meta device)' if self.traced_on == 'meta' else 'the real weights'})",
            f"method: {self.method}, mask {self.mask}, sparsity {self.sparsity}{self.part.settings}",
            f"calibration: {self.calibration}",
            f"  {self.micro_batches} micro-batches of {self.batch_size}{self.part.calibration}",
            f"modules: {len(self.modules)} to prune",
            "",
            f"{'module':<44} {'shape':>12} {'pattern':>8} {'K':>2}  window ends at",
            "-" * 96,
        ]
        for m in self._shown():
            if m is None:
                lines.append(f"{'... (the other blocks repeat block 0)':<44}")
                continue
            shape = "x".join(map(str, m.shape))
            last = m.window[-1] if m.window else "-"
            lines.append(f"{_clip(m.name, 44):<44} {shape:>12} {m.pattern:>8} {len(m.window) - 1:>2}  {_clip(last, 27)}")
        lines += [
            "",
            f"one block's inputs, all {self.num_samples} samples: {format_size(self.block_activation_bytes * self.streams)}"
            + (" (pruned and dense streams)" if self.streams == 2 else ""),
            *self.part.footer(self.modules, self.batch_size),
        ]
        return "\n".join(lines)

    def _shown(self) -> list[ModulePlan | None]:
        """Block 0's modules, then only those of later blocks that differ from block 0."""
        first = [m for m in self.modules if m.block == 0]
        signature = [(m.rel_name, m.shape, m.pattern, len(m.window)) for m in first]
        out: list[ModulePlan | None] = list(first)
        repeated = False
        for b in range(1, self.num_blocks):
            mods = [m for m in self.modules if m.block == b]
            if [(m.rel_name, m.shape, m.pattern, len(m.window)) for m in mods] == signature:
                repeated = True
                continue
            out += mods
        if repeated:
            out.append(None)
        return out


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3):]


def empty_model(source: str, trust_remote_code: bool = False) -> Any:
    """The model ``load_model`` would build, on the meta device: no weight is read."""
    import transformers
    from accelerate import init_empty_weights

    from .loading import load_model_config

    config, cls, _ = load_model_config(source, trust_remote_code=trust_remote_code)
    with init_empty_weights(include_buffers=True):
        # eager attention: the SDPA mask path asks tensors for values (.all()), which meta ones have not
        if cls is transformers.AutoModel:
            model = cls.from_config(config, trust_remote_code=trust_remote_code, attn_implementation="eager")
        else:
            model = cls._from_config(config, attn_implementation="eager")
    return model.eval()


def plan_run(model: nn.Module, config: Any, example: dict[str, torch.Tensor], calibration: str, num_samples: int) -> RunPlan:
    """Trace ``model`` (on the meta device or not) on one example input and plan the run.

    Example:
        >>> plan = plan_run(model, PruneConfig(sparsity="2:4"), {"input_ids": ids[:1]}, "64 x 128 tokens", 64)  # doctest: +SKIP
        >>> print(plan.format())  # doctest: +SKIP
    """
    from .adapters import find_block_list, weight_layout
    from .blocks import run_block
    from .pipeline import Targets, capture_block_inputs, execution_order
    from .windows import WindowRunner

    blocks = find_block_list(model, config.block_path)
    targets = Targets(model, config, blocks)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    example = {k: v[:1].to(device) for k, v in example.items()}
    micro = math.ceil(num_samples / config.batch_size)
    method = get_method(config.method)(config)
    plan = RunPlan(
        model_type=getattr(model.config, "model_type", None), block_path=blocks.path, num_blocks=len(blocks),
        method=config.method.name, mask=method.mask_selector, sparsity=config.pattern.label, calibration=calibration,
        num_samples=num_samples, batch_size=config.batch_size, micro_batches=micro, part=method.plan(micro),
        traced_on="meta" if device.type == "meta" else "weights", streams=2 if method.needs_dense_stream else 1,
    )
    with torch.no_grad():
        (call,) = capture_block_inputs(model, blocks.modules[0], [example], device, kinds=blocks.first_of_kinds())
    hidden = call.args[0] if call.args else next(iter(call.kwargs.values()))
    plan.block_activation_bytes = hidden.numel() * hidden.element_size() * num_samples
    graph_bytes: dict[tuple[int, int], int] = {}
    for index, block in enumerate(blocks.modules):
        for rel_name, module in execution_order(block, targets.of(index), call):
            name = targets.name(index, rel_name)
            window, window_bytes = [rel_name], 0
            if plan.part.window_k is not None:
                with WindowRunner(blocks, index, f"{rel_name}.weight") as runner:
                    traced = runner.trace(call, module.weight, plan.part.window_k)
                window = traced.names()
                if (index, traced.last_block) not in graph_bytes:
                    graph_bytes[(index, traced.last_block)] = _blocks_bytes(blocks, index, traced.last_block, call)
                window_bytes = graph_bytes[(index, traced.last_block)]
            plan.modules.append(ModulePlan(
                name=name, rel_name=rel_name, block=index, shape=tuple(module.weight.shape), layout=weight_layout(module),
                pattern=targets.pattern(name).label, window=window, window_bytes=window_bytes,
            ))
        with torch.no_grad():
            call = blocks.next_call(block, call, run_block(block, call))
    return plan


def _blocks_bytes(blocks: Any, index: int, last: int, call: Any) -> int:
    """Bytes of every operation's output in blocks ``index..last`` for one sample: what
    the graph of a window reaching block ``last`` holds, at most."""
    from .blocks import run_block, tracked_hooks
    from .windows import is_operation

    sizes: list[int] = []

    def hook(module: nn.Module, args: tuple, output: Any) -> None:
        tensor = output[0] if isinstance(output, (tuple, list)) else output
        if isinstance(tensor, torch.Tensor):
            sizes.append(tensor.numel() * tensor.element_size())

    with tracked_hooks() as hooks, torch.no_grad():
        for b in range(index, last + 1):
            hooks.extend(m.register_forward_hook(hook) for m in blocks.modules[b].modules() if is_operation(m))
        for b in range(index, last + 1):
            hidden = run_block(blocks.modules[b], call)
            call = blocks.next_call(blocks.modules[b], call, hidden)
    return sum(sizes)
