"""The compact checkpoint: sparse weights stored as kept values plus codes, loaded by
plain ``from_pretrained`` once ``snows_hf`` is imported.

Each pruned weight ``x.weight`` is saved as its kept values, a 1-D tensor under the
weight's own name ``x.weight``, and its code, ``x.weight_code``
(:mod:`snows_hf.masks.compact`); everything else is saved as ``save_pretrained`` writes
it, under the same (checkpoint) names. ``config.json`` gets a ``quantization_config``
with ``quant_method: snows-hf`` listing every compact layer (pattern, layout, shape).
Importing ``snows_hf`` registers that method with transformers: on load, each layer's
two tensors are decoded back to the dense weight, bit for bit, and the loaded model is a
plain dense model.

Without snows-hf, transformers warns that it does not know the quantization type
``snows-hf`` and then refuses the 1-D ``x.weight`` tensors for their shape, so the load
fails instead of leaving the pruned layers randomly initialised (``loader`` in the
``quantization_config`` says what to install). Version 1 checkpoints (``snows_sparse``,
values under ``x.weight_values``) still load.

Everything a checkpoint declares is checked against the model before a tensor is read:
every ``layers`` entry, its pattern (N:M in groups of at most
:data:`~snows_hf.masks.compact.MAX_GROUP` inputs, or an unstructured layer's own share of
zeros, 0 and 1 included: a layer may keep nothing) and its shape (the model's own). A
compact tensor that is missing, renamed or malformed is an error naming it; all problems
come back as one ``ValueError`` line, every string from the file quoted clipped, and no
pruned weight is ever left randomly initialised. Layer names map through the model's
``base_model_prefix`` as transformers maps dense checkpoints, so a base model's compact
checkpoint loads into a model with a head (whose new weights are initialised and
reported as for dense) and back.

Saving refuses weights that do not hold what the run's report records for them (never
pruned, or changed since), naming each layer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Container
from pathlib import Path
from typing import Any

import torch

from .fields import clip, problems_line
from .masks import SparsityPattern, from_rows, nm_keep_count, parse_sparsity, satisfies, to_rows
from .masks.compact import CompactTensorError, check_storable, decode, encode
from .masks.layout import LAYOUTS

QUANT_METHOD = "snows-hf"
FORMAT_VERSION = 2
#: earlier quant_method names and the format versions they wrote
LEGACY_METHODS = {"snows_sparse": 1}
LOADER = "pip install snows-hf, then import snows_hf before from_pretrained"
_FIELDS = ("key", "pattern", "layout", "shape")
_registered = False


def check_compact_sparsity(sparsity: Any) -> None:
    """Refuse, before a run, a sparsity the compact format cannot store (N:M with M > 16).

    Example:
        >>> check_compact_sparsity("2:4")
        >>> check_compact_sparsity("2:32")
        Traceback (most recent call last):
        ...
        ValueError: sparsity 2:32 groups 32 inputs; the compact format codes groups of at most 16 (M <= 16); save it dense
    """
    try:
        check_storable(parse_sparsity(sparsity))
    except ValueError as err:
        raise ValueError(f"{err}; save it dense") from None


def write_compact(folder: str | os.PathLike, model: Any, report: Any) -> None:
    """Rewrite the ``save_pretrained`` output in ``folder`` so pruned weights are compact.

    Each pruned weight must hold what ``report`` records for it: its N:M pattern, or at
    least its share of zeros (a layer may be all zero). Weights that do not (never pruned,
    or changed since) are refused, each named, before anything is rewritten.

    Example:
        >>> model.save_pretrained("out"); write_compact("out", model, report)  # doctest: +SKIP
    """
    from safetensors.torch import load_file, save_file

    from .adapters import checkpoint_names

    folder = Path(folder)
    saved_names = checkpoint_names(model)
    by_key = {f"{saved_names.get(layer.name, layer.name)}.weight": layer for layer in report.layers}
    order = {id(layer): i for i, layer in enumerate(report.layers)}  # problems in the report's order
    index_file = folder / "model.safetensors.index.json"
    shards = sorted(set(json.loads(index_file.read_text())["weight_map"].values())) if index_file.exists() else ["model.safetensors"]
    run_pattern = _run_pattern(report)
    stored: dict[str, dict[str, Any]] = {}  # shard -> its tensors as they are written
    layers, problems = {}, []
    for shard in shards:
        tensors = load_file(folder / shard)
        out = stored[shard] = {}
        for key, tensor in tensors.items():
            layer = by_key.pop(key, None)
            if layer is None:
                out[key] = tensor
                continue
            layout, rows, problem = _pruned_rows(model, layer, tensor, run_pattern)
            if problem:
                problems.append((order[id(layer)], problem))
                continue
            pattern = run_pattern if run_pattern.is_nm else SparsityPattern(fraction=float((rows == 0).sum()) / rows.numel())
            layers[layer.name] = {"key": key, "pattern": str(pattern), "layout": layout, "shape": list(tensor.shape)}
            encoded = encode(rows, pattern)
            out[key] = encoded["values"]  # 1-D under the weight's name: a load without snows-hf fails on its shape
            out[key + "_code"] = encoded["indices" if pattern.is_nm else "bitmask"]
    problems += [(order[id(layer)], f"{clip(str(layer.name))}: no {clip(key)} in the saved checkpoint")
                 for key, layer in by_key.items()]
    _refuse([problem for _, problem in sorted(problems)])
    weight_map = {}
    for shard, out in stored.items():
        save_file(out, folder / shard, metadata={"format": "pt"})
        weight_map.update({key: shard for key in out})
    if index_file.exists():
        index = json.loads(index_file.read_text())
        index["weight_map"] = weight_map
        index_file.write_text(json.dumps(index, indent=2))
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text())
    config["quantization_config"] = {"quant_method": QUANT_METHOD, "format_version": FORMAT_VERSION, "loader": LOADER,
                                     "layers": layers}
    config_file.write_text(json.dumps(config, indent=2))


def check_pruned(model: Any, report: Any) -> None:
    """Refuse a model whose pruned weights do not hold what ``report`` records for them
    (its N:M pattern, or at least each layer's share of zeros): weights never pruned, or
    changed since. One ``ValueError`` names each such layer.

    Example:
        >>> check_pruned(AutoModelForCausalLM.from_pretrained("llama"), report)  # doctest: +SKIP
        Traceback (most recent call last):
        ValueError: 14 pruned layers do not hold what the report records (...): model.layers.0.self_attn.q_proj: not 2:4 ...
    """
    run_pattern = _run_pattern(report)
    problems = []
    for layer in report.layers:
        try:
            weight = model.get_submodule(layer.name).weight.detach()
        except (AttributeError, TypeError):
            problems.append(f"{clip(str(layer.name))}: the model has no such module")
            continue
        problems.append(_pruned_rows(model, layer, weight, run_pattern)[2])
    _refuse(list(filter(None, problems)))


def _refuse(problems: list[str]) -> None:
    if problems:
        count = len(problems)
        raise ValueError(f"{count} pruned layer{'s do' if count > 1 else ' does'} not hold what the report records "
                         f"(not the pruned weights, or changed since): {problems_line(problems)}")


def _run_pattern(report: Any) -> SparsityPattern:
    sparsity = report.config.get("sparsity") if isinstance(report.config, dict) else None
    try:
        return parse_sparsity(sparsity)
    except ValueError:
        raise ValueError(f"the report's sparsity {clip(repr(sparsity))} is not a sparsity string such as '2:4' or "
                         "'0.5'") from None


def _pruned_rows(model: Any, layer: Any, tensor: torch.Tensor, run_pattern: SparsityPattern) -> tuple[str, Any, str]:
    """``(layout, (rows, inputs) view, problem)`` of a pruned weight as saved: the problem
    (empty when none) says how it fails what the report records for the layer."""
    from .adapters import weight_layout

    name = clip(str(layer.name))
    try:
        layout = weight_layout(model.get_submodule(layer.name))
    except (AttributeError, TypeError):
        return "", None, f"{name}: the model has no such module"
    if layout is None or tensor.dim() != (4 if layout == "conv2d" else 2):
        return "", None, f"{name}: not a Linear, Conv1D or Conv2d weight"
    rows = to_rows(tensor, layout)
    kept = rows != 0  # a kept weight may be zero itself: at most N per group, at least the recorded zeros
    if run_pattern.is_nm:
        if kept.shape[1] < run_pattern.m:  # one partial group is no N:M layout (a run refuses it first)
            return layout, rows, f"{name}: not {clip(str(run_pattern))} ({kept.shape[1]} inputs, fewer than a group)"
        if satisfies(kept, run_pattern, at_most=True):
            return layout, rows, ""
        return layout, rows, f"{name}: not {run_pattern} ({_crowded_group(kept, run_pattern)})"
    recorded = layer.sparsity
    numel, zeros = rows.numel(), int((~kept).sum())
    if type(recorded) not in (int, float) or not 0 <= recorded <= 1:  # nan too
        return layout, rows, f"{name}: the report records a share of zeros of {clip(repr(recorded))}"
    if satisfies(kept, SparsityPattern(fraction=float(recorded)), at_most=True):
        return layout, rows, ""
    return layout, rows, (f"{name}: {zeros} of {numel} weights are zero, the report records {recorded * 100:.4g}% "
                          f"({round(recorded * numel)})")


def _crowded_group(kept: torch.Tensor, pattern: SparsityPattern) -> str:
    """Words for the fullest group of a ``(rows, inputs)`` keep-mask that breaks N:M."""
    cols = kept.shape[1]
    full = cols - cols % pattern.m
    if full:
        most = int(kept[:, :full].reshape(kept.shape[0], -1, pattern.m).sum(-1).max())
        if most > pattern.n:
            return f"a group of {pattern.m} inputs keeps {most} non-zeros"
    size = cols - full
    return f"the last group of {size} inputs keeps {int(kept[:, full:].sum(-1).max())} non-zeros, not " \
           f"{nm_keep_count(size, pattern)}"


def layer_pattern(text: Any) -> SparsityPattern:
    """The pattern of one compact layer, as ``quantization_config.layers`` writes it: the
    run's N:M (groups of at most :data:`~snows_hf.masks.compact.MAX_GROUP`), or an
    unstructured layer's own share of zeros, from 0 to 1 (a layer may keep nothing).

    Example:
        >>> layer_pattern("2:4").n, layer_pattern("1").fraction
        (2, 1.0)
        >>> layer_pattern("1.5")
        Traceback (most recent call last):
        ...
        ValueError: '1.5' is not a sparsity string such as '2:4' or '0.5'
    """
    unknown = f"{clip(repr(text))} is not a sparsity string such as '2:4' or '0.5'"
    if not isinstance(text, str):
        raise ValueError(unknown)
    try:
        pattern = parse_sparsity(text)
    except ValueError:
        try:
            fraction = float(text)
        except ValueError:
            raise ValueError(unknown) from None
        if not 0.0 <= fraction <= 1.0:  # nan too
            raise ValueError(unknown) from None
        pattern = SparsityPattern(fraction=fraction)
    check_storable(pattern)
    return pattern


def model_layer_name(name: str, parameters: Container[str], prefix: str) -> str:
    """The model's own name for a layer that a checkpoint names, mapped through the
    model's ``base_model_prefix`` as transformers maps a dense checkpoint's keys: a base
    model's layer loads into the model with a head under the prefix, and back without it.

    Example:
        >>> model_layer_name("encoder.layer.0.output.dense", {"bert.encoder.layer.0.output.dense.weight"}, "bert")
        'bert.encoder.layer.0.output.dense'
        >>> model_layer_name("bert.pooler.dense", {"pooler.dense.weight"}, "bert")
        'pooler.dense'
    """
    if prefix:
        bare = name.removeprefix(prefix + ".")
        if bare != name and f"{bare}.weight" in parameters:
            return bare
        if f"{prefix}.{name}.weight" in parameters:
            return f"{prefix}.{name}"
    return name


def register() -> None:
    """Teach transformers to load compact checkpoints, this version's and the earlier
    ``snows_sparse`` ones (idempotent; run on import)."""
    global _registered
    if _registered:
        return
    from transformers.core_model_loading import ConversionOps
    from transformers.quantizers.auto import register_quantization_config, register_quantizer
    from transformers.quantizers.base import HfQuantizer
    from transformers.utils.quantization_config import QuantizationConfigMixin

    class SnowsSparseConfig(QuantizationConfigMixin):
        """``quantization_config`` of a compact snows-hf checkpoint."""

        def __init__(self, layers: Any = None, format_version: Any = FORMAT_VERSION, quant_method: str = QUANT_METHOD,
                     **kwargs: Any) -> None:
            self.quant_method = quant_method
            self.layers = {} if layers is None else layers  # as written: the quantizer checks it against the model
            self.format_version = format_version
            self.dequantize = True  # always decoded to dense weights on load

        def to_dict(self) -> dict[str, Any]:
            return {"quant_method": self.quant_method, "format_version": self.format_version, "loader": LOADER,
                    "layers": self.layers}

    class SnowsDecode(ConversionOps):
        """Kept values + ``x.weight_code`` -> ``x.weight``; other weights pass through."""

        def __init__(self, quantizer: Any) -> None:
            self.quantizer = quantizer

        def __deepcopy__(self, memo: dict) -> "SnowsDecode":
            return self  # the loader copies converters per tensor; decoding must report to one quantizer

        def convert(self, input_dict: dict, full_layer_name: str | None = None, **kwargs: Any) -> dict:
            compact = full_layer_name.removesuffix(".weight") in self.quantizer.layers
            if not compact and "weight_code" not in input_dict and "weight_values" not in input_dict:
                return {full_layer_name: input_dict["weight"]}
            return {full_layer_name: _decode_layer(self.quantizer, full_layer_name, input_dict)}

    class SnowsSparseQuantizer(HfQuantizer):
        """Checks the declared layers against the model, decodes compact weights while the
        checkpoint loads, then leaves a plain model."""

        requires_calibration = True
        serialized_names = {"weight": ["weight", "weight_values", "weight_code"]}

        def __init__(self, quantization_config: Any, **kwargs: Any) -> None:
            super().__init__(quantization_config, **kwargs)
            method, version = quantization_config.quant_method, quantization_config.format_version
            expected = LEGACY_METHODS.get(method, FORMAT_VERSION)
            if type(version) is not int or version != expected:
                raise ValueError(f"cannot load the compact checkpoint: quantization_config.format_version "
                                 f"{clip(repr(version))} is not {expected}, the version of quant_method {method!r}")
            self.version = version
            self.layers: dict[str, dict] = {}
            self.shapes: dict[str, tuple[int, ...]] = {}
            self.decoded: set[str] = set()
            self.errors: dict[str, str] = {}  # layer -> what is wrong with its tensors

        def validate_environment(self, *args: Any, **kwargs: Any) -> None:
            return None

        @property
        def is_trainable(self) -> bool:
            return True

        def is_serializable(self) -> bool:
            return False

        def get_load_operations(self) -> dict:
            return {"dequantize": SnowsDecode}

        def _process_model_before_weight_loading(self, model: Any, **kwargs: Any) -> Any:
            self.shapes = {name: tuple(param.shape) for name, param in model.named_parameters()}
            prefix = getattr(model, "base_model_prefix", "")
            problems = check_layers(self.quantization_config.layers, self.shapes, prefix)
            if problems:
                raise ValueError("cannot load the compact checkpoint: " + problems_line(problems))
            # keyed by the model's names: a base model's checkpoint may load into a model with a head, and back
            self.layers = {model_layer_name(name, self.shapes, prefix): meta
                           for name, meta in self.quantization_config.layers.items()}
            return model

        def _process_model_after_weight_loading(self, model: Any, **kwargs: Any) -> Any:
            missing = sorted(set(self.layers) - self.decoded - set(self.errors))
            problems = list(self.errors.values()) + [f"{name}: no compact tensors in the checkpoint" for name in missing]
            if problems:
                raise ValueError("cannot load the compact checkpoint: " + problems_line(problems))
            self.remove_quantization_config(model)
            return model

    for method in (QUANT_METHOD, *LEGACY_METHODS):
        register_quantization_config(method)(SnowsSparseConfig)
        register_quantizer(method)(SnowsSparseQuantizer)
    _registered = True


def check_layers(layers: Any, shapes: dict[str, tuple[int, ...]], prefix: str = "") -> list[str]:
    """Problems of a ``quantization_config.layers`` table against a model's parameter
    ``shapes`` (name -> shape), one line each naming the layer and the field; empty when
    every entry is well formed and matches the model. Layer names map to the model's
    through its ``base_model_prefix`` (:func:`model_layer_name`); every string from the
    table is quoted clipped.

    Example:
        >>> check_layers({"fc": {"key": "fc.weight", "pattern": "2:4", "layout": "linear", "shape": [8, 4]}},
        ...              {"fc.weight": (8, 4)})
        []
        >>> check_layers({"fc": {"key": "fc.weight", "pattern": "2:4", "layout": "linear", "shape": [8, -4]}},
        ...              {"fc.weight": (8, 4)})
        ["quantization_config.layers['fc'].shape: [8, -4] is not a list of non-negative integers"]
    """
    if not isinstance(layers, dict):
        return [f"quantization_config.layers must map layer names to their entries, not be a {type(layers).__name__}"]
    problems, declared = [], {}
    for name, meta in layers.items():
        where = f"quantization_config.layers[{clip(repr(name))}]"
        if not isinstance(meta, dict):
            problems.append(f"{where} must be a mapping of {', '.join(_FIELDS)}, not a {type(meta).__name__}")
            continue
        missing = [field for field in _FIELDS if field not in meta]
        if missing:
            problems.append(f"{where} lacks {', '.join(missing)}")
            continue
        key, pattern, layout, shape = (meta[field] for field in _FIELDS)
        if not isinstance(key, str):
            problems.append(f"{where}.key: {clip(repr(key))} is not a tensor name")
        try:
            layer_pattern(pattern)
        except ValueError as err:
            problems.append(f"{where}.pattern: {err}")
        if layout not in LAYOUTS:
            problems.append(f"{where}.layout: {clip(repr(layout))} is not one of {', '.join(LAYOUTS)}")
        own_name = model_layer_name(name, shapes, prefix)
        own = shapes.get(f"{own_name}.weight")
        if own_name in declared:
            problems.append(f"{where}: the model's {clip(own_name)} is declared again (also as {clip(repr(declared[own_name]))})")
        declared.setdefault(own_name, name)
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            problems.append(f"{where}.shape: {clip(repr(shape))} is not a list of non-negative integers")
        elif own is None:
            problems.append(f"{where}: the model has no parameter {clip(name)}.weight")
        elif tuple(shape) != own:
            problems.append(f"{where}.shape: {clip(repr(shape))} is not the shape of the model's {clip(own_name)}.weight, "
                            f"{list(own)}")
        elif layout in LAYOUTS and len(shape) != (4 if layout == "conv2d" else 2):
            problems.append(f"{where}.layout: {layout} does not fit a weight of {len(shape)} dimensions")
    return problems


def _decode_layer(quantizer: Any, target: str, tensors: dict) -> torch.Tensor:
    """Decode one layer whose entry :func:`check_layers` has passed. A problem is
    recorded, naming the tensor, and zeros of the model's own shape are returned, so the
    loader finishes and the quantizer reports every bad tensor at once."""
    name = target.removesuffix(".weight")
    meta = quantizer.layers.get(name)
    if meta is None:
        quantizer.errors[name] = (f"{clip(target)}: has compact tensors (weight_code) but quantization_config.layers does "
                                  f"not list {clip(name)}")
        return torch.zeros(quantizer.shapes[target])
    key = meta["key"]
    values_part = "weight_values" if quantizer.version == 1 else "weight"
    names = {"values": key + values_part.removeprefix("weight"), "code": key + "_code"}

    def one(value: Any) -> Any:
        return value[0] if isinstance(value, list) else value

    pattern = layer_pattern(meta["pattern"])
    code = "indices" if pattern.is_nm else "bitmask"
    parts = {"values": one(tensors[values_part])} if values_part in tensors else {}
    if "weight_code" in tensors:
        parts[code] = one(tensors["weight_code"])
    shape = torch.Size(meta["shape"])
    try:
        rows = to_rows(torch.empty(shape, device="meta"), meta["layout"]).shape
        weight = from_rows(decode(parts, tuple(rows), pattern), meta["layout"], shape)
    except CompactTensorError as err:
        tensor = names["values" if err.part == "values" else "code"]
        quantizer.errors[name] = f"{clip(tensor)} {err.problem}"
        return torch.zeros(shape)
    quantizer.decoded.add(name)
    return weight
