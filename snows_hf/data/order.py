"""The order in which a split's rows are visited, one per seed: :class:`SplitRows` (a seeded
permutation of a ``datasets.Dataset``, or a streamed dataset's shards in a seeded order
through a shuffle buffer of :data:`SHUFFLE_BUFFER` rows and at most
:data:`SHUFFLE_BUFFER_BYTES` bytes), each row cut to the columns and lengths a run reads
(:meth:`SplitRows.bounded`).
"""

from __future__ import annotations

import copy
import random
import sys
from typing import Any, Iterator


SHUFFLE_BUFFER = 1000
"""Rows held by the shuffle buffer of a streamed dataset."""

SHUFFLE_BUFFER_BYTES = 256 * 2**20
"""Bytes the shuffle buffer of a streamed dataset holds at most (rows as :meth:`SplitRows.bounded`
leaves them, counted by :func:`row_bytes`): 1,000 rows of web text are about 2 MB and of
ImageNet photos about 110 MB, so the bound only shortens the buffer for rows far larger
than those, where 1,000 whole rows could need gigabytes."""


class SplitRows:
    """One split of a dataset, visited in its seeded order (see the module docstring).

    Attributes:
        data: the ``datasets.Dataset`` or ``datasets.IterableDataset``.
        seed: the order's seed.
        streamed: whether ``data`` is streamed.

    Example:
        >>> rows = SplitRows(datasets.Dataset.from_dict({"text": ["a", "b", "c"]}), seed=0)  # doctest: +SKIP
        >>> [row_id for row_id, _ in rows]  # doctest: +SKIP
        [2, 0, 1]
    """

    def __init__(self, data: Any, seed: int = 0, name: str = "the dataset") -> None:
        import datasets

        self.data, self.seed, self.name = data, seed, name
        self.streamed = isinstance(data, datasets.IterableDataset)
        self._first: dict | None = None
        self._limits: dict[str, int | None] | None = None

    @property
    def size(self) -> int | None:
        """Rows in the split, when known without reading it (not for streamed data)."""
        return None if self.streamed else len(self.data)

    @property
    def features(self) -> Any:
        """The split's ``datasets.Features``, or ``None`` when a stream does not declare them."""
        return self.data.features

    @property
    def column_names(self) -> list[str]:
        """Column names, from the features or, for undeclared streams, the first row."""
        if self.features is not None:
            return list(self.features)
        return list(self._first_row())

    def _first_row(self) -> dict:
        if self._first is None:
            for _, row in self._read(self.data):
                self._first = row
                break
            else:
                raise ValueError(f"{self.name} has no rows")
        return self._first

    def first_value(self, column: str) -> Any:
        """The value of ``column`` in the first row of the split's storage order."""
        return self._first_row()[column]

    def cast_column(self, column: str, feature: Any) -> None:
        """Read ``column`` as ``feature`` from now on (``Image(decode=False)``: raw bytes)."""
        self.data = self.data.cast_column(column, feature)

    def bounded(self, limits: dict[str, int | None]) -> SplitRows:
        """The same rows in the same order, reading only the columns of ``limits``, each
        string in them cut to its number of characters (``None``: kept whole) as rows are
        read: before a stream's shuffle buffer holds them, and before anything else sees them.

        Example:
            >>> rows = SplitRows(datasets.Dataset.from_dict({"text": ["abcdef"], "url": ["u"]}))  # doctest: +SKIP
            >>> [row for _, row in rows.bounded({"text": 3})]  # doctest: +SKIP
            [{'text': 'abc'}]
        """
        bounded = copy.copy(self)
        bounded.data = self.data.select_columns(list(limits))  # unused columns are never read into rows
        bounded._limits, bounded._first = dict(limits), None
        return bounded

    def _bounded(self, row: dict) -> dict:
        if self._limits is None:
            return row
        return {name: _cut(row[name], limit) for name, limit in self._limits.items()}

    def describe(self) -> dict[str, Any]:
        """How the rows were read, for report.json."""
        if not self.streamed:
            return {"streaming": False, "rows_in_split": len(self.data)}
        return {"streaming": True, "shards": self.data.n_shards, "shuffle_buffer": SHUFFLE_BUFFER,
                "shuffle_buffer_bytes": SHUFFLE_BUFFER_BYTES}

    def __iter__(self) -> Iterator[tuple[Any, dict]]:
        """``(row id, row)`` in the seeded order: an index, or ``[shard, offset]`` when streamed."""
        if not self.streamed:
            import torch

            order = torch.randperm(len(self.data), generator=torch.Generator().manual_seed(self.seed)).tolist()
            return ((i, self._bounded(self.data[i])) for i in order)
        return _shuffled(self._shards_in_order(), SHUFFLE_BUFFER, random.Random(self.seed), SHUFFLE_BUFFER_BYTES)

    def _shards_in_order(self) -> Iterator[tuple[list[int], dict]]:
        count = self.data.n_shards
        order = list(range(count))
        random.Random(self.seed).shuffle(order)
        for shard in order:
            piece = self.data.shard(num_shards=count, index=shard) if count > 1 else self.data
            for offset, row in self._read(piece):
                yield [shard, offset], row

    def _read(self, data: Any) -> Iterator[tuple[int, dict]]:
        """Rows of ``data`` with their offsets; a failure while reading is one clear error."""
        rows = iter(data)
        offset = 0
        while True:
            try:
                row = next(rows)
            except StopIteration:
                return
            except Exception as exc:  # noqa: BLE001 - streams raise network, parquet and decode errors
                raise ValueError(f"reading {self.name} failed: {first_line(exc)}") from None
            yield offset, self._bounded(row)
            offset += 1


