"""Block calls, hooks and shared weights: the small pieces every stage that runs blocks shares."""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.func import functional_call


#: keyword under which a call of a stack that mixes block kinds (sliding-window and full
#: attention layers) carries the other kinds' arguments; :func:`run_block` never passes it on
OTHER_KINDS = "_snows_hf_other_kinds"


@dataclass
class BlockCall:
    """The arguments of one call of a block: its hidden states and everything else.

    The hidden states are the first positional argument, or the ``hidden_states``
    keyword when a model passes them by name. In a stack that mixes block kinds,
    ``kwargs`` also holds the other kinds' arguments for the same micro-batch under
    :data:`OTHER_KINDS` (plain tuples and dicts, so activation stores keep them like any
    argument), and :meth:`as_kind` switches between them.
    """

    args: tuple
    kwargs: dict

    @property
    def hidden(self) -> torch.Tensor:
        """The hidden-state input."""
        return self.args[0] if self.args else self.kwargs["hidden_states"]

    @property
    def block_kwargs(self) -> dict:
        """The keyword arguments the block itself takes (without the other kinds')."""
        if OTHER_KINDS not in self.kwargs:
            return self.kwargs
        return {k: v for k, v in self.kwargs.items() if k != OTHER_KINDS}

    def with_hidden(self, hidden: Any) -> "BlockCall":
        """The same call with new hidden states (the next block's inputs)."""
        if self.args:
            return BlockCall((hidden, *self.args[1:]), self.kwargs)
        return BlockCall((), {**self.kwargs, "hidden_states": hidden})

    def with_kinds(self, others: dict[str, "BlockCall"]) -> "BlockCall":
        """This call, carrying ``others`` (calls of blocks of other kinds, same micro-batch)
        without their hidden states.

        Example:
            >>> call = BlockCall((torch.ones(1),), {"mask": "local"})
            >>> full = call.with_kinds({"full": BlockCall((torch.zeros(1),), {"mask": "global"})}).as_kind("local", "full")
            >>> full.hidden.tolist(), full.block_kwargs
            ([1.0], {'mask': 'global'})
        """
        packs = {kind: call._bare() for kind, call in others.items()}
        return BlockCall(self.args, {**self.kwargs, OTHER_KINDS: packs}) if packs else self

    def as_kind(self, kind: str, wanted: str) -> "BlockCall":
        """The call of a block of kind ``wanted`` on the same hidden states, from this call
        of a block of kind ``kind`` (see :meth:`with_kinds`)."""
        if wanted == kind:
            return self
        others = dict(self.kwargs.get(OTHER_KINDS) or {})
        if wanted not in others:
            raise ValueError(f"this block call carries no arguments for blocks of kind {wanted!r}")
        args, kwargs = others.pop(wanted)
        others[kind] = self._bare()
        return BlockCall(args, {**kwargs, OTHER_KINDS: others}).with_hidden(self.hidden)

    def _bare(self) -> tuple[tuple, dict]:
        """``(args, kwargs)`` without hidden states or other kinds: what another kind's call keeps of this one."""
        bare = BlockCall(self.args, self.block_kwargs).with_hidden(None)
        return bare.args, bare.kwargs

    def to(self, device: torch.device) -> "BlockCall":
        """A copy with every tensor moved to ``device``."""
        return BlockCall(map_tensors(self.args, lambda t: t.to(device)), map_tensors(self.kwargs, lambda t: t.to(device)))


NextCall = Callable[[nn.Module, BlockCall, torch.Tensor], BlockCall]


def default_next_call(block: nn.Module, call: BlockCall, hidden: torch.Tensor) -> BlockCall:
    """The next block's call: the same arguments with ``block``'s output as hidden states."""
    return call.with_hidden(hidden)


def map_tensors(obj: Any, fn: Callable[[Any], Any], leaf: type = torch.Tensor) -> Any:
    """Apply ``fn`` to every ``leaf`` (tensors by default) inside nested tuples, lists and dicts."""
    if isinstance(obj, leaf):
        return fn(obj)
    if isinstance(obj, tuple):
        return tuple(map_tensors(x, fn, leaf) for x in obj)
    if isinstance(obj, list):
        return [map_tensors(x, fn, leaf) for x in obj]
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn, leaf) for k, v in obj.items()}
    return obj


@contextlib.contextmanager
def tracked_hooks() -> Iterator[list]:
    """Collect hook handles in a list; every one is removed on exit, also on error.

    Example:
        >>> with tracked_hooks() as hooks:
        ...     hooks.append(module.register_forward_hook(fn))  # doctest: +SKIP
    """
    handles: list = []
    try:
        yield handles
    finally:
        for handle in handles:
            handle.remove()


def shared_parameters(model: nn.Module) -> set[int]:
    """Ids of the parameters reachable under more than one name (tied or shared weights,
    such as an LM head tied to the embeddings): pruning or swapping one changes the others.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
        >>> net[1].weight = net[0].weight
        >>> shared_parameters(net) == {id(net[0].weight)}
        True
    """
    seen: dict[int, int] = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        seen[id(param)] = seen.get(id(param), 0) + 1
    return {key for key, count in seen.items() if count > 1}


def block_output(output: Any) -> torch.Tensor:
    """The hidden states a block returns (a tensor, or the first item of a tuple/output)."""
    if isinstance(output, torch.Tensor):
        return output
    return output[0]


_FORWARDS: ContextVar[list[int] | None] = ContextVar("snows_hf_block_forwards", default=None)


@contextlib.contextmanager
def counted_forwards() -> Iterator[list[int]]:
    """Count the :func:`run_block` calls made inside (``counted[0]``): the cost unit of a
    run, one block on one micro-batch.

    Example:
        >>> with counted_forwards() as counted:
        ...     pass
        >>> counted
        [0]
    """
    counted = [0]
    token = _FORWARDS.set(counted)
    try:
        yield counted
    finally:
        _FORWARDS.reset(token)


def run_block(block: nn.Module, call: BlockCall, overrides: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Run ``block`` on one captured call and return its hidden-state output.

    ``overrides`` maps parameter names (relative to the block) to tensors used in their
    place for this call only, e.g. the dense weights of already pruned modules.
    """
    counted = _FORWARDS.get()
    if counted is not None:
        counted[0] += 1
    if overrides:
        return block_output(functional_call(block, overrides, call.args, call.block_kwargs, strict=False))
    return block_output(block(*call.args, **call.block_kwargs))
