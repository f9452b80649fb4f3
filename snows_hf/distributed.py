"""Data-parallel pruning: several processes, each with a shard of the calibration micro-batches.

Launched with ``torchrun`` or ``accelerate launch``, every process loads the model and
builds the same calibration micro-batches, then keeps every ``world_size``-th one. Each
statistic, loss, gradient and Hessian-vector product is a sum of per-micro-batch terms,
so every process computes its own terms and :meth:`Processes.sum` adds them up across
processes (an all-reduce): all processes take identical steps and hold identical
weights, and the run matches a one-process run on the same micro-batches up to
floating-point summation order. Only the main process writes outputs.

Example:
    >>> one = Processes()
    >>> one.shard(["a", "b", "c"]), one.is_main
    (['a', 'b', 'c'], True)
"""

from __future__ import annotations

import datetime
import os
from typing import Any, Sequence

import torch

from .solver import BatchShard


class Processes:
    """The processes of one run: this one's ``rank``, how many there are, and sums across them.

    The default is a single process, where every operation is the identity.

    Example:
        >>> Processes(rank=1, world_size=2).shard([0, 1, 2, 3, 4])
        [1, 3]
    """

    def __init__(self, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of {world_size} processes")
        self.rank, self.world_size = rank, world_size

    @property
    def is_main(self) -> bool:
        """Whether this process writes outputs, logs progress and pushes."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world_size > 1

    def owns(self, index: int) -> bool:
        """Whether global micro-batch ``index`` is this process's."""
        return index % self.world_size == self.rank

    def shard(self, items: Sequence[Any]) -> list:
        """This process's items: every ``world_size``-th, from ``rank`` on."""
        return list(items[self.rank :: self.world_size])

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of ``tensor`` over all processes (a new tensor; ``tensor`` is untouched)."""
        if not self.parallel:
            return tensor
        import torch.distributed as dist

        total = tensor.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    def batch_shard(self, global_index: Any) -> BatchShard:
        """The solver's view: a batch is this process's when ``global_index(batch)`` is."""
        if not self.parallel:
            return BatchShard()
        return BatchShard(owns=lambda batch: self.owns(global_index(batch)), reduce=self.sum)

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.parallel:
            import torch.distributed as dist

            dist.barrier()

    def finish(self) -> None:
        """Leave the process group (nothing to do in a single process)."""
        import torch.distributed as dist

        if self.parallel and dist.is_initialized():
            dist.destroy_process_group()

    def device(self, device: torch.device) -> torch.device:
        """This process's own accelerator when ``device`` names a type but no index."""
        if self.parallel and device.type != "cpu" and device.index is None:
            return torch.device(device.type, int(os.environ.get("LOCAL_RANK", self.rank)))
        return device


def current_processes() -> Processes:
    """The processes of the ``torch.distributed`` group this process belongs to, if any.

    Example:
        >>> current_processes().world_size
        1
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return Processes(dist.get_rank(), dist.get_world_size())
    return Processes()


def launched_processes() -> int:
    """How many processes the launcher (``torchrun``, ``accelerate launch``) started."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def start_processes(device: torch.device, timeout_minutes: float = 120.0) -> Processes:
    """Join the launcher's process group (gloo on CPU, the accelerator's backend otherwise).

    Nothing happens in a single process. Uses :class:`accelerate.PartialState`, so
    ``torchrun`` and ``accelerate launch`` both work. The timeout covers the longest
    stretch one process may wait for the others (the main process evaluating or saving).

    Example:
        >>> start_processes(torch.device("cpu")).world_size  # without a launcher
        1
    """
    if launched_processes() <= 1:
        return Processes()
    from accelerate import PartialState

    state = PartialState(cpu=device.type == "cpu", timeout=datetime.timedelta(minutes=timeout_minutes))
    return Processes(state.process_index, state.num_processes)