def _cut(value: Any, limit: int | None) -> Any:
    return value[:limit] if limit is not None and isinstance(value, str) and len(value) > limit else value


def row_bytes(value: Any) -> int:
    """About how many bytes ``value`` (a row, or one of its values) holds in memory:
    strings and bytes by their size, containers by their contents, arrays and decoded
    images by their pixels.

    Example:
        >>> row_bytes({"text": "x" * 1000}) > 1000
        True
    """
    total, pending = 0, [value]
    while pending:
        item = pending.pop()
        if isinstance(item, (str, bytes, bytearray)):
            total += sys.getsizeof(item)
        elif isinstance(item, dict):
            total += 64 * len(item)
            pending.extend(item.values())
        elif isinstance(item, (list, tuple)):
            total += 8 * len(item)
            pending.extend(item)
        elif hasattr(item, "nbytes"):  # numpy arrays, tensors
            total += int(item.nbytes)
        elif hasattr(item, "getbands") and hasattr(item, "size"):  # a decoded PIL image
            total += item.size[0] * item.size[1] * len(item.getbands())
        else:
            total += 32
    return total


def _shuffled(items: Iterator[Any], size: int, rng: random.Random, max_bytes: int | None = None) -> Iterator[Any]:
    """``items`` through a shuffle buffer of ``size`` items and at most ``max_bytes``
    (:func:`row_bytes`): each new item takes the place of a random buffered one, which is
    yielded; the rest come out shuffled at the end. An item that would pass ``max_bytes``
    first pushes random buffered ones out until it fits, so the order is the same as
    without the byte bound wherever the bound is not reached.

    Example:
        >>> sorted(_shuffled(iter(range(10)), 4, random.Random(0))) == list(range(10))
        True
    """
    buffer: list[Any] = []
    costs: list[int] = []
    held = 0
    for item in items:
        cost = row_bytes(item) if max_bytes is not None else 0
        while buffer and max_bytes is not None and held + cost > max_bytes:
            j = rng.randrange(len(buffer))
            yield buffer[j]
            held -= costs[j]
            buffer[j], costs[j] = buffer[-1], costs[-1]
            del buffer[-1], costs[-1]
        if len(buffer) < size:
            buffer.append(item)
            costs.append(cost)
            held += cost
            continue
        j = rng.randrange(size)
        yield buffer[j]
        held += cost - costs[j]
        buffer[j], costs[j] = item, cost
    rng.shuffle(buffer)
    yield from buffer


def first_line(exc: BaseException) -> str:
    """An error's first line (its type's name when it has no text): what a one-line message quotes.

    Example:
        >>> first_line(ValueError("bad row\\nat offset 3")), first_line(KeyError())
        ('bad row', 'KeyError')
    """
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
