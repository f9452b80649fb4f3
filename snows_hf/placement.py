"""Where the blocks' weights are while they are pruned: all on the execution device, or
brought there window by window.

Models placed by accelerate (``from_pretrained(device_map=..., max_memory=...)``) keep
some blocks on other devices, in CPU memory or on disk (``meta`` weights behind an
``AlignDevicesHook``). :class:`BlockPlacement` takes the accelerate hooks off the blocks
for the run, brings a block's real weights to the execution device the first time it
runs (a forward pre-hook, so windows that reach into later blocks bring those along),
and sends each block home once the loop is past it: back to its device, or, for
offloaded blocks, its pruned weights written to the offload store (a new safetensors file
in the offload folder; the checkpoint the model was loaded from is never written) before
the hooks go back on. Device memory then holds about one window of blocks.

When every block fits in the device budget and none is offloaded, all blocks simply
move to the device for the run (the fastest way).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from .blocks import tracked_hooks
from .fields import SettingError, setting

logger = logging.getLogger(__name__)

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str | int) -> int:
    """Bytes in ``"20GiB"``, ``"512MB"``, ``"1.5GB"`` or a plain integer.

    Example:
        >>> parse_size("1.5GiB"), parse_size("200MB"), parse_size(1024)
        (1610612736, 200000000, 1024)
    """
    if isinstance(text, int):
        return text
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a memory size like 20GiB, 512MB or 1000000")
    number, unit = match.groups()
    return int(float(number) * _UNITS[(unit or "B").upper()])


def format_size(n: float) -> str:
    """``n`` bytes in binary units, as plans and logs show them.

    Example:
        >>> format_size(512), format_size(112640), format_size(3 * 2**40)
        ('512 B', '110.0 KiB', '3072.0 GiB')
    """
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def parse_max_memory(text: str, device: torch.device) -> dict[Any, int]:
    """accelerate's ``max_memory`` from ``"cuda:0=20GiB,cpu=64GiB"``, or ``"20GiB"`` for the
    execution ``device`` alone. Keys are accelerate's: ``"cpu"``, ``"mps"``, or the
    accelerator's index.

    Example:
        >>> parse_max_memory("cuda:1=20GiB,cpu=1GB", torch.device("cpu"))
        {1: 21474836480, 'cpu': 1000000000}
        >>> parse_max_memory("3GB", torch.device("cpu"))
        {'cpu': 3000000000}
    """
    budget: dict[Any, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, size = part.rpartition("=")
        name = name.strip() or str(device)
        if name.isdigit():  # accelerate's own spelling of an accelerator
            budget[int(name)] = parse_size(size)
            continue
        try:
            where = torch.device(name)
        except RuntimeError:
            raise SettingError(f"{setting('max_memory')}: {name!r} is not a device", field="max_memory",
                               hint="use cpu, cuda:0, 0, mps, ...") from None
        budget[_memory_key(where)] = parse_size(size)
    if not budget:
        raise SettingError(f"{setting('max_memory')} is empty", field="max_memory",
                           hint="give sizes like 20GiB or cuda:0=20GiB,cpu=64GiB")
    return budget


def _memory_key(device: torch.device) -> Any:
    if device.type in ("cpu", "mps"):
        return device.type
    return device.index or 0


def block_budget(max_memory: str | None, device: torch.device) -> int | None:
    """Bytes of block weights the execution ``device`` may hold during the run.

    From ``max_memory`` when it names the device; else half the free memory of an
    accelerator (the rest is for activations and Hessian products); ``None`` (no limit)
    on the CPU.

    Example:
        >>> block_budget("cpu=2GB", torch.device("cpu"))
        2000000000
    """
    if max_memory:
        budget = parse_max_memory(max_memory, device)
        if _memory_key(device) in budget:
            return budget[_memory_key(device)]
    if device.type == "cpu":
        return None
    accelerator = getattr(torch, "accelerator", None)
    try:
        free, _ = accelerator.get_memory_info(device.index)
    except (AttributeError, RuntimeError, TypeError):
        return None
    return free // 2


def _align_hook(module: nn.Module) -> Any:
    """The accelerate ``AlignDevicesHook`` on ``module`` (also inside a ``SequentialHook``)."""
    hook = getattr(module, "_hf_hook", None)
    for inner in getattr(hook, "hooks", None) or (hook,):
        if type(inner).__name__ == "AlignDevicesHook":
            return inner
    return None


def _is_offloaded(module: nn.Module) -> bool:
    hook = _align_hook(module)
    return bool(hook is not None and hook.offload)


def _block_bytes(block: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in block.parameters())


class BlockPlacement:
    """Blocks on the execution device for the run, all at once or a window at a time.

    Use it as a context manager around the block loop, and call :meth:`release_before`
    as the loop moves on. ``budget`` (bytes) caps the block weights kept on the device;
    ``written(index)`` names the modules of block ``index`` whose weights changed (the
    pruned ones), which are the only ones written back to an offload store.

    Example:
        >>> with BlockPlacement(model.model.layers, torch.device("cuda"), budget=8 << 30) as place:  # doctest: +SKIP
        ...     for index in range(len(model.model.layers)):
        ...         ...  # prune block index (later blocks come in as windows reach them)
        ...         place.release_before(index + 1)
    """

    def __init__(self, blocks: nn.ModuleList, device: torch.device, budget: int | None = None,
                 written: Callable[[int], Iterable[nn.Module]] = lambda index: ()):
        self.blocks, self.device, self.written = list(blocks), device, written
        self.offloaded = [any(_is_offloaded(m) for m in block.modules()) for block in self.blocks]
        total = sum(_block_bytes(b) for b in self.blocks)
        self.streaming = any(self.offloaded) or (budget is not None and total > budget)
        self._homes: list[torch.device | None] = [None] * len(self.blocks)
        self._hooks: list[list[tuple[nn.Module, Any, Any]]] = [[] for _ in self.blocks]
        self._on_device: set[int] = set()
        self._pre_hooks = tracked_hooks()
        #: most blocks on the device at once (what the run needed)
        self.peak_blocks = 0

    def __enter__(self) -> "BlockPlacement":
        from accelerate.hooks import remove_hook_from_module

        # accelerate's hooks come off for the whole run (a block's forward is bound before
        # its pre-hooks run, so they cannot come off on demand) and go back on at the end.
        for index, block in enumerate(self.blocks):
            self._hooks[index] = [(m, m._hf_hook, _align_hook(m)) for m in block.modules() if hasattr(m, "_hf_hook")]
            self._homes[index] = next((p.device for p in block.parameters() if p.device.type != "meta"), None)
            for module, _, _ in self._hooks[index]:
                remove_hook_from_module(module)
        if self.streaming:
            handles = self._pre_hooks.__enter__()
            for index, block in enumerate(self.blocks):
                handles.append(block.register_forward_pre_hook(lambda *_, i=index: self.need(i)))
            logger.info("blocks come to %s a window at a time (%d of %d offloaded)",
                        self.device, sum(self.offloaded), len(self.blocks))
        else:
            for index in range(len(self.blocks)):
                self.need(index)
        return self

    def __exit__(self, *exc: Any) -> None:
        from accelerate.hooks import add_hook_to_module

        try:
            self.release_before(len(self.blocks))
        finally:
            if self.streaming:
                self._pre_hooks.__exit__(*exc)
            for hooks in self._hooks:
                for module, hook, _ in hooks:
                    add_hook_to_module(module, hook)  # offloading hooks keep their weights on meta

    def need(self, index: int) -> None:
        """Bring block ``index`` (its real weights) to the execution device."""
        if index in self._on_device:
            return
        from accelerate.utils import set_module_tensor_to_device

        for module, _, align in self._hooks[index]:
            if align is not None and align.offload:
                for name in _offloaded_names(module, align):
                    set_module_tensor_to_device(module, name, self.device, value=align.weights_map[name])
        self.blocks[index].to(self.device)
        self._on_device.add(index)
        self.peak_blocks = max(self.peak_blocks, len(self._on_device))

    def release_before(self, stop: int) -> None:
        """Send blocks ``< stop`` home (pruned offloaded weights to their store)."""
        if not self.streaming and stop < len(self.blocks):
            return  # everything stays on the device until the end
        for index in sorted(i for i in self._on_device if i < stop):
            self._release(index)

    def _release(self, index: int) -> None:
        from accelerate.utils import set_module_tensor_to_device

        block = self.blocks[index]
        changed = {id(m) for m in self.written(index)}
        for module, _, align in self._hooks[index]:
            if align is None or not align.offload:
                continue
            for name, sub in module.named_modules():
                if id(sub) in changed:
                    write_offloaded(align.weights_map, f"{name}.weight" if name else "weight", sub.weight.detach())
            for name in _offloaded_names(module, align):
                set_module_tensor_to_device(module, name, "meta")
        home = self._homes[index]
        if home is not None and home != self.device:
            block.to(home)
        self._on_device.discard(index)


def _offloaded_names(module: nn.Module, hook: Any) -> list[str]:
    from accelerate.utils import named_module_tensors

    return [name for name, _ in named_module_tensors(module, include_buffers=hook.offload_buffers,
                                                       recurse=hook.place_submodules) if name in hook.weights_map]


def write_offloaded(weights_map: Any, name: str, tensor: torch.Tensor) -> None:
    """Store ``tensor`` as ``name`` in an accelerate offload store (``hook.weights_map``).

    A store with an offload folder gets a new safetensors file there (the files the
    model was loaded from are never touched); a store without one keeps the tensor in
    CPU memory, as accelerate's CPU offload does.
    """
    from accelerate.utils.offload import OffloadedWeightsLoader, PrefixedDataset

    prefix, store = "", weights_map
    if isinstance(store, PrefixedDataset):
        prefix, store = store.prefix, store.dataset
    key, value = prefix + name, tensor.to("cpu").contiguous()
    if isinstance(store, OffloadedWeightsLoader):
        if store.save_folder is not None:
            from safetensors.torch import save_file

            path = Path(store.save_folder) / f"snows-hf-pruned.{key}.safetensors"
            save_file({key: value}, str(path))
            store.state_dict.pop(key, None)
            store.index[key] = {"safetensors_file": str(path), "weight_name": key,
                                "dtype": str(value.dtype).removeprefix("torch.")}
        else:
            store.state_dict[key] = value
    elif isinstance(store, dict):
        store[key] = value
    else:
        raise TypeError(f"cannot write pruned weight {key} into an offload store of type {type(store).__name__}")
