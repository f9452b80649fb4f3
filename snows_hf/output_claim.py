"""One writer per output folder, and a folder that appears only when it is complete.

Every writer holds its output with :func:`claim_output`, from its first check to its
final rename: a second snows-hf writer is refused while the first lives (an
``fcntl.flock`` on ``.OUT.snows-hf-lock`` beside it, which holds the owner's pid and which
the system lets go when the process ends, however it ends), and the rename refuses a
target that another program created or changed meanwhile. While saving, the new folder
is ``.OUT.tmp-PID-XXXXXXXX`` and the replaced one ``.OUT.old-PID-XXXXXXXX`` beside it; a
later save into the same output removes those whose process is gone (a run killed at
that moment). Folders get the mode the umask gives, as ``mkdir`` would. What a folder
may hold to be replaced is :mod:`snows_hf.output_folder`'s to say.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import secrets
import shutil
import threading
from pathlib import Path
from typing import Iterable, Iterator

from .fields import SettingError, setting
from .output_folder import LOCK_SUFFIX, beside, check_output_dir, folder_state

_RENAME_NOREPLACE, _AT_FDCWD = 1, -100


def _rename_new(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``, failing with ``FileExistsError`` when ``target``
    exists: in one step where the kernel offers ``renameat2`` (Linux), else checked just
    before."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        renameat2 = None
    if renameat2 is not None:
        if renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS):  # EINVAL: a filesystem without the flag, checked below
            raise OSError(code, os.strerror(code), str(target))
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
    os.rename(source, target)


class OutputClaim:
    """One writer's hold on its output folder (see :func:`claim_output`): the output as
    given (``path``), the real folder (``out``) and what was there when it was claimed.

    Example:
        >>> with claim_output("vit-2of4") as claim:  # doctest: +SKIP
        ...     claim.check_unchanged()
    """

    def __init__(self, path: str, out: Path) -> None:
        self.path, self.out = path, out
        self.state = folder_state(out)

    def check_unchanged(self) -> None:
        """Refuse when something other than this writer created or changed the output since it was claimed."""
        if folder_state(self.out) != self.state:
            self._refuse()

    def _refuse(self) -> None:
        what = "appeared" if self.state is None else "changed"
        raise SettingError(f"output folder {self.path!r} {what} while snows-hf was writing it (another program wrote "
                           "there); it is left as it is", field="output_dir",
                           hint=f"look at what is there, then run again or choose another {setting('output_dir')}")

    def replace_with(self, folder: Path) -> None:
        """Put the finished ``folder`` at the output, the earlier output (if any) going only
        when it is still as it was claimed."""
        self.check_unchanged()
        if self.state is None:
            try:
                _rename_new(folder, self.out)
            except FileExistsError:
                self._refuse()
            return
        old = _temporary_name(self.out, "old")
        self.out.rename(old)
        try:
            _rename_new(folder, self.out)
        except BaseException as exc:
            with contextlib.suppress(OSError):  # the earlier output back where it was, unless that place is taken
                _rename_new(old, self.out)
            if isinstance(exc, FileExistsError):
                self._refuse()
            raise
        shutil.rmtree(old, ignore_errors=True)


_held = threading.local()  # the outputs this thread claims: a save inside a run continues the run's claim


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold the lock file ``path`` (creating its folder and parents, removed again when
    empty); refuse while a live process holds it, naming that process."""
    import fcntl  # POSIX only, like the locks themselves

    created = [p for p in reversed(path.parents) if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        while True:
            try:  # never through a link: a planted one would have this process truncate its target
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            except OSError as err:
                raise SettingError(f"{str(path)!r} is no lock file snows-hf can take ({err.strerror})", field="output_dir",
                                   hint=f"remove it, or choose another {setting('output_dir')}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise SettingError(f"another snows-hf run (pid {owner[:12]}) is writing this output and holds "
                                   f"{str(path)!r}", field="output_dir",
                                   hint=f"wait for it to end or choose another {setting('output_dir')}") from None
            with contextlib.suppress(FileNotFoundError):
                if os.path.samestat(os.fstat(fd), os.stat(path)):
                    break
            os.close(fd)  # its owner removed the file while we opened it: lock the one there now
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # still held, so no other writer is using this file
            os.close(fd)
    finally:
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()


@contextlib.contextmanager
def claim_output(path: str | os.PathLike, overwrite: bool = False,
                 keep: Iterable[str | os.PathLike] = ()) -> Iterator[OutputClaim]:
    """Hold the output ``path`` for one writer until the block ends: checked by
    :func:`check_output_dir`, locked against every other snows-hf writer (refused while
    one lives, naming its pid), and remembered as it is, so that :func:`atomic_output_dir`
    refuses to replace it once another program created or changed it. A claim of the
    same output inside a claim (a save inside a run) continues the outer one.

    Example:
        >>> with claim_output("vit-2of4", keep=["my-vit"]):  # doctest: +SKIP
        ...     model = load(...); save_pruned(model, report, "vit-2of4")
    """
    claims = vars(_held).setdefault("claims", {})
    real = Path(os.path.realpath(os.path.expanduser(path))) if os.fspath(path).strip() else None
    if real in claims:
        yield claims[real]
        return
    out = check_output_dir(path, overwrite, keep)
    with _locked(beside(out, LOCK_SUFFIX)):
        check_output_dir(path, overwrite, keep)  # again, locked: another writer may have finished meanwhile
        claims[out] = OutputClaim(os.fspath(path), out)
        try:
            yield claims[out]
        finally:
            del claims[out]


def _temporary_name(out: Path, kind: str) -> Path:
    """A fresh ``.OUT.KIND-PID-XXXXXXXX`` path beside ``out``: the pid says whose it is."""
    return out.parent / f".{out.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


def _alive(pid: int) -> bool:
    if pid == os.getpid():  # a leftover of an earlier process that had this pid (containers reuse them)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the ``.OUT.tmp-PID-*`` / ``.OUT.old-PID-*`` folders that an earlier save into
    the output ``path`` left when it was killed (its process is gone); the removed paths.

    A live save's folders, and anything named otherwise, are left alone.

    Example:
        >>> remove_stale_temporaries("vit-2of4")  # doctest: +SKIP
        [PosixPath('/home/me/.vit-2of4.tmp-4242-9f3a0c1e')]
    """
    out = Path(os.path.realpath(os.path.expanduser(path)))
    if not out.parent.is_dir():
        return []
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(?:tmp|old)-(\d+)-[0-9a-f]{{8}}")
    removed = []
    for candidate in out.parent.iterdir():
        match = pattern.fullmatch(candidate.name)
        if match and candidate.is_dir() and not candidate.is_symlink() and not _alive(int(match[1])):
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
    return removed


@contextlib.contextmanager
def atomic_output_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it replaces ``path`` only if the block
    succeeds, and only if nothing but this writer changed ``path`` since it was claimed.

    On error the temporary folder is removed and whatever was at ``path`` before is left
    untouched. ``path`` is held with :func:`claim_output` (the caller's claim, when it
    holds one); a symlink's target is what is replaced.

    Example:
        >>> with atomic_output_dir("out") as tmp:  # doctest: +SKIP
        ...     model.save_pretrained(tmp)
    """
    with claim_output(path, overwrite) as claim:
        claim.check_unchanged()  # before writing anything
        remove_stale_temporaries(claim.out)
        tmp = _temporary_name(claim.out, "tmp")
        tmp.mkdir()  # mode 0o777 less the umask, like any folder the user makes
        try:
            yield tmp
            claim.replace_with(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


