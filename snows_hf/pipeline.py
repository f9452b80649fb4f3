"""The block loop: capture block inputs, prune each targeted module, propagate.

    capture inputs (+ kwargs) of block 0 -> for each block:
        for each targeted module in execution order: method -> write weight
        run the block on its inputs to get the next block's inputs

Activations are kept as one :class:`BlockCall` per calibration micro-batch: the
positional and keyword arguments the model itself passed to the block (attention masks,
rotary position embeddings, ...), so blocks run exactly as inside the model.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Iterable, Iterator, Mapping

import torch
from torch import nn

from .activations import ActivationSpace, ActivationStore
from .adapters import BlockList, block_targets, check_patterns, checkpoint_names, find_block_list, weight_layout
from .blocks import BlockCall, run_block, tracked_hooks
from .masks import SparsityPattern, from_rows, get_selector, to_rows
from .masks.allocation import allocate_global
from .masks.diagnostics import importance_diagnostics, magnitude_warning
from .methods import ModuleJob, get_method, input_features
from .report import LayerReport, PruneReport

logger = logging.getLogger(__name__)


class _StopForward(Exception):
    """Raised by the capture hook so the model stops right after its embeddings."""


def _model_input_device(model: nn.Module) -> torch.device:
    try:  # vision models (ResNet, ...) have no input embeddings and may raise for asking
        return next(model.get_input_embeddings().parameters()).device
    except (AttributeError, StopIteration, NotImplementedError):
        return next(model.parameters()).device


def capture_block_inputs(
    model: nn.Module, first_block: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], device: torch.device,
    store: Any = None,
) -> Any:
    """Run the model's real embeddings on each batch and keep what reaches ``first_block``.

    A pre-forward hook records the block's positional and keyword arguments, then stops
    the forward pass, so nothing after the embeddings runs. Captured tensors are moved
    to ``device``, or appended to ``store`` (an :class:`~snows_hf.activations.ActivationStore`,
    returned) when one is given. Caches are switched off for the capture (``use_cache=False``).

    Example:
        >>> calls = capture_block_inputs(model, model.model.layers[0], batches, torch.device("cpu"))  # doctest: +SKIP
    """
    calls: Any = [] if store is None else store

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        call = BlockCall(args, kwargs)
        calls.append(call.to(device) if store is None else call)
        raise _StopForward

    extra = {"use_cache": False} if getattr(model.config, "use_cache", None) is not None else {}
    input_device = _model_input_device(model)
    with tracked_hooks() as hooks, torch.no_grad():
        hooks.append(first_block.register_forward_pre_hook(hook, with_kwargs=True))
        for batch in batches:
            inputs = {k: (v.to(input_device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
            try:
                model(**inputs, **extra)
            except _StopForward:
                continue
            raise RuntimeError("the model finished its forward pass without calling its first block")
    return calls


def execution_order(block: nn.Module, targets: list[tuple[str, nn.Module]], call: BlockCall) -> list[tuple[str, nn.Module]]:
    """Sort ``targets`` by when they first run in one traced forward of ``block``.

    Modules that never run on this input (unused branches) are left out: pruning them
    without data would be blind.
    """
    order: dict[int, int] = {}

    def record(module: nn.Module, args: tuple, output: Any) -> None:
        order.setdefault(id(module), len(order))

    with tracked_hooks() as hooks, torch.no_grad():
        for _, module in targets:
            hooks.append(module.register_forward_hook(record))
        run_block(block, call)
    used = [t for t in targets if id(t[1]) in order]
    skipped = [name for name, module in targets if id(module) not in order]
    if skipped:
        logger.warning("not pruned (never ran on the calibration input): %s", ", ".join(skipped))
    return sorted(used, key=lambda t: order[id(t[1])])


def _write_weight(module: nn.Module, layout: str, weight_rows: torch.Tensor, mask_rows: torch.Tensor) -> None:
    weight = module.weight
    new = from_rows((weight_rows * mask_rows).to(weight.dtype), layout, weight.shape)
    with torch.no_grad():
        weight.copy_(new.to(weight.device))


def _partial_groups(layout_rows: torch.Tensor, pattern) -> int:
    if not pattern.is_nm or layout_rows.shape[1] % pattern.m == 0:
        return 0
    return layout_rows.shape[0]


class _Targets:
    """Which modules of each block are pruned, and at what pattern (global allocation)."""

    def __init__(self, model: nn.Module, config: Any, blocks: BlockList):
        self.model, self.config, self.blocks = model, config, blocks
        wanted = bool(config.targets or config.ignore)
        self.saved_names = checkpoint_names(model) if wanted else {}
        self.tied = _tied_parameters(model)
        self._of: dict[int, list[tuple[str, nn.Module]]] = {}
        unmatched = check_patterns(blocks.modules, blocks.names, config.targets, self.saved_names)
        if unmatched:
            raise ValueError(
                f"--targets {' '.join(map(repr, unmatched))} matches no Linear/Conv1D/Conv2d module in the "
                f"blocks at {blocks.path} (names look like {self._example()})"
            )
        unused = check_patterns(blocks.modules, blocks.names, config.ignore, self.saved_names)
        if unused:
            logger.warning("--ignore %s matches no module in the blocks", " ".join(map(repr, unused)))
        self.patterns: dict[str, SparsityPattern] = {}
        if not any(self.of(i) for i in range(len(blocks))):
            raise ValueError(f"no module is left to prune in the blocks at {blocks.path} (check --targets / --ignore)")

    def _example(self) -> str:
        names = [f"{self.blocks.names[0]}.{n}" for n, m in self.blocks.modules[0].named_modules() if weight_layout(m)]
        return ", ".join(names[:2] + [self.saved_names[n] for n in names[:1] if n in self.saved_names]) or "?"

    def of(self, index: int) -> list[tuple[str, nn.Module]]:
        """The targeted modules of block ``index`` (names relative to the block); weights
        tied to another parameter (shared embeddings, shared layers) are never pruned."""
        if index not in self._of:
            cfg = self.config
            found = block_targets(
                self.blocks.modules[index], self.model, self.blocks.names[index], cfg.targets, cfg.ignore, self.saved_names
            )
            self._of[index] = [(name, module) for name, module in found if id(module.weight) not in self.tied]
        return self._of[index]

    def name(self, index: int, rel_name: str) -> str:
        """Full module name of ``rel_name`` in block ``index``."""
        return f"{self.blocks.names[index]}.{rel_name}"

    def pattern(self, name: str) -> SparsityPattern:
        return self.patterns.get(name, self.config.pattern)

    def allocate(self, calls: Any, selector: str, space: Any) -> None:
        """Global allocation: per-layer sparsities from one threshold on dense-model scores."""
        cfg = self.config
        score = _allocation_score(selector)
        modules = {self.name(i, n): m for i in range(len(self.blocks)) for n, m in self.of(i)}
        input_sq = _dense_input_sq(self, calls, space) if score.needs else {}

        def scores_of(name: str, module: nn.Module):
            return lambda: score.score(to_rows(module.weight.detach(), weight_layout(module)), {"input_sq": input_sq.get(name)})

        try:
            counts = allocate_global({n: scores_of(n, m) for n, m in modules.items()}, cfg.pattern.fraction, cfg.max_layer_sparsity)
        except ValueError as err:
            raise ValueError(f"{err}; raise --max-layer-sparsity") from None
        self.patterns = {n: SparsityPattern(fraction=counts[n] / m.weight.numel()) for n, m in modules.items()}


def _allocation_score(selector: str):
    """The score one global threshold is set on: the selector's own, or for SparseGPT the
    Hessian-scaled one (its saliency with the diagonal of ``H`` in place of ``H^-1``)."""
    return get_selector("hessian" if selector == "sparsegpt" else selector)


@torch.no_grad()
def _dense_input_sq(targets: _Targets, calls: Any, space: Any) -> dict[str, torch.Tensor]:
    """``input_sq`` of every targeted module on the dense model, one pass over the blocks."""
    sums: dict[str, torch.Tensor] = {}

    def hook_for(name: str, layout: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            sq = input_features(module, layout, args[0]).float().pow(2).sum(0)
            if layout == "conv2d":
                sq = sq.reshape(-1, module.weight.shape[1])  # (positions, inputs)
            sums[name] = sums[name] + sq if name in sums else sq

        return hook

    blocks, first = targets.blocks, calls
    for index, block in enumerate(blocks.modules):
        with tracked_hooks() as hooks:
            for rel, module in targets.of(index):
                hooks.append(module.register_forward_hook(hook_for(targets.name(index, rel), weight_layout(module))))
            following = space.store(blocks.next_call(block, call, run_block(block, call)) for call in calls)
        if calls is not first:
            calls.close()
        calls = following
    calls.close()
    return sums


def _tied_parameters(model: nn.Module) -> set[int]:
    """Ids of parameters reachable under more than one name (tied or shared weights)."""
    seen: dict[int, int] = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        seen[id(param)] = seen.get(id(param), 0) + 1
    return {key for key, count in seen.items() if count > 1}


def _check_block_inputs(model: nn.Module) -> None:
    """Refuse stacks whose blocks get different attention inputs per layer: every block
    here runs with the first block's (attention masks, rotary embeddings)."""
    layer_types = getattr(getattr(model, "config", None), "layer_types", None) or ()
    kinds = {t for t in layer_types if isinstance(t, str) and "attention" in t}  # not ResNet's "bottleneck"
    if len(kinds) > 1:
        raise ValueError(
            f"this {type(model).__name__} mixes attention types across layers ({', '.join(sorted(kinds))}); "
            "per-layer attention inputs are not supported yet"
        )


