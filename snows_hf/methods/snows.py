"""The SNOWS method: mask, then re-fit the surviving weights over a K-step window.

For a module with dense weight ``W0`` and mask ``Z`` the re-fit solves

    min_W  sum_{k=0..K} s_k * mean((o_k(W) - t_k) ** 2)   s.t.  W[~Z] = 0

where ``o_k`` are the window's operation outputs (:mod:`snows_hf.windows`) on the partly
pruned network's inputs and ``t_k`` the dense targets, computed once per module:

- ``dense-stream``: the dense network on its own activations;
- ``official``: the dense window on the pruned network's activations (what the released
  research code does).

``s_k`` is 1 (``term_scale="none"``) or ``1 / mean(t_k ** 2)`` (``"energy"``: every term
is a relative error, so wide or large-valued outputs do not drown the others). The solve
is Hessian-free Newton-CG (:mod:`snows_hf.solver`) with the last micro-batches held out
for the Armijo line search. They are held out of the Newton steps only: the mask
selector's input statistics and the start selection see them too, so the "held-out"
window losses recorded per layer (``heldout_loss_*``) are optimistic: a line-search
loss, not a test loss.

With ``init="lsq"`` (Linear and Conv1D layers) Newton starts from the closed-form K=0
solution (per-row least squares of the module's own output on its support, from the
Gram matrices of its inputs), which a few Newton-CG steps on the K-window then refine;
the start is kept only if its held-out window loss beats the selector's weight (the
masked dense weight, or SparseGPT's OBS-updated one).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..fields import SettingError, config_field, redeclared, setting
from ..masks import apply_selector, from_rows, get_selector, to_rows
from ..masks.selectors import row_input_sq
from ..placement import format_size
from ..solver import NewtonConfig, newton_refit, window_loss
from ..solver.hvp import HESSIAN_KINDS
from ..solver.lsq import masked_lstsq
from ..windows import WindowRunner
from .base import Method, MethodConfig, MethodPlan, MethodResult, ModuleJob

logger = logging.getLogger(__name__)


def _finite_weight(result, start: torch.Tensor, masked: torch.Tensor, init: str) -> tuple[torch.Tensor, str | None]:
    """The re-fitted weight, or, after NaN/Inf, the best finite one seen: the last accepted
    Newton iterate, the start, or the masked dense weight. Says what happened, if anything."""
    problem = {
        "non_finite_loss": "NaN/Inf in the window loss (its inputs or dense targets)",
        "non_finite_gradient": "NaN/Inf in the gradient",
        "non_finite_direction": "NaN/Inf in the conjugate-gradient solve",
    }.get(result.stop_reason)
    if bool(torch.isfinite(result.weight).all()):
        if problem is None:
            return result.weight, None
        kept = "the last accepted Newton step" if result.steps_accepted else f"its starting weights ({init})"
        return result.weight, f"{problem}; kept {kept}"
    for candidate, name in ((start, f"its starting weights ({init})"), (masked, "the masked dense weights")):
        if bool(torch.isfinite(candidate).all()):
            return candidate, f"{problem or 'NaN/Inf in the re-fitted weights'}; kept {name}"
    return masked, "NaN/Inf in the dense weights themselves; kept them masked"


class _Batch:
    """One calibration micro-batch by index; distinct objects keep train and held-out apart."""

    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index


def split_holdout(n: int, fraction: float) -> tuple[list[int], list[int]]:
    """Indices of training and held-out micro-batches: the last ``ceil(fraction * n)`` are held out.

    Example:
        >>> split_holdout(8, 0.125)
        ([0, 1, 2, 3, 4, 5, 6], [7])
    """
    if n < 2:
        raise SettingError(
            "SNOWS needs at least 2 calibration micro-batches (one is held out for the line search)",
            field="batch_size", hint=f"lower {setting('batch_size')} or raise {setting('num_samples')}",
        )
    held = min(n - 1, max(1, math.ceil(fraction * n - 1e-9)))
    return list(range(n - held)), list(range(n - held, n))


def _double_differentiable() -> contextlib.AbstractContextManager:
    # Fused attention kernels have no second derivative; the math kernel does, and
    # Hessian-vector products differentiate through the backward pass.
    return sdpa_kernel([SDPBackend.MATH])


@dataclass
class SnowsConfig(MethodConfig):
    """Options of the ``snows`` method: the re-fit window, its targets and the Newton-CG solve.

    Example:
        >>> SnowsConfig(k_step=0, hessian="exact").newton_steps
        1
        >>> SnowsConfig(holdout=1.0)
        Traceback (most recent call last):
        snows_hf.fields.SettingError: holdout must be strictly between 0 and 1, got 1.0
    """

    name = "snows"

    k_step: int = config_field(3, "SNOWS: operations downstream of each module in its re-fit window (0 = layer-wise)",
                               minimum=0)
    target: str = config_field(
        "dense-stream", "SNOWS: dense targets from the dense network's own activations (dense-stream) "
        "or from the pruned network's (official)", choices=("dense-stream", "official"),
    )
    term_scale: str = config_field("energy", "SNOWS: weigh each window term by 1/its dense energy (energy) or not (none)",
                                   choices=("energy", "none"))
    init: str = config_field(
        "auto", "SNOWS: start from the closed-form K=0 least-squares fit (lsq), from the mask selector's weight "
        "(mask: SparseGPT's own update, or the masked weight), or auto (mask when the selector updates weights, else lsq)",
        choices=("auto", "lsq", "mask"),
    )
    hessian: str = config_field("gauss-newton", "SNOWS: Hessian-vector products, gauss-newton (PSD) or exact",
                                choices=HESSIAN_KINDS)
    # One step of 5 CG iterations is the knee of the measured time/quality frontier
    # (README "Results": benchmarks/solver_budget.py on 2 SmolLM2 blocks, quality.py on the
    # whole model at 2:4): a second step costs about 75% more time for a seventh of the
    # output error SNOWS removes from SparseGPT's.
    newton_steps: int = config_field(1, "SNOWS: Newton steps per module", minimum=0)
    cg_iters: int = config_field(5, "SNOWS: conjugate-gradient iterations per Newton step at most", minimum=1)
    damping: float = config_field(1e-4, "SNOWS: damping added to the Hessian", minimum=0)
    preconditioner: str = config_field(
        "input-energy", "SNOWS: CG preconditioner, input-energy (each weight scaled by the energy of the input "
        "feature it multiplies, the diagonal of the layer's Gram matrix) or none", choices=("input-energy", "none"),
    )
    holdout: float = config_field(0.125, "SNOWS: share of calibration micro-batches held out for the line search",
                                  minimum=0, maximum=1, strict=True)
    batches_per_step: int | None = config_field(None, "SNOWS: micro-batches per Newton step (default: all)", minimum=1)
    hessian_batches: int | None = config_field(
        None, "SNOWS: of a Newton step's micro-batches, how many give the Hessian-vector products "
        "(sub-sampled Newton; the gradient uses all of them; default: all)", minimum=1,
    )


@dataclass
class SnowsPlan(MethodPlan):
    """SNOWS's part of the dry-run plan: its Newton-CG budget, and the micro-batches whose
    window graphs a Newton step keeps for CG (all training ones, or ``batches_per_step``
    / ``hessian_batches``)."""

    newton_steps: int = 0
    cg_iters: int = 0
    graph_batches: int = 0

    def footer(self, modules: list, batch_size: int) -> list[str]:
        """The largest window's activations over the kept graphs (about what a window holds
        on the device beyond the weights and activations), and the Hessian-vector products
        at most: modules x Newton steps x CG iterations.

        Example:
            >>> SnowsPlan(newton_steps=2, cg_iters=5, graph_batches=7).footer([], batch_size=4)
            ["largest window's kept graphs (estimate): 0 B", 'Hessian-vector products: at most 0']
        """
        graphs = max((m.window_bytes for m in modules), default=0) * self.graph_batches * batch_size
        return [f"largest window's kept graphs (estimate): {format_size(graphs)}",
                f"Hessian-vector products: at most {len(modules) * self.newton_steps * self.cg_iters:,}"]


@dataclass
class SnowsFastConfig(SnowsConfig):
    """Options of the ``snows-fast`` preset: SNOWS with at most 2 CG iterations in its one
    Newton step, the cheapest point of the measured frontier before the error climbs
    steeply (every option can still be set).

    Example:
        >>> SnowsFastConfig().cg_iters, SnowsFastConfig(cg_iters=3).cg_iters
        (2, 3)
    """

    name = "snows-fast"

    cg_iters: int = redeclared(SnowsConfig, "cg_iters", 2)


class SnowsMethod(Method):
    """Mask with ``config.mask``, then re-fit the kept weights over the K-step window
    (options: ``config.method``, a :class:`SnowsConfig`)."""

    config_class = SnowsConfig
    description = "mask, then re-fit over a K-step window"
    options_title = "SNOWS re-fit"
    card_paragraph = ("After each layer's mask was chosen, SNOWS re-fitted its surviving weights so that "
                      "the network's outputs several operations downstream stay close to the dense model.")

    def __init__(self, config) -> None:
        super().__init__(config)
        self._max_graphs: int | None = None  # lowered for good after an out-of-memory retry

    @property
    def needs_dense_stream(self) -> bool:  # type: ignore[override]
        return self.config.method.target == "dense-stream"

    def plan(self, micro_batches: int) -> SnowsPlan:
        cfg = self.config.method
        held = len(split_holdout(micro_batches, cfg.holdout)[1])
        return SnowsPlan(
            settings=f", K={cfg.k_step}, {cfg.newton_steps} Newton steps x {cfg.cg_iters} CG at most",
            calibration=f", {held} held out for the line search", window_k=cfg.k_step,
            newton_steps=cfg.newton_steps, cg_iters=cfg.cg_iters,
            graph_batches=min(micro_batches - held, cfg.batches_per_step or micro_batches,
                              cfg.hessian_batches or micro_batches),
        )

    @classmethod
    def summary(cls, settings: Mapping[str, Any]) -> str:
        return super().summary(settings) + f", K={settings['k_step']}, {settings['target']} targets"

    @classmethod
    def metadata(cls, settings: Mapping[str, Any]) -> dict[str, Any]:
        return super().metadata(settings) | {"k_step": settings["k_step"], "target": settings["target"]}

    @classmethod
    def card_settings(cls, settings: Mapping[str, Any]) -> list[tuple[str, Any]]:
        return super().card_settings(settings) + [
            ("K (operations downstream)", settings["k_step"]), ("targets", settings["target"]),
            ("Newton steps x CG iterations", f"{settings['newton_steps']} x {settings['cg_iters']}"),
            ("start", settings["init"]),
        ]

    def newton_config(self) -> NewtonConfig:
        cfg = self.config.method
        return NewtonConfig(
            steps=cfg.newton_steps, hessian=cfg.hessian, cg_iters=cfg.cg_iters, damping=cfg.damping,
            batches_per_step=cfg.batches_per_step, hessian_batches=cfg.hessian_batches, max_graphs=self._max_graphs,
            final_train_loss=self.config.diagnostics,  # a record only: one more forward over the training batches
        )

    def prune_module(self, job: ModuleJob) -> MethodResult:
        cfg = self.config.method
        start = time.perf_counter()
        rows = job.weight_rows()
        selector = get_selector(self.mask_selector)
        start_rows, mask_rows = apply_selector(self.mask_selector, rows, job.pattern, job.input_stats(selector.needs))
        weight = job.module.weight.detach()
        mask = from_rows(mask_rows, job.layout, weight.shape).bool()
        train, held = split_holdout(job.num_batches, cfg.holdout)  # global micro-batch indices
        shard = job.processes.batch_shard(lambda batch: batch.index)
        # the masked dense weight, or the selector's own update of it (SparseGPT's OBS step)
        start_weight = from_rows(start_rows, job.layout, weight.shape).to(weight.dtype) * mask
        start_name = self.mask_selector if selector.updates_weights else "mask"
        lsq_weight = None
        use_lsq = cfg.init == "lsq" or (cfg.init == "auto" and not selector.updates_weights)
        if use_lsq and job.layout in ("linear", "conv1d"):
            gram, cross = self._grams(job, [job.local_index(i) for i in train if job.processes.owns(i)])
            finite = bool(torch.isfinite(gram).all() and torch.isfinite(cross).all())  # else no closed form
            if finite:
                lsq_weight = from_rows(masked_lstsq(gram, cross, rows, mask_rows), job.layout, weight.shape)
        preconditioner = self._preconditioner(job, rows, weight) if cfg.preconditioner == "input-energy" else None
        with WindowRunner(job.blocks, job.block_index, job.param_name) as runner, _double_differentiable():
            window = runner.trace(job.calls[0], weight, cfg.k_step)
            targets = self._targets(job, runner, window)
            scales = self._scales(job, targets)

            def residuals(w: torch.Tensor, batch: _Batch) -> list[torch.Tensor]:
                local = job.local_index(batch.index)
                outputs = runner.run(job.calls[local], window, {job.param_name: w})
                return [(o - t) * s for o, t, s in zip(outputs, targets[local], scales)]

            batches = [_Batch(i) for i in range(job.num_batches)]
            held_batches = [batches[i] for i in held]
            with torch.no_grad():
                masked_loss = float(window_loss(residuals, start_weight, held_batches, shard))
                lsq_loss = float(window_loss(residuals, lsq_weight, held_batches, shard)) if lsq_weight is not None else None
                if lsq_loss is not None and lsq_loss < masked_loss:
                    start_weight, init = lsq_weight, "lsq"
                else:
                    init = start_name
            result = newton_refit(
                start_weight, mask, residuals, [batches[i] for i in train], held_batches, self.newton_config(), shard,
                preconditioner=preconditioner, heldout_loss=lsq_loss if init == "lsq" else masked_loss,
            )
        self._remember_graphs(result, job.name)
        weight, numerics = _finite_weight(result, start_weight, weight * mask, init)
        if numerics:
            logger.warning("%s: %s", job.name, numerics)
        metrics = {
            "k": window.k,
            "window": window.names(),
            "init": init,
            "heldout_loss_masked": masked_loss,
            "train_loss_before": result.train_loss_before,
            "train_loss_after": result.train_loss_after,
            "heldout_loss_before": result.heldout_loss_before,
            "heldout_loss_after": result.heldout_loss_after,
            "newton_steps": result.steps_accepted,
            "rejected_steps": result.steps_rejected,
            "cg_iterations": result.cg_iterations,
            "line_search_failed": result.line_search_failed,
            "stop_reason": result.stop_reason,
            "cg_converged": [h["cg_converged"] for h in result.history],
            "solver_seconds": time.perf_counter() - start,
        }
        if numerics:
            metrics["numerics"] = numerics
        return MethodResult(weight_rows=to_rows(weight, job.layout), mask_rows=mask_rows, metrics=metrics)

    def _remember_graphs(self, result, name: str) -> None:
        """After out-of-memory retries, later modules start from the graphs that fitted."""
        if result.memory_retries:
            logger.info("%s: out of memory with every micro-batch graph kept; holding %d at a time from now on",
                        name, result.graph_batches)
            self._max_graphs = result.graph_batches

    @staticmethod
    def _preconditioner(job: ModuleJob, rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
        """CG's diagonal: weight ``(j, i)`` scaled by the energy of the input feature it
        multiplies (per kernel position for Conv2d), the diagonal of the layer's ``X^T X``.

        For K=0 that is the exact diagonal of each row's window Hessian; downstream
        operations mostly rescale rows, which the diagonal leaves to CG. Features never
        active get the mean energy; non-finite statistics give no preconditioner.
        """
        energy = row_input_sq(rows, job.input_stats(("input_sq",)))  # the selectors' statistics, cached
        if not bool(torch.isfinite(energy).all()):
            return None
        mean = energy.mean().clamp(min=1e-30)
        energy = torch.where(energy > 1e-6 * mean, energy, mean)
        return from_rows(energy, job.layout, weight.shape).to(weight.device)

    @torch.no_grad()
    def _grams(self, job: ModuleJob, train: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``X^T X`` of the module's inputs and ``X^T X_t`` with its target-side inputs,
        over this process's training calls (positions in ``job.calls``), summed across processes.

        ``X`` comes from the partly pruned network; ``X_t`` from the dense network
        (``dense-stream``) or is ``X`` itself (``official``), sample for sample.
        """
        features = job.weight_rows().shape[1]
        dtype = torch.promote_types(job.module.weight.dtype, torch.float32)
        gram = torch.zeros(features, features, dtype=dtype, device=job.module.weight.device)
        if self.config.method.target != "dense-stream":
            for x in job.module_inputs(train):
                gram += x.T @ x
            gram = job.processes.sum(gram)
            return gram, gram
        cross = torch.zeros_like(gram)
        for x, x_t in zip(job.module_inputs(train), job.module_inputs(train, dense=True), strict=True):
            gram += x.T @ x
            cross += x.T @ x_t
        return job.processes.sum(gram), job.processes.sum(cross)

    def _targets(self, job: ModuleJob, runner: WindowRunner, window) -> list[list[torch.Tensor]]:
        """Dense outputs of the window for every micro-batch, computed once per module."""
        if self.config.method.target == "dense-stream":
            calls, overrides = job.dense_calls, job.dense_overrides
        else:  # the module and everything after it are still dense in the model
            calls, overrides = job.calls, {}
        with torch.no_grad():
            return [[t.detach() for t in runner.run(call, window, overrides)] for call in calls]

    def _scales(self, job: ModuleJob, targets: list[list[torch.Tensor]]) -> list[float]:
        """``1 / sqrt(mean energy)`` of each window term over all micro-batches (all processes)."""
        if self.config.method.term_scale == "none":
            return [1.0] * len(targets[0])
        local = torch.stack([sum(t[k].double().pow(2).mean() for t in targets) for k in range(len(targets[0]))])
        energy = (job.processes.sum(local) / job.num_batches).tolist()
        return [1.0 / max(e, 1e-12) ** 0.5 for e in energy]


class SnowsFastMethod(SnowsMethod):
    """SNOWS with a smaller Newton-CG budget (options: a :class:`SnowsFastConfig`)."""

    config_class = SnowsFastConfig
    description = "SNOWS with at most 2 CG iterations: faster, less accurate"
