"""An output folder before it is written: its name, what it may hold, and the room it needs.

A folder is replaced only when every entry of it is a file that snows-hf writes, by its
name (:data:`OUTPUT_NAMES`: weights, config, tokenizer files, report, recipe, card, log)
and listed in its report (``snows_hf_files``): a report is no proof, so a stranger's
``report.json`` cannot make a user's own file replaceable. Only the folder's top level is
read (at most :data:`MAX_ENTRIES` entries), never a tree below it. Never the current
folder, a folder holding the input model, or a folder around either is replaced. A
symlinked output is followed: the link's target is replaced, the link stays.

What snows-hf keeps beside an output ``OUT`` is named ``.OUT.SUFFIX`` (:func:`beside`):
its lock, its checkpoint, a save in progress (:mod:`snows_hf.output_claim`).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import stat
from pathlib import Path
from typing import Any, Iterable

from .fields import SettingError, setting

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


def sibling_path(folder: str | os.PathLike, suffix: str) -> str:
    """``NAME-SUFFIX`` beside ``folder``, named after its own name (``.`` and a trailing
    ``/`` included), relative when ``folder`` is.

    Example:
        >>> sibling_path("runs/vit-2of4/", "-compact")
        'runs/vit-2of4-compact'
    """
    given = os.path.expanduser(os.fspath(folder))
    normal = os.path.normpath(given)
    if os.path.basename(normal) in ("", ".", ".."):  # named by where it is: its real name, beside it
        absolute = os.path.abspath(normal)
        target = os.path.join(os.path.dirname(absolute), _folder_name(absolute) + suffix)
        return target if os.path.isabs(given) else os.path.relpath(target)
    return normal + suffix


def _folder_name(folder: str) -> str:
    """A folder's own name, also when given as ``.``, ``..`` or with a trailing ``/``."""
    return os.path.basename(os.path.abspath(folder)) or "model"


def default_output_dir(model: str, sparsity: str) -> str:
    """``MODEL-NAME-pruned-2of4`` / ``...-pruned-50pct`` in the current folder, named
    after the model's last path part (a local folder's own name, also given as ``.`` or
    ending in ``/``); beside the model folder when the current folder is inside it, so
    nothing is written into the input.

    Example:
        >>> default_output_dir("google/vit-base-patch16-224", "2:4")
        'vit-base-patch16-224-pruned-2of4'
    """
    tag = re.sub(r"[^\w.-]", "", sparsity.replace(":", "of").replace("%", "pct"))
    local = os.path.expanduser(model)
    if model and os.path.isdir(local):
        real, here = Path(os.path.realpath(local)), Path(os.path.realpath(os.getcwd()))
        if real == here or real in here.parents:
            return sibling_path(local, f"-pruned-{tag}")
        return f"{_folder_name(local)}-pruned-{tag}"
    name = model.rstrip("/").split("/")[-1]
    return f"{name if name not in ('', '.', '..') else 'model'}-pruned-{tag}"


def checkpoint_dir(output_dir: str | os.PathLike) -> str:
    """Where a run writing ``output_dir`` keeps its checkpoint: a hidden folder beside
    the real output folder, so a symlink and its target share one.

    Example:
        >>> checkpoint_dir("/data/out")  # doctest: +SKIP
        '/data/.out.snows-hf-checkpoint'
    """
    return str(beside(os.path.realpath(os.path.expanduser(output_dir)), CHECKPOINT_SUFFIX))


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


def folder_entries(folder: str | os.PathLike, shown: str) -> list[os.DirEntry]:
    """The entries of ``folder`` (not below it), refusing after :data:`MAX_ENTRIES`
    (``shown``: the folder as the message names it).

    Example:
        >>> folder_entries(".", "here")  # doctest: +SKIP
        [<DirEntry 'vit-2of4'>]
    """
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
    foreign, entries = [], folder_entries(folder, shown)
    for entry in entries:
        if entry.name == CHAT_TEMPLATES and entry.is_dir(follow_symlinks=False):
            foreign += [f"{CHAT_TEMPLATES}/{inner.name}" for inner in folder_entries(entry.path, shown)
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


def folder_state(out: Path) -> tuple[Any, ...] | None:
    """What is at ``out`` now (``None``: nothing): the folder's identity and each entry's
    name, inode, size and modification time (a bounded read), to see whether it changed.

    Example:
        >>> folder_state("no-such-folder") is None
        True
    """
    try:
        info = os.lstat(out)
    except FileNotFoundError:
        return None
    entries: list[tuple[Any, ...]] = []
    if stat.S_ISDIR(info.st_mode):
        try:
            found = folder_entries(out, str(out))
            found += [inner for entry in found if entry.name == CHAT_TEMPLATES and entry.is_dir(follow_symlinks=False)
                      for inner in folder_entries(entry.path, str(out))]
        except SettingError:  # grown past what snows-hf writes: changed, whatever it was
            return (info.st_dev, info.st_ino, info.st_mode, "more than the entries snows-hf writes")
        for entry in found:
            seen = entry.stat(follow_symlinks=False)
            entries.append((os.path.relpath(entry.path, out), seen.st_ino, seen.st_size, seen.st_mtime_ns))
    return info.st_dev, info.st_ino, info.st_mode, tuple(sorted(entries))


def model_bytes(model: Any) -> int:
    """Bytes of the model's parameters and buffers (what a dense checkpoint takes)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def _offloaded(model: Any) -> bool:
    return bool({"cpu", "disk"} & set(map(str, (getattr(model, "hf_device_map", None) or {}).values())))


def shard_bytes(model: Any) -> int:
    """The largest shard a save of ``model`` writes: small while its weights are offloaded
    (they come into CPU memory one shard at a time), one file otherwise.

    Example:
        >>> shard_bytes(torch.nn.Linear(4, 4))  # doctest: +SKIP
        50000000000
    """
    return _SHARD["offloaded" if _offloaded(model) else "in memory"]


def largest_file_bytes(model: Any) -> int:
    """About the largest file a save of ``model`` writes: its weights, in one shard up to
    the shard size a save uses (a tensor larger than that is a shard of its own).

    Example:
        >>> largest_file_bytes(torch.nn.Linear(4, 4))  # doctest: +SKIP
        80
    """
    shard = shard_bytes(model)
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
    import resource  # POSIX only: imported here so the module itself imports everywhere

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


