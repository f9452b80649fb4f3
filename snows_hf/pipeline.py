"""The block loop: capture block inputs, prune each targeted module, propagate.

    capture inputs (+ kwargs) of block 0 -> for each block:
        for each targeted module in execution order: method -> write weight
        run the block on its inputs to get the next block's inputs

Activations are kept as one :class:`BlockCall` per calibration micro-batch: the
positional and keyword arguments the model itself passed to the block (attention masks,
rotary position embeddings, ...), so blocks run exactly as inside the model. In stacks
that mix block kinds (sliding-window and full attention layers), each call also carries
the arguments the model passed to the first block of every other kind, and
:meth:`BlockList.next_call <snows_hf.adapters.BlockList.next_call>` hands each block
those of its own kind.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import torch
from torch import nn

from .activations import ActivationSpace, ActivationStore
from .adapters import BlockList, find_block_list, weight_layout
from .block_order import module_groups
from .blocks import BlockCall, counted_forwards, run_block, tracked_hooks
from .checkpoint import RunCheckpoint, run_fingerprint
from .devices import embedding_device
from .distributed import Processes, current_processes
from .fields import SettingError, setting
from .masks import SparsityPattern, from_rows, get_selector, to_rows
from .masks.diagnostics import importance_diagnostics, magnitude_warning
from .placement import BlockPlacement, block_budget
from .methods import Method, ModuleJob, build_method
from .report import LayerReport, PruneReport
from .statistics import block_input_stats, has_input_features
from .targets import Targets

if TYPE_CHECKING:  # the settings name the methods: a run-time import would be a circle
    from .config import PruneConfig

logger = logging.getLogger(__name__)
#: one line per pruned layer (sparsity, what the method says of its result, seconds): the
#: log file always has them, the terminal with ``--verbose``
layer_logger = logging.getLogger("snows_hf.layers")


class _StopForward(Exception):
    """Raised by the capture hook so the model stops right after its embeddings."""


def _model_input_device(model: nn.Module, device: torch.device) -> torch.device:
    found = embedding_device(model)
    return device if found.type == "meta" else found  # offloaded: accelerate's hooks bring inputs along


def capture_block_inputs(
    model: nn.Module, first_block: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], device: torch.device,
    store: Any = None, kinds: Mapping[str, nn.Module] | None = None,
) -> Any:
    """Run the model's real embeddings on each batch and keep what reaches ``first_block``.

    A pre-forward hook records the block's positional and keyword arguments, then stops
    the forward pass, so nothing after the embeddings runs. Captured tensors are moved
    to ``device``, or appended to ``store`` (an :class:`~snows_hf.activations.ActivationStore`,
    returned) when one is given. Caches are switched off for the capture (``use_cache=False``).

    ``kinds`` maps each block kind of a stack that mixes them to its first block
    (:meth:`BlockList.first_of_kinds <snows_hf.adapters.BlockList.first_of_kinds>`,
    ``first_block`` among them): the pass then runs on until each of those blocks is
    called, and every call carries the arguments of all kinds (:meth:`BlockCall.with_kinds`).

    Example:
        >>> calls = capture_block_inputs(model, model.model.layers[0], batches, torch.device("cpu"))  # doctest: +SKIP
    """
    calls: Any = [] if store is None else store
    wanted = dict(kinds) if kinds else {"": first_block}
    first_kind = next((kind for kind, block in wanted.items() if block is first_block), None)
    if first_kind is None:
        raise ValueError("first_block must be the first block of one of the kinds")
    seen: dict[str, BlockCall] = {}

    def hook_for(kind: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            seen[kind] = BlockCall(args, kwargs)
            if len(seen) < len(wanted):
                return  # the blocks up to the first of the last kind run, on the dense model
            call = seen.pop(first_kind).with_kinds(seen)
            seen.clear()
            calls.append(call.to(device) if store is None else call)
            raise _StopForward

        return hook

    extra = {"use_cache": False} if getattr(model.config, "use_cache", None) is not None else {}
    input_device = _model_input_device(model, device)
    with tracked_hooks() as hooks, torch.no_grad():
        for kind, block in wanted.items():
            hooks.append(block.register_forward_pre_hook(hook_for(kind), with_kwargs=True))
        for batch in batches:
            inputs = {k: (v.to(input_device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
            try:
                model(**inputs, **extra)
            except _StopForward:
                continue
            missing = ", ".join(kind for kind in wanted if kind not in seen) or "first"
            raise RuntimeError(f"the model finished its forward pass without calling its {missing} block")
    return calls


def _write_weight(module: nn.Module, layout: str, weight_rows: torch.Tensor, mask_rows: torch.Tensor) -> None:
    weight = module.weight
    # where(), not a product: a pruned negative weight times 0 is -0.0, which the compact
    # format (kept values + positions) gives back as +0.0; zeros are written as +0.0 here
    kept = torch.where(mask_rows.bool(), weight_rows, torch.zeros((), dtype=weight_rows.dtype, device=weight_rows.device))
    new = from_rows(kept.to(weight.dtype), layout, weight.shape)
    with torch.no_grad():
        weight.copy_(new.to(weight.device))


def _partial_groups(layout_rows: torch.Tensor, pattern) -> int:
    if not pattern.is_nm or layout_rows.shape[1] % pattern.m == 0:
        return 0
    return layout_rows.shape[0]


def prune_blocks(
    model: nn.Module, config: PruneConfig, batches: list[Mapping[str, torch.Tensor]], progress: bool = False,
    checkpoint: RunCheckpoint | None = None,
) -> PruneReport:
    """Prune every targeted module of ``model`` in place, block by block.

    This is the engine behind :func:`snows_hf.prune_`, which validates inputs first.
    With a ``checkpoint``, each finished block is saved, and blocks a checkpoint already
    holds are restored (not pruned again) while their outputs are recomputed.
    """
    from tqdm.auto import tqdm

    from .devices import resolve_device

    processes = current_processes()
    device = processes.device(resolve_device(config.device))
    method = build_method(config)
    blocks = find_block_list(model, config.block_path)
    num_samples = sum(int(next(iter(b.values())).shape[0]) for b in batches)
    shards = _Shards(processes, len(batches))
    report = PruneReport(
        config=config.to_dict(),
        model_type=getattr(model.config, "model_type", None),
        block_path=blocks.path,
        num_blocks=len(blocks),
        num_calibration_samples=num_samples,
    )
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    targets = Targets(model, config, blocks)
    done = checkpoint.start(run_fingerprint(model, config, batches)) if checkpoint is not None else 0
    if done:
        report.layers = [LayerReport(**layer) for layer in checkpoint.state["layers"]]
        targets.patterns = {n: SparsityPattern(fraction=f) for n, f in (checkpoint.state["patterns"] or {}).items()}
        checkpoint.restore_rng()
        logger.info("resuming: %d of %d blocks are done (%s)", done, len(blocks), checkpoint.folder)
    try:
        with ActivationSpace(config.offload_activations, device, config.offload_dir) as space:
            calls = capture_block_inputs(model, blocks.modules[0], processes.shard(batches), device, store=space.store(),
                                         kinds=blocks.first_of_kinds())
            dense_calls = calls if method.needs_dense_stream else None  # the same inputs until block 0 is pruned
            report.timings["capture"] = time.perf_counter() - start
            logger.info("captured %d micro-batches at %s (%d blocks, activations on %s)",
                        len(calls), blocks.path, len(blocks), config.offload_activations)
            budget = block_budget(config.max_memory, device)
            with BlockPlacement(blocks.modules, device, budget, written=lambda i: [m for _, m in targets.of(i)]) as place:
                if config.allocation == "global" and not done:
                    targets.allocate(calls, method.mask_selector, space, processes, place)
                    report.timings["allocation"] = time.perf_counter() - start - report.timings["capture"]
                show = progress and processes.is_main
                bar = tqdm(range(len(blocks)), desc="blocks", unit="block", disable=not show, dynamic_ncols=True)
                for index in bar:
                    place.need(index)
                    stream, micro_batches = _BlockStream(blocks, index, calls, dense_calls), len(calls)
                    with counted_forwards() as forwards:
                        if index < done:
                            _restore_block(stream, targets, checkpoint.block_weights(index))
                        else:
                            _prune_block(stream, method, targets, report, shards, show)
                        calls, dense_calls = stream.propagate(space)
                    report.block_forwards.append(forwards[0] / max(1, micro_batches))
                    if stream.non_finite:
                        _warn(report, f"block {index} outputs hold NaN/Inf in {stream.non_finite} of {len(calls)} "
                                      "micro-batches; the layers after it keep their best finite weights (numerics in report.json)")
                    if checkpoint is not None and index >= done and processes.is_main:
                        _save_block(checkpoint, index, targets, report)  # while its weights are real, not offloaded
                    place.release_before(index + 1)
                report.placement = {"streamed": place.streaming, "peak_blocks_on_device": place.peak_blocks}
    finally:
        model.train(was_training)
    report.timings["total"] = time.perf_counter() - start
    _check_all_pruned(report)
    _log_summary(report, method)
    return report


class _BlockStream:
    """One block's inputs (pruned network, and dense network when asked) and dense weights."""

    def __init__(self, blocks: BlockList, index: int, calls: list[BlockCall], dense_calls: list[BlockCall] | None):
        self.blocks, self.index, self.block = blocks, index, blocks.modules[index]
        self.calls, self.dense_calls = calls, dense_calls
        self.dense_weights: dict[str, torch.Tensor] = {}
        self.non_finite = 0  # micro-batches whose outputs hold NaN/Inf

    def remember_dense(self, param_name: str, weight: torch.Tensor) -> None:
        """Keep a pruned module's dense weight, to run this block as the dense model."""
        if self.dense_calls is not None:
            self.dense_weights[param_name] = weight.detach().clone()

    def _checked(self, call: BlockCall) -> BlockCall:
        if not bool(torch.isfinite(call.hidden).all()):
            self.non_finite += 1
        return call

    @torch.no_grad()
    def propagate(self, space: ActivationSpace) -> tuple[ActivationStore, ActivationStore | None]:
        """The next block's inputs (this pruned block's outputs, and the dense ones); this
        block's inputs are freed."""
        block, next_call = self.block, self.blocks.next_call
        calls = space.store(self._checked(next_call(block, call, run_block(block, call))) for call in self.calls)
        dense = None
        if self.dense_calls is not None:
            dense = space.store(next_call(block, c, run_block(block, c, self.dense_weights)) for c in self.dense_calls)
            if self.dense_calls is not self.calls:
                self.dense_calls.close()
        self.calls.close()
        return calls, dense


