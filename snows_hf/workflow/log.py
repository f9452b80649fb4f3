"""The run log: every record of a run, kept in memory until its output is saved as
``snows-hf.log``, and the wall time of each of its phases."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Iterator

logger = logging.getLogger("snows_hf")

LOG_FILE = "snows-hf.log"


class Phases:
    """Wall time per phase of a run, in order (added to ``seconds`` when given).

    Example:
        >>> phases = Phases()
        >>> with phases("load"):
        ...     pass
        >>> list(phases.seconds)
        ['load']
    """

    def __init__(self, seconds: dict[str, float] | None = None) -> None:
        self.seconds: dict[str, float] = {} if seconds is None else seconds

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - start, 3)


class RunLog(logging.Handler):
    """Every record of a run, timestamped, kept in memory until the output is saved
    (so a refused or failed run leaves no file behind).

    Example:
        >>> with run_log() as log:  # doctest: +SKIP
        ...     logger.info("pruning")
        >>> log.text()  # doctest: +SKIP
        '2026-01-01 00:00:00,000 INFO snows_hf: pruning\\n'
    """

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def text(self) -> str:
        """The log so far, one line per record."""
        return "\n".join(self.lines) + "\n"


@contextlib.contextmanager
def run_log(handler: RunLog | None = None) -> Iterator[RunLog]:
    """Capture the ``snows_hf`` logger's records from INFO up for the duration (see
    :class:`RunLog`), into ``handler`` when given (a run's log, continued while it is
    saved); a logger nobody configured passes INFO while it runs.

    Example:
        >>> with run_log() as log:  # doctest: +SKIP
        ...     run("my-vit", {"sparsity": "2:4"}, save=None)
        >>> "pruning" in log.text()  # doctest: +SKIP
        True
    """
    handler = RunLog() if handler is None else handler
    added = handler not in logger.handlers  # already capturing: the outer capture goes on after this one
    if added:
        logger.addHandler(handler)
    unset = logger.level == logging.NOTSET  # Python's default: warnings only; the log wants the run's steps
    if unset:
        logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        if added:
            logger.removeHandler(handler)
        if unset:
            logger.setLevel(logging.NOTSET)
