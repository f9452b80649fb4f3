"""Where calibration activations live between blocks: the device, CPU memory, or disk.

An :class:`ActivationStore` holds one block's calls (one :class:`~snows_hf.blocks.BlockCall`
per micro-batch) and hands each back on the execution device when indexed, so the
pipeline and the methods read it like a list. Reads run one micro-batch ahead: while
call ``i`` is in use, call ``i + 1`` is already being read from disk (or copied from
pinned memory) on a background thread, since every pass over a store is in order. ``cpu`` keeps tensors in (pinned, when the
device is a GPU) host memory; ``disk`` writes each call's tensors to a safetensors file
in a temporary folder and reads it back whole (``load_file``) when the block runs. :class:`ActivationSpace` owns that folder
and removes it at the end, also on error.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch

from .blocks import BlockCall, map_tensors

PLACES = ("device", "cpu", "disk")


class ActivationStore(Sequence[BlockCall]):
    """A list of block calls stored at ``place``; items come back on ``device``.

    Example:
        >>> with ActivationSpace("disk", torch.device("cpu")) as space:
        ...     store = space.store([BlockCall((torch.ones(2),), {"flag": True})])
        ...     store[0].args[0].tolist(), store[0].kwargs
        ([1.0, 1.0], {'flag': True})
    """

    def __init__(self, place: str, device: torch.device, folder: Path | None = None, reader: Any = None) -> None:
        if place not in PLACES:
            raise ValueError(f"offload_activations must be one of {', '.join(PLACES)}, got {place!r}")
        self.place, self.device, self.folder = place, device, folder
        self._items: list[Any] = []
        self._reader = reader  # a one-thread executor for read-ahead, or None
        self._ahead: tuple[int, Any] | None = None

    def append(self, call: BlockCall) -> None:
        """Store one call (moved off the device unless ``place`` is ``device``)."""
        if self.place == "device":
            self._items.append(call.to(self.device))
        elif self.place == "cpu":
            pin = self.device.type == "cuda"
            self._items.append(BlockCall(*map_tensors((call.args, call.kwargs), lambda t: _to_host(t, pin))))
        else:
            self._items.append(self._write(call))

    def _write(self, call: BlockCall) -> tuple[Path, Any]:
        tensors: dict[str, torch.Tensor] = {}
        seen: dict[int, str] = {}

        def take(t: torch.Tensor) -> _Slot:
            key = seen.get(id(t))
            if key is None:
                key = seen[id(t)] = str(len(tensors))
                tensors[key] = t.detach().to("cpu").contiguous()
            return _Slot(key)

        skeleton = map_tensors((call.args, call.kwargs), take)
        path = self.folder / f"call-{id(self)}-{len(self._items)}.safetensors"
        from safetensors.torch import save_file

        save_file(tensors, str(path))
        return path, skeleton

    def __getitem__(self, index: int) -> BlockCall:  # type: ignore[override]
        if self.place == "device" or self._reader is None or not self._moves():
            return self._load(index)
        index = range(len(self._items))[index]  # negative indices, and IndexError as a list gives it
        if self._ahead is not None and self._ahead[0] == index:
            call, self._ahead = self._ahead[1].result(), None
        else:
            call = self._load(index)
        following = index + 1
        if following < len(self._items) and (self._ahead is None or self._ahead[0] != following):
            self._ahead = (following, self._reader.submit(self._load, following))
        return call

    def _moves(self) -> bool:
        """Whether reading an item costs anything (disk, or host memory to an accelerator)."""
        return self.place == "disk" or self.device.type != "cpu"

    def _load(self, index: int) -> BlockCall:
        item = self._items[index]
        if self.place == "device":
            return item
        if self.place == "cpu":
            return _to_device(item, self.device) if self.device.type != "cpu" else item
        from safetensors.torch import load_file

        path, skeleton = item
        tensors = load_file(str(path), device=str(self.device))
        args, kwargs = map_tensors(skeleton, lambda slot: tensors[slot.key], leaf=_Slot)
        return BlockCall(args, kwargs)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[BlockCall]:
        return (self[i] for i in range(len(self)))

    def close(self) -> None:
        """Free what the store holds (its files, for ``disk``)."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead[1].cancel() or ahead[1].exception()  # never delete a file while it is being read
        if self.place == "disk":
            for path, _ in self._items:
                Path(path).unlink(missing_ok=True)
        self._items = []


class _Slot:
    """Placeholder for a tensor written to disk."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key


def _to_device(call: BlockCall, device: torch.device) -> BlockCall:
    # from pinned memory the copy is asynchronous, so read-ahead overlaps it with compute
    return BlockCall(*map_tensors((call.args, call.kwargs), lambda t: t.to(device, non_blocking=t.is_pinned())))


def _to_host(t: torch.Tensor, pin: bool) -> torch.Tensor:
    t = t.detach().to("cpu")
    return t.pin_memory() if pin else t


def check_offload_dir(path: str | Path) -> Path:
    """Refuse an offload folder that cannot take temporary files: an empty path, a
    missing folder, a file, a folder that is not writable.

    Example:
        >>> check_offload_dir("/no/such/place")
        Traceback (most recent call last):
        ...
        ValueError: offload_dir '/no/such/place' does not exist; create it or choose another
    """
    import os

    if not str(path).strip():
        raise ValueError("offload_dir is empty; name a folder or leave it out")
    folder = Path(path).expanduser()
    if not folder.exists():
        raise ValueError(f"offload_dir {str(path)!r} does not exist; create it or choose another")
    if not folder.is_dir():
        raise ValueError(f"offload_dir {str(path)!r} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"offload_dir {str(path)!r} is not writable")
    return folder


@contextlib.contextmanager
def scratch_folder(prefix: str, root: str | Path | None = None) -> Iterator[Path]:
    """A temporary folder in ``root`` when that folder exists (the output's filesystem,
    ideally), else in the system's temp; removed at the end, also on error. A ``root``
    that is empty or a file is refused (:func:`check_offload_dir`), never passed over.

    Example:
        >>> with scratch_folder(".snows-hf-demo-") as folder:
        ...     folder.is_dir()
        True
    """
    if root is not None and (not str(root).strip() or Path(root).exists()):
        root = check_offload_dir(root)
    where = Path(root) if root is not None and Path(root).is_dir() else None
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=where))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class ActivationSpace:
    """Makes :class:`ActivationStore` objects; owns (and always removes) the disk folder.

    ``root`` is where the temporary folder goes (the output's filesystem, ideally).
    """

    def __init__(self, place: str, device: torch.device, root: str | Path | None = None) -> None:
        if place not in PLACES:
            raise ValueError(f"offload_activations must be one of {', '.join(PLACES)}, got {place!r}")
        self.place, self.device, self.root = place, device, root
        self.folder: Path | None = None
        self._scratch: Any = None
        self._reader: Any = None

    def __enter__(self) -> "ActivationSpace":
        if self.place == "disk":
            self._scratch = scratch_folder(".snows-hf-activations-", self.root)
            self.folder = self._scratch.__enter__()
        if self.place != "device":
            from concurrent.futures import ThreadPoolExecutor

            self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="snows-hf-read-ahead")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._reader is not None:
            self._reader.shutdown(wait=True, cancel_futures=True)  # no read outlives the files
            self._reader = None
        if self._scratch is not None:
            self._scratch.__exit__(*exc)
            self._scratch = self.folder = None

    def store(self, calls: Iterable[BlockCall] = ()) -> ActivationStore:
        """A new store, filled with ``calls``."""
        store = ActivationStore(self.place, self.device, self.folder, self._reader)
        for call in calls:
            store.append(call)
        return store
