"""Writing a pruned model: an output folder that appears only when it is complete.

The folder holds what ``save_pretrained`` writes (safetensors + config.json with a
``sparsity`` block of its own, never inside ``quantization_config``), the tokenizer or
processor files, and ``report.json``, which lists every file the save wrote
(``snows_hf_files``). That list is what marks a folder as a snows-hf output: only such a
folder, holding nothing else, is ever replaced, and never the current folder, a folder
holding the input model, or a folder around either. A symlinked output is followed: the
link's target is replaced, the link stays. While saving, the new folder is
``.OUT.tmp-PID-XXXXXXXX`` and the replaced one ``.OUT.old-PID-XXXXXXXX`` beside it; a
later save into the same output removes those whose process is gone (a run killed at
that moment). Folders get the mode the umask gives, as ``mkdir`` would.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any, Iterable, Iterator

from .fields import SettingError, setting
from .report import PruneReport, RunRecord, dumps_json

SPARSITY_KEY = "sparsity"
#: the ``report.json`` field listing the files a save wrote (the snows-hf output marker)
FILES_KEY = "snows_hf_files"


def output_files(path: str | os.PathLike) -> list[str] | None:
    """The files a snows-hf save wrote into ``path`` (from its ``report.json``), or ``None``
    when ``path`` is not a snows-hf output.

    Example:
        >>> output_files("vit-2of4")  # doctest: +SKIP
        ['README.md', 'config.json', 'model.safetensors', 'report.json', ...]
    """
    try:
        listed = json.loads((Path(path) / "report.json").read_text()).get(FILES_KEY)
    except (OSError, ValueError, AttributeError):
        return None
    return listed if isinstance(listed, list) and all(isinstance(name, str) for name in listed) else None


def foreign_files(path: str | os.PathLike) -> list[str]:
    """Files under the folder ``path`` that no snows-hf save wrote (every file, when it is
    not a snows-hf output), as sorted relative paths.

    Example:
        >>> foreign_files("vit-2of4")  # doctest: +SKIP
        ['notes.txt']
    """
    root = Path(path)
    found = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir() or p.is_symlink())
    written = set(output_files(root) or ())
    return [name for name in found if name not in written]


def check_output_dir(path: str | os.PathLike, overwrite: bool, keep: Iterable[str | os.PathLike] = ()) -> Path:
    """The real folder to write for the output path ``path`` (a symlink's target), after
    refusing any that would lose data: an empty path, a dangling link, a file, the current
    folder or one around it, a folder that is or holds a path in ``keep`` (the input model),
    a folder holding files snows-hf did not write, and a non-empty snows-hf output without
    ``overwrite``.

    Example:
        >>> check_output_dir("pruned-model", overwrite=False, keep=["my-model"])  # doctest: +SKIP
        PosixPath('/home/me/pruned-model')
    """
    if not os.fspath(path).strip():
        raise SettingError("the output path is empty", field="output_dir", hint=f"name a folder with {setting('output_dir')}")
    link = Path(os.path.expanduser(path))
    out = Path(os.path.realpath(link))
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
    if out.is_dir() and any(out.iterdir()):
        foreign = foreign_files(out)
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise SettingError(f"{str(link)} holds files snows-hf did not write ({shown})", field="output_dir",
                               hint=f"choose another {setting('output_dir')}")
        if not overwrite:
            raise SettingError(f"output folder {str(link)!r} is not empty", field="overwrite",
                               hint=f"pass {setting('overwrite', True)} to replace it")
    return out


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


def check_free_space(path: str | os.PathLike, needed: int) -> None:
    """Refuse to start writing ``needed`` bytes beside ``path`` when its filesystem has less free.

    Example:
        >>> check_free_space("pruned-model", 10**6)  # doctest: +SKIP
    """
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
    """Yield a temporary folder beside ``path``; it replaces ``path`` only if the block succeeds.

    On error the temporary folder (and any parent folder created for it) is removed and
    whatever was at ``path`` before is left untouched. ``path`` is checked by
    :func:`check_output_dir`; a symlink's target is what is replaced.

    Example:
        >>> with atomic_output_dir("out") as tmp:  # doctest: +SKIP
        ...     model.save_pretrained(tmp)
    """
    out = check_output_dir(path, overwrite)
    remove_stale_temporaries(out)
    created = [p for p in reversed(out.parents) if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(out, "tmp")
    tmp.mkdir()  # mode 0o777 less the umask, like any folder the user makes
    try:
        yield tmp
        if out.exists():
            old = _temporary_name(out, "old")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for parent in reversed(created):
            with contextlib.suppress(OSError):
                parent.rmdir()
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
    offloaded = {"cpu", "disk"} & set(map(str, (getattr(model, "hf_device_map", None) or {}).values()))
    check_free_space(path, model_bytes(model))
    with atomic_output_dir(path, overwrite) as tmp:
        # offloaded weights come into CPU memory one shard at a time while saving
        model.save_pretrained(tmp, **({"max_shard_size": "2GB"} if offloaded else {}))
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
        # last, so it lists every file: what makes the folder one a later save may replace
        written = [p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if not p.is_dir()]
        payload[FILES_KEY] = sorted(written + ["report.json"])
        (tmp / "report.json").write_text(dumps_json(payload))  # strict JSON: a NaN metric is null
    return Path(path)


def _write_recipe(folder: Path, recipe: dict[str, Any]) -> None:
    import yaml

    from . import __version__
    from .recipe import RECIPE_FILE

    recipe = {"snows_hf_version": __version__, **recipe}
    (folder / RECIPE_FILE).write_text(yaml.safe_dump(recipe, sort_keys=False))
