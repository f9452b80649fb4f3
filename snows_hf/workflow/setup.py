"""What running a prune and evaluating share: the settings checked before anything is
loaded, the settings read from what a caller passes, and the model loaded (and placed
within memory limits)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from ..activations import check_offload_dir, scratch_folder
from ..compact_format import check_compact_sparsity
from ..config import PruneConfig
from ..data import CalibrationConfig, is_in_memory, pick_processor
from ..distributed import Processes
from ..fields import SettingError, check_keys, setting
from ..loading import load_model
from ..placement import parse_max_memory
from .options import LoadOptions


def check_recorded_text(recipe: dict[str, Any]) -> None:
    """Refuse, before anything is loaded, a setting of the run's ``recipe`` that the
    saved files (card, log) name and cannot write: text that is not valid UTF-8 (a path
    of other bytes, as Python reads it).

    Example:
        >>> check_recorded_text({"data": {"dataset": "d\\udcff"}})
        Traceback (most recent call last):
        snows_hf.fields.SettingError: dataset 'd\\udcff' is not valid UTF-8, which the saved files are; rename it
    """
    stack: list[tuple[str, Any]] = [("model", recipe)]
    while stack:
        key, value = stack.pop()
        if isinstance(value, dict):
            stack += [(str(k), v) for k, v in value.items()]
        elif isinstance(value, (list, tuple)):
            stack += [(key, v) for v in value]
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                shown = repr(value if len(value) <= 80 else value[:80] + "...")
                raise SettingError(f"{key} {shown} is not valid UTF-8, which the saved files are", field=key,
                                   hint="rename it") from None


def check_settings(config: PruneConfig, save_format: str = "dense") -> None:
    """Refuse, before anything is loaded, settings a run would fail on only at its end or
    after its first block: a sparsity the compact format cannot store, an empty block
    path, an offload folder that cannot be written.

    Example:
        >>> check_settings(PruneConfig(sparsity="0.3"), save_format="compact")  # doctest: +SKIP
        Traceback (most recent call last):
        ValueError: ...
    """
    if save_format == "compact":
        check_compact_sparsity(config.sparsity)
    elif save_format != "dense":
        raise SettingError(f"save_format must be dense or compact, got {save_format!r}", field="save_format")
    if config.block_path is not None and not config.block_path.strip():
        raise SettingError(f"{setting('block_path')} is empty", field="block_path",
                           hint="name the block list (e.g. model.layers) or leave it out to find it")
    if config.offload_dir is not None:
        check_offload_dir(config.offload_dir)


def prune_config(config: PruneConfig | Mapping[str, Any]) -> PruneConfig:
    """``config`` as a :class:`~snows_hf.config.PruneConfig`: itself, or one made of a dict of its fields.

    Example:
        >>> prune_config({"sparsity": "2:4"}).sparsity
        '2:4'
    """
    if isinstance(config, PruneConfig):
        return config
    if not isinstance(config, Mapping):
        raise SettingError(f"config must be a PruneConfig or a dict of its fields, got {type(config).__name__}",
                           field="config")
    return PruneConfig.from_dict(config)


def calibration_fields(data: Any) -> dict[str, Any]:
    """The fields ``data`` sets: none, a dataset (name, path or in-memory), a config's or a dict's.

    Example:
        >>> calibration_fields("frgfm/imagenette"), calibration_fields({"num_samples": 64})
        ({'dataset': 'frgfm/imagenette'}, {'num_samples': 64})
    """
    if data is None:
        return {}
    if is_in_memory(data):
        return {"dataset": data}
    if isinstance(data, (str, os.PathLike)):
        return {"dataset": os.fspath(data)}
    if dataclasses.is_dataclass(data):  # field by field: an in-memory dataset is taken, not copied
        return {f.name: getattr(data, f.name) for f in dataclasses.fields(data)}
    if not isinstance(data, Mapping):
        raise SettingError(f"data must be a CalibrationConfig, a dict of its fields or a dataset, got "
                           f"{type(data).__name__}", field="data")
    check_keys([f.name for f in dataclasses.fields(CalibrationConfig)], data)
    return dict(data)


def calibration_config(data: Any) -> CalibrationConfig:
    """``data`` (see :func:`~snows_hf.workflow.run`) as a :class:`~snows_hf.data.CalibrationConfig`.

    Example:
        >>> calibration_config("random").dataset
        'random'
    """
    return data if isinstance(data, CalibrationConfig) else CalibrationConfig(**calibration_fields(data))


@contextlib.contextmanager
def placement(config: PruneConfig, device: torch.device, processes: Processes,
              output_dir: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """``from_pretrained`` options for ``config.max_memory``: accelerate's
    ``device_map="auto"`` within those limits, offloading the rest to a temporary folder
    beside the output (removed at the end, also on error); ``{}`` without ``max_memory``.

    Example:
        >>> with placement(PruneConfig(sparsity="2:4"), "cpu", Processes(), "out") as options:  # doctest: +SKIP
        ...     options
        {}
    """
    if config.max_memory is not None and processes.parallel:
        raise SettingError(f"{setting('max_memory')} places one model across devices", field="max_memory",
                           hint="it cannot be combined with several processes")
    with placed_loading(config.max_memory, device, config.offload_dir or Path(output_dir).absolute().parent) as options:
        yield options


@contextlib.contextmanager
def placed_loading(max_memory: str | None, device: torch.device | str,
                   root: str | os.PathLike | None = None) -> Iterator[dict[str, Any]]:
    """``from_pretrained`` options that load one model with accelerate's
    ``device_map="auto"`` within ``max_memory``, what does not fit offloaded to a temporary
    folder in ``root`` (else the system's temp), removed at the end, also on error; ``{}``
    without limits. Each model loaded this way needs its own folder.

    Example:
        >>> with placed_loading(None, "cpu") as options:
        ...     options
        {}
    """
    if max_memory is None:
        yield {}
        return
    limits = parse_max_memory(max_memory, device)
    with scratch_folder(".snows-hf-offload-", root) as folder:
        yield {"device_map": "auto", "max_memory": limits, "offload_folder": str(folder)}


def load_for_run(model: Any, load: LoadOptions = LoadOptions(), **load_options: Any) -> tuple[Any, Any, str | None]:
    """``(model, processor, source)``: a Hub id or folder is loaded as ``load`` says, with
    ``load_options`` for ``from_pretrained`` (its ``processor``, if a name, replaces the
    model's own); a loaded model is taken as it is, its source being its ``name_or_path``.

    Example:
        >>> model, processor, source = load_for_run("my-vit", LoadOptions(processor="my-tokenizer"))  # doctest: +SKIP
    """
    processor, trust_remote_code, allow_pickle = load.processor, load.trust_remote_code, load.allow_pickle
    own = None
    if isinstance(model, (str, os.PathLike)):
        source = os.fspath(model)
        model, own = load_model(source, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle, **load_options)
    else:
        if load_options:
            raise SettingError(f"{setting('max_memory')} places a model while loading it", field="max_memory",
                               hint="pass a Hub id or a folder, not a loaded model")
        source = getattr(model, "name_or_path", None) or None
    if isinstance(processor, (str, os.PathLike)):
        processor = pick_processor(model, own, os.fspath(processor), trust_remote_code=trust_remote_code)
    return model, own if processor is None else processor, source
