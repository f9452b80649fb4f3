"""``snows-hf inspect DIR``: what a pruned folder really holds.

Loads the folder's model (either format: compact checkpoints decode through the
quantizer snows-hf registers) and checks what its ``config.json`` sparsity block claims
against the stored weights, never taking the block on trust: every field is checked
first (a malformed block is one error naming each bad field), then every layer it lists
is measured and must follow the pattern (at most N kept in each group of M inputs; at
least the pattern's share of zeros for unstructured layers, or under global allocation
the layer's own) and reach the share the block records for it, and the listed layers
together must reach the block's ``overall`` (and, under global allocation, the
pattern). Stored zeros only count: a kept weight that is itself zero is allowed. Listed
names map through the model's ``base_model_prefix``, as the weights load (a base
model's folder inspected as a classifier). Folders without snows-hf metadata are inspected too: every Linear/Conv1D/Conv2d
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

from .fields import clip, problems_line
from .masks import SparsityPattern, parse_sparsity, satisfies, to_rows

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
    #: claims about the listed layers together that the weights do not bear out
    problems: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return all(layer.valid for layer in self.layers) and not self.problems

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
            settings = ", ".join(f"{k} {clip(str(meta[k]), 24)}" for k in ("pattern", "method", "mask", "k_step", "format")
                                 if k in meta)
            lines.append(f"written by {clip(str(meta.get('tool', '?')), 40)}: {settings}")
        else:
            lines.append("no snows-hf metadata: weights with zeros and the N:M pattern they follow (nothing to check)")
        lines.append(f"size on disk: {_mib(total)} in {len(self.files)} files, weights {_mib(weights)}")
        lines += ["", f"{'layer':<58} {'shape':>12} {'sparsity':>8} {'pattern':>8}  ok", "-" * 94]
        shown = self.layers if len(self.layers) <= max_layers else self.layers[: max_layers - 1]
        for layer in shown:
            name = layer.name if len(layer.name) <= 58 else "..." + layer.name[-55:]
            shape = "x".join(map(str, layer.shape))
            lines.append(f"{name:<58} {shape:>12} {layer.sparsity:>8.2%} {clip(layer.pattern, 12):>8}  {'yes' if layer.valid else 'NO'}")
        if len(shown) < len(self.layers):
            lines.append(f"... and {len(self.layers) - len(shown)} more layers")
        bad = [layer.name for layer in self.layers if not layer.valid]
        numel = sum(math.prod(layer.shape) for layer in self.layers)
        zeros = sum(layer.sparsity * math.prod(layer.shape) for layer in self.layers)
        lines += ["", f"{len(self.layers)} layers, {zeros / max(numel, 1):.2%} of their weights are zero; "
                  + ("every layer follows its pattern" if not bad else
                     f"{len(bad)} break their pattern: {', '.join(clip(name, 58) for name in bad[:3])}")]
        lines += [f"claim not held: {problem}" for problem in self.problems]
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

    path = Path(folder)
    if not (path / "config.json").is_file():
        raise ValueError(f"{clip(repr(str(folder)))} is not a model folder (no config.json)")
    config = json.loads((path / "config.json").read_text())
    files = {p.name: p.stat().st_size for p in sorted(path.iterdir()) if p.is_file()}
    model, _ = load_model(str(path), dtype="auto", allow_pickle=allow_pickle, processor=False)
    metadata = config.get("sparsity") if isinstance(config, dict) else None
    result = Inspection(str(folder), metadata, files)
    if metadata is not None:
        try:
            claims = read_claims(metadata, model)
        except ValueError as err:
            raise ValueError(f"cannot check {clip(repr(str(folder)))}: its config.json sparsity block is malformed: "
                             f"{err}") from None
        result.layers, result.problems = check_claims(model, claims, _report_order(path))
    else:  # nothing recorded: say which N:M patterns the zeros happen to follow, with nothing to fail
        for name, module in model.named_modules():
            layout = weight_layout(module)
            if not layout or not bool((module.weight == 0).any()):
                continue
            nonzero = to_rows(module.weight.detach(), layout) != 0
            held = [spec for spec in NM_PATTERNS if satisfies(nonzero, parse_sparsity(spec), at_most=True)]
            result.layers.append(LayerCheck(name, tuple(module.weight.shape), 1.0 - float(nonzero.float().mean()),
                                            held[-1] if held else "-", True))
    result.sparse_kernels = _kernel_readiness(model)
    return result


@dataclass
class Claims:
    """What a ``config.json`` sparsity block claims (:func:`read_claims`), its layers under
    the model's own names."""

    pattern: SparsityPattern
    layers: dict[str, tuple[str, float]]  #: the model's name -> (the name the block lists, its share of zeros)
    overall: float | None = None
    allocation: str = "uniform"


def _share(value: Any) -> bool:
    return type(value) in (int, float) and 0.0 <= value <= 1.0  # a bool is no share; nan fails the bounds


