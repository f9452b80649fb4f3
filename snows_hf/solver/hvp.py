"""Window loss, its gradient and Hessian-vector products, by reverse-mode autograd only.

The caller describes a window by a residual function ``residual_fn(w, batch) -> list[Tensor]``
that is differentiable in the weight ``w``. The loss of one batch is
``sum_k mean(r_k ** 2)``; the loss of a list of batches is the mean of the batch losses,
each batch weighing equally. Everything here works on plain tensors: no model knowledge.

Only reverse mode is used (no ``torch.func``, no forward-mode AD) because the residual
functions run Hugging Face modules whose ops may lack forward-mode derivatives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ..fields import setting

ResidualFn = Callable[[Tensor, Any], Sequence[Tensor]]

HESSIAN_KINDS = ("gauss-newton", "exact")  #: the default first


def _owns_all(batch: Any) -> bool:
    return True


def _no_reduce(t: Tensor) -> Tensor:
    return t


@dataclass(frozen=True)
class BatchShard:
    """Which batches this process computes, and how partial sums combine across processes.

    Every loss, gradient and Hessian product here is a sum of per-batch terms over a
    *global* batch list. In a data-parallel run each process computes the terms of the
    batches it ``owns`` and ``reduce`` adds the partial sums of all processes (an
    all-reduce), so every process gets the same numbers and takes the same steps. The
    default owns every batch and reduces nothing: one process.

    Example:
        >>> shard = BatchShard(owns=lambda b: b % 2 == 0)
        >>> shard.local([0, 1, 2, 3])
        [0, 2]
    """

    owns: Callable[[Any], bool] = _owns_all
    reduce: Callable[[Tensor], Tensor] = _no_reduce

    def local(self, batches: Sequence[Any]) -> list:
        """The batches of ``batches`` this process computes."""
        return [b for b in batches if self.owns(b)]


ONE_PROCESS = BatchShard()


def _total(terms: Sequence[Tensor], like: Tensor) -> Tensor:
    """Sum of ``terms``, or a zero of ``like``'s dtype when a process owns none of them."""
    return sum(terms[1:], terms[0]) if terms else like.new_zeros(())


def batch_loss(residuals: Sequence[Tensor]) -> Tensor:
    """Loss of one batch from its residuals: ``sum_k mean(r_k ** 2)``.

    Example:
        >>> batch_loss([torch.ones(2, 3), 2 * torch.ones(4)])
        tensor(5.)
    """
    if len(residuals) == 0:
        raise ValueError("residual_fn returned no residuals")
    return sum(r.pow(2).mean() for r in residuals)


def window_loss(residual_fn: ResidualFn, w: Tensor, batches: Sequence[Any], shard: BatchShard = ONE_PROCESS) -> Tensor:
    """Mean over ``batches`` of the batch loss ``sum_k mean(r_k ** 2)``.

    Differentiable in ``w`` when called with grad enabled in one process; wrap it in
    ``torch.no_grad()`` for a plain evaluation. With a data-parallel ``shard`` this
    process evaluates its own batches and the sum is reduced across processes.

    Example:
        >>> X, Y = torch.randn(8, 3), torch.randn(8, 2)
        >>> fn = lambda w, b: [b[0] @ w.T - b[1]]
        >>> window_loss(fn, torch.zeros(2, 3), [(X, Y)]).item() == Y.pow(2).mean().item()
        True
    """
    if len(batches) == 0:
        raise ValueError("window_loss needs at least one batch")
    local = [batch_loss(residual_fn(w, b)) for b in shard.local(batches)]
    return shard.reduce(_total(local, w)) / len(batches)


