"""K-step reconstruction windows: a module's output and the next K operations downstream.

An *operation* is the output of a leaf module (Linear, Conv, Conv1D, norms, activation
modules; dropout and identity excluded), of an attention module, or of a block; which
modules with children count, and which modules are identities, the family's adapter says
(:attr:`Adapter.operation_classes <snows_hf.adapters.Adapter>`, ``identity_classes``). The
window of a module is found by tracing one forward pass with hooks: the module's own
output, then the next K operation outputs that *depend on its weight* (so the sibling
``k_proj`` does not count as downstream of ``q_proj``, and a repeated tensor, such as an
MLP whose output is its last Linear's output, counts once). The trace runs on through
later blocks when K is large, and simply ends with the network's last block, so windows
near the end are shorter. The window of a block re-fit (:meth:`WindowRunner.trace_block`)
is the block's output and the K operations after it that depend on any of its weights;
that of a group of modules reading one input (:meth:`WindowRunner.trace_group`) is every
member's output and the K operations after the first member that depend on any of them.

Later blocks are called as the pipeline chains them (:attr:`BlockList.next_call
<snows_hf.adapters.BlockList>`): the current block's other arguments (attention masks,
rotary embeddings) with new hidden states, or what the family's adapter says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import torch
from torch import nn

from .adapters import IDENTITY_CLASSES, OPERATION_CLASSES
from .blocks import BlockCall, run_block, tracked_hooks

if TYPE_CHECKING:
    from .adapters import Adapter, BlockList

_NOT_OPS = (nn.Dropout, nn.Identity)

OpKey = tuple[str, int]  # (module name relative to the block list, occurrence in one forward)


class _StopWindow(Exception):
    """Raised by a hook once the window's last operation has run."""


def is_operation(module: nn.Module, adapter: Adapter | None = None) -> bool:
    """Whether ``module``'s output counts as one operation of a window: a leaf module, or
    one with children whose class name holds one of the adapter's ``operation_classes``;
    never dropout, identities or the adapter's ``identity_classes`` (the defaults,
    :data:`~snows_hf.adapters.base.OPERATION_CLASSES` and
    :data:`~snows_hf.adapters.base.IDENTITY_CLASSES`, without an adapter).

    Example:
        >>> is_operation(nn.Linear(2, 2)), is_operation(nn.Sequential(nn.Linear(2, 2))), is_operation(nn.Dropout())
        (True, False, False)
    """
    name = type(module).__name__
    identities = adapter.identity_classes if adapter else IDENTITY_CLASSES
    if isinstance(module, _NOT_OPS) or name.endswith(identities):  # identity in eval
        return False
    if next(module.children(), None) is None:
        return True
    return any(part in name for part in (adapter.operation_classes if adapter else OPERATION_CLASSES))


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


@dataclass(frozen=True)
class Window:
    """The operations a module's re-fit looks at: its own output first, then K more."""

    ops: tuple[OpKey, ...]
    last_block: int

    @property
    def k(self) -> int:
        """Downstream operations beyond the module itself (shorter near the network's end)."""
        return len(self.ops) - 1

    def names(self) -> list[str]:
        """Readable names of the window's operations (``"3.mlp.fc1"``, ``"4"`` for a block)."""
        return [name if occurrence == 0 else f"{name}#{occurrence}" for name, occurrence in self.ops]