def read_claims(block: Any, model: Any) -> Claims:
    """The claims of a ``config.json`` ``sparsity`` block about ``model``, every field
    checked first: a malformed block is one ``ValueError`` naming each bad field (quoting
    it clipped), never a claim taken on trust or a Python internal.

    Example:
        >>> read_claims({"pattern": "2:4"}, model)  # doctest: +SKIP
        Traceback (most recent call last):
        ValueError: sparsity.layers is missing
    """
    from .adapters import weight_layout
    from .compact_format import model_layer_name

    if not isinstance(block, dict):
        raise ValueError(f"sparsity: {clip(repr(block))} is not a mapping")
    problems = []
    pattern = block.get("pattern")
    try:
        pattern = parse_sparsity(pattern) if isinstance(pattern, str) else None
    except ValueError:
        pattern = None
    if "pattern" not in block:
        problems.append("sparsity.pattern is missing")
    elif pattern is None:
        problems.append(f"sparsity.pattern: {clip(repr(block['pattern']))} is not a sparsity string such as '2:4' or '0.5'")
    listed = block.get("layers")
    layers: dict[str, tuple[str, float]] = {}
    if "layers" not in block:
        problems.append("sparsity.layers is missing")
    elif not isinstance(listed, dict):
        problems.append(f"sparsity.layers must map layer names to their shares of zeros, not be a {type(listed).__name__}")
    elif not listed:
        problems.append("sparsity.layers lists no layer")
    else:
        modules = dict(model.named_modules())
        parameters = {name for name, _ in model.named_parameters(remove_duplicate=False)}
        prefix = getattr(model, "base_model_prefix", "")
        for name, share in listed.items():
            where = f"sparsity.layers[{clip(repr(name))}]"
            own = model_layer_name(name, parameters, prefix)
            if not _share(share):
                problems.append(f"{where}: {clip(repr(share))} is not a share of zeros from 0 to 1")
            if own not in modules:
                problems.append(f"{where}: the model has no module {clip(name)}")
            elif weight_layout(modules[own]) is None:
                problems.append(f"{where}: {type(modules[own]).__name__} has no Linear, Conv1D or Conv2d weight to prune")
            elif own in layers:
                problems.append(f"{where}: the model's {clip(own)} is listed again (also as {clip(repr(layers[own][0]))})")
            else:
                layers[own] = (name, share)
    overall = block.get("overall")
    if overall is not None and not _share(overall):
        problems.append(f"sparsity.overall: {clip(repr(overall))} is not a share of zeros from 0 to 1")
    allocation = block.get("allocation", "uniform")
    if allocation not in ("uniform", "global"):
        problems.append(f"sparsity.allocation: {clip(repr(allocation))} is not uniform or global")
    if problems:
        raise ValueError(problems_line(problems))
    return Claims(pattern, layers, overall, allocation)


def check_claims(model: Any, claims: Claims, order: dict[str, int] | None = None) -> tuple[list[LayerCheck], list[str]]:
    """Each listed layer's stored weight against what ``claims`` says of it, and the claims
    about the listed layers together: ``(layer checks, problems)``.

    A layer holds its claim when its stored zeros follow the pattern (at most N kept in
    each group of M; an unstructured layer at least the pattern's share, or under global
    allocation its own) and reach the share recorded for it. Together, the layers must
    reach ``overall`` and, under global allocation, the pattern's share. ``order`` (listed
    name -> position) sorts the checks, the run's execution order where known.

    Example:
        >>> checks, problems = check_claims(model, read_claims(config["sparsity"], model))  # doctest: +SKIP
    """
    from .adapters import weight_layout

    order = order or {}
    names = sorted(claims.layers, key=lambda n: order.get(claims.layers[n][0], len(order)))
    checks, zeros, numel = [], 0, 0
    for name in names:
        module = model.get_submodule(name)
        weight = module.weight.detach()
        nonzero = to_rows(weight, weight_layout(module)) != 0  # a kept weight may be zero itself: "at most" N per group
        recorded = claims.layers[name][1]
        sparsity = 1.0 - float(nonzero.float().mean())
        valid = sparsity >= recorded - 1.0 / nonzero.numel() - 1e-6  # the block rounds shares to 6 decimals
        if claims.pattern.is_nm:  # fewer inputs than M: one partial group is no N:M layout (a run refuses it first)
            fits = nonzero.shape[1] >= claims.pattern.m
            pattern, valid = claims.pattern.label, valid and fits and satisfies(nonzero, claims.pattern, at_most=True)
        else:
            pattern = f"{recorded * 100:.4g}%"
            valid = valid and (claims.allocation == "global" or satisfies(nonzero, claims.pattern, at_most=True))
        checks.append(LayerCheck(name, tuple(weight.shape), sparsity, pattern, valid))
        zeros += int((~nonzero).sum())
        numel += nonzero.numel()
    measured = zeros / max(numel, 1)
    wanted = {"overall": claims.overall}
    if not claims.pattern.is_nm and claims.allocation == "global":
        wanted["pattern"] = claims.pattern.fraction
    problems = [f"the listed layers together: {measured:.2%} of their weights are zero, not the {share * 100:.4g}% "
                f"{name} claims" for name, share in wanted.items()
                if share is not None and measured < share - 1.0 / max(numel, 1) - 1e-6]
    return checks, problems


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
