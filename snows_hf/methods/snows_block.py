"""The SNOWS re-fit of several modules together: a whole block (``refit_unit="block"``),
every targeted module of the block in one Newton-CG over the block's output and the K
operations after it; or a group of modules reading one input (``refit_unit="group"``:
``q/k/v_proj``, ``gate/up_proj``) over every member's output and the K operations after
them.

Each mask comes from the module's statistics (for a block, all from one forward of the
still dense block), each start is chosen as the re-fit of one module chooses it (the
least-squares fits from one forward per training micro-batch and stream, with the
modules at their masked starts; each replaces the selector's weight where the joint
held-out window loss falls), and one Newton-CG solves for every kept weight of the unit
at once, the weights end to end in one flat vector.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch

from ..masks import apply_selector, from_rows, get_selector, to_rows
from ..solver import FlatLayout, NewtonConfig, newton_refit, window_loss
from ..solver.cg import project
from ..windows import WindowRunner
from .base import MethodConfig, MethodResult
from .job import ModuleJob
from .refit import (MicroBatch, dense_targets, double_differentiable, finite_weight, input_energy, input_grams,
                    local_positions, lsq_start, solve_metrics, split_holdout, term_scales)

LsqMasks = Callable[[ModuleJob, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]  #: (job, rows, mask rows) -> masks


def refit_jointly(jobs: list[ModuleJob], options: MethodConfig, selector_name: str, newton: NewtonConfig,
                  lsq_masks: LsqMasks | None) -> tuple[list[MethodResult], Any, str | None]:
    """Re-fit ``jobs`` together, all of a block's modules or a group of them reading one
    input, as ``options.refit_unit`` says (``options``: a
    :class:`~snows_hf.methods.SnowsConfig`; masks from the selector ``selector_name``;
    ``lsq_masks(job, rows, mask_rows)``, when given, names the masks each module's
    least-squares start is tried on, by the start's name): the results in ``jobs``'
    order, the Newton-CG's own result, and what happened after NaN/Inf, if anything.

    The variable is the modules' weights end to end in one flat vector
    (:class:`~snows_hf.solver.FlatLayout`), so one Hessian-vector product is one window
    forward and backward per micro-batch, whatever the number of modules.

    Example:
        >>> results, solved, numerics = refit_jointly(jobs, SnowsConfig(refit_unit="block"), "wanda",
        ...                                           NewtonConfig(), lambda job, rows, kept: {"lsq": kept})  # doctest: +SKIP
    """
    began = time.perf_counter()
    job = jobs[0]  # the jobs share the block, its calls and its processes
    selector = get_selector(selector_name)
    rows, mask_rows, masks, starts, start_rows = [], [], [], [], []
    for j in jobs:
        rows.append(j.weight_rows())
        updated, kept = apply_selector(selector_name, rows[-1], j.pattern, j.input_stats(selector.needs))
        weight = j.module.weight.detach()
        masks.append(from_rows(kept, j.layout, weight.shape).bool())
        starts.append(from_rows(updated, j.layout, weight.shape).to(weight.dtype) * masks[-1])
        mask_rows.append(kept)
        start_rows.append(updated)
    train, held = split_holdout(job.num_batches, options.holdout)
    shard = job.processes.batch_shard(lambda batch: batch.index)
    names = [j.param_name for j in jobs]
    lsq = _joint_lsq(jobs, train, dict(zip(names, starts)), rows, mask_rows, start_rows, options.target, lsq_masks) \
        if lsq_masks else {}
    energies = [input_energy(j, r, j.module.weight) for j, r in zip(jobs, rows)] \
        if options.preconditioner == "input-energy" else [None]
    layout = FlatLayout(starts)
    # block-diagonal: each module's own diagonal; none at all if a module has none
    preconditioner = None if any(e is None for e in energies) else layout.pack(energies, torch.float32)
    start_name = selector_name if selector.updates_weights else "mask"
    unit = options.refit_unit
    with WindowRunner(job.blocks, job.block_index) as runner, double_differentiable():
        trace = runner.trace_block if unit == "block" else runner.trace_group
        window = trace(job.calls[0], dict(zip(names, starts)), options.k_step)
        targets = dense_targets(job, runner, window, options.target)  # the unit is still dense in the model
        scales = term_scales(job, targets, options.term_scale)

        def residuals(w: torch.Tensor, batch: MicroBatch) -> list[torch.Tensor]:
            local = job.local_index(batch.index)
            outputs = runner.run(job.calls[local], window, dict(zip(names, layout.unpack(w))))
            return [(o - t) * s for o, t, s in zip(outputs, targets[local], scales)]

        batches = [MicroBatch(i) for i in range(job.num_batches)]
        held_batches = [batches[i] for i in held]
        with torch.no_grad():
            def heldout(weights: list[torch.Tensor]) -> float:
                return float(window_loss(residuals, layout.pack(weights), held_batches, shard))

            # Each module's least-squares starts replace the selector's where the joint
            # held-out window loss falls, in execution order (one window forward each).
            chosen, inits = list(starts), [start_name] * len(jobs)
            masked_loss = best = heldout(chosen)
            # each module's candidates' joint held-out losses, the modules before it at their chosen starts
            start_losses: list[dict[str, float]] = [{} for _ in jobs]
            for i, fits in lsq.items():
                start_losses[i][start_name] = best
                for name, (fit, kept) in fits.items():
                    trial = chosen[:i] + [fit] + chosen[i + 1:]
                    start_losses[i][name] = loss = heldout(trial)
                    if loss < best:
                        chosen, best, inits[i], mask_rows[i] = trial, loss, name, kept
                        masks[i] = from_rows(kept, jobs[i].layout, fit.shape).bool()
        start, mask = layout.pack(chosen), layout.pack(masks)
        del starts, chosen, lsq, masks  # the flat copies are the solve's; CG keeps a few more of its size
        result = newton_refit(start, mask, residuals, [batches[i] for i in train], held_batches,
                              newton, shard, preconditioner=preconditioner, heldout_loss=best)
    masked = project(layout.pack([j.module.weight for j in jobs]), mask)
    weight, numerics = finite_weight(result, start, masked, ", ".join(dict.fromkeys(inits)))
    # Every module's record holds the joint solve's figures, named by its first module
    # (``joint_solve``): totals over layers count each solve once (``counted_solves``).
    joint = {"refit_unit": unit, "joint_solve": job.name, "joint_modules": [j.name for j in jobs]}
    results = []
    for j, w, kept, init, losses in zip(jobs, layout.unpack(weight), mask_rows, inits, start_losses):
        metrics = solve_metrics(window, init, masked_loss, result, began) | joint
        if losses:
            metrics["start_losses"] = losses
        if numerics:
            metrics["numerics"] = numerics
        results.append(MethodResult(weight_rows=to_rows(w, j.layout), mask_rows=kept, metrics=metrics))
    return results, result, numerics


def _joint_lsq(jobs: list[ModuleJob], train: list[int], starts: dict[str, torch.Tensor], rows: list[torch.Tensor],
               mask_rows: list[torch.Tensor], start_rows: list[torch.Tensor], target: str,
               lsq_masks: LsqMasks) -> dict[int, dict[str, tuple]]:
    """The closed-form least-squares starts of each Linear / Conv1D job (by position in
    ``jobs``), one per mask ``lsq_masks`` names, with that mask's rows, from one block
    forward per training call and stream: the inputs come from the block with every
    one of ``jobs`` at its selector start (the masks all applied). As for one module,
    an iterative solve on the selector's own mask starts from its update (``start_rows``)."""
    fit = [i for i, j in enumerate(jobs) if j.layout in ("linear", "conv1d")]
    if not fit:
        return {}
    grams = input_grams([jobs[i] for i in fit], local_positions(jobs[0], train), target, starts)
    found: dict[int, dict[str, tuple]] = {}
    for i, gram in zip(fit, grams):
        for name, kept in lsq_masks(jobs[i], rows[i], mask_rows[i]).items():
            weight = lsq_start(jobs[i], gram, rows[i], kept, start_rows[i] if kept is mask_rows[i] else None)
            if weight is not None:
                found.setdefault(i, {})[name] = (weight, kept)
    return found
