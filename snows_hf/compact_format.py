"""The compact checkpoint: sparse weights stored as kept values plus codes, loaded by
plain ``from_pretrained`` once ``snows_hf`` is imported.

Each pruned weight ``x.weight`` is saved as ``x.weight_values`` and ``x.weight_code``
(:mod:`snows_hf.masks.compact`); everything else is saved as ``save_pretrained`` writes
it, under the same (checkpoint) names. ``config.json`` gets a ``quantization_config``
with ``quant_method: snows_sparse`` listing every compact layer (pattern, layout, shape).
Importing ``snows_hf`` registers that method with transformers: on load, each layer's
two tensors are decoded back to the dense weight, bit for bit, and the loaded model is a
plain dense model. A compact tensor that is missing, renamed or malformed is an error
naming it; no weight is ever left randomly initialised.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

QUANT_METHOD = "snows_sparse"
FORMAT_VERSION = 1
_registered = False


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
            meta = layers[layer.name]
            encoded = encode(to_rows(tensor, layer.layout), parse_sparsity(meta["pattern"]))
            out[key + "_values"] = encoded["values"]
            out[key + "_code"] = encoded["indices" if parse_sparsity(meta["pattern"]).is_nm else "bitmask"]
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
    config["quantization_config"] = {"quant_method": QUANT_METHOD, "format_version": FORMAT_VERSION, "layers": layers}
    config_file.write_text(json.dumps(config, indent=2))


def layer_pattern(report: Any, layer: Any):
    """The pattern a layer was pruned to (its own share under global allocation)."""
    from .masks import SparsityPattern, parse_sparsity
    from .report import _numel

    pattern = parse_sparsity(report.config["sparsity"])
    if pattern.is_nm:
        return pattern
    zeros = round(layer.sparsity * _numel(layer.shape))
    return SparsityPattern(fraction=zeros / _numel(layer.shape)) if zeros else pattern


def register() -> None:
    """Teach transformers to load ``snows_sparse`` checkpoints (idempotent; run on import)."""
    global _registered
    if _registered:
        return
    from transformers.core_model_loading import ConversionOps
    from transformers.quantizers.auto import register_quantization_config, register_quantizer
    from transformers.quantizers.base import HfQuantizer
    from transformers.utils.quantization_config import QuantizationConfigMixin

    @register_quantization_config(QUANT_METHOD)
    class SnowsSparseConfig(QuantizationConfigMixin):
        """``quantization_config`` of a compact snows-hf checkpoint."""

        def __init__(self, layers: dict | None = None, format_version: int = FORMAT_VERSION, **kwargs: Any) -> None:
            self.quant_method = QUANT_METHOD
            self.layers = layers or {}
            self.format_version = format_version
            self.dequantize = True  # always decoded to dense weights on load

        def to_dict(self) -> dict[str, Any]:
            return {"quant_method": QUANT_METHOD, "format_version": self.format_version, "layers": self.layers}

    class SnowsDecode(ConversionOps):
        """``x.weight_values`` + ``x.weight_code`` -> ``x.weight``; other weights pass through."""

        def __init__(self, quantizer: Any) -> None:
            self.quantizer = quantizer

        def __deepcopy__(self, memo: dict) -> "SnowsDecode":
            return self  # the loader copies converters per tensor; decoding must report to one quantizer

        def convert(self, input_dict: dict, full_layer_name: str | None = None, **kwargs: Any) -> dict:
            if "weight_values" not in input_dict and "weight_code" not in input_dict:
                return {full_layer_name: input_dict["weight"]}
            return {full_layer_name: self.quantizer.decode(full_layer_name, input_dict)}

    @register_quantizer(QUANT_METHOD)
    class SnowsSparseQuantizer(HfQuantizer):
        """Decodes compact weights while the checkpoint loads, then leaves a plain model."""

        requires_calibration = True
        serialized_names = {"weight": ["weight", "weight_values", "weight_code"]}

        def __init__(self, quantization_config: Any, **kwargs: Any) -> None:
            super().__init__(quantization_config, **kwargs)
            if quantization_config.format_version != FORMAT_VERSION:
                raise ValueError(f"compact format version {quantization_config.format_version} is not supported")
            self.decoded: set[str] = set()
            self.errors: list[str] = []

        def validate_environment(self, *args: Any, **kwargs: Any) -> None:
            return None

        @property
        def is_trainable(self) -> bool:
            return True

        def is_serializable(self) -> bool:
            return False

        def get_load_operations(self) -> dict:
            return {"dequantize": SnowsDecode}

        def decode(self, target: str, tensors: dict) -> torch.Tensor:
            return _decode_layer(self, target, tensors)

        def _process_model_after_weight_loading(self, model: Any, **kwargs: Any) -> Any:
            missing = sorted(set(self.quantization_config.layers) - self.decoded)
            problems = self.errors + [f"{name}: no compact tensors in the checkpoint" for name in missing]
            if problems:
                raise ValueError("cannot load the compact checkpoint: " + "; ".join(problems))
            self.remove_quantization_config(model)
            return model

    _registered = True


def _decode_layer(quantizer: Any, target: str, tensors: dict) -> torch.Tensor:
    """Decode one layer; a problem is recorded (and a zero weight returned) so the loader
    finishes and the quantizer reports every bad tensor by name at once."""
    from .masks import from_rows, parse_sparsity, to_rows
    from .masks.compact import decode

    name = target.removesuffix(".weight")
    meta = quantizer.quantization_config.layers.get(name)
    key = meta["key"] if meta else f"{name}.weight"

    def one(value: Any) -> Any:
        return value[0] if isinstance(value, list) else value

    try:
        if meta is None:
            raise ValueError("has compact tensors but is not listed in quantization_config")
        pattern = parse_sparsity(meta["pattern"])
        shape = torch.Size(meta["shape"])
        rows, cols = to_rows(torch.empty(shape, device="meta"), meta["layout"]).shape
        for part in ("values", "code"):
            if f"weight_{part}" not in tensors:
                raise ValueError(f"tensor {key}_{part} is missing")
        parts = {"values": one(tensors["weight_values"]), "indices" if pattern.is_nm else "bitmask": one(tensors["weight_code"])}
        weight = from_rows(decode(parts, (rows, cols), pattern), meta["layout"], shape)
        quantizer.decoded.add(name)
        return weight
    except ValueError as err:
        quantizer.errors.append(f"{key}: {err}")
        return torch.zeros(meta["shape"] if meta else (0,))
