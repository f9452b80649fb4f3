"""Writing a pruned model: an output folder that appears only when it is complete.

The folder holds what ``save_pretrained`` writes (safetensors + config.json with a
``sparsity`` block of its own, never inside ``quantization_config``), the tokenizer or
processor files, and ``report.json``, which lists every file the save wrote
(``snows_hf_files``). A folder is replaced only when every entry of it is a file that
snows-hf writes, by its name (:data:`OUTPUT_NAMES`: weights, config, tokenizer files,
report, recipe, card, log) and listed in its report: a report is no proof, so a stranger's
``report.json`` cannot make a user's own file replaceable. Only the folder's top level is
read (at most :data:`MAX_ENTRIES` entries), never a tree below it. Never the current
folder, a folder holding the input model, or a folder around either is replaced. A
symlinked output is followed: the link's target is replaced, the link stays.

Every writer holds its output with :func:`claim_output`, from its first check to its
final rename: a second snows-hf writer is refused while the first lives (an
``fcntl.flock`` on ``.OUT.snows-hf-lock`` beside it, which holds the owner's pid and which
the system lets go when the process ends, however it ends), and the rename refuses a
target that another program created or changed meanwhile. While saving, the new folder
is ``.OUT.tmp-PID-XXXXXXXX`` and the replaced one ``.OUT.old-PID-XXXXXXXX`` beside it; a
later save into the same output removes those whose process is gone (a run killed at
that moment). Folders get the mode the umask gives, as ``mkdir`` would.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import json
import os
import re
import secrets
import shutil
import stat
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator

from .fields import SettingError, setting
from .report import PruneReport, RunRecord, dumps_json

SPARSITY_KEY = "sparsity"
#: the ``report.json`` field listing the files a save wrote
FILES_KEY = "snows_hf_files"
#: the names of what a snows-hf save writes (weights and their index, configs, tokenizer
#: and processor files, and its own report, recipe, card, plot and log): only files so
#: named are ever replaced, whatever a folder's report lists
OUTPUT_NAMES = re.compile(r"""(?x)
    model(-\d{5}-of-\d{5})?\.safetensors | model\.safetensors\.index\.json
    | (config | generation_config | preprocessor_config | processor_config | video_preprocessor_config
       | tokenizer | tokenizer_config | special_tokens_map | added_tokens | chat_template | vocab | entity_vocab)\.json
    | chat_template\.jinja | vocab\.txt | merges\.txt | bpe\.codes
    | (spiece | sentencepiece\.bpe | sentencepiece | tokenizer | spm)\.model
    | report\.json | recipe\.yaml | README\.md | snows-hf\.log | sparsity_per_layer\.png
