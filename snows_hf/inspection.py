"""``snows-hf inspect DIR``: what a pruned folder really holds.

Loads the folder's model (either format: compact checkpoints decode through the
quantizer snows-hf registers), and for every layer its ``config.json`` lists, measures
the sparsity of the stored weight and checks the pattern itself: every group of M
inputs keeps exactly N for N:M, the recorded share of zeros for unstructured layers.
Stored zeros only count: a kept weight that is itself zero is allowed (at most N per
group). Folders without snows-hf metadata are inspected too: every Linear/Conv1D/Conv2d
weight with zeros and which of 4:8, 2:4, 1:4 its zeros follow, with nothing to fail.
When some layers are 2:4, it also says how many linear layers the GPU sparse kernels
would take in half precision (:func:`snows_hf.sparse_inference.plan_for_gpu`) and why
the others would stay dense.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


NM_PATTERNS = ("4:8", "2:4", "1:4")  #: checked on folders without metadata, the loosest first


@dataclass
class LayerCheck:
    name: str
    shape: tuple[int, ...]
    sparsity: float
    pattern: str
    valid: bool


@dataclass
class Inspection:
    folder: str
    metadata: dict[str, Any] | None
    files: dict[str, int]  #: file name -> bytes
    layers: list[LayerCheck] = field(default_factory=list)
    #: what 2:4 GPU kernels would run, in half precision: back end, ready layers, linear layers, why others not
    sparse_kernels: dict[str, Any] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return all(layer.valid for layer in self.layers)

    def to_dict(self) -> dict[str, Any]:
        """The findings as plain data, ``valid`` included (what ``snows-hf inspect --json`` writes).

        Example:
            >>> Inspection("out", None, {"model.safetensors": 10}).to_dict()["valid"]
            True
        """
        return asdict(self) | {"valid": self.valid}

    def format(self, max_layers: int = 60) -> str:
        meta = self.metadata or {}
        total = sum(self.files.values())
        weights = sum(n for f, n in self.files.items() if f.endswith(".safetensors"))
        lines = [f"{self.folder}"]
        if meta:
            settings = ", ".join(f"{k} {meta[k]}" for k in ("pattern", "method", "mask", "k_step", "format") if k in meta)
            lines.append(f"written by {meta.get('tool', '?')}: {settings}")
        else:
            lines.append("no snows-hf metadata: weights with zeros and the N:M pattern they follow (nothing to check)")
        lines.append(f"size on disk: {_mib(total)} in {len(self.files)} files, weights {_mib(weights)}")
        lines += ["", f"{'layer':<58} {'shape':>12} {'sparsity':>8} {'pattern':>8}  ok", "-" * 94]
        shown = self.layers if len(self.layers) <= max_layers else self.layers[: max_layers - 1]
        for layer in shown:
            name = layer.name if len(layer.name) <= 58 else "..." + layer.name[-55:]
            shape = "x".join(map(str, layer.shape))
            lines.append(f"{name:<58} {shape:>12} {layer.sparsity:>8.2%} {layer.pattern:>8}  {'yes' if layer.valid else 'NO'}")
        if len(shown) < len(self.layers):
            lines.append(f"... and {len(self.layers) - len(shown)} more layers")
        bad = [layer.name for layer in self.layers if not layer.valid]
        numel = sum(math.prod(layer.shape) for layer in self.layers)
        zeros = sum(layer.sparsity * math.prod(layer.shape) for layer in self.layers)
        lines += ["", f"{len(self.layers)} layers, {zeros / max(numel, 1):.2%} of their weights are zero; "
                  + ("every layer follows its pattern" if not bad else f"{len(bad)} break their pattern: {', '.join(bad[:3])}")]
        kernels = self.sparse_kernels
        if kernels.get("ready"):
            lines.append(f"2:4 GPU kernels ({kernels['backend']}, float16/bfloat16): {kernels['ready']} of "
                         f"{kernels['linear']} linear layers would run on them")
            lines += [f"  kept dense, {reason}: {count}" for reason, count in kernels["kept_dense"].items()]
        return "\n".join(lines)



def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _report_order(path: Path) -> dict[str, int]:
    try:
        report = json.loads((path / "report.json").read_text())
        return {layer["name"]: i for i, layer in enumerate(report["layers"])}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def inspect_folder(folder: str | Path, allow_pickle: bool = False) -> Inspection:
    """Measure and check every pruned layer of a saved folder.

    Example:
        >>> report = inspect_folder("vit-pruned-2of4")  # doctest: +SKIP
        >>> report.valid  # doctest: +SKIP
        True
    """
    from .adapters import weight_layout
    from .loading import load_model
    from .masks import parse_sparsity, satisfies, to_rows

    path = Path(folder)
    if not (path / "config.json").is_file():
        raise ValueError(f"{str(folder)!r} is not a model folder (no config.json)")
    config = json.loads((path / "config.json").read_text())
    metadata = config.get("sparsity") if isinstance(config.get("sparsity"), dict) else None
    files = {p.name: p.stat().st_size for p in sorted(path.iterdir()) if p.is_file()}
    model, _ = load_model(str(path), dtype="auto", allow_pickle=allow_pickle, processor=False)
    result = Inspection(str(folder), metadata, files)
    if metadata:
        target = parse_sparsity(metadata["pattern"])
        layers = metadata.get("layers", {})
        order = _report_order(path)  # execution order when the run's report is there
        names = sorted(layers, key=lambda n: order.get(n, len(order)))
        named = [(name, model.get_submodule(name)) for name in names]
    else:
        target, layers = None, {}
        named = [(n, m) for n, m in model.named_modules() if weight_layout(m) and bool((m.weight == 0).any())]
    for name, module in named:
        layout = weight_layout(module)
        weight = module.weight.detach()
        nonzero = to_rows(weight, layout) != 0  # a kept weight may be zero itself: "at most" N per group
        sparsity = 1.0 - float(nonzero.float().mean())
        if target is None:  # nothing recorded: say which N:M patterns the zeros happen to follow
            held = [spec for spec in NM_PATTERNS if satisfies(nonzero, parse_sparsity(spec), at_most=True)]
            pattern, valid = (held[-1] if held else "-"), True
        elif target.is_nm:
            pattern, valid = target.label, satisfies(nonzero, target, at_most=True)
        else:
            recorded = layers.get(name, target.fraction)
            pattern = f"{recorded * 100:.4g}%"
            valid = sparsity >= recorded - 1.0 / nonzero.numel() - 1e-6
        result.layers.append(LayerCheck(name, tuple(weight.shape), sparsity, pattern, valid))
    result.sparse_kernels = _kernel_readiness(model)
    return result


def _kernel_readiness(model: Any) -> dict[str, Any]:
    """How many linear layers the 2:4 GPU kernels would take, and why the others not."""
    from .sparse_inference import plan_for_gpu

    plan = plan_for_gpu(model)
    kept: dict[str, int] = {}
    for reason, layers in plan.kept_dense().items():
        if layers[0] in plan.linear:
            short = reason.split(" (")[0]  # "weight tied to another module (converting ...)" -> its gist
            kept[short] = kept.get(short, 0) + len(layers)
    return {"backend": plan.backend, "ready": len(plan.converted), "linear": len(plan.linear), "kept_dense": kept}