class _Shards:
    """Which global micro-batches this process holds (all of them in a one-process run)."""

    def __init__(self, processes: Processes, num_batches: int):
        if num_batches < processes.world_size:
            raise SettingError(
                f"{num_batches} calibration micro-batches cannot be shared by {processes.world_size} processes",
                field="num_samples", hint=f"raise {setting('num_samples')} or lower {setting('batch_size')}",
            )
        self.processes, self.num_batches = processes, num_batches
        self.batch_ids = processes.shard(range(num_batches))


def _prune_block(stream: _BlockStream, method, targets: Targets, report, shards: _Shards, progress: bool = False) -> None:
    from tqdm.auto import tqdm

    block, index = stream.block, stream.index
    stats_dtype = getattr(torch, targets.config.stats_dtype)
    groups = module_groups(block, targets.of(index), stream.calls[0])
    modules = [named for group in groups for named in group]
    collected: dict[str, dict[str, torch.Tensor]] = {}
    needed = method.block_statistics()
    if needed:  # every module's statistics in one forward, before any is pruned
        readable = [(rel, m, weight_layout(m)) for rel, m in modules if has_input_features(m, weight_layout(m))]
        collected = block_input_stats(block, readable, stream.calls, needed, stats_dtype, shards.processes)

    def job_of(rel_name: str, module: nn.Module, stats: dict[str, torch.Tensor] | None = None) -> ModuleJob:
        name = targets.name(index, rel_name)
        return ModuleJob(
            name, module, weight_layout(module), targets.pattern(name), index, block, stream.calls,
            blocks=stream.blocks, param_name=f"{rel_name}.weight",
            dense_calls=stream.dense_calls, dense_overrides=dict(stream.dense_weights), stats_dtype=stats_dtype,
            batch_ids=shards.batch_ids, num_batches=shards.num_batches, processes=shards.processes,
            stats=dict(collected.get(rel_name, {})) if stats is None else stats,
        )

    # the units solved at once: the whole block, the groups reading one input, or each module
    if method.prunes_blocks:
        units, prune, kind = ([modules] if modules else []), method.prune_block, "block"
    elif method.prunes_groups:
        units, prune, kind = groups, method.prune_group, "group"
    else:
        units, prune, kind = [[m] for m in modules], None, "module"
    bar = tqdm(units, desc=f"block {index}", unit=kind, leave=False, disable=not progress, dynamic_ncols=True)
    for unit in bar:
        bar.set_postfix_str(" + ".join(rel_name for rel_name, _ in unit), refresh=False)
        t0 = time.perf_counter()
        # none of the unit is pruned yet; a group's members read one tensor, so Linear and
        # Conv1D members (whose statistics are of that tensor's last dimension) share theirs
        shared = {} if kind == "group" else None
        jobs = [job_of(rel_name, module, shared if weight_layout(module) in ("linear", "conv1d") else None)
                for rel_name, module in unit]
        diagnostics = [_diagnostics(job, method) for job in jobs]
        joint = kind == "block" or (kind == "group" and len(jobs) > 1)  # a group of one is a module
        results = prune(jobs) if joint else [method.prune_module(jobs[0])]
        if len(results) != len(jobs):
            raise RuntimeError(f"{type(method).__name__}.prune_{kind} gave {len(results)} results for {len(jobs)} modules")
        share = (time.perf_counter() - t0) / len(jobs)  # each module gets its share of a joint solve's time
        for job, result, found in zip(jobs, results, diagnostics):
            _write_result(stream, report, job, result, share, found, method)


