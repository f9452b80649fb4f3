"""Which modules of each block a run prunes, and at what pattern: the pipeline's and the
dry-run plan's one answer (:class:`Targets`), with global allocation's per-layer
sparsities from one threshold on the dense model's scores.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .adapters import BlockList, block_targets, check_patterns, checkpoint_names, weight_layout
from .blocks import run_block, shared_parameters, tracked_hooks
from .distributed import Processes
from .fields import SettingError, setting
from .masks import SparsityPattern, get_selector, to_rows
from .masks.allocation import allocate_global
from .placement import BlockPlacement
from .statistics import input_features

if TYPE_CHECKING:  # the settings name the methods: a run-time import would be a circle
    from .config import PruneConfig

# the block loop's log: run logs have always shown these warnings under its name
logger = logging.getLogger("snows_hf.pipeline")


class Targets:
    """Which modules of each block are pruned, and at what pattern (global allocation):
    the pipeline's and the dry-run plan's one answer.

    Example:
        >>> targets = Targets(model, PruneConfig(sparsity="2:4"), find_block_list(model))  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, config: PruneConfig, blocks: BlockList):
        self.model, self.config, self.blocks = model, config, blocks
        wanted = bool(config.targets or config.ignore)
        self.saved_names = checkpoint_names(model) if wanted else {}
        self.tied = shared_parameters(model)
        self._of: dict[int, list[tuple[str, nn.Module]]] = {}
        unmatched = check_patterns(blocks.modules, blocks.names, config.targets, self.saved_names)
        if unmatched:
            raise SettingError(
                f"{setting('targets')} {' '.join(map(repr, unmatched))} matches no Linear/Conv1D/Conv2d module in the "
                f"blocks at {blocks.path} (names look like {self._example()})", field="targets",
            )
        unused = check_patterns(blocks.modules, blocks.names, config.ignore, self.saved_names)
        if unused:
            logger.warning("%s %s matches no module in the blocks", setting("ignore"), " ".join(map(repr, unused)))
        self.patterns: dict[str, SparsityPattern] = {}
        if not any(self.of(i) for i in range(len(blocks))):
            raise SettingError(f"no module is left to prune in the blocks at {blocks.path}", field="targets",
                               hint=f"check {setting('targets')} / {setting('ignore')}")

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

    def allocate(self, calls: Any, selector: str, space: Any, processes: Processes, place: BlockPlacement) -> None:
        """Global allocation: per-layer sparsities from one threshold on dense-model scores."""
        cfg = self.config
        score = _allocation_score(selector)
        modules = {self.name(i, n): m for i in range(len(self.blocks)) for n, m in self.of(i)}
        input_sq = _dense_input_sq(self, calls, space, processes, place) if score.needs else {}

        def scores_of(name: str, module: nn.Module):
            return lambda: score.score(to_rows(module.weight.detach(), weight_layout(module)), {"input_sq": input_sq.get(name)})

        try:
            counts = allocate_global({n: scores_of(n, m) for n, m in modules.items()}, cfg.pattern.fraction, cfg.max_layer_sparsity)
        except ValueError as err:
            raise SettingError(str(err), field="max_layer_sparsity", hint=f"raise {setting('max_layer_sparsity')}") from None
        self.patterns = {n: SparsityPattern(fraction=counts[n] / m.weight.numel()) for n, m in modules.items()}


def _allocation_score(selector: str):
    """The score one global threshold is set on: the selector's own, or for SparseGPT the
    Hessian-scaled one (its saliency with the diagonal of ``H`` in place of ``H^-1``)."""
    return get_selector("hessian" if selector == "sparsegpt" else selector)


@torch.no_grad()
def _dense_input_sq(
    targets: Targets, calls: Any, space: Any, processes: Processes, place: BlockPlacement
) -> dict[str, torch.Tensor]:
    """``input_sq`` of every targeted module on the dense model, one pass over the blocks
    (summed across data-parallel processes)."""
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
            place.need(index)
            following = space.store(blocks.next_call(block, call, run_block(block, call)) for call in calls)
        place.release_before(index + 1)
        if calls is not first:
            calls.close()
        calls = following
    calls.close()
    return {name: processes.sum(sums[name]) for name in sorted(sums)}
