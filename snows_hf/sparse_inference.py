"""Run 2:4 models on GPU sparse kernels: ``sparse_inference_(model)``.

A 2:4 weight only saves time once its matmul runs on the sparse tensor cores. PyTorch
core ships the kernels as semi-structured sparse tensors (cuSPARSELt and CUTLASS back
ends): an ``nn.Linear`` whose weight is swapped for one computes ``F.linear`` with them.
This module decides which layers can take the swap (a pure plan, testable anywhere),
performs it, checks each converted layer against its dense self on a random probe, and
says what it did and why the other layers stayed dense.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .blocks import shared_parameters
from .devices import device_label, semi_structured_backends, semi_structured_support
from .evaluation import relative_error
from .fields import setting

logger = logging.getLogger(__name__)

_BACKEND_CLASSES = {  #: back end name -> torch.sparse class that implements it
    "cusparselt": "SparseSemiStructuredTensorCUSPARSELT",
    "cutlass": "SparseSemiStructuredTensorCUTLASS",
}
_PROBE_ROWS = 64  #: inputs of the per-layer check (a multiple of every back end's padding)
_TOLERANCE = {torch.float16: 1e-2, torch.bfloat16: 3e-2, torch.float32: 1e-2}  #: float32 runs as TF32


@dataclass(frozen=True)
class KernelBackend:
    """One 2:4 kernel back end: what it accepts and how it compresses a weight.

    ``shapes`` maps each weight dtype with a sparse matmul to the ``(rows, cols)`` both
    sides of the weight must be multiples of; ``compress`` turns a dense 2:4 CUDA weight
    into the sparse tensor ``F.linear`` dispatches to the kernels; ``support`` says why a
    device cannot run them (``None`` when it can).
    """

    name: str
    shapes: Mapping[torch.dtype, tuple[int, int]]
    compress: Callable[[torch.Tensor], torch.Tensor]
    support: Callable[[torch.device], str | None] = semi_structured_support


def kernel_backend(name: str = "auto") -> KernelBackend:
    """PyTorch's cuSPARSELt or CUTLASS back end (``auto``: cuSPARSELt where this torch has it).

    Shape and dtype limits come from torch's own tables, so they follow the installed
    version. Integer and float8 weights are left out: models hold no such ``nn.Linear``
    weights, and torch has no plain matmul for float8 ones. A CPU-only build has no
    kernels but still plans: ``auto`` then takes cuSPARSELt's limits, the ones a GPU
    build uses by default.

    Example:
        >>> kernel_backend("cutlass").shapes[torch.float16]
        (32, 64)
    """
    available = semi_structured_backends()
    if name == "auto":
        name = available[0] if available else "cusparselt"
    if name not in _BACKEND_CLASSES:
        raise ValueError(f"unknown 2:4 kernel back end {name!r}; use auto, {', '.join(_BACKEND_CLASSES)}")
    if available and name not in available:
        raise ValueError(f"this torch build has no {name} kernels; use {' or '.join(available)}")
    cls = getattr(torch.sparse, _BACKEND_CLASSES[name], None)
    table = getattr(cls, "_DTYPE_SHAPE_CONSTRAINTS", None)
    if cls is None or table is None:
        raise ValueError(f"torch {torch.__version__} has no semi-structured sparse tensors; install torch>=2.1")
    shapes = {dtype: (c.sparse_min_rows, c.sparse_min_cols) for dtype, c in table.items()
              if dtype.is_floating_point and dtype.itemsize >= 2}
    return KernelBackend(name, shapes, cls.from_dense)


@dataclass
class LayerDecision:
    """One layer: converted (``reason`` empty) or kept dense, and why."""

    name: str
    kind: str  #: the module's class name
    shape: tuple[int, ...]
    dtype: str
    reason: str = ""
    detail: str = ""  #: the layer's own figure behind the reason (share of dense groups, error, ...)

    @property
    def converted(self) -> bool:
        return not self.reason

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "shape": list(self.shape), "dtype": self.dtype,
                "converted": self.converted, "reason": self.reason, "detail": self.detail}


@dataclass
class SparseInferenceReport:
    """What :func:`sparse_inference_` did: every linear layer (``nn.Linear``, ``Conv1D``) and 2:4 Conv2d."""

    backend: str | None
    device: str
    layers: list[LayerDecision] = field(default_factory=list)
    message: str = ""  #: set when nothing could be converted at all, and why

    @property
    def converted(self) -> list[LayerDecision]:
        return [layer for layer in self.layers if layer.converted]

    @property
    def linear(self) -> list[LayerDecision]:
        """The linear layers (``nn.Linear``, ``Conv1D``): all but the 2:4 Conv2d listed alongside."""
        return [layer for layer in self.layers if layer.reason != _CONV2D]

    def kept_dense(self) -> dict[str, list[LayerDecision]]:
        """The layers that stay dense, by reason, in the order they come."""
        groups: dict[str, list[LayerDecision]] = {}
        for layer in self.layers:
            if layer.reason:
                groups.setdefault(layer.reason, []).append(layer)
        return groups

    def format(self, max_names: int = 3) -> str:
        """A short summary: how many layers run on the kernels, and why the others do not.

        Example:
            >>> print(SparseInferenceReport("cusparselt", "cpu", [LayerDecision("fc", "Linear", (64, 64), "float16")]).format())
            2:4 sparse inference (cusparselt on cpu): 1 of 1 linear layers converted (100.0% of their weights)
              converted: 1 layer (fc)
        """
        numel = sum(math.prod(layer.shape) for layer in self.linear)
        done = sum(math.prod(layer.shape) for layer in self.converted)
        where = f"{self.backend} on {self.device}" if self.backend else self.device
        lines = [f"2:4 sparse inference ({where}): {len(self.converted)} of {len(self.linear)} linear layers converted"
                 f" ({done / max(numel, 1):.1%} of their weights)"]
        if self.message:
            lines.append(self.message)
        if self.converted:  # by the layer's own name within its block: "q_proj x12"
            kinds: dict[str, int] = {}
            for layer in self.converted:
                kinds[layer.name.rsplit(".", 1)[-1]] = kinds.get(layer.name.rsplit(".", 1)[-1], 0) + 1
            lines.append(f"  converted: {len(self.converted)} layer{'s' if len(self.converted) > 1 else ''} ("
                         + ", ".join(f"{kind} x{count}" if count > 1 else kind for kind, count in kinds.items()) + ")")
        for reason, members in self.kept_dense().items():
            names = ", ".join(_describe(m) for m in members[:max_names])
            more = f" and {len(members) - max_names} more" if len(members) > max_names else ""
            lines.append(f"  kept dense, {reason}: {len(members)} layer{'s' if len(members) > 1 else ''} ({names}{more})")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "device": self.device, "message": self.message,
                "converted": len(self.converted), "layers": [layer.to_dict() for layer in self.layers]}


_NOT_2_4 = "not 2:4"
_ALREADY = "already a 2:4 sparse weight (converted earlier)"
_NO_KERNELS = "on {}, which has no 2:4 kernels"
_CONV2D = "2:4 but a Conv2d (the kernels serve Linear layers only)"


def _describe(layer: LayerDecision) -> str:
    shape = "x".join(map(str, layer.shape))
    extra = f" [{layer.detail}]" if layer.detail else ""
    return f"{layer.name or '<model>'} {shape} {layer.dtype}{extra}"


def _dense_groups(rows: torch.Tensor) -> float:
    """Share of full 4-input groups of a ``(rows, inputs)`` weight with more than 2 non-zeros."""
    full = rows.shape[1] - rows.shape[1] % 4
    if full == 0:
        return 1.0
    counts = (rows[:, :full] != 0).reshape(-1, 4).sum(-1)
    return float((counts > 2).float().mean())


def plan_sparse_inference(
    model: nn.Module, backend: KernelBackend, filter_fn: Callable[[nn.Module, str], bool] | None = None
) -> list[LayerDecision]:
    """Which layers of ``model`` can run on ``backend``'s 2:4 kernels, and why the others cannot.

    Every ``nn.Linear`` and GPT-2 ``Conv1D`` (a Linear with its weight stored transposed)
    gets a decision, checked in this order: picked by ``filter_fn`` (``(module, name) ->
    bool``, as in torchao's ``quantize_``), 2:4 (at most 2 non-zeros in every group of 4
    consecutive inputs: a kept weight may itself be zero), its own weight (not tied to
    another module's), a dtype the back end has a matmul for, out and in features
    multiples of the back end's tile, a device the kernels run on. Conv2d layers whose
    weights are 2:4 are listed too, as kept dense. Nothing is changed.

    Example:
        >>> decisions = plan_sparse_inference(model, kernel_backend())  # doctest: +SKIP
        >>> [d.name for d in decisions if d.converted]  # doctest: +SKIP
        ['vit.layers.0.attention.q_proj', ...]
    """
    from .adapters import weight_layout
    from .masks import to_rows

    shared = shared_parameters(model)
    decisions = []
    for name, module in model.named_modules():
        layout = weight_layout(module)
        if layout is None:
            continue
        weight = module.weight
        decision = LayerDecision(name, type(module).__name__, tuple(weight.shape), str(weight.dtype).replace("torch.", ""))
        rows = to_rows(weight.detach(), layout)  # (out, in): a view for Linear and Conv1D
        if layout == "conv2d":
            if weight.device.type != "meta" and _dense_groups(rows) == 0.0:
                decision.reason = _CONV2D
                decisions.append(decision)
            continue
        if filter_fn is not None and not filter_fn(module, name):
            decision.reason = "left out by filter_fn"
        elif layout == "conv1d" and hasattr(module, "_hf_hook"):
            decision.reason = "Conv1D under an accelerate hook (becoming a Linear would drop the hook)"
        else:
            decision.reason, decision.detail = _reason(rows, backend, id(weight) in shared)
        decisions.append(decision)
    return decisions


def _reason(rows: torch.Tensor, backend: KernelBackend, shared: bool) -> tuple[str, str]:
    """Why a ``(out, in)`` weight cannot take the kernels (empty when it can), and its figure."""
    if rows.device.type == "meta":  # offloaded by accelerate: the kernels need the weight on the GPU
        return semi_structured_support(rows.device) or "", ""
    if isinstance(rows, getattr(torch.sparse, "SparseSemiStructuredTensor", ())):
        return _ALREADY, ""
    if not rows.is_floating_point():  # bitsandbytes and other quantized layers pack integers
        return f"quantized weight ({str(rows.dtype).replace('torch.', '')}): the kernels take floating-point weights", ""
    dense = _dense_groups(rows)
    if dense > 0.0:
        if dense == 1.0:
            return _NOT_2_4, "dense"
        share = ">99.9%" if dense > 0.999 else f"{dense:.1%}"  # never a rounded "100.0%" that is not all
        return _NOT_2_4, f"{share} of groups keep more than 2"
    if shared:
        return "weight tied to another module (converting it would break the other)", ""
    if rows.dtype not in backend.shapes:
        kinds = "/".join(str(d).replace("torch.", "") for d in backend.shapes)
        return f"dtype: {backend.name} kernels take {kinds} weights (load the model in bfloat16 or float16)", ""
    tile_rows, tile_cols = backend.shapes[rows.dtype]
    out_features, in_features = rows.shape
    if out_features % tile_rows or in_features % tile_cols:
        return f"shape: {backend.name} needs out x in features in multiples of {tile_rows} x {tile_cols}", ""
    if backend.support(rows.device):
        return _NO_KERNELS.format(rows.device), ""
    return "", ""


def plan_for_gpu(model: nn.Module, backend: str = "auto") -> SparseInferenceReport:
    """The plan :func:`sparse_inference_` would follow on a GPU with 2:4 kernels, with the
    model in half precision, wherever ``model`` is now (nothing is changed or moved).

    For checking a checkpoint on a machine without such a GPU: the pattern, tied weights
    and the back end's half-precision tiles decide, not the device or the stored dtype.

    Example:
        >>> ready = [d.name for d in plan_for_gpu(model).converted]  # doctest: +SKIP
    """
    chosen = kernel_backend(backend)
    tiles = chosen.shapes[torch.bfloat16]
    anywhere = KernelBackend(chosen.name, dict.fromkeys((torch.float32, torch.float16, torch.bfloat16), tiles),
                             chosen.compress, support=lambda device: None)
    return SparseInferenceReport(chosen.name, "a GPU with 2:4 kernels", plan_sparse_inference(model, anywhere))


@torch.no_grad()
def _convert(model: nn.Module, name: str, backend: KernelBackend, verify: bool) -> tuple[str, str]:
    """Give layer ``name`` a sparse weight; ``(reason, detail)`` when it stays dense instead.

    A Linear keeps its module; a Conv1D (``x @ W + b``) is replaced by the Linear that
    holds ``W^T``, the same map, so ``F.linear`` reaches the kernels.
    """
    module = model.get_submodule(name)
    is_linear = isinstance(module, nn.Linear)
    weight = (module.weight if is_linear else module.weight.t()).detach().contiguous()
    try:
        sparse = backend.compress(weight)
        if verify:
            generator = torch.Generator(device=weight.device).manual_seed(0)
            probe = torch.randn(_PROBE_ROWS, weight.shape[1], generator=generator, device=weight.device, dtype=weight.dtype)
            error = relative_error(torch.nn.functional.linear(probe, sparse), torch.nn.functional.linear(probe, weight))
            if not error <= _TOLERANCE.get(weight.dtype, 1e-2):  # NaN included
                return "kernel output differs from the dense layer", f"relative error {error:.2g}"
    except (RuntimeError, NotImplementedError, ValueError) as exc:
        text = " ".join(str(exc).split())
        return "kernel failed", text[:120]
    if is_linear:
        module.weight = nn.Parameter(sparse, requires_grad=False)
        return "", ""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=module.bias is not None, device="meta")
    linear.weight = nn.Parameter(sparse, requires_grad=False)
    if module.bias is not None:
        linear.bias = module.bias
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, linear.train(module.training))
    return "", ""


def sparse_inference_(
    model: nn.Module,
    *,
    backend: str | KernelBackend = "auto",
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
    verify: bool = True,
) -> SparseInferenceReport:
    """Run the 2:4 linear layers of ``model`` on GPU sparse kernels, in place.

    Each layer that :func:`plan_sparse_inference` clears gets its weight swapped for a
    PyTorch semi-structured sparse tensor (cuSPARSELt, or CUTLASS where torch lacks it;
    a GPT-2 ``Conv1D`` becomes the ``nn.Linear`` computing the same map);
    with ``verify`` (the default) a random probe must give the dense layer's output
    within float16/bfloat16 tolerance, or the layer stays dense. Every other layer stays
    as it was. The model must already be on the GPU in float16 or bfloat16 (CUTLASS
    also takes float32, as TF32). On a machine without a supported GPU nothing changes
    and the report says why. The result is for inference: keep the original checkpoint
    for saving (converted weights are not ``save_pretrained`` material).

    Example:
        >>> model = AutoModelForImageClassification.from_pretrained("vit-2of4", dtype=torch.float16, device_map="auto")  # doctest: +SKIP
        >>> print(snows_hf.sparse_inference_(model).format())  # doctest: +SKIP

        On a machine without the kernels, :func:`plan_for_gpu` gives the same decisions;
        for a ViT-L/16 pruned to 2:4 (``benchmarks/sparse_inference_plan.py``) it printed
        ``2:4 sparse inference (cusparselt on a GPU with 2:4 kernels): 144 of 145 linear
        layers converted (99.7% of their weights)``, the classifier kept dense.
    """
    chosen = kernel_backend(backend) if isinstance(backend, str) else backend
    devices = {p.device for p in model.parameters() if p.device.type != "meta"} or {torch.device("meta")}
    report = SparseInferenceReport(chosen.name, ", ".join(sorted(map(device_label, devices))))
    report.layers = plan_sparse_inference(model, chosen, filter_fn)
    for decision in report.layers:
        if decision.converted:
            decision.reason, decision.detail = _convert(model, decision.name, chosen, verify)
    if not report.converted:
        report.message = _unchanged(report, chosen, devices)
        logger.warning("2:4 sparse inference: %s", report.message)
    return report


def _unchanged(report: SparseInferenceReport, backend: KernelBackend, devices: set[torch.device]) -> str:
    """Why nothing was converted, the most useful reason first."""
    linear = report.linear
    ready = sum(layer.reason in {_NO_KERNELS.format(d) for d in devices} for layer in linear)
    missing = sorted(filter(None, (backend.support(d) for d in devices)))
    no_device = len(missing) == len(devices)
    if no_device and ready:
        return (f"model left unchanged: {missing[0]} ({ready} linear layer{'s' if ready != 1 else ''} "
                f"meet{'' if ready != 1 else 's'} every other condition)")
    if all(layer.reason == _NOT_2_4 for layer in linear):
        return f"model left unchanged: no linear layer is 2:4 (prune it with {setting('sparsity', '2:4')} first)"
    if no_device:
        return f"model left unchanged: {missing[0]}, and no layer meets the other conditions (below)"
    return "model left unchanged: no layer meets the kernels' conditions (below)"
