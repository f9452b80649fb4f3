"""A run in a terminal, from a script as from ``snows-hf``: the ``snows_hf`` logger's lines
above the progress bars (:func:`log_to_console`), and a scheduler's SIGTERM stopping a run
the way Ctrl-C does, so that its finished blocks are kept for ``resume``
(:func:`sigterm_as_interrupt`).

Example:
    >>> import snows_hf
    >>> from snows_hf.console import log_to_console, sigterm_as_interrupt
    >>> log_to_console()  # doctest: +SKIP
    >>> with sigterm_as_interrupt():  # doctest: +SKIP
    ...     snows_hf.run("my-vit", {"sparsity": "2:4"}, resume=True)
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Iterator

logger = logging.getLogger("snows_hf")


class ConsoleHandler(logging.Handler):
    """stderr through ``tqdm.write``, so lines land above the progress bars, never through
    them; per-layer lines (``snows_hf.layers``) only when ``verbose``.

    Example:
        >>> logging.getLogger("snows_hf").addHandler(ConsoleHandler(verbose=False))  # doctest: +SKIP
    """

    def __init__(self, verbose: bool = False):
        super().__init__()
        self.verbose = verbose

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "snows_hf.layers" and not self.verbose:
            return
        from tqdm.auto import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def log_to_console(quiet: bool = False, debug: bool = False, verbose: bool = False) -> None:
    """The ``snows_hf`` logger's messages to stderr, one line each (``snows-hf: ...``), as
    the command line shows them: from INFO up, warnings only when ``quiet`` (which also
    hides transformers' progress bars), everything with logger names when ``debug``, and
    per-layer lines when ``verbose``. Other libraries keep their settings. The logger itself
    passes everything from INFO up, so a log file gets it all.

    Example:
        >>> log_to_console(quiet=True)  # doctest: +SKIP
    """
    handler = ConsoleHandler(verbose or debug)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s" if debug else "snows-hf: %(message)s"))
    handler.setLevel(logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO)
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False
    if quiet:
        import transformers

        transformers.utils.logging.disable_progress_bar()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler's stop, ``kill``) raises ``KeyboardInterrupt`` inside, so a run
    ends as on Ctrl-C: cleanly, keeping what is saved. The previous handler comes back
    after; off the main thread nothing changes.

    Example:
        >>> with sigterm_as_interrupt():
        ...     pass
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
