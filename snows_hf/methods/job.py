"""What a method gets to prune one module: a :class:`ModuleJob`, the module with its
pattern, its block and that block's calibration inputs, and its input statistics on
request (:mod:`snows_hf.statistics`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from ..distributed import Processes
from ..masks import SparsityPattern, to_rows
from ..statistics import InputStats, modules_inputs


@dataclass
class ModuleJob:
    """Everything a method may use to prune one module.

    Attributes:
        name: full module name in the model.
        module: the module itself (its weight is still the current, unpruned one).
        layout: weight layout (``linear``, ``conv1d`` or ``conv2d``).
        pattern: the sparsity pattern to meet.
        block_index: index of the enclosing block.
        block: the enclosing block, on the execution device.
        calls: the block's calibration inputs (one :class:`~snows_hf.pipeline.BlockCall` per
            micro-batch), as the partly pruned network produces them.
        blocks: every block of the model (windows may run on into later blocks).
        param_name: the weight's name relative to ``block`` (``"mlp.fc1.weight"``).
        dense_calls: the dense network's own inputs to this block, when the method asked
            for them (``needs_dense_stream``), else ``None``.
        dense_overrides: dense weights of the modules of this block pruned before this
            one (names relative to the block), to run the block as the dense model.
        stats_dtype: dtype in which input statistics are accumulated.
        batch_ids: global micro-batch index of each of ``calls`` (data-parallel runs hold
            a shard; default: ``0 .. len(calls) - 1``).
        num_batches: micro-batches across all processes (default: ``len(calls)``).
        processes: the run's :class:`~snows_hf.distributed.Processes` (sums across them).
        stats: input statistics already collected for this module (by
            :func:`~snows_hf.statistics.block_input_stats`); :meth:`input_stats` adds what it computes.
    """

    name: str
    module: nn.Module
    layout: str
    pattern: SparsityPattern
    block_index: int
    block: nn.Module
    calls: list
    blocks: Any = None  # the model's BlockList
    param_name: str = "weight"
    dense_calls: list | None = None
    dense_overrides: dict[str, torch.Tensor] = field(default_factory=dict)
    stats_dtype: torch.dtype = torch.float32
    batch_ids: list[int] | None = None
    num_batches: int | None = None
    processes: Processes = field(default_factory=Processes)
    stats: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.batch_ids is None:
            self.batch_ids = list(range(len(self.calls)))
        if self.num_batches is None:
            self.num_batches = len(self.calls)
        self._positions = {b: i for i, b in enumerate(self.batch_ids)}

    def local_index(self, batch_id: int) -> int:
        """Position in ``calls`` of global micro-batch ``batch_id`` (this process's)."""
        return self._positions[batch_id]

    def weight_rows(self) -> torch.Tensor:
        """The current weight as a detached ``(rows, inputs)`` matrix."""
        return to_rows(self.module.weight.detach(), self.layout)

    @torch.no_grad()
    def module_inputs(self, indices: Iterable[int], dense: bool = False) -> Iterator[torch.Tensor]:
        """The module's input, as ``(tokens, features)``, for each call in ``indices``.

        ``dense=False``: as the partly pruned network feeds it (``calls``); ``dense=True``:
        as the dense network does (``dense_calls`` with ``dense_overrides``), sample for
        sample in the same order. One block forward per call; the hook is always removed.
        """
        calls, overrides = (self.dense_calls, self.dense_overrides) if dense else (self.calls, None)
        if calls is None:
            raise RuntimeError("the dense stream was not kept for this method")
        for found in modules_inputs(self.block, [(self.name, self.module, self.layout)], calls, indices, overrides):
            yield found[self.name]

    def input_stats(self, needs: Iterable[str]) -> dict[str, torch.Tensor]:
        """Statistics of the module's inputs over all calls, as mask selectors ask for them.

        ``input_sq``: the diagonal of ``X^T X`` (the sum over every token of each squared
        input feature), shape ``(inputs,)``, or ``(positions, inputs)`` for Conv2d;
        ``gram``: the full ``X^T X``. Streamed micro-batch by micro-batch in
        ``stats_dtype`` on the block's device, in one pass for everything asked, summed
        across data-parallel processes, and kept for the job's later calls.
        """
        missing = set(needs) - set(self.stats)
        if not missing:
            return {k: self.stats[k] for k in needs}
        sums = InputStats(self.module, self.layout, missing, self.stats_dtype)
        for x in self.module_inputs(range(len(self.calls))):
            sums.add(x)
        self.stats.update(sums.result(self.processes))
        return {k: self.stats[k] for k in needs}