def _write_result(stream: _BlockStream, report: PruneReport, job: ModuleJob, result, seconds: float,
                  diagnostics: dict | None, method: Method) -> None:
    """Write a method's result into the model (keeping the dense weight for the dense
    stream first) and add the module's line to the report."""
    module, layout = job.module, job.layout
    stream.remember_dense(job.param_name, module.weight)
    _write_weight(module, layout, result.weight_rows, result.mask_rows)
    sparsity = float((module.weight == 0).float().mean())
    report.layers.append(
        LayerReport(
            name=job.name,
            block=job.block_index,
            shape=list(module.weight.shape),
            layout=layout,
            sparsity=sparsity,
            seconds=seconds,
            partial_groups=_partial_groups(result.mask_rows, job.pattern),
            metrics=result.metrics,
            diagnostics=diagnostics,
        )
    )
    layer_logger.info(layer_line(report.layers[-1], method))


def layer_line(layer: LayerReport, method: type[Method] | Method = Method) -> str:
    """One line on a pruned layer: its sparsity, what ``method`` says of its result
    (:meth:`Method.layer_text <snows_hf.methods.Method.layer_text>`: for SNOWS, the held-out
    window loss before and after the re-fit, Newton steps and CG iterations), seconds.

    Example:
        >>> layer_line(LayerReport("h.0.fc", 0, [4, 8], "linear", 0.5, 1.25))
        'h.0.fc: 50.0% sparse, 1.2 s'
    """
    return f"{layer.name}: {layer.sparsity:.1%} sparse{method.layer_text(layer.metrics)}, {layer.seconds:.1f} s"


