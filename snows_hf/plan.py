"""What a run will do, before it does it: :func:`plan`, which ``snows-hf prune --dry-run`` prints.

The plan traces one forward of the blocks on a single example input to find the
targeted modules, their shapes and patterns and each module's re-fit window. It runs on
a model without weights (PyTorch's ``meta`` device: shapes only, no memory, no time)
and falls back to the real weights only when a family's code needs values to run.
Nothing is written and the model is left unchanged.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
import transformers
from accelerate import init_empty_weights
from torch import nn

from .adapters import BlockList, find_block_list, weight_layout
from .blocks import BlockCall, run_block, tracked_hooks
from .config import PruneConfig
from .data import RANDOM, check_seq_len, dataset_label, random_calibration, with_default_dataset
from .fields import setting
from .loading import load_model, load_model_config
from .methods import MethodPlan, build_method
from .output_folder import check_output_dir, default_output_dir
from .block_order import execution_order
from .pipeline import Targets, capture_block_inputs
from .placement import format_size
from .windows import WindowRunner, is_operation
from .workflow.options import LoadOptions, SaveOptions
from .workflow.setup import calibration_config, check_settings, prune_config

logger = logging.getLogger("snows_hf")  # the dry run speaks as the run it plans


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


def empty_model(source: str, trust_remote_code: bool = False) -> nn.Module:
    """The model ``load_model`` would build, on the meta device: no weight is read.

    Example:
        >>> empty_model("google/vit-base-patch16-224").device  # doctest: +SKIP
        device(type='meta')
    """
    config, cls, _ = load_model_config(source, trust_remote_code=trust_remote_code)
    with init_empty_weights(include_buffers=True):
        # eager attention: the SDPA mask path asks tensors for values (.all()), which meta ones have not
        if cls is transformers.AutoModel:
            model = cls.from_config(config, trust_remote_code=trust_remote_code, attn_implementation="eager")
        else:
            model = cls._from_config(config, attn_implementation="eager")
    return model.eval()


def plan_run(model: nn.Module, config: PruneConfig, example: dict[str, torch.Tensor], calibration: str, num_samples: int) -> RunPlan:
    """Trace ``model`` (on the meta device or not) on one example input and plan the run.

    Example:
        >>> plan = plan_run(model, PruneConfig(sparsity="2:4"), {"input_ids": ids[:1]}, "64 x 128 tokens", 64)  # doctest: +SKIP
        >>> print(plan.format())  # doctest: +SKIP
    """
    blocks = find_block_list(model, config.block_path)
    targets = Targets(model, config, blocks)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    example = {k: v[:1].to(device) for k, v in example.items()}
    micro = math.ceil(num_samples / config.batch_size)
    method = build_method(config)
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


def _blocks_bytes(blocks: BlockList, index: int, last: int, call: BlockCall) -> int:
    """Bytes of every operation's output in blocks ``index..last`` for one sample: what
    the graph of a window reaching block ``last`` holds, at most."""
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


def plan(model: str | os.PathLike, config: PruneConfig | Mapping[str, Any], data: Any = None, *,
         save: SaveOptions = SaveOptions(), load: LoadOptions = LoadOptions()) -> RunPlan:
    """What :func:`~snows_hf.workflow.run` would do (blocks, modules, shapes, windows,
    calibration, HVPs, memory, where it saves), traced without weights on the meta device
    when the family's code allows, else on the loaded weights. Settings and an output
    folder that ``run`` would refuse are refused here too. Writes nothing.

    Example:
        >>> found = plan("google/vit-base-patch16-224", {"sparsity": "2:4"})  # doctest: +SKIP
        >>> print(found.format()); found.output_dir  # doctest: +SKIP
        'vit-base-patch16-224-pruned-2of4'
    """
    config, cal_cfg = prune_config(config), calibration_config(data)
    check_settings(config, save.save_format)
    model_id = os.fspath(model)
    output_dir = os.fspath(save.output_dir) if save.output_dir is not None else default_output_dir(model_id, config.sparsity)
    check_output_dir(output_dir, save.overwrite, keep=[model_id])
    model = empty_model(model_id, trust_remote_code=load.trust_remote_code)
    check_seq_len(cal_cfg, model)
    example = random_calibration(model, dataclasses.replace(cal_cfg, num_samples=1, dataset=RANDOM))
    cal_cfg = with_default_dataset(cal_cfg, model)
    source = (f"of random inputs ({setting('dataset', RANDOM)})" if cal_cfg.dataset == RANDOM
              else f"of {dataset_label(cal_cfg.dataset)}")
    ids = example.get("input_ids")
    size = f"{cal_cfg.num_samples} images" if ids is None else f"{cal_cfg.num_samples} x {ids.shape[1]} tokens"
    # Some mask code asks an all-ones attention mask for its values, which meta tensors
    # cannot give: without one it is all ones anyway. Only then are the weights read.
    bare = {k: v for k, v in example.items() if k != "attention_mask"}
    for inputs in (example, bare) if len(bare) < len(example) else (example,):
        try:
            found = plan_run(model, config, inputs, f"{size} {source}", cal_cfg.num_samples)
            break
        except (RuntimeError, NotImplementedError) as exc:
            if "meta" not in str(exc).lower():
                raise
            reason = " ".join(str(exc).split())
    else:
        logger.info("this model's code needs values to run (%s): tracing on its weights", reason)
        model, _ = load_model(model_id, trust_remote_code=load.trust_remote_code, allow_pickle=load.allow_pickle)
        found = plan_run(model, config, example, f"{size} {source}", cal_cfg.num_samples)
    found.output_dir = output_dir
    return found
