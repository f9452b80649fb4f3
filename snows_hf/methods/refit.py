"""The pieces a SNOWS re-fit is built from, shared by the re-fit of one module
(:meth:`~snows_hf.methods.SnowsMethod.prune_module`) and of several together
(:func:`~snows_hf.methods.snows_block.refit_jointly`): the held-out split, the dense targets
and their scales, the least-squares start, CG's preconditioner, what a solve records, and
the finite weight kept after NaN/Inf.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..fields import SettingError, setting
from ..masks import from_rows
from ..masks.selectors import row_input_sq
from ..solver.lsq import masked_lstsq
from ..statistics import modules_inputs
from ..windows import WindowRunner
from .job import ModuleJob


def finite_weight(result, start: torch.Tensor, masked: torch.Tensor, init: str) -> tuple[torch.Tensor, str | None]:
    """The re-fitted weight, or, after NaN/Inf, the best finite one seen: the last accepted
    Newton iterate, the start, or the masked dense weight. Says what happened, if anything.

    Example:
        >>> from types import SimpleNamespace
        >>> solved = SimpleNamespace(weight=torch.tensor([float("nan")]), stop_reason="steps", steps_accepted=1)
        >>> finite_weight(solved, torch.ones(1), torch.zeros(1), "lsq")
        (tensor([1.]), 'NaN/Inf in the re-fitted weights; kept its starting weights (lsq)')
    """
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


def local_positions(job: ModuleJob, batch_ids: list[int]) -> list[int]:
    """Positions in ``job.calls`` of the global micro-batches ``batch_ids`` this process holds.

    Example:
        >>> local_positions(job, [0, 1, 2])  # doctest: +SKIP
        [0, 1, 2]
    """
    return [job.local_index(i) for i in batch_ids if job.processes.owns(i)]


def _zero_gram(job: ModuleJob) -> tuple[torch.Tensor, torch.Tensor]:
    features = job.weight_rows().shape[1]
    dtype = torch.promote_types(job.module.weight.dtype, torch.float32)
    gram = torch.zeros(features, features, dtype=dtype, device=job.module.weight.device)
    return gram, torch.zeros_like(gram)


def lsq_start(job: ModuleJob, grams: tuple[torch.Tensor, torch.Tensor], rows: torch.Tensor,
              mask_rows: torch.Tensor, start_rows: torch.Tensor | None = None) -> torch.Tensor | None:
    """The closed-form K=0 start of ``job``'s module (its weight's shape), or ``None`` when
    the Gram matrices hold NaN/Inf (no closed form then). Where the exact per-row solve is
    costly, :func:`~snows_hf.solver.lsq.masked_lstsq` iterates from ``start_rows`` (the
    selector's own update, which is already close), else from the masked weight.

    Example:
        >>> start = lsq_start(job, input_grams([job], train, "dense-stream")[0], rows, mask_rows)  # doctest: +SKIP
    """
    gram, cross = grams
    if not bool(torch.isfinite(gram).all() and torch.isfinite(cross).all()):
        return None
    fitted = masked_lstsq(gram, cross, rows, mask_rows, start=start_rows)
    return from_rows(fitted, job.layout, job.module.weight.shape)


class MicroBatch:
    """One calibration micro-batch by index; distinct objects keep train and held-out apart.

    Example:
        >>> MicroBatch(3).index
        3
    """

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


def double_differentiable() -> contextlib.AbstractContextManager:
    """Attention as its math kernel, for the window forwards a re-fit differentiates twice.

    Example:
        >>> with double_differentiable():
        ...     pass
    """
    # Fused attention kernels have no second derivative; the math kernel does, and
    # Hessian-vector products differentiate through the backward pass.
    return sdpa_kernel([SDPBackend.MATH])


def solve_metrics(window, init: str, masked_loss: float, result, began: float) -> dict[str, Any]:
    """What a re-fit started from, spent and reached, as each layer's record keeps it.

    Example:
        >>> metrics = solve_metrics(window, "lsq", 0.5, result, time.perf_counter())  # doctest: +SKIP
    """
    return {
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
        # each attempted step's held-out loss after it: what the budget bought, step by step
        "heldout_losses": [h["heldout_loss_after"] for h in result.history],
        "solver_seconds": time.perf_counter() - began,
    }


def input_energy(job: ModuleJob, rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
    """CG's diagonal: weight ``(j, i)`` scaled by the energy of the input feature it
    multiplies (per kernel position for Conv2d), the diagonal of the layer's ``X^T X``.

    For K=0 that is the exact diagonal of each row's window Hessian; downstream
    operations mostly rescale rows, which the diagonal leaves to CG. Features never
    active get the mean energy; non-finite statistics give no preconditioner.

    Example:
        >>> diagonal = input_energy(job, job.weight_rows(), job.module.weight)  # doctest: +SKIP
    """
    energy = row_input_sq(rows, job.input_stats(("input_sq",)))  # the selectors' statistics, cached
    if not bool(torch.isfinite(energy).all()):
        return None
    mean = energy.mean().clamp(min=1e-30)
    energy = torch.where(energy > 1e-6 * mean, energy, mean)
    return from_rows(energy, job.layout, weight.shape).to(weight.device)


@torch.no_grad()
def input_grams(jobs: list[ModuleJob], train: list[int], target: str,
                overrides: dict[str, torch.Tensor] | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``X^T X`` of each job's module inputs and ``X^T X_t`` with its target-side inputs,
    over this process's training calls (positions in ``calls``), summed across
    processes: one block forward per call and stream for all of ``jobs`` (modules of
    one block) together.

    ``X`` comes from the partly pruned network, the block run with ``overrides`` in
    place of its own weights (``None``: as it is); ``X_t`` from the dense network
    (``target="dense-stream"``) or is ``X`` itself (``official``), sample for sample.
    Modules that read one input (``q/k/v_proj``) share one product per call.

    Example:
        >>> (gram, cross), = input_grams([job], [0, 1, 2], "official")  # doctest: +SKIP
    """
    job = jobs[0]
    modules = [(j.name, j.module, j.layout) for j in jobs]
    grams = {j.name: _zero_gram(j) for j in jobs}
    pruned = modules_inputs(job.block, modules, job.calls, train, overrides)
    if target == "dense-stream":
        pairs = zip(pruned, modules_inputs(job.block, modules, job.dense_calls, train, job.dense_overrides), strict=True)
    else:
        pairs = ((found, found) for found in pruned)
    for found, found_t in pairs:
        products: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # modules reading one input share theirs
        for name, (gram, cross) in grams.items():
            x, x_t = found[name], found_t[name]
            key = tuple((t.data_ptr(), t.dtype, t.shape, t.stride()) for t in (x, x_t))
            if key not in products:
                xtx = x.T @ x
                products[key] = (xtx, xtx if x_t is x else x.T @ x_t)
            gram += products[key][0]
            cross += products[key][1]
    return [(job.processes.sum(gram), job.processes.sum(cross)) for gram, cross in grams.values()]


def dense_targets(job: ModuleJob, runner: WindowRunner, window, target: str) -> list[list[torch.Tensor]]:
    """Dense outputs of the window for every micro-batch, computed once per re-fit (of a
    module, or of a block: the modules of ``job``'s block are all dense then).

    Example:
        >>> targets = dense_targets(job, runner, window, "dense-stream")  # doctest: +SKIP
    """
    if target == "dense-stream":
        calls, overrides = job.dense_calls, job.dense_overrides
    else:  # the module and everything after it are still dense in the model
        calls, overrides = job.calls, {}
    with torch.no_grad():
        return [[t.detach() for t in runner.run(call, window, overrides)] for call in calls]


def term_scales(job: ModuleJob, targets: list[list[torch.Tensor]], term_scale: str) -> list[float]:
    """``1 / sqrt(mean energy)`` of each window term over all micro-batches (all processes),
    or 1 each with ``term_scale="none"``.

    Example:
        >>> term_scales(job, targets, "none")  # doctest: +SKIP
        [1.0, 1.0]
    """
    if term_scale == "none":
        return [1.0] * len(targets[0])
    local = torch.stack([sum(t[k].double().pow(2).mean() for t in targets) for k in range(len(targets[0]))])
    energy = (job.processes.sum(local) / job.num_batches).tolist()
    return [1.0 / max(e, 1e-12) ** 0.5 for e in energy]
