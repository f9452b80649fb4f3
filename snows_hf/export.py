"""Writing a pruned model: :func:`save_pruned` and :func:`convert` (between the dense and
the compact format).

The folder holds what ``save_pretrained`` writes (safetensors + config.json with a
``sparsity`` block of its own, never inside ``quantization_config``), the tokenizer or
processor files, and ``report.json``, which lists every file the save wrote
(``snows_hf_files``, :data:`~snows_hf.output_folder.FILES_KEY`). The folder appears only
when it is complete and replaces only an earlier snows-hf output
(:mod:`snows_hf.output_folder` says which, :mod:`snows_hf.output_claim` holds it while
it is written).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from .version import __version__
from .card import write_card
from .compact_format import check_pruned, write_compact
from .loading import load_model
from .output_claim import atomic_output_dir, claim_output
from .output_folder import FILES_KEY, check_room, largest_file_bytes, model_bytes, shard_bytes, sibling_path
from .recipe import RECIPE_FILE, read_recipe_yaml
from .report import PruneReport, RunRecord, dumps_json

SPARSITY_KEY = "sparsity"


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
        model.save_pretrained(tmp, max_shard_size=shard_bytes(model))
        if save_format == "compact":
            write_compact(tmp, model, report)
        elif save_format != "dense":
            raise ValueError(f"save_format must be dense or compact, got {save_format!r}")
        if processor is not None:
            processor.save_pretrained(tmp)
        payload = report.to_dict()
        payload.update(record.to_dict() if record is not None else {})
        _write_recipe(tmp, recipe or {"prune": report.config})
        write_card(tmp, model, payload, save_format=save_format)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        # last, so it lists every file: with their names, what lets a later save replace the folder
        written = [p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if not p.is_dir()]
        payload[FILES_KEY] = sorted(written + ["report.json"])
        (tmp / "report.json").write_text(dumps_json(payload))  # strict JSON: a NaN metric is null
    return Path(path)


def _write_recipe(folder: Path, recipe: dict[str, Any]) -> None:
    recipe = {"snows_hf_version": __version__, **recipe}
    (folder / RECIPE_FILE).write_text(yaml.safe_dump(recipe, sort_keys=False))


def convert(folder: str | os.PathLike, to: str, output_dir: str | os.PathLike | None = None, *,
            overwrite: bool = False, trust_remote_code: bool = False) -> tuple[Path, PruneReport]:
    """Rewrite a snows-hf output in the ``"dense"`` or ``"compact"`` format: the same
    pruned weights, bit for bit, with its report, recipe and card. Returns the new folder
    and the report.

    Example:
        >>> convert("vit-2of4", "compact")  # doctest: +SKIP
        (PosixPath('vit-2of4-compact'), PruneReport(...))
    """
    source = Path(folder)
    try:
        payload = json.loads((source / "report.json").read_text())
    except (OSError, ValueError):
        raise ValueError(f"{str(source)!r} has no readable report.json: not a snows-hf output folder") from None
    output_dir = os.fspath(output_dir) if output_dir is not None else sibling_path(source, f"-{to}")
    with claim_output(output_dir, overwrite, keep=[source]):  # never the input folder itself; one writer at a time
        try:  # before any weight is read
            report = PruneReport.from_dict(payload)
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            missing = f"no {err}" if isinstance(err, KeyError) else "fields missing or of the wrong kind"
            raise ValueError(f"{str(source / 'report.json')!r} is not a snows-hf report ({missing}): "
                             "convert reads folders written by snows-hf prune") from None
        model, processor = load_model(str(source), trust_remote_code=trust_remote_code)
        check_pruned(model, report)  # either format: weights never pruned, or changed since, are named
        recipe_file = source / RECIPE_FILE
        recipe = read_recipe_yaml(recipe_file) if recipe_file.exists() else None
        if isinstance(recipe, dict):
            recipe.pop("snows_hf_version", None)
        saved = save_pruned(model, report, output_dir, processor, overwrite=overwrite,
                            record=RunRecord.from_dict(payload), recipe=recipe, save_format=to)
    return saved, report