""")
#: the one folder a save writes inside its output: a tokenizer's extra chat templates
CHAT_TEMPLATES = "additional_chat_templates"
#: entries an output folder may hold (a model of 1,000 shards is one of 2 TB at 2 GB each);
#: a folder with more is refused after reading that many, never walked
MAX_ENTRIES = 1000
_MAX_REPORT_BYTES = 64 * 2**20  # a real report is KBs; a larger one is not read
#: what snows-hf names beside an output ``OUT``: ``.OUT.SUFFIX``
LOCK_SUFFIX, CHECKPOINT_SUFFIX = "snows-hf-lock", "snows-hf-checkpoint"
_LONGEST_BESIDE = max(len(CHECKPOINT_SUFFIX), len(LOCK_SUFFIX), len("tmp-4194304-0123abcd")) + 2  # ".OUT." + suffix
_LONGEST_INSIDE = len(f"/{CHAT_TEMPLATES}/") + 64  # room for the names of the files inside
_SHARD = {"offloaded": 2 * 10**9, "in memory": 50 * 10**9}  # bytes of a save's largest shard, by where the weights are


def beside(out: str | os.PathLike, suffix: str) -> Path:
    """The path ``.OUT.SUFFIX`` next to the folder ``out``, where snows-hf keeps what
    belongs to it (a lock, a checkpoint, a save in progress).

    Example:
        >>> beside("/data/vit-2of4", "snows-hf-lock")
        PosixPath('/data/.vit-2of4.snows-hf-lock')
    """
    out = Path(out)
    return out.parent / f".{out.name}.{suffix}"


def output_files(path: str | os.PathLike) -> list[str] | None:
    """The files ``path``'s ``report.json`` says a snows-hf save wrote, or ``None`` when it
    has no such report (a link, an unreadable or oversized file is none). What it says
    is a claim: :func:`foreign_files` decides what snows-hf wrote.

    Example:
        >>> output_files("vit-2of4")  # doctest: +SKIP
        ['README.md', 'config.json', 'model.safetensors', 'report.json', ...]
    """
    try:
        fd = os.open(Path(path) / "report.json", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as fh:
            info = os.fstat(fh.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_size > _MAX_REPORT_BYTES:
                return None
            listed = json.loads(fh.read(_MAX_REPORT_BYTES)).get(FILES_KEY)
    except (OSError, ValueError, AttributeError):
        return None
    return listed if isinstance(listed, list) and all(isinstance(name, str) for name in listed) else None


def _too_many(shown: str) -> SettingError:
    return SettingError(f"{shown} holds more than {MAX_ENTRIES} entries, more than snows-hf writes", field="output_dir",
                        hint=f"choose another {setting('output_dir')}")


def _entries(folder: str | os.PathLike, shown: str) -> list[os.DirEntry]:
    """The entries of ``folder`` (not below it), refusing after :data:`MAX_ENTRIES`."""
    found = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if len(found) == MAX_ENTRIES:
                raise _too_many(shown)
            found.append(entry)
    return found


def _survey(folder: Path, shown: str) -> tuple[list[str], int]:
    """``(foreign, count)``: the entries of ``folder`` that are not files snows-hf wrote
    (sorted; a folder as ``name/``), and how many entries it has. Only the top level is
    read, and the chat-template folder a save writes."""
    listed = set(output_files(folder) or ())
    foreign, entries = [], _entries(folder, shown)
    for entry in entries:
        if entry.name == CHAT_TEMPLATES and entry.is_dir(follow_symlinks=False):
            foreign += [f"{CHAT_TEMPLATES}/{inner.name}" for inner in _entries(entry.path, shown)
                        if not (inner.is_file(follow_symlinks=False) and inner.name.endswith(".jinja")
                                and f"{CHAT_TEMPLATES}/{inner.name}" in listed)]
        elif not (entry.is_file(follow_symlinks=False) and OUTPUT_NAMES.fullmatch(entry.name) and entry.name in listed):
            foreign.append(entry.name + ("/" if entry.is_dir(follow_symlinks=False) else ""))
    return sorted(foreign), len(entries)


def foreign_files(path: str | os.PathLike) -> list[str]:
    """The entries of the folder ``path`` that no snows-hf save wrote, sorted (a folder as
    ``name/``): every one that is not a plain file named as snows-hf names its outputs
    (:data:`OUTPUT_NAMES`) and listed in the folder's ``report.json``. Reads the top level
    only, and refuses a folder of more than :data:`MAX_ENTRIES` entries.

    Example:
        >>> foreign_files("vit-2of4")  # doctest: +SKIP
        ['notes.txt']
    """
    return _survey(Path(path), os.fspath(path))[0]


def _limit(ancestor: str, name: str, default: int) -> int:
    with contextlib.suppress(OSError, ValueError):
        return os.pathconf(ancestor, name)
    return default


def _check_path_text(shown: str, absolute: str) -> None:
    """Refuse an output path the save could not write: not UTF-8 (the tokenizer library
    writes to UTF-8 paths only), or a name or path too long once snows-hf's names beside
    it and inside it are added. Lexical: no call that would fail on such a path."""
    for text in (shown, absolute):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise SettingError(f"output path {text!r} is not valid UTF-8, and the tokenizer library writes only to "
                               "UTF-8 paths", field="output_dir",
                               hint=f"choose another {setting('output_dir')}") from None
    ancestor = absolute
    while not os.path.isdir(ancestor):
        ancestor = os.path.dirname(ancestor)
    name = os.path.basename(absolute)
    name_max, path_max = _limit(ancestor, "PC_NAME_MAX", 255), _limit(ancestor, "PC_PATH_MAX", 4096)
    size = len(os.fsencode(name))
    if size + _LONGEST_BESIDE > name_max:
        cut = repr(name[:40] + "...") if len(name) > 40 else repr(name)
        raise SettingError(f"output folder name {cut} is {size} bytes; this filesystem allows "
                           f"{name_max - _LONGEST_BESIDE} for an output (snows-hf names its temporary and checkpoint "
                           f"folders after it, {_LONGEST_BESIDE} bytes longer)", field="output_dir",
                           hint=f"choose a shorter {setting('output_dir')}")
    size = len(os.fsencode(absolute))
    if size + _LONGEST_BESIDE + _LONGEST_INSIDE > path_max:
        raise SettingError(f"output path is {size} bytes, too long for this system's {path_max}-byte paths once the "
                           f"files inside and beside it are named", field="output_dir",
                           hint=f"choose a shorter {setting('output_dir')}")


def check_output_dir(path: str | os.PathLike, overwrite: bool, keep: Iterable[str | os.PathLike] = ()) -> Path:
    """The real folder to write for the output path ``path`` (a symlink's target), after
    refusing any that would lose data or fail only at the save: an empty path, one that
    is not UTF-8 or too long, a dangling link, a file, the current folder or one around
    it, a folder that is or holds a path in ``keep`` (the input model), a folder holding
    anything snows-hf did not write (see :func:`foreign_files`), and a non-empty snows-hf
    output without ``overwrite``.

    Example:
        >>> check_output_dir("pruned-model", overwrite=False, keep=["my-model"])  # doctest: +SKIP
        PosixPath('/home/me/pruned-model')
    """
    if not os.fspath(path).strip():
        raise SettingError("the output path is empty", field="output_dir", hint=f"name a folder with {setting('output_dir')}")
    link = Path(os.path.expanduser(path))
    _check_path_text(str(link), os.path.abspath(link))
    out = Path(os.path.realpath(link))
    if out != Path(os.path.abspath(link)):
        _check_path_text(str(out), str(out))  # a link's target is what is written
    if link.is_symlink() and not out.exists():
        raise SettingError(f"output path {str(link)!r} is a symlink to {str(out)!r}, which does not exist",
                           field="output_dir", hint=f"create that folder or choose another {setting('output_dir')}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path {str(link)!r} is a file, not a folder")
    here = Path(os.path.realpath(os.getcwd()))
    if out == here or out in here.parents:
        raise SettingError(f"output folder {str(link)!r} is the current folder or holds it", field="output_dir",
                           hint=f"choose another {setting('output_dir')}")
    for kept in keep:
        if os.path.exists(os.path.expanduser(kept)):
            real = Path(os.path.realpath(os.path.expanduser(kept)))
            if out == real or out in real.parents:
                raise SettingError(f"output folder {str(link)!r} would replace the input {str(kept)!r}",
                                   field="output_dir", hint=f"choose another {setting('output_dir')}")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):  # the new folder is written beside the old one
        raise SettingError(f"cannot write the output {str(link)!r}: {str(parent)!r} is not writable", field="output_dir",
                           hint=f"choose another {setting('output_dir')}")
    if out.is_dir():
        foreign, count = _survey(out, str(link))
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise SettingError(f"{str(link)} holds files snows-hf did not write ({shown})", field="output_dir",
                               hint=f"choose another {setting('output_dir')}")
        if count and not overwrite:
            raise SettingError(f"output folder {str(link)!r} is not empty", field="overwrite",
                               hint=f"pass {setting('overwrite', True)} to replace it")
    return out


def _state(out: Path) -> tuple[Any, ...] | None:
    """What is at ``out`` now (``None``: nothing): the folder's identity and each entry's
    name, inode, size and modification time (a bounded read), to see whether it changed."""
    try:
        info = os.lstat(out)
    except FileNotFoundError:
        return None
    entries: list[tuple[Any, ...]] = []
    if stat.S_ISDIR(info.st_mode):
        try:
            found = _entries(out, str(out))
            found += [inner for entry in found if entry.name == CHAT_TEMPLATES and entry.is_dir(follow_symlinks=False)
                      for inner in _entries(entry.path, str(out))]
        except SettingError:  # grown past what snows-hf writes: changed, whatever it was
            return (info.st_dev, info.st_ino, info.st_mode, "more than the entries snows-hf writes")
        for entry in found:
            seen = entry.stat(follow_symlinks=False)
            entries.append((os.path.relpath(entry.path, out), seen.st_ino, seen.st_size, seen.st_mtime_ns))
    return info.st_dev, info.st_ino, info.st_mode, tuple(sorted(entries))


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
        self.state = _state(out)

    def check_unchanged(self) -> None:
        """Refuse when something other than this writer created or changed the output since it was claimed."""
        if _state(self.out) != self.state:
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


def model_bytes(model: Any) -> int:
    """Bytes of the model's parameters and buffers (what a dense checkpoint takes)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def _offloaded(model: Any) -> bool:
    return bool({"cpu", "disk"} & set(map(str, (getattr(model, "hf_device_map", None) or {}).values())))


def largest_file_bytes(model: Any) -> int:
    """About the largest file a save of ``model`` writes: its weights, in one shard up to
    the shard size a save uses (a tensor larger than that is a shard of its own).

    Example:
        >>> largest_file_bytes(torch.nn.Linear(4, 4))  # doctest: +SKIP
        80
    """
    shard = _SHARD["offloaded" if _offloaded(model) else "in memory"]
    tensors = list(model.parameters()) + list(model.buffers())
    biggest = max((t.numel() * t.element_size() for t in tensors), default=0)
    return min(model_bytes(model), max(shard, biggest))


def stored_weight_bytes(source: str | os.PathLike) -> tuple[int, int]:
    """``(total, largest file)`` of bytes a save of the model in the local folder
    ``source`` needs at least, from its safetensors files before anything is loaded;
    ``(0, 0)`` for a Hub id.

    Example:
        >>> stored_weight_bytes("my-vit")  # doctest: +SKIP
        (345581056, 345581056)
    """
    folder = os.path.expanduser(os.fspath(source))
    if not os.fspath(source) or not os.path.isdir(folder):
        return 0, 0
    with os.scandir(folder) as entries:  # an estimate: a folder of very many files is read in part
        total = sum(entry.stat().st_size for entry in itertools.islice(entries, 10 * MAX_ENTRIES)
                    if entry.name.endswith(".safetensors") and entry.is_file())
    return total, min(total, _SHARD["in memory"])


def _size_text(size: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.2f}".rstrip("0").rstrip(".") + f" {unit}"
    return f"{int(size)} bytes"


def check_room(path: str | os.PathLike, needed: int, largest: int = 0) -> None:
    """Refuse to start writing ``needed`` bytes beside ``path`` when its filesystem has
    less free, or a file of ``largest`` bytes when this process may not write one that
    large (its ``RLIMIT_FSIZE``).

    Example:
        >>> check_room("pruned-model", 10**6, largest=10**6)  # doctest: +SKIP
    """
    import resource  # POSIX only

    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and limit < largest:
        raise SettingError(f"the file-size limit of this process ({_size_text(limit)}) is below the largest file the "
                           f"output needs (about {_size_text(largest)})", field="output_dir",
                           hint="raise the limit (ulimit -f unlimited in the shell) and run again")
    folder = Path(os.path.realpath(os.path.expanduser(path))).parent
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise SettingError(
            f"not enough free disk space in {str(folder)!r}: about {needed / 2**30:.2f} GiB needed, "
            f"{free / 2**30:.2f} GiB free", field="output_dir", hint=f"free some space or choose another {setting('output_dir')}"
        )


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


def save_pruned(
    model: Any, report: PruneReport, path: str | os.PathLike, processor: Any = None, overwrite: bool = False,
    record: RunRecord | None = None, recipe: dict[str, Any] | None = None, save_format: str = "dense",
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Save a pruned model, its processor, ``report.json``, ``recipe.yaml`` and a model card
    (``README.md`` with its plot) atomically to ``path``.

    The ``sparsity`` block (pattern, method, measured per-layer sparsity) is added to the
    model's config, so it travels in ``config.json``. ``recipe`` (see
    :func:`snows_hf.recipe.recipe_dict`) defaults to the run's pruning settings.
    ``save_format="compact"`` stores pruned weights as kept values plus codes
    (:mod:`snows_hf.compact_format`); ``from_pretrained`` reads both once ``snows_hf`` is imported.
    ``record`` (:class:`~snows_hf.report.RunRecord`: sources, data, evaluation, phases) joins
    the per-layer report in ``report.json``. ``extra_files`` maps file names to text written
    beside them (the run's ``snows-hf.log``).

    Example:
        >>> save_pruned(model, report, "vit-2of4", processor=image_processor)  # doctest: +SKIP
    """
    setattr(model.config, SPARSITY_KEY, report.sparsity_block() | {"format": save_format})
    check_room(path, model_bytes(model), largest_file_bytes(model))
    with atomic_output_dir(path, overwrite) as tmp:
        # offloaded weights come into CPU memory one shard at a time while saving
        model.save_pretrained(tmp, max_shard_size=_SHARD["offloaded" if _offloaded(model) else "in memory"])
        if save_format == "compact":
            from .compact_format import write_compact

            write_compact(tmp, model, report)
        elif save_format != "dense":
            raise ValueError(f"save_format must be dense or compact, got {save_format!r}")
        if processor is not None:
            processor.save_pretrained(tmp)
        payload = report.to_dict()
        payload.update(record.to_dict() if record is not None else {})
        _write_recipe(tmp, recipe or {"prune": report.config})
        from .card import write_card

        write_card(tmp, model, payload, save_format=save_format)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        # last, so it lists every file: with their names, what lets a later save replace the folder
        written = [p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if not p.is_dir()]
        payload[FILES_KEY] = sorted(written + ["report.json"])
        (tmp / "report.json").write_text(dumps_json(payload))  # strict JSON: a NaN metric is null
    return Path(path)


def _write_recipe(folder: Path, recipe: dict[str, Any]) -> None:
    import yaml

    from .version import __version__
    from .recipe import RECIPE_FILE

    recipe = {"snows_hf_version": __version__, **recipe}
    (folder / RECIPE_FILE).write_text(yaml.safe_dump(recipe, sort_keys=False))