def prune_blocks(
    model: nn.Module, config: Any, batches: list[Mapping[str, torch.Tensor]], progress: bool = False
) -> PruneReport:
    """Prune every targeted module of ``model`` in place, block by block.

    This is the engine behind :func:`snows_hf.prune_`, which validates inputs first.
    """
    from tqdm.auto import tqdm

    from .devices import resolve_device

    device = resolve_device(config.device)
    method = get_method(config.method)(config)
    blocks = find_block_list(model, config.block_path)
    _check_block_inputs(model)
    num_samples = sum(int(next(iter(b.values())).shape[0]) for b in batches)
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
    targets = _Targets(model, config, blocks)
    try:
        with ActivationSpace(config.offload_activations, device, config.offload_dir) as space:
            calls = capture_block_inputs(model, blocks.modules[0], batches, device, store=space.store())
            dense_calls = calls if method.needs_dense_stream else None  # the same inputs until block 0 is pruned
            report.timings["capture"] = time.perf_counter() - start
            logger.info("captured %d micro-batches at %s (%d blocks, activations on %s)",
                        len(calls), blocks.path, len(blocks), config.offload_activations)
            with blocks_on(blocks.modules, device):
                if config.allocation == "global":
                    targets.allocate(calls, method.mask_selector, space)
                    report.timings["allocation"] = time.perf_counter() - start - report.timings["capture"]
                for index in tqdm(range(len(blocks)), desc="blocks", unit="block", disable=not progress):
                    stream = _BlockStream(blocks, index, calls, dense_calls)
                    _prune_block(stream, method, targets, report)
                    calls, dense_calls = stream.propagate(space)
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

    def remember_dense(self, param_name: str, weight: torch.Tensor) -> None:
        """Keep a pruned module's dense weight, to run this block as the dense model."""
        if self.dense_calls is not None:
            self.dense_weights[param_name] = weight.detach().clone()

    @torch.no_grad()
    def propagate(self, space: ActivationSpace) -> tuple[ActivationStore, ActivationStore | None]:
        """The next block's inputs (this pruned block's outputs, and the dense ones); this
        block's inputs are freed."""
        block, next_call = self.block, self.blocks.next_call
        calls = space.store(next_call(block, call, run_block(block, call)) for call in self.calls)
        dense = None
        if self.dense_calls is not None:
            dense = space.store(next_call(block, c, run_block(block, c, self.dense_weights)) for c in self.dense_calls)
            if self.dense_calls is not self.calls:
                self.dense_calls.close()
        self.calls.close()
        return calls, dense


