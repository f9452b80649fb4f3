"""Input statistics of the modules of a block: their inputs as ``(tokens, features)``
matrices (:func:`input_features`, Conv2d unfolded by its own kernel and padding), and the
sums mask selectors read from them (:class:`InputStats`), collected with forward hooks
that are always removed, for one module (:meth:`~snows_hf.methods.ModuleJob.input_stats`)
or for every module of a block in one forward (:func:`block_input_stats`).

Nothing here knows a pruning method: the pipeline (global allocation, block statistics)
and the methods both read it.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from .blocks import run_block, tracked_hooks
from .distributed import Processes
from .fields import SettingError, setting


@torch.no_grad()
def modules_inputs(block: nn.Module, modules: list[tuple[str, nn.Module, str]], calls: list, indices: Iterable[int],
                   overrides: dict[str, torch.Tensor] | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """For each call in ``indices``, the input of every ``(name, module, layout)`` of
    ``block`` as ``(tokens, features)`` (:func:`input_features`, at least float32), by name:
    one block forward per call, with parameters ``overrides`` (names relative to the
    block) in place of the block's own. A module run twice in one forward gives its first
    input. The hooks are always removed.

    Example:
        >>> from snows_hf.blocks import BlockCall
        >>> block = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
        >>> call = BlockCall((torch.ones(4, 2),), {})
        >>> found = next(modules_inputs(block, [("1", block[1], "linear")], [call], [0]))
        >>> found["1"].shape
        torch.Size([4, 3])
    """
    seen: dict[str, torch.Tensor] = {}
    active = [False]  # two of these generators may be open at once on the same modules

    def hook_for(name: str, layout: str):
        def grab(module: nn.Module, args: tuple, output: Any) -> None:
            if active[0] and name not in seen:
                x = input_features(module, layout, args[0])
                seen[name] = x.to(torch.promote_types(x.dtype, torch.float32))

        return grab

    with _hooked(modules, hook_for):
        for i in indices:
            seen.clear()
            active[0] = True
            try:
                run_block(block, calls[i], overrides)
            finally:
                active[0] = False
            yield dict(seen)


class InputStats:
    """Sums over a module's inputs that mask selectors read (see
    :meth:`~snows_hf.methods.ModuleJob.input_stats`), added micro-batch by micro-batch.

    Example:
        >>> sums = InputStats(nn.Linear(2, 1), "linear", {"input_sq", "gram"}, torch.float64)
        >>> terms = sums.add(torch.tensor([[1.0, 2.0], [3.0, 0.0]]))
        >>> {k: v.tolist() for k, v in sorted(sums.result(Processes()).items())}
        {'gram': [[10.0, 2.0], [2.0, 4.0]], 'input_sq': [10.0, 4.0]}
    """

    KINDS = frozenset({"input_sq", "gram"})

    def __init__(self, module: nn.Module, layout: str, needs: Iterable[str], dtype: torch.dtype) -> None:
        unknown = set(needs) - self.KINDS
        if unknown:
            raise ValueError(f"unknown input statistics {sorted(unknown)}")
        self.module, self.layout, self.dtype = module, layout, dtype
        self.gram_needed = "gram" in set(needs)
        self.sq: torch.Tensor | None = None
        self.gram: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Add one micro-batch of inputs, ``(tokens, features)`` as :func:`input_features`
        gives them; returns what it added (``(input_sq, gram)``) for :meth:`add_terms`."""
        x = x.to(self.dtype)
        terms = (x.pow(2).sum(0), x.T @ x if self.gram_needed else None)
        self.add_terms(terms)
        return terms

    def add_terms(self, terms: tuple[torch.Tensor, torch.Tensor | None]) -> None:
        """Add what :meth:`add` of another module's sums computed for the same input tensor
        (modules reading one tensor, such as q/k/v projections, share its Gram matrix)."""
        sq, gram = terms
        self.sq = sq if self.sq is None else self.sq + sq
        if self.gram_needed:
            self.gram = gram if self.gram is None else self.gram + gram

    def result(self, processes: Processes) -> dict[str, torch.Tensor]:
        """The sums over every micro-batch of every process (``input_sq`` always, ``gram`` when asked)."""
        sq = processes.sum(self.sq)
        positions = _kernel_positions(self.module) if self.layout == "conv2d" else 1
        found = {"input_sq": sq.reshape(positions, -1) if positions > 1 else sq}
        if self.gram is not None:
            found["gram"] = processes.sum(self.gram)
        return found


