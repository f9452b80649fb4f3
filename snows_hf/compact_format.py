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
every ``layers`` entry, its pattern (groups of at most
:data:`~snows_hf.masks.compact.MAX_GROUP` inputs) and its shape (the model's own). A
compact tensor that is missing, renamed or malformed is an error naming it; all problems
come back as one ``ValueError`` line, and no weight is ever left randomly initialised.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

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
    from .masks import parse_sparsity
    from .masks.compact import check_storable

    try:
        check_storable(parse_sparsity(sparsity))
    except ValueError as err:
        raise ValueError(f"{err}; save it dense") from None


def write_compact(folder: str | os.PathLike, model: Any, report: Any) -> None:
    """Rewrite the ``save_pretrained`` output in ``folder`` so pruned weights are compact.

    Example:
        >>> model.save_pretrained("out"); write_compact("out", model, report)  # doctest: +SKIP
    """
    from safetensors.torch import load_file, save_file

    from .adapters import checkpoint_names
    from .masks import parse_sparsity, to_rows
    from .masks.compact import encode

    folder = Path(folder)
    saved_names = checkpoint_names(model)
    layers, by_key = {}, {}
    for layer in report.layers:
        key = f"{saved_names.get(layer.name, layer.name)}.weight"
        pattern = layer_pattern(report, layer)
        layers[layer.name] = {"key": key, "pattern": str(pattern), "layout": layer.layout, "shape": layer.shape}
        by_key[key] = layer
    index_file = folder / "model.safetensors.index.json"
    shards = sorted(set(json.loads(index_file.read_text())["weight_map"].values())) if index_file.exists() else ["model.safetensors"]
    weight_map = {}
    for shard in shards:
        tensors = load_file(folder / shard)
        out = {}
        for key, tensor in tensors.items():
            layer = by_key.pop(key, None)
            if layer is None:
                out[key] = tensor
                continue
            pattern = parse_sparsity(layers[layer.name]["pattern"])
            encoded = encode(to_rows(tensor, layer.layout), pattern)
            out[key] = encoded["values"]  # 1-D under the weight's name: a load without snows-hf fails on its shape
            out[key + "_code"] = encoded["indices" if pattern.is_nm else "bitmask"]
        save_file(out, folder / shard, metadata={"format": "pt"})
        weight_map.update({key: shard for key in out})
    if by_key:
        raise RuntimeError(f"pruned weights not found in the saved checkpoint: {', '.join(sorted(by_key))}")
    if index_file.exists():
        index = json.loads(index_file.read_text())
        index["weight_map"] = weight_map
        index_file.write_text(json.dumps(index, indent=2))
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text())
    config["quantization_config"] = {"quant_method": QUANT_METHOD, "format_version": FORMAT_VERSION, "loader": LOADER,
                                     "layers": layers}
    config_file.write_text(json.dumps(config, indent=2))


def layer_pattern(report: Any, layer: Any):
    """The pattern a layer was pruned to (its own share under global allocation)."""
    from .masks import SparsityPattern, parse_sparsity

    pattern = parse_sparsity(report.config["sparsity"])
    if pattern.is_nm:
        return pattern
    zeros = round(layer.sparsity * math.prod(layer.shape))
    return SparsityPattern(fraction=zeros / math.prod(layer.shape)) if zeros else pattern


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
                raise ValueError(f"cannot load the compact checkpoint: quantization_config.format_version {version!r} "
                                 f"is not {expected}, the version of quant_method {method!r}")
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
            problems = check_layers(self.quantization_config.layers, self.shapes)
            if problems:
                raise ValueError("cannot load the compact checkpoint: " + "; ".join(problems))
            self.layers = self.quantization_config.layers
            return model

        def _process_model_after_weight_loading(self, model: Any, **kwargs: Any) -> Any:
            missing = sorted(set(self.layers) - self.decoded - set(self.errors))
            problems = list(self.errors.values()) + [f"{name}: no compact tensors in the checkpoint" for name in missing]
            if problems:
                raise ValueError("cannot load the compact checkpoint: " + "; ".join(problems))
            self.remove_quantization_config(model)
            return model

    for method in (QUANT_METHOD, *LEGACY_METHODS):
        register_quantization_config(method)(SnowsSparseConfig)
        register_quantizer(method)(SnowsSparseQuantizer)
    _registered = True


