"""What a pruning run did, layer by layer: returned by :func:`snows_hf.prune_`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class LayerReport:
    """Figures for one pruned module.

    ``sparsity`` is measured on the written weight (share of exact zeros), not the target.
    ``metrics`` holds what the method measured (losses, solver iterations, ...);
    ``diagnostics`` compares magnitude and Hessian-scaled masks on the layer's own inputs
    (:func:`~snows_hf.masks.diagnostics.importance_diagnostics`), or is ``None``.
    """

    name: str
    block: int
    shape: list[int]
    layout: str
    sparsity: float
    seconds: float
    partial_groups: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    diagnostics: dict[str, Any] | None = None


@dataclass
class PruneReport:
    """The result of :func:`snows_hf.prune_`: settings, per-layer figures and timings.

    Example:
        >>> report = snows_hf.prune_(model, PruneConfig(sparsity="2:4"), batches)  # doctest: +SKIP
        >>> round(report.sparsity, 3)  # doctest: +SKIP
        0.5
    """

    config: dict[str, Any]
    model_type: str | None
    block_path: str
    num_blocks: int
    num_calibration_samples: int
    layers: list[LayerReport] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def sparsity(self) -> float:
        """Share of zeros over all pruned weights together."""
        total = sum(_numel(layer.shape) for layer in self.layers)
        zeros = sum(layer.sparsity * _numel(layer.shape) for layer in self.layers)
        return zeros / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what ``report.json`` holds)."""
        out = asdict(self)
        out["sparsity"] = self.sparsity
        return out

    def sparsity_block(self) -> dict[str, Any]:
        """The ``sparsity`` entry written into ``config.json`` next to the weights."""
        from . import __version__

        block = {
            "pattern": self.config["sparsity"],
            "method": self.config["method"],
        }
        if self.config["method"] != "magnitude":
            block["mask"] = self.config["mask"]
        if self.config["method"] == "snows":
            block.update(k_step=self.config["k_step"], target=self.config["target"])
        if self.config.get("allocation") == "global":
            block.update(allocation="global", max_layer_sparsity=self.config["max_layer_sparsity"])
        return block | {
            "format": "dense",
            "overall": round(self.sparsity, 6),
            "layers": {layer.name: round(layer.sparsity, 6) for layer in self.layers},
            "tool": f"snows-hf {__version__}",
        }


def _numel(shape: list[int]) -> int:
    n = 1
    for dim in shape:
        n *= dim
    return n