@contextlib.contextmanager
def blocks_on(blocks: nn.ModuleList, device: torch.device) -> Iterator[None]:
    """Keep the blocks on the execution device for the run, then put each back where it was.

    Windows may run on into later blocks, so all blocks move together; embeddings and
    heads stay where they are (block inputs are captured on the model's own device).
    """
    homes = [next(block.parameters()).device for block in blocks]
    try:
        for block in blocks:
            block.to(device)
        yield
    finally:
        for block, home in zip(blocks, homes):
            block.to(home)


def _prune_block(stream: _BlockStream, method, targets: _Targets, report) -> None:
    block, index = stream.block, stream.index
    stats_dtype = getattr(torch, targets.config.stats_dtype)
    for rel_name, module in execution_order(block, targets.of(index), stream.calls[0]):
        t0 = time.perf_counter()
        name = targets.name(index, rel_name)
        layout = weight_layout(module)
        pattern = targets.pattern(name)
        job = ModuleJob(
            name, module, layout, pattern, index, block, stream.calls,
            blocks=stream.blocks, param_name=f"{rel_name}.weight",
            dense_calls=stream.dense_calls, dense_overrides=dict(stream.dense_weights), stats_dtype=stats_dtype,
        )
        diagnostics = _diagnostics(job, method)
        result = method.prune_module(job)
        stream.remember_dense(job.param_name, module.weight)
        _write_weight(module, layout, result.weight_rows, result.mask_rows)
        sparsity = float((module.weight == 0).float().mean())
        report.layers.append(
            LayerReport(
                name=name,
                block=index,
                shape=list(module.weight.shape),
                layout=layout,
                sparsity=sparsity,
                seconds=time.perf_counter() - t0,
                partial_groups=_partial_groups(result.mask_rows, pattern),
                metrics=result.metrics,
                diagnostics=diagnostics,
            )
        )


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


def _log_summary(report: PruneReport, method) -> None:
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
        raise RuntimeError("no module was pruned: the blocks hold no Linear/Conv1D targets that ran")