def _block_weights(targets: Targets, index: int) -> dict[str, torch.Tensor]:
    return {f"{targets.name(index, rel)}.weight": module.weight for rel, module in targets.of(index)}


def _save_block(checkpoint: RunCheckpoint, index: int, targets: Targets, report: PruneReport) -> None:
    patterns = {name: pattern.fraction for name, pattern in targets.patterns.items()}
    checkpoint.save_block(index, _block_weights(targets, index), [asdict(layer) for layer in report.layers], patterns)


@torch.no_grad()
def _restore_block(stream: _BlockStream, targets: Targets, weights: dict[str, torch.Tensor]) -> None:
    """Put a finished block's pruned weights back, keeping the dense ones for the dense stream
    (what :meth:`_BlockStream.propagate` then needs, as after pruning the block).

    The saved tensors must be exactly this block's targets, each of its weight's shape and
    dtype, and follow its pattern (a saved weight equal to the dense one is a module that
    never ran, so it was never pruned); all are checked before any is written."""
    from .checkpoint import CheckpointError
    from .masks import satisfies

    index = stream.index
    modules = {f"{targets.name(index, rel)}.weight": (rel, module) for rel, module in targets.of(index)}
    unknown = sorted(set(weights) - set(modules))
    if unknown:
        raise CheckpointError(f"block {index} of the checkpoint holds {unknown[0]}, which this run does not prune")
    for key, (rel, module) in modules.items():
        saved, param = weights.get(key), module.weight
        if saved is None:
            raise CheckpointError(f"block {index} of the checkpoint has no weight {key}")
        if saved.shape != param.shape or saved.dtype != param.dtype:
            raise CheckpointError(f"block {index} of the checkpoint holds {key} as {list(saved.shape)} "
                                  f"{str(saved.dtype).replace('torch.', '')}, the model's is {list(param.shape)} "
                                  f"{str(param.dtype).replace('torch.', '')}")
        pattern = targets.pattern(targets.name(index, rel))
        kept = to_rows(saved, weight_layout(module)) != 0
        if not torch.equal(saved, param.detach().to(saved.device)) and not satisfies(kept, pattern, at_most=True):
            raise CheckpointError(f"block {index} of the checkpoint holds {key} not in the {pattern.label} pattern")
    for key, (rel, module) in modules.items():
        stream.remember_dense(f"{rel}.weight", module.weight)
        module.weight.copy_(weights[key].to(module.weight.device))