class WindowRunner:
    """Runs the blocks from ``block_index`` on, collecting window outputs through hooks.

    Use it as a context manager: hooks are registered on entry and always removed on exit.
    Inside, the parameters of the blocks it runs do not require grad (so the only graph
    built is the one through the re-fitted weight); their flags are restored on exit.

    Example:
        >>> with WindowRunner(find_block_list(model), 0, "mlp.fc1.weight") as runner:  # doctest: +SKIP
        ...     window = runner.trace(call, weight, k=3)
        ...     outputs = runner.run(call, window, {"mlp.fc1.weight": w})
    """

    def __init__(self, blocks: "BlockList", block_index: int, param_name: str | None = None):
        self.blocks = blocks.modules
        self.next_call = blocks.next_call
        self.adapter = blocks.adapter
        self.block_index = block_index
        self.param_name = param_name
        self._hooks = tracked_hooks()
        self._mode: str | None = None
        self._seen: dict[str, int] = {}
        self._wanted: dict[OpKey, int] = {}
        self._outputs: list[torch.Tensor | None] = []
        self._trace: list[tuple[OpKey, torch.Tensor]] = []
        self._trace_limit = 0
        self._trace_from: str | None = None  # a block's window starts at the block's output
        self._trace_members: frozenset[str] = frozenset()  # a group's window holds every member's output

    def __enter__(self) -> "WindowRunner":
        self._frozen = [p for b in self.blocks[self.block_index :] for p in b.parameters() if p.requires_grad]
        for param in self._frozen:
            param.requires_grad_(False)
        handles = self._hooks.__enter__()
        for index in range(self.block_index, len(self.blocks)):
            for name, module in self.blocks[index].named_modules():
                if name == "" or is_operation(module, self.adapter):
                    key = f"{index}.{name}" if name else str(index)
                    handles.append(module.register_forward_hook(self._make_hook(key)))
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)
        for param in self._frozen:
            param.requires_grad_(True)

    def _make_hook(self, key: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if self._mode is None:
                return
            occurrence = self._seen.get(key, 0)
            self._seen[key] = occurrence + 1
            tensor = _first_tensor(output)
            if tensor is None:
                return
            op = (key, occurrence)
            if self._mode == "trace":
                if self._trace_from is not None and not self._trace and key != self._trace_from:
                    return
                if tensor.requires_grad and all(tensor is not t for _, t in self._trace):
                    self._trace.append((op, tensor))
                    if self._window_full():
                        raise _StopWindow
            elif op in self._wanted:
                self._outputs[self._wanted[op]] = tensor
                if all(o is not None for o in self._outputs):
                    raise _StopWindow

        return hook

    def _window_full(self) -> bool:
        """Whether the trace holds the window: K + 1 operations, or for a group every
        member's output and K operations that are not members."""
        if not self._trace_members:
            return len(self._trace) >= self._trace_limit
        names = [name for (name, _), _ in self._trace]
        downstream = sum(1 for name in names if name not in self._trace_members)
        return downstream >= self._trace_limit - 1 and self._trace_members.issubset(names)

    def _forward(self, call: BlockCall, overrides: dict[str, torch.Tensor], last_block: int) -> None:
        self._seen = {}
        try:
            block = self.blocks[self.block_index]
            hidden = run_block(block, call, overrides)
            for index in range(self.block_index + 1, last_block + 1):
                call = self.next_call(block, call, hidden)
                block = self.blocks[index]
                hidden = run_block(block, call)
        except _StopWindow:
            pass
        finally:
            self._mode = None

    def trace(self, call: BlockCall, weight: torch.Tensor, k: int) -> Window:
        """Find the window: the module's output and the next ``k`` operations depending on ``weight``."""
        if self.param_name is None:
            raise ValueError("this WindowRunner was made without a param_name: trace a block's window with trace_block")
        return self._traced(call, {self.param_name: weight}, k, start=None)

    def trace_block(self, call: BlockCall, weights: Mapping[str, torch.Tensor], k: int) -> Window:
        """Find the window of a block re-fit: the block's output and the next ``k``
        operations depending on any of ``weights`` (parameter name relative to the block
        -> its value), running on into later blocks as :meth:`trace` does.

        Example:
            >>> with WindowRunner(find_block_list(model), 0) as runner:  # doctest: +SKIP
            ...     runner.trace_block(call, {"mlp.fc1.weight": w1, "mlp.fc2.weight": w2}, k=1).names()
            ['0', '1.layernorm_before']
        """
        return self._traced(call, weights, k, start=str(self.block_index))

    def trace_group(self, call: BlockCall, weights: Mapping[str, torch.Tensor], k: int) -> Window:
        """Find the window of a group of modules re-fitted together (modules reading one
        input: ``q/k/v_proj``, ``gate/up_proj``): every member's output, and the next ``k``
        operations that depend on any of ``weights`` (parameter name relative to the block
        -> its value; a member is the module holding the parameter) and are not members.
        Operations between two members (the activation after ``gate_proj``) count among
        the ``k``.

        Example:
            >>> with WindowRunner(find_block_list(model), 0) as runner:  # doctest: +SKIP
            ...     runner.trace_group(call, {"mlp.gate_proj.weight": w1, "mlp.up_proj.weight": w2}, k=2).names()
            ['0.mlp.gate_proj', '0.mlp.act_fn', '0.mlp.up_proj', '0.mlp.down_proj']
        """
        members = frozenset(f"{self.block_index}.{name.rpartition('.')[0]}" for name in weights)
        return self._traced(call, weights, k, start=None, members=members)

    def _traced(self, call: BlockCall, weights: Mapping[str, torch.Tensor], k: int, start: str | None,
                members: frozenset[str] = frozenset()) -> Window:
        if k < 0:
            raise ValueError(f"k_step must be >= 0, got {k}")
        self._mode, self._trace, self._trace_limit, self._trace_from = "trace", [], k + 1, start
        self._trace_members = members
        probes = {name: w.detach().clone().requires_grad_(True) for name, w in weights.items()}
        try:
            with torch.enable_grad():
                self._forward(call, probes, len(self.blocks) - 1)
        finally:
            self._trace_from, self._trace_members = None, frozenset()
        ops = tuple(op for op, _ in self._trace)
        self._trace = []
        if not ops:
            raise RuntimeError(f"tracing found no output depending on {', '.join(weights)}")
        last_block = max(int(name.split(".")[0]) for name, _ in ops)
        return Window(ops=ops, last_block=last_block)

    def run(self, call: BlockCall, window: Window, overrides: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Outputs of the window's operations for one call, with parameters ``overrides``."""
        self._mode = "run"
        self._wanted = {op: i for i, op in enumerate(window.ops)}
        self._outputs = [None] * len(window.ops)
        self._forward(call, overrides, window.last_block)
        outputs, self._outputs = self._outputs, []
        missing = [window.names()[i] for i, o in enumerate(outputs) if o is None]
        if missing:
            raise RuntimeError(f"window operations did not run: {', '.join(missing)}")
        return outputs