def _grad_or_zeros(outputs, inputs, grad_outputs, *, create_graph=False, retain_graph=True):
    """``torch.autograd.grad`` that returns zeros for inputs the outputs do not depend on."""
    outputs, grad_outputs = list(outputs), list(grad_outputs)
    keep = [i for i, o in enumerate(outputs) if o.requires_grad]
    if not keep:
        return [torch.zeros_like(x) for x in inputs]
    grads = torch.autograd.grad(
        [outputs[i] for i in keep],
        inputs,
        grad_outputs=[grad_outputs[i] for i in keep],
        create_graph=create_graph,
        retain_graph=retain_graph,
        allow_unused=True,
    )
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]


class _ExactGraph:
    """Gradient graph of the loss of some batches, kept for ``grad(g . v)`` products.

    ``g`` is built with ``create_graph=True`` once; each product is one backward pass
    through the gradient's graph (double backward).
    """

    def __init__(
        self,
        residual_fn: ResidualFn,
        w: Tensor,
        batches: Sequence[Any],
        scale: float,
        with_grad: bool = True,
    ):
        # The gradient graph is the product's graph, so with_grad changes nothing here.
        loss = sum(batch_loss(residual_fn(w, b)) for b in batches) * scale
        self.loss = loss.detach()
        (self.g,) = _grad_or_zeros([loss], [w], [None], create_graph=True)
        self.grad = self.g.detach()
        self.w = w

    def hvp(self, v: Tensor, *, retain: bool) -> Tensor:
        return _grad_or_zeros([self.g], [self.w], [v], retain_graph=retain)[0]


class _GaussNewtonGraph:
    """Residual graphs of some batches plus the ``J^T u`` graph for the double-vjp trick.

    With ``u_k`` (requiring grad) the vjp ``t(u) = sum_k J_k^T u_k`` is built once with
    ``create_graph=True``. As ``t`` is linear in ``u``, ``d/du_k [t(u) . v] = J_k v`` for
    any ``u``: one backward gives every ``J_k v``, a second backward through the residual
    graph gives ``sum_k c_k J_k^T (J_k v)``. Taking ``u_k = c_k r_k`` makes ``t(u)`` the
    loss gradient itself, so building the operator costs one backward, not two.
    """

    def __init__(
        self,
        residual_fn: ResidualFn,
        w: Tensor,
        batches: Sequence[Any],
        scale: float,
        with_grad: bool = True,
    ):
        residuals = [r for b in batches for r in residual_fn(w, b)]
        loss = batch_loss(residuals) * scale
        self.loss = loss.detach()
        # Residuals that do not depend on w contribute nothing to J^T J.
        self.r = [r for r in residuals if r.requires_grad]
        # d/dr (scale * mean(r^2)) = 2 * scale / numel(r) * r, hence these weights.
        self.coef = [2.0 * scale / r.numel() for r in self.r]
        # u_k starts at coef_k * r_k, so t(u) = sum_k J_k^T u_k *is* the gradient: the one
        # backward that builds t gives it, and t stays linear in u for the products.
        self.u = [(c * r.detach()).requires_grad_(True) for c, r in zip(self.coef, self.r)]
        self.w = w
        self.jtu = None
        if self.r:
            self.jtu = _grad_or_zeros(self.r, [w], self.u, create_graph=True)[0]
        self.grad = (self.jtu.detach() if self.jtu is not None else torch.zeros_like(w)) if with_grad else None

    def hvp(self, v: Tensor, *, retain: bool) -> Tensor:
        if self.jtu is None or not self.jtu.requires_grad:
            return torch.zeros_like(self.w)
        jv = _grad_or_zeros([self.jtu], self.u, [v], retain_graph=True)
        weighted = [c * j for c, j in zip(self.coef, jv)]
        return _grad_or_zeros(self.r, [self.w], weighted, retain_graph=retain)[0]


_GRAPHS = {"exact": _ExactGraph, "gauss-newton": _GaussNewtonGraph}