def _diagnostics(job: ModuleJob, method) -> dict | None:
    """Magnitude vs Hessian-scaled masks on this layer; statistics the selector needs are
    collected in the same pass. ``None`` where input statistics are not available."""
    selector = get_selector(method.mask_selector)
    if not method.config.diagnostics:
        return None
    try:
        stats = job.input_stats(selector.needs | {"input_sq"})
    except ValueError as err:
        if selector.needs:
            raise
        logger.debug("%s: no diagnostics (%s)", job.name, err)
        return None
    return importance_diagnostics(job.weight_rows(), stats["input_sq"], job.pattern)


def _warn(report: PruneReport, message: str) -> None:
    logger.warning(message)
    report.warnings.append(message)


def _log_summary(report: PruneReport, method: Method) -> None:
    report.solver = method.run_figures(report)
    for line in method.run_lines(report.solver):
        logger.info("%s", line)
    partial = [layer.name for layer in report.layers if layer.partial_groups]
    if partial:
        logger.warning(
            "%d layers have inputs not divisible by M (last group per row pruned at the same share, "
            "not N:M-accelerable): %s", len(partial), ", ".join(partial[:3]) + (" ..." if len(partial) > 3 else ""),
        )
    if method.mask_selector == "magnitude":
        line = magnitude_warning([(layer.name, layer.diagnostics) for layer in report.layers])
        if line:
            logger.warning(line)


def _check_all_pruned(report: PruneReport) -> None:
    if not report.layers:
        raise RuntimeError("no module was pruned: the blocks hold no Linear/Conv1D/Conv2d targets that ran")
