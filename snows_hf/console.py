"""A run in a terminal, from a script as from ``snows-hf``: the ``snows_hf`` logger's lines
above the progress bars (:func:`log_to_console`), other libraries' log records and
warnings kept off the terminal and in the run's log (:func:`other_libraries_to_log`), a
closed pipe ending the command quietly (:func:`output_closed`), and a scheduler's SIGTERM
stopping a run the way Ctrl-C does, so that its finished blocks are kept for ``resume``
(:func:`sigterm_as_interrupt`).

Example:
    >>> import snows_hf
    >>> from snows_hf.console import log_to_console, other_libraries_to_log, sigterm_as_interrupt
    >>> log_to_console()  # doctest: +SKIP
    >>> with sigterm_as_interrupt(), other_libraries_to_log():  # doctest: +SKIP
    ...     snows_hf.run("my-vit", {"sparsity": "2:4"}, resume=True)
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Any, Iterator

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
    hides the progress bars of transformers, huggingface_hub and datasets), everything with
    logger names when ``debug``, and per-layer lines when ``verbose``. Other libraries keep
    their log settings (:func:`other_libraries_to_log` changes them for a while). The
    logger itself passes everything from INFO up, so a log file gets it all.

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

        transformers.utils.logging.disable_progress_bar()  # huggingface_hub's too
        if "HF_DATASETS_DISABLE_PROGRESS_BARS" in os.environ:  # the user's own choice
            pass
        elif "datasets" in sys.modules:  # it reads the variable once, when imported
            sys.modules["datasets"].utils.disable_progress_bars()
        else:
            os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"  # datasets is heavy: not imported for this


@contextlib.contextmanager
def other_libraries_to_log(debug: bool = False) -> Iterator[None]:
    """For the duration, the log records of other libraries (transformers, datasets,
    accelerate, lm-eval, ...) and Python warnings stay off the terminal: they reach the
    ``snows_hf`` logger's other handlers (a run's ``snows-hf.log``), and with ``debug`` the
    console too, with their logger names. So stderr carries snows-hf's own lines and the
    progress bars. A library that adds its own terminal handler meanwhile (most do when
    first imported) has it held back until the end; what was set before comes back after.

    Example:
        >>> import warnings
        >>> with other_libraries_to_log():
        ...     logging.getLogger("some.library").warning("not on the terminal")
        ...     warnings.warn("nor this")
    """
    routing = _Routing(debug)
    previous_class = logging.getLoggerClass()
    logging.setLoggerClass(_RoutedLogger)
    logging.captureWarnings(True)
    logging.root.addHandler(routing)
    _ROUTES.append(routing)
    try:
        for name, found in list(logging.root.manager.loggerDict.items()):
            if isinstance(found, logging.Logger) and not _own(name):
                for handler in [h for h in found.handlers if _terminal(h)]:
                    found.removeHandler(handler)
                    routing.held.append((found, handler))
                if not found.propagate:
                    routing.unpropagated.append(found)
                    found.propagate = True
        yield
    finally:
        _ROUTES.remove(routing)
        logging.root.removeHandler(routing)
        logging.captureWarnings(False)
        logging.setLoggerClass(previous_class)
        for found in routing.unpropagated:
            found.propagate = False
        for found, handler in routing.held:
            logging.Logger.addHandler(found, handler)


_ROUTES: list[_Routing] = []  # the active other_libraries_to_log, innermost last


class _Routing(logging.Handler):
    """The root logger's handler while :func:`other_libraries_to_log` runs: another
    library's record goes to the ``snows_hf`` logger's handlers (its console one only in
    debug mode), never to the terminal on its own."""

    def __init__(self, debug: bool) -> None:
        super().__init__()
        self.debug = debug
        self.held: list[tuple[logging.Logger, logging.Handler]] = []  # handlers taken off, given back after
        self.unpropagated: list[logging.Logger] = []

    def emit(self, record: logging.LogRecord) -> None:
        if _own(record.name):  # the snows_hf logger's own handlers have it already
            return
        for handler in logger.handlers:
            if (self.debug or not isinstance(handler, ConsoleHandler)) and record.levelno >= handler.level:
                handler.handle(record)


class _RoutedLogger(logging.Logger):
    """The class of loggers created while :func:`other_libraries_to_log` runs: a terminal
    handler a library adds meanwhile is held back, and records go on to the root logger,
    until the routing ends; after it, a logger like any other."""

    def addHandler(self, hdlr: logging.Handler) -> None:
        if _ROUTES and _terminal(hdlr) and not _own(self.name):
            _ROUTES[-1].held.append((self, hdlr))
            return
        super().addHandler(hdlr)

    @property
    def propagate(self) -> bool:  # type: ignore[override]
        return self._propagate or bool(_ROUTES) and not _own(self.name)

    @propagate.setter
    def propagate(self, value: bool) -> None:
        self._propagate = value


def _own(name: str) -> bool:
    return name == "snows_hf" or name.startswith("snows_hf.")


def _terminal(handler: Any) -> bool:
    """Whether ``handler`` writes to a terminal stream (stderr, stdout), not to a file."""
    return isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)


def output_closed() -> bool:
    """Whether the reader of stdout or stderr has gone (``snows-hf inspect DIR | head -1``):
    then writing raised ``BrokenPipeError``, and the command ends quietly, the way command
    line tools do, instead of reporting it. Each closed stream is pointed at ``os.devnull``
    so that nothing more (the final flush at exit) fails on it.

    Example:
        >>> output_closed()
        False
    """
    closed = False
    for stream in (sys.stdout, sys.stderr):
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):  # no file under it (a test's capture)
            continue
        if _reader_gone(fd):
            closed = True
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
            os.close(devnull)
    return closed


def _reader_gone(fd: int) -> bool:
    """Whether ``fd`` is a pipe or socket whose reading end is closed (poll says POLLERR)."""
    import select

    if not hasattr(select, "poll"):  # Windows: a broken pipe there is the output's
        return True
    poll = select.poll()
    poll.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poll.poll(0))


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
