"""Which targeted modules of a block run, in what order, and which of them read one input.

One traced forward of the block (one calibration call) answers both: the order in which
the targets first run (the pipeline prunes them in it, so each module's inputs come from
the ones pruned before it), and the runs of consecutive targets whose first input is the
same tensor (``q/k/v_proj``, ``gate/up_proj``), which a group re-fit solves together.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from .blocks import BlockCall, run_block, tracked_hooks

logger = logging.getLogger(__name__)

Named = tuple[str, nn.Module]


def module_groups(block: nn.Module, targets: list[Named], call: BlockCall) -> list[list[Named]]:
    """``targets`` sorted by when they first run in one traced forward of ``block``, in
    runs of consecutive ones that read one input tensor; a module sharing its input with
    no neighbour is a group of one. Modules that never run on this input (unused
    branches) are left out, with a warning: pruning them without data would be blind.

    Example:
        >>> class Fork(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.a, self.b, self.c = nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2)
        ...     def forward(self, x):
        ...         return self.c(self.a(x) * self.b(x))
        >>> fork = Fork()
        >>> groups = module_groups(fork, list(fork.named_children()), BlockCall((torch.ones(1, 2),), {}))
        >>> [[name for name, _ in group] for group in groups]
        [['a', 'b'], ['c']]
    """
    order: dict[int, int] = {}
    inputs: dict[int, torch.Tensor | None] = {}  # held to the end, so no two inputs share an id

    def record(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if id(module) not in order:
            order[id(module)] = len(order)
            inputs[id(module)] = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)

    with tracked_hooks() as hooks, torch.no_grad():
        for _, module in targets:
            hooks.append(module.register_forward_hook(record, with_kwargs=True))
        run_block(block, call)
    skipped = [name for name, module in targets if id(module) not in order]
    if skipped:
        logger.warning("not pruned (never ran on the calibration input): %s", ", ".join(skipped))
    groups: list[list[Named]] = []
    for name, module in sorted((t for t in targets if id(t[1]) in order), key=lambda t: order[id(t[1])]):
        first = inputs[id(groups[-1][0][1])] if groups else None
        if first is not None and inputs[id(module)] is first:
            groups[-1].append((name, module))
        else:
            groups.append([(name, module)])
    return groups


def execution_order(block: nn.Module, targets: list[Named], call: BlockCall) -> list[Named]:
    """``targets`` sorted by when they first run in one traced forward of ``block``
    (:func:`module_groups`, flattened).

    Example:
        >>> block = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
        >>> [name for name, _ in execution_order(block, list(block.named_children())[::-1], BlockCall((torch.ones(1, 2),), {}))]
        ['0', '1']
    """
    return [named for group in module_groups(block, targets, call) for named in group]
