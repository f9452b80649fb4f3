"""Writing a pruned model: an output folder that appears only when it is complete.

The folder holds what ``save_pretrained`` writes (safetensors + config.json with a
``sparsity`` block of its own, never inside ``quantization_config``), the tokenizer or
processor files, and ``report.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .report import PruneReport

SPARSITY_KEY = "sparsity"


def check_output_dir(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse an output path that would lose data: a file, or a non-empty folder without ``overwrite``.

    Example:
        >>> check_output_dir("pruned-model", overwrite=False)  # doctest: +SKIP
        PosixPath('pruned-model')
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path {str(out)!r} is a file, not a folder")
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):  # the new folder is written beside the old one
        raise ValueError(f"cannot write the output {str(out)!r}: {str(parent)!r} is not writable; choose another --output-dir")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"output folder {str(out)!r} is not empty; pass --overwrite to replace it")
    return out


def model_bytes(model: Any) -> int:
    """Bytes of the model's parameters and buffers (what a dense checkpoint takes)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def check_free_space(path: str | os.PathLike, needed: int) -> None:
    """Refuse to start writing ``needed`` bytes beside ``path`` when its filesystem has less free.

    Example:
        >>> check_free_space("pruned-model", 10**6)  # doctest: +SKIP
    """
    folder = Path(path).absolute().parent
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise ValueError(
            f"not enough free disk space in {str(folder)!r}: about {needed / 2**30:.2f} GiB needed, "
            f"{free / 2**30:.2f} GiB free; free some space or choose another --output-dir"
        )


@contextlib.contextmanager
def atomic_output_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it replaces ``path`` only if the block succeeds.

    On error the temporary folder (and any parent folder created for it) is removed and
    whatever was at ``path`` before is left untouched.

    Example:
        >>> with atomic_output_dir("out") as tmp:  # doctest: +SKIP
        ...     model.save_pretrained(tmp)
    """
    out = check_output_dir(path, overwrite).absolute()
    created = [p for p in reversed(out.parents) if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        yield tmp
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            old.rmdir()
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
    extra_report: dict[str, Any] | None = None, recipe: dict[str, Any] | None = None, save_format: str = "dense",
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Save a pruned model, its processor, ``report.json``, ``recipe.yaml`` and a model card
    (``README.md`` with its plot) atomically to ``path``.

    The ``sparsity`` block (pattern, method, measured per-layer sparsity) is added to the
    model's config, so it travels in ``config.json``. ``recipe`` (see
    :func:`snows_hf.recipe.recipe_dict`) defaults to the run's pruning settings.
    ``save_format="compact"`` stores pruned weights as kept values plus codes
    (:mod:`snows_hf.compact_format`); ``from_pretrained`` reads both once ``snows_hf`` is imported.
    ``extra_files`` maps file names to text written beside them (the CLI's ``snows-hf.log``).

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
        payload.update(extra_report or {})
        (tmp / "report.json").write_text(json.dumps(payload, indent=2) + "\n")
        _write_recipe(tmp, recipe or {"prune": report.config})
        from .card import write_card

        write_card(tmp, model, payload, save_format=save_format)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
    return Path(path)


def _write_recipe(folder: Path, recipe: dict[str, Any]) -> None:
    import yaml

    from . import __version__
    from .recipe import RECIPE_FILE

    recipe = {"snows_hf_version": __version__, **recipe}
    (folder / RECIPE_FILE).write_text(yaml.safe_dump(recipe, sort_keys=False))