@torch.no_grad()
def block_input_stats(block: nn.Module, modules: list[tuple[str, nn.Module, str]], calls: list, needs: Iterable[str],
                      dtype: torch.dtype, processes: Processes) -> dict[str, dict[str, torch.Tensor]]:
    """The input statistics ``needs`` of every ``(name, module, layout)`` of ``block``, in
    one forward of the block per call, before any of them is pruned: what SparseGPT's
    reference and llm-compressor collect. Each module's figures equal what
    :meth:`~snows_hf.methods.ModuleJob.input_stats` finds for it while the modules before
    it are still dense.
    The hooks are always removed.

    Example:
        >>> block = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))  # doctest: +SKIP
        >>> block_input_stats(block, [("0", block[0], "linear")], calls, {"input_sq"}, torch.float32, Processes())  # doctest: +SKIP
        {'0': {'input_sq': tensor([...])}}
    """
    needs = set(needs)
    sums = {name: InputStats(module, layout, needs, dtype) for name, module, layout in modules}
    seen: set[str] = set()  # a module run twice in one forward counts its first input, as input_stats does
    # Per call: input tensor -> the terms its statistics added, so modules reading the same
    # tensor (q/k/v, gate/up) compute its Gram matrix once. The tensor is held until the
    # call ends, so no other tensor can take its id meanwhile. Conv2d inputs are unfolded
    # by each module's own kernel, so they are not shared.
    shared: dict[int, tuple[torch.Tensor, tuple]] = {}

    def hook_for(name: str, layout: str):
        def grab(module: nn.Module, args: tuple, output: Any) -> None:
            if name in seen:
                return
            seen.add(name)
            raw = args[0]
            if layout != "conv2d" and id(raw) in shared and shared[id(raw)][0] is raw:
                sums[name].add_terms(shared[id(raw)][1])
                return
            x = input_features(module, layout, raw)
            terms = sums[name].add(x.to(torch.promote_types(x.dtype, torch.float32)))
            if layout != "conv2d":
                shared[id(raw)] = (raw, terms)

        return grab

    with _hooked(modules, hook_for):
        for call in calls:
            seen.clear()
            shared.clear()
            run_block(block, call)
            shared.clear()
    return {name: s.result(processes) for name, s in sums.items()}


@contextlib.contextmanager
def _hooked(modules: list[tuple[str, nn.Module, str]], hook_for: Any) -> Iterator[None]:
    """``hook_for(name, layout)`` on each module as a forward hook, always removed on exit."""
    with tracked_hooks() as hooks:
        for name, module, layout in modules:
            hooks.append(module.register_forward_hook(hook_for(name, layout)))
        yield


def _kernel_positions(module: nn.Module) -> int:
    return int(module.weight.shape[2] * module.weight.shape[3])


def has_input_features(module: nn.Module, layout: str) -> bool:
    """Whether :func:`input_features` reads this module's inputs (every module but a grouped
    Conv2d, whose output channels each read only their group's inputs).

    Example:
        >>> has_input_features(nn.Conv2d(4, 4, 3, groups=2), "conv2d"), has_input_features(nn.Linear(2, 2), "linear")
        (False, True)
    """
    return layout != "conv2d" or module.groups == 1


def conv_padding(module: nn.Conv2d) -> tuple[int, int, int, int]:
    """The padding a Conv2d applies to its input, as ``F.pad`` takes it: ``(left, right,
    top, bottom)``. ``"valid"`` pads nothing; ``"same"`` (stride 1) pads ``dilation *
    (kernel - 1)`` per dimension, the smaller half first, as torch does (so one more on the
    right and bottom for an even kernel); a number pads both sides alike.

    Example:
        >>> conv_padding(nn.Conv2d(1, 1, kernel_size=(3, 4), padding="same"))
        (1, 2, 1, 1)
    """
    if module.padding == "valid":
        return (0, 0, 0, 0)
    if module.padding == "same":
        pads: list[int] = []
        for kernel, dilation in reversed(list(zip(module.kernel_size, module.dilation))):  # width first
            total = dilation * (kernel - 1)
            pads += [total // 2, total - total // 2]
        return tuple(pads)  # type: ignore[return-value]
    top, left = module.padding
    return (left, left, top, top)


def input_features(module: nn.Module, layout: str, x: torch.Tensor) -> torch.Tensor:
    """A module's input as ``(tokens, features)``, features matching its weight columns.

    Linear and Conv1D: the last dimension. Conv2d: every receptive field of the input as
    the module pads it (:func:`conv_padding`, with its ``padding_mode``), features ordered
    kernel-position-major so they line up with the ``(out * positions, in)`` weight view,
    one row per output pixel.

    Example:
        >>> conv = nn.Conv2d(2, 4, kernel_size=3, padding="same")
        >>> input_features(conv, "conv2d", torch.randn(1, 2, 5, 5)).shape
        torch.Size([25, 18])
    """
    if layout != "conv2d":
        return x.reshape(-1, x.shape[-1])
    if not has_input_features(module, layout):
        raise SettingError(
            f"input statistics for grouped Conv2d are not supported ({module})",
            field="mask", hint=f"use {setting('mask', 'magnitude')} or leave the module out with {setting('ignore')}",
        )
    n, c = x.shape[:2]
    left, right, top, bottom = conv_padding(module)
    padding: Any = (top, left)
    if module.padding_mode != "zeros" or (left, top) != (right, bottom):  # what unfold's own zero padding cannot do
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x, padding = torch.nn.functional.pad(x, (left, right, top, bottom), mode=mode), 0
    cols = torch.nn.functional.unfold(
        x, module.kernel_size, dilation=module.dilation, padding=padding, stride=module.stride
    )  # (n, c * positions, pixels), channel-major
    positions = cols.shape[1] // c
    return cols.reshape(n, c, positions, -1).permute(0, 3, 2, 1).reshape(-1, positions * c)
