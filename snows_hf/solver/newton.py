"""Masked Newton-CG re-fit of one weight tensor with an Armijo line search on held-out data.

Each step: gradient and Hessian products on (some of) the training batches, a
conjugate-gradient direction on the mask support, then backtracking on held-out batches.
A step whose line search fails is never applied and ends the loop, so the held-out loss
never increases across accepted steps.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from .cg import dot, project, masked_cg
from .hvp import HESSIAN_KINDS, ONE_PROCESS, BatchShard, HessianOperator, ResidualFn, window_loss


@dataclass
class NewtonConfig:
    """Settings of :func:`newton_refit`.

    - ``steps``: Newton steps at most (the loop also stops at the first failed line search).
    - ``min_decrease``: stop after an accepted step that lowered the held-out loss by at
      most this share of its value (``0``: every step runs while the line search succeeds),
      so the budget is spent while it still pays.
    - ``hessian``: ``"gauss-newton"`` (PSD, ``sum_k 2/numel J_k^T J_k``) or ``"exact"``.
    - ``cg_iters`` / ``cg_rtol``: CG budget and relative-residual tolerance per step.
    - ``damping``: added to the Hessian of the loss as ``damping * I`` (plain additive,
      in the loss's units; not scaled by the Hessian's diagonal).
    - ``armijo_c``, ``max_backtracks``, ``backtrack_factor``: the line search tries
      step sizes ``1, f, f^2, ..., f^max_backtracks`` and accepts the first with
      ``L_h(w + a d) <= L_h(w) + c * a * (grad . d)``.
    - ``batches_per_step``: training batches per step, taken in turn (cycling through
      the list); ``None`` uses all of them every step (full-batch accumulation). A value
      above the number of batches means all of them.
    - ``hessian_batches``: of a step's batches, how many give the Hessian-vector products
      (taken in turn, cycling); the gradient and loss still use all of them (sub-sampled
      Newton: CG's many products get cheaper, the gradient stays exact). ``None``: all.
    - ``keep_graphs``: keep the forward graphs across the CG iterations of a step (fast);
      ``False`` re-runs the forward per batch for each product (less memory, same result).
    - ``max_graphs``: batches whose graphs are held at once (``None``: all). Halved
      automatically on out-of-memory errors; the next steps start where it settled.
    - ``final_train_loss``: after the last accepted step, evaluate the training loss
      (one more forward over every training batch, for the record only: no step reads
      it); ``False`` leaves ``train_loss_after`` ``None``.

    Example:
        >>> NewtonConfig(steps=2, hessian="exact").cg_iters
        50
    """

    steps: int = 3
    min_decrease: float = 0.0
    hessian: str = "gauss-newton"
    cg_iters: int = 50
    cg_rtol: float = 1e-2
    damping: float = 1e-4
    armijo_c: float = 1e-4
    max_backtracks: int = 10
    backtrack_factor: float = 0.5
    batches_per_step: Optional[int] = None
    hessian_batches: Optional[int] = None
    keep_graphs: bool = True
    max_graphs: Optional[int] = None
    final_train_loss: bool = True

    def __post_init__(self):
        finite = 0.0 <= self.damping < float("inf")
        per_step = self.batches_per_step
        _require(_is_int(self.steps) and self.steps >= 0, "steps", "an int >= 0", self.steps)
        _require(0.0 <= self.min_decrease <= 1.0, "min_decrease", "in [0, 1]", self.min_decrease)
        _require(self.hessian in HESSIAN_KINDS, "hessian", f"one of {HESSIAN_KINDS}", self.hessian)
        _require(_is_int(self.cg_iters) and self.cg_iters >= 1, "cg_iters", "an int >= 1", self.cg_iters)
        _require(0.0 <= self.cg_rtol < 1.0, "cg_rtol", "in [0, 1)", self.cg_rtol)
        _require(finite, "damping", "finite and >= 0", self.damping)
        _require(0.0 < self.armijo_c < 1.0, "armijo_c", "in (0, 1)", self.armijo_c)
        _require(
            _is_int(self.max_backtracks) and self.max_backtracks >= 0,
            "max_backtracks", "an int >= 0", self.max_backtracks,
        )
        _require(0.0 < self.backtrack_factor < 1.0, "backtrack_factor", "in (0, 1)", self.backtrack_factor)
        _require(
            per_step is None or (_is_int(per_step) and per_step >= 1),
            "batches_per_step", "None or an int >= 1", per_step,
        )
        _require(
            self.hessian_batches is None or (_is_int(self.hessian_batches) and self.hessian_batches >= 1),
            "hessian_batches", "None or an int >= 1", self.hessian_batches,
        )
        _require(isinstance(self.keep_graphs, bool), "keep_graphs", "a bool", self.keep_graphs)
        _require(
            self.max_graphs is None or (_is_int(self.max_graphs) and self.max_graphs >= 1),
            "max_graphs", "None or an int >= 1", self.max_graphs,
        )
        _require(isinstance(self.final_train_loss, bool), "final_train_loss", "a bool", self.final_train_loss)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _require(ok: bool, name: str, expected: str, value) -> None:
    if not ok:
        raise ValueError(f"NewtonConfig.{name} must be {expected}, got {value!r}")


@dataclass
class NewtonResult:
    """Outcome of :func:`newton_refit`.

    ``weight`` is detached and exactly zero off the mask. ``train_loss_*`` are over all
    training batches (``train_loss_after`` is ``None`` when steps were accepted and
    ``final_train_loss`` was off), ``heldout_loss_*`` over all held-out batches.
    ``graph_batches`` is how many batches' graphs the last step held at once, lowered
    by ``memory_retries`` out-of-memory recoveries. ``history`` holds
    one dict per attempted step with keys ``step, train_loss`` (on that step's batches,
    before the step), ``heldout_loss_before, heldout_loss_after, step_size`` (0.0 when
    rejected), ``accepted, cg_iterations, cg_relative_residual, cg_converged``. ``stop_reason`` is one
    of ``"steps"`` (all steps ran), ``"line_search_failed"`` (including a non-descent
    direction), ``"small_decrease"`` (the last accepted step lowered the held-out loss by at
    most ``min_decrease`` of it), ``"zero_gradient"`` (already stationary on the support, nothing to do),
    ``"non_finite_loss"``, ``"non_finite_gradient"`` or ``"non_finite_direction"`` (NaN or
    Inf in the losses, the gradient or the CG solve: the weight stays the last finite one,
    ``w0`` when no step was taken).

    Example:
        >>> r = newton_refit(torch.ones(2, 3), torch.ones(2, 3, dtype=torch.bool),
        ...                  lambda w, b: [b @ w.T], [torch.randn(8, 3)], [torch.randn(8, 3)])
        >>> r.heldout_loss_after <= r.heldout_loss_before
        True
    """

    weight: Tensor
    train_loss_before: float
    train_loss_after: Optional[float]
    heldout_loss_before: float
    heldout_loss_after: float
    steps_accepted: int
    steps_rejected: int
    cg_iterations: list[int] = field(default_factory=list)
    line_search_failed: bool = False
    negative_curvature: bool = False
    seconds: float = 0.0
    history: list[dict] = field(default_factory=list)
    stop_reason: str = "steps"
    graph_batches: Optional[int] = None
    memory_retries: int = 0


def _check_inputs(w0: Tensor, mask: Tensor, train_batches, heldout_batches) -> None:
    if mask.dtype != torch.bool or mask.shape != w0.shape:
        raise ValueError(
            f"mask must be a bool tensor of shape {tuple(w0.shape)}, "
            f"got {mask.dtype} of shape {tuple(mask.shape)}"
        )
    if len(train_batches) == 0:
        raise ValueError("train_batches is empty")
    if len(heldout_batches) == 0:
        raise ValueError("heldout_batches is empty: the line search needs held-out data")
    # Identity, not equality: batches are opaque and may hold tensors (no usable ==).
    train_ids = {id(b) for b in train_batches}
    if any(id(b) in train_ids for b in heldout_batches):
        raise ValueError("heldout_batches share a batch object with train_batches; they must not overlap")


def _step_batches(train_batches: Sequence[Any], step: int, per_step: Optional[int]) -> list:
    """The training batches of a step: all of them, or the next group, cycling."""
    n = len(train_batches)
    if per_step is None or per_step >= n:
        return list(train_batches)
    start = step * per_step
    return [train_batches[(start + i) % n] for i in range(per_step)]


def _eval_loss(residual_fn: ResidualFn, w: Tensor, batches: Sequence[Any], shard: BatchShard) -> float:
    with torch.no_grad():
        return float(window_loss(residual_fn, w, batches, shard))


def _line_search(residual_fn, w, d, slope, heldout_batches, loss0, config, shard):
    """Armijo backtracking on the held-out loss. Returns ``(step_size, loss)`` or ``None``."""
    if not slope < 0.0:  # not a descent direction (or nan)
        return None
    a = 1.0
    for _ in range(config.max_backtracks + 1):
        trial = _eval_loss(residual_fn, w + a * d, heldout_batches, shard)
        if trial <= loss0 + config.armijo_c * a * slope:  # False for nan
            return a, trial
        a *= config.backtrack_factor
    return None


def newton_refit(
    w0: Tensor,
    mask: Tensor,
    residual_fn: ResidualFn,
    train_batches: Sequence[Any],
    heldout_batches: Sequence[Any],
    config: NewtonConfig = NewtonConfig(),
    shard: BatchShard = ONE_PROCESS,
    preconditioner: Optional[Tensor] = None,
    heldout_loss: Optional[float] = None,
) -> NewtonResult:
    """Re-fit the on-mask entries of ``w0`` to minimise the window loss, by Newton-CG.

    ``residual_fn(w, batch)`` returns the list of residual tensors of a batch; the loss
    of a batch is ``sum_k mean(r_k ** 2)`` and that of a batch list is their mean. The
    weight starts at ``w0 * mask``; each step takes a masked CG direction on the
    training batches of the step, and an Armijo step size on ``heldout_batches``
    (disjoint from the training batches, by identity). ``w0`` is left untouched.
    ``shard`` spreads the batches over data-parallel processes (every sum is reduced, so
    all processes take identical steps); by default one process computes them all.
    ``preconditioner`` (positive, ``w0``'s shape) is the diagonal CG preconditions with.
    ``heldout_loss`` is the held-out loss at ``w0 * mask`` when the caller has it already
    (it must be exactly that: the line search compares against it).

    Example:
        >>> X, Y = torch.randn(64, 4), torch.randn(64, 3)
        >>> fn = lambda w, b: [b[0] @ w.T - b[1]]
        >>> mask = torch.rand(3, 4) > 0.5
        >>> res = newton_refit(torch.randn(3, 4), mask, fn, [(X[:48], Y[:48])], [(X[48:], Y[48:])])
        >>> bool((res.weight[~mask] == 0).all())
        True
    """
    _check_inputs(w0, mask, train_batches, heldout_batches)
    start = time.perf_counter()
    with torch.enable_grad():
        loop = _NewtonLoop(residual_fn, mask.to(w0.device), train_batches, heldout_batches, config, shard, preconditioner)
        res = loop.run(w0, heldout_loss)
    res.seconds = time.perf_counter() - start
    return res


class _NewtonLoop:
    """The state shared by the steps of one re-fit (kept apart so each step stays short)."""

    def __init__(self, residual_fn, mask, train_batches, heldout_batches, config, shard, preconditioner=None):
        self.residual_fn = residual_fn
        self.shard = shard
        self.max_graphs = config.max_graphs
        self.retries = 0
        self.mask = mask
        self.train = list(train_batches)
        self.heldout = list(heldout_batches)
        self.config = config
        self.preconditioner: Optional[Tensor] = preconditioner
        self.first_loss: Optional[float] = None  #: training loss of the first step's operator

    def run(self, w0: Tensor, heldout_loss: Optional[float] = None) -> NewtonResult:
        w = project(w0.detach(), self.mask).clone()
        heldout = _eval_loss(self.residual_fn, w, self.heldout, self.shard) if heldout_loss is None else heldout_loss
        # The first step's operator sees every training batch at w0: its loss is the
        # training loss before, with no forward of its own.
        per_step = self.config.batches_per_step
        first_sees_all = self.config.steps > 0 and (per_step is None or per_step >= len(self.train))
        train_before = float("nan") if first_sees_all else _eval_loss(self.residual_fn, w, self.train, self.shard)
        res = NewtonResult(w, train_before, train_before, heldout, heldout, 0, 0)
        if not math.isfinite(heldout) or not (first_sees_all or math.isfinite(train_before)):
            res.stop_reason = "non_finite_loss"
            return res
        for step in range(self.config.steps):
            w, heldout, stop = self.step(w, heldout, step, res)
            if step == 0 and first_sees_all:
                res.train_loss_before = res.train_loss_after = self.first_loss
            if stop is not None:
                res.stop_reason = stop
                break
        if res.steps_accepted:
            final = self.config.final_train_loss
            res.train_loss_after = _eval_loss(self.residual_fn, w, self.train, self.shard) if final else None
        res.weight = w.detach()
        res.graph_batches, res.memory_retries = self.max_graphs, self.retries
        res.heldout_loss_after = heldout
        return res

    def direction(self, w: Tensor, step: int):
        """Masked gradient, CG result and step training loss, or why there is no step."""
        cfg = self.config
        batches = _step_batches(self.train, step, cfg.batches_per_step)
        curvature = _step_batches(batches, step, cfg.hessian_batches)
        chosen = {id(b) for b in curvature}
        with HessianOperator(
            self.residual_fn, w, curvature, cfg.hessian, keep_graphs=cfg.keep_graphs, max_graphs=self.max_graphs,
            shard=self.shard, gradient_batches=[b for b in batches if id(b) not in chosen],
        ) as op:
            if self.first_loss is None:
                self.first_loss = op.loss
            try:
                return self._solve(op)
            finally:
                self.max_graphs = op.graph_batches  # later steps start where memory allowed
                self.retries += op.retries

    def _solve(self, op: HessianOperator):
        if not math.isfinite(op.loss):
            return "non_finite_loss"
        g = project(op.grad, self.mask)
        if not bool(torch.isfinite(g).all()):
            return "non_finite_gradient"
        if not bool(g.any()):
            return "zero_gradient"
        cfg = self.config
        cg = masked_cg(op, -g, self.mask, damping=cfg.damping, rtol=cfg.cg_rtol, max_iter=cfg.cg_iters,
                       preconditioner=self.preconditioner)
        if not bool(torch.isfinite(cg.x).all()):
            return "non_finite_direction"
        return g, cg, op.loss

    def step(self, w: Tensor, heldout: float, step: int, res: NewtonResult):
        """One Newton-CG step; updates ``res`` and returns ``(w, heldout_loss, stop_reason)``."""
        found = self.direction(w, step)
        if isinstance(found, str):
            return w, heldout, found
        g, cg, train_loss = found
        d = cg.x
        searched = _line_search(self.residual_fn, w, d, dot(g, d), self.heldout, heldout, self.config, self.shard)
        step_size, heldout_after = searched if searched is not None else (0.0, heldout)
        res.cg_iterations.append(cg.iterations)
        res.negative_curvature |= cg.negative_curvature
        res.history.append(
            dict(
                step=step,
                train_loss=train_loss,
                heldout_loss_before=heldout,
                heldout_loss_after=heldout_after,
                step_size=step_size,
                accepted=searched is not None,
                cg_iterations=cg.iterations,
                cg_relative_residual=cg.relative_residual,
                cg_converged=cg.converged,
            )
        )
        if searched is None:
            # A failed step is never applied: w stays as it is and the loop ends.
            res.steps_rejected += 1
            res.line_search_failed = True
            return w, heldout, "line_search_failed"
        res.steps_accepted += 1
        small = heldout - heldout_after <= self.config.min_decrease * heldout if self.config.min_decrease else False
        # d is exactly zero off the mask, so the new w is too; where() keeps it exact.
        return project(w + step_size * d, self.mask), heldout_after, "small_decrease" if small else None