class HessianOperator:
    """Loss, gradient and Hessian-vector products of the mean window loss at ``w``.

    Built once per Newton step: the forward pass over ``batches`` runs once in the
    constructor and its autograd graph is kept, so every ``op(v)`` (e.g. each CG
    iteration) costs backward passes only. The product is that of the Hessian of the
    *mean* loss over the batches, i.e. the sum of per-batch products divided by
    ``len(batches)`` (exact: batches split the samples, never the weight vector).

    ``kind="exact"`` is the true Hessian (double backward, may be indefinite);
    ``kind="gauss-newton"`` is ``sum_k (2 / numel(r_k)) J_k^T J_k`` (positive
    semi-definite), computed with two reverse-mode passes per product.

    Memory: ``max_graphs`` caps how many batches' graphs are held at once (``None``: all
    of them, kept across products). Below that, each product re-runs the forward chunk
    by chunk and frees each chunk's graph before the next (one more forward per
    product; same result). ``keep_graphs=False`` is ``max_graphs=1``. On an
    out-of-memory error the operator halves the chunk and retries, down to one batch
    (``graph_batches`` says where it settled), so a step that does not fit still runs.

    ``gradient_batches`` are further batches that count in ``loss`` and ``grad`` (then
    the mean over both lists) but not in the products: sub-sampled Newton, where the
    curvature comes from fewer batches than the gradient. They cost one forward+backward
    each and keep no graph.

    ``shard`` splits the batches across data-parallel processes (:class:`BatchShard`);
    results are reduced, so every process sees the same loss, gradient and products.
    Call ``close()`` (or use it as a context manager) to free the graphs.

    Example:
        >>> X, Y = torch.randn(16, 3), torch.randn(16, 2)
        >>> fn = lambda w, b: [b[0] @ w.T - b[1]]
        >>> with HessianOperator(fn, torch.zeros(2, 3), [(X, Y)], "exact") as op:
        ...     hv = op(torch.ones(2, 3))
        >>> torch.allclose(hv, (2 / 32) * torch.ones(2, 3) @ X.T @ X)
        True
    """

    def __init__(
        self,
        residual_fn: ResidualFn,
        w: Tensor,
        batches: Sequence[Any],
        kind: str = "gauss-newton",
        *,
        keep_graphs: bool = True,
        max_graphs: int | None = None,
        shard: BatchShard = ONE_PROCESS,
        gradient_batches: Sequence[Any] = (),
    ):
        if kind not in _GRAPHS:
            raise ValueError(f"kind must be one of {HESSIAN_KINDS}, got {kind!r}")
        if len(batches) == 0:
            raise ValueError("HessianOperator needs at least one batch")
        if max_graphs is not None and max_graphs < 1:
            raise ValueError(f"max_graphs must be None or >= 1, got {max_graphs}")
        self.kind = kind
        self.residual_fn = residual_fn
        self.shard = shard
        self.local = shard.local(batches)
        self.scale = 1.0 / len(batches)
        cap = len(self.local) if keep_graphs else 1
        #: batches whose graphs are held at once (halved on out-of-memory errors)
        self.graph_batches = max(1, min(cap, max_graphs or cap))
        # A fresh leaf sharing storage with w: the caller's tensor gets no grad state.
        self._w = w.detach().requires_grad_(True)
        self._graph = None
        self._closed = False
        self.retries = 0  #: out-of-memory errors recovered from
        # Gradient-only batches first, one at a time and before any graph is kept: they
        # hold nothing afterwards, so an out-of-memory error there is not the graphs' fault.
        rest = [self._summed_loss_and_grad([b]) for b in shard.local(gradient_batches)]
        loss, grad = self._retrying(self._loss_and_grad)
        if gradient_batches:
            # Back from the products' mean over ``batches`` to sums, then the mean over all.
            total = len(batches) + len(gradient_batches)
            loss = (loss * len(batches) + sum(r[0] for r in rest)) / total
            grad = (grad * len(batches) + sum(r[1] for r in rest)) / total
        self.loss: float = float(shard.reduce(loss.detach()))
        self.grad: Tensor = shard.reduce(grad)

    @property
    def keeps_graphs(self) -> bool:
        """Whether every local batch's graph is kept across products."""
        return self.graph_batches >= len(self.local)

    def _chunks(self) -> list[list]:
        n = self.graph_batches
        return [self.local[i : i + n] for i in range(0, len(self.local), n)]

    def _retrying(self, compute: Callable[[], Any]) -> Any:
        """``compute()``, halving ``graph_batches`` and retrying after out-of-memory errors."""
        while True:
            try:
                with torch.enable_grad():
                    return compute()
            except Exception as exc:  # noqa: BLE001 - re-raised unless it is an out-of-memory error
                if not is_out_of_memory(exc):
                    raise
                if self.graph_batches <= 1:
                    raise RuntimeError(
                        "out of memory in a Hessian product even with one micro-batch per graph; "
                        f"lower {setting('batch_size')} or {setting('k_step')}, or move activations off the device "
                        f"({setting('offload_activations')})"
                    ) from exc
            # Out of the except block: the traceback (and the tensors its frames hold) is gone.
            self._graph = None
            free_memory()
            self.graph_batches = max(1, self.graph_batches // 2)
            self.retries += 1

    def _loss_and_grad(self) -> tuple[Tensor, Tensor]:
        """Local loss and gradient; kept graphs when they all fit, else one chunk at a time."""
        if not self.local:
            return self._w.new_zeros(()), torch.zeros_like(self._w)
        if self.keeps_graphs:
            self._graph = _GRAPHS[self.kind](self.residual_fn, self._w, self.local, self.scale)
            return self._graph.loss, self._graph.grad
        parts = [self._summed_loss_and_grad(chunk, self.scale) for chunk in self._chunks()]
        return sum(p[0] for p in parts), sum(p[1] for p in parts)

    def _summed_loss_and_grad(self, batches: Sequence[Any], scale: float = 1.0) -> tuple[Tensor, Tensor]:
        """``scale`` x the summed loss of ``batches`` and its gradient, the graph freed at once."""
        with torch.enable_grad():
            loss = _total([batch_loss(self.residual_fn(self._w, b)) for b in batches], self._w) * scale
            return loss.detach(), _grad_or_zeros([loss], [self._w], [None], retain_graph=False)[0]

    def __call__(self, v: Tensor) -> Tensor:
        """Hessian of the mean loss times ``v`` (same shape as ``w``)."""
        if self._closed:
            raise RuntimeError("HessianOperator is closed")
        if v.shape != self._w.shape:
            raise ValueError(f"v has shape {tuple(v.shape)}, expected {tuple(self._w.shape)}")
        v = v.detach().to(dtype=self._w.dtype, device=self._w.device)
        return self.shard.reduce(self._retrying(lambda: self._product(v)))

    def _product(self, v: Tensor) -> Tensor:
        if self._graph is not None and self.keeps_graphs:
            return self._graph.hvp(v, retain=True).detach()
        self._graph = None
        out = torch.zeros_like(self._w)
        for chunk in self._chunks():
            graph = _GRAPHS[self.kind](self.residual_fn, self._w, chunk, self.scale, with_grad=False)
            out += graph.hvp(v, retain=False).detach()
            del graph
        return out

    def close(self) -> None:
        """Free the kept graphs; further products raise ``RuntimeError``."""
        self._graph = None
        self._closed = True

    def __enter__(self) -> "HessianOperator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory error of any device (CUDA, MPS, XPU, CPU, ...).

    Example:
        >>> is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
        True
    """
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    from accelerate.utils.memory import should_reduce_batch_size

    return should_reduce_batch_size(exc)


def free_memory() -> None:
    """Collect garbage and return cached blocks of the current accelerator, if any."""
    import gc

    gc.collect()
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and accelerator.is_available():
        accelerator.empty_cache()