def check_layers(layers: Any, shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """Problems of a ``quantization_config.layers`` table against a model's parameter
    ``shapes`` (name -> shape), one line each naming the layer and the field; empty when
    every entry is well formed and matches the model.

    Example:
        >>> check_layers({"fc": {"key": "fc.weight", "pattern": "2:4", "layout": "linear", "shape": [8, 4]}},
        ...              {"fc.weight": (8, 4)})
        []
        >>> check_layers({"fc": {"key": "fc.weight", "pattern": "2:4", "layout": "linear", "shape": [8, -4]}},
        ...              {"fc.weight": (8, 4)})
        ["quantization_config.layers['fc'].shape: [8, -4] is not a list of non-negative integers"]
    """
    from .masks import parse_sparsity
    from .masks.compact import check_storable
    from .masks.layout import LAYOUTS

    if not isinstance(layers, dict):
        return [f"quantization_config.layers must map layer names to their entries, not be a {type(layers).__name__}"]
    problems = []
    for name, meta in layers.items():
        where = f"quantization_config.layers[{name!r}]"
        if not isinstance(meta, dict):
            problems.append(f"{where} must be a mapping of {', '.join(_FIELDS)}, not a {type(meta).__name__}")
            continue
        missing = [field for field in _FIELDS if field not in meta]
        if missing:
            problems.append(f"{where} lacks {', '.join(missing)}")
            continue
        key, pattern, layout, shape = (meta[field] for field in _FIELDS)
        if not isinstance(key, str):
            problems.append(f"{where}.key: {key!r} is not a tensor name")
        try:
            if not isinstance(pattern, str):
                raise ValueError(f"{pattern!r} is not a string like '2:4' or '0.5'")
            check_storable(parse_sparsity(pattern))
        except ValueError as err:
            problems.append(f"{where}.pattern: {err}")
        if layout not in LAYOUTS:
            problems.append(f"{where}.layout: {layout!r} is not one of {', '.join(LAYOUTS)}")
        own = shapes.get(f"{name}.weight")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            problems.append(f"{where}.shape: {shape!r} is not a list of non-negative integers")
        elif own is None:
            problems.append(f"{where}: the model has no parameter {name}.weight")
        elif tuple(shape) != own:
            problems.append(f"{where}.shape: {shape} is not the shape of the model's {name}.weight, {list(own)}")
        elif layout in LAYOUTS and len(shape) != (4 if layout == "conv2d" else 2):
            problems.append(f"{where}.layout: {layout} does not fit a weight of {len(shape)} dimensions")
    return problems


def _decode_layer(quantizer: Any, target: str, tensors: dict) -> torch.Tensor:
    """Decode one layer whose entry :func:`check_layers` has passed. A problem is
    recorded, naming the tensor, and zeros of the model's own shape are returned, so the
    loader finishes and the quantizer reports every bad tensor at once."""
    from .masks import from_rows, parse_sparsity, to_rows
    from .masks.compact import CompactTensorError, decode

    name = target.removesuffix(".weight")
    meta = quantizer.layers.get(name)
    if meta is None:
        quantizer.errors[name] = f"{target}: has compact tensors (weight_code) but quantization_config.layers does not list {name}"
        return torch.zeros(quantizer.shapes[target])
    key = meta["key"]
    values_part = "weight_values" if quantizer.version == 1 else "weight"
    names = {"values": key + values_part.removeprefix("weight"), "code": key + "_code"}

    def one(value: Any) -> Any:
        return value[0] if isinstance(value, list) else value

    pattern = parse_sparsity(meta["pattern"])
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
        quantizer.errors[name] = f"{tensor} {err.problem}"
        return torch.zeros(shape)
    quantizer.decoded.add(name)
    return weight
