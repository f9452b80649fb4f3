"""What a pruning run did, layer by layer: returned by :func:`snows_hf.prune_`."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from .methods import METHODS, Method, without_method_alias
from .version import __version__


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
    placement: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    solver: dict[str, Any] = field(default_factory=dict)
    #: per block, the block forwards its pruning and propagation took, per micro-batch
    #: (SNOWS windows that run on into later blocks count here too)
    block_forwards: list[float] = field(default_factory=list)

    @property
    def sparsity(self) -> float:
        """Share of zeros over all pruned weights together."""
        total = sum(math.prod(layer.shape) for layer in self.layers)
        zeros = sum(layer.sparsity * math.prod(layer.shape) for layer in self.layers)
        return zeros / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what ``report.json`` holds)."""
        out = asdict(self)
        out["sparsity"] = self.sparsity
        return out

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> "PruneReport":
        """A report back from :meth:`to_dict` (``report.json``); other keys are ignored. An
        earlier run's method name reads as today's (``none`` as ``mask-only``)."""
        payload = {**payload, "config": without_method_alias(payload["config"], quiet=True)}
        names = {f.name for f in fields(cls)} - {"layers"}
        layer_names = {f.name for f in fields(LayerReport)}
        layers = [LayerReport(**{k: v for k, v in layer.items() if k in layer_names}) for layer in payload["layers"]]
        return cls(**{k: v for k, v in payload.items() if k in names}, layers=layers)

    def sparsity_block(self) -> dict[str, Any]:
        """The ``sparsity`` entry written into ``config.json`` next to the weights."""
        block = {"pattern": self.config["sparsity"], **self._method().metadata(self.config)}
        if self.config.get("allocation") == "global":
            block.update(allocation="global", max_layer_sparsity=self.config["max_layer_sparsity"])
        return block | {
            "format": "dense",
            "overall": round(self.sparsity, 6),
            "layers": {layer.name: round(layer.sparsity, 6) for layer in self.layers},
            "tool": f"snows-hf {__version__}",
        }


    def _method(self) -> type[Method]:
        # A method this session has not registered (one a user's own run added) reads as
        # the plain Method: its name and mask.
        return METHODS.get(self.config["method"], Method)

    def format_table(self, evaluation: dict[str, Any] | None = None, phases: dict[str, float] | None = None,
                     max_layers: int = 40) -> str:
        """The terminal summary: dense vs pruned metrics, sparsity per layer and overall, phases.

        Layers are listed one per line up to ``max_layers``; beyond that, the range and
        a pointer to ``report.json``.
        """
        cfg = self.config
        lines = []
        if evaluation:
            lines += [format_metrics(evaluation), ""]
        settings = self._method().summary(cfg)
        lines.append(f"sparsity {cfg['sparsity']} ({settings}): {len(self.layers)} layers in {self.num_blocks} blocks, "
                     f"{self.num_calibration_samples} calibration samples")
        if len(self.layers) <= max_layers:
            width = max(len(layer.name) for layer in self.layers)
            lines += [f"  {layer.name:<{width}}  {layer.sparsity:7.2%}" for layer in self.layers]
        else:
            values = [layer.sparsity for layer in self.layers]
            lines.append(f"  per layer: {min(values):.2%} to {max(values):.2%} (each layer in report.json)")
        lines.append(f"  overall measured sparsity: {self.sparsity:.2%}")
        if phases:
            lines.append("time: " + ", ".join(f"{name} {sec:.1f} s" for name, sec in phases.items()))
        return "\n".join(lines)


def format_metrics(figures: dict[str, Any], columns: tuple[str, ...] = ("dense", "pruned"),
                   headers: tuple[str, ...] | None = None) -> str:
    """A metric table: one row per metric, one column per model, on ``figures["samples"]``.

    Example:
        >>> print(format_metrics({"task": "causal-lm", "samples": 4, "dense": {"perplexity": 27.0},
        ...                       "pruned": {"perplexity": 31.5}}))
        metric (4 held-out samples, causal-lm)      dense     pruned
        perplexity                                27.0000    31.5000
    """
    headers = headers or columns
    names = [n for c in columns for n in figures.get(c, {}) if n]
    names = list(dict.fromkeys(names))
    title = f"metric ({figures['samples']} held-out samples, {figures['task']})"
    width = max([len(title)] + [len(n) for n in names])
    lines = [f"{title:<{width}} " + " ".join(f"{h:>10}" for h in headers)]
    for name in names:
        cells = []
        for column in columns:
            value = figures.get(column, {}).get(name)
            cells.append(f"{value:>10.4f}" if value is not None else f"{'':>10}")
        lines.append(f"{name:<{width}} " + " ".join(cells))
    return "\n".join(lines)



def json_ready(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, +-inf) as ``None``: strict JSON, which
    ``json.dumps`` would otherwise break with bare ``NaN`` tokens.

    Example:
        >>> json_ready({"perplexity": float("nan"), "losses": [1.0, float("inf")]})
        {'perplexity': None, 'losses': [1.0, None]}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def dumps_json(value: Any) -> str:
    """Strict JSON text of ``value`` (non-finite numbers as ``null``), indented, with a newline.

    Example:
        >>> dumps_json({"x": float("nan")}).split()
        ['{', '"x":', 'null', '}']
    """
    return json.dumps(json_ready(value), indent=2, allow_nan=False) + "\n"


@dataclass
class RunRecord:
    """What ``report.json`` holds about a run beside the per-layer report: where the model
    and data came from, the figures (held-out data, lm-eval tasks) and the time of each
    phase. Written by :func:`run`
    (and the demo), read back by ``convert`` and the model card.

    Example:
        >>> RunRecord(source_model="my-vit").to_dict()
        {'source_model': 'my-vit', 'evaluation': None}
    """

    source_model: str | None = None
    calibration: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    phases: dict[str, float] | None = None
    processes: int | None = None
    demo: dict[str, Any] | None = None
    #: lm-eval figures of the dense and pruned models (:meth:`snows_hf.harness.PairedTasks.figures`)
    tasks: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fields that are set, as ``report.json`` stores them; ``evaluation`` always
        (``None``: the run was not evaluated)."""
        return {k: v for k, v in asdict(self).items() if v is not None or k == "evaluation"}

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> RunRecord:
        """The record within a ``report.json`` payload (other keys are the layer report's)."""
        return cls(**{f.name: payload[f.name] for f in fields(cls) if f.name in payload})
