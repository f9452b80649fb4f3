"""The SNOWS re-fit of a whole block (``refit_unit="block"``): every targeted module of the
block in one Newton-CG over the block's output and the K operations after it.

Each mask comes from the block's statistics, each start is chosen as the re-fit of one
module chooses it (the least-squares fits from one forward per training micro-batch and
stream, with the block at its masked starts; each replaces the selector's weight where
the block's held-out window loss falls), and one Newton-CG solves for every kept weight
of the block at once, the weights end to end in one flat vector.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ..masks import apply_selector, from_rows, get_selector, to_rows
from ..solver import FlatLayout, NewtonConfig, newton_refit, window_loss
from ..solver.cg import project
from ..windows import WindowRunner
from .base import MethodConfig, MethodResult
from .job import ModuleJob
from .refit import (MicroBatch, dense_targets, double_differentiable, finite_weight, input_energy, input_grams,
                    local_positions, lsq_start, solve_metrics, split_holdout, term_scales)


def refit_block(jobs: list[ModuleJob], options: MethodConfig, selector_name: str, newton: NewtonConfig,
                uses_lsq: bool) -> tuple[list[MethodResult], Any, str | None]:
    """Re-fit all of a block's modules together (``options``: a
    :class:`~snows_hf.methods.SnowsConfig`; masks from the selector ``selector_name``,
    least-squares starts tried when ``uses_lsq``): the results in ``jobs``' order, the
    Newton-CG's own result, and what happened after NaN/Inf, if anything.

    The variable is the modules' weights end to end in one flat vector
    (:class:`~snows_hf.solver.FlatLayout`), so one Hessian-vector product is one window
    forward and backward per micro-batch, whatever the number of modules.

    Example:
        >>> results, solved, numerics = refit_block(jobs, SnowsConfig(refit_unit="block"), "wanda",
        ...                                         NewtonConfig(), uses_lsq=True)  # doctest: +SKIP
    """
    began = time.perf_counter()
    job = jobs[0]  # the jobs share the block, its calls and its processes
    selector = get_selector(selector_name)
    rows, mask_rows, masks, starts = [], [], [], []
    for j in jobs:
        rows.append(j.weight_rows())
        start_rows, kept = apply_selector(selector_name, rows[-1], j.pattern, j.input_stats(selector.needs))
        weight = j.module.weight.detach()
        masks.append(from_rows(kept, j.layout, weight.shape).bool())
        starts.append(from_rows(start_rows, j.layout, weight.shape).to(weight.dtype) * masks[-1])
        mask_rows.append(kept)
    train, held = split_holdout(job.num_batches, options.holdout)
    shard = job.processes.batch_shard(lambda batch: batch.index)
    names = [j.param_name for j in jobs]
    lsq = _block_lsq(jobs, train, dict(zip(names, starts)), rows, mask_rows, options.target) if uses_lsq else {}
    energies = [input_energy(j, r, j.module.weight) for j, r in zip(jobs, rows)] \
        if options.preconditioner == "input-energy" else [None]
    layout = FlatLayout(starts)
    # block-diagonal: each module's own diagonal; none at all if a module has none
    preconditioner = None if any(e is None for e in energies) else layout.pack(energies, torch.float32)
    start_name = selector_name if selector.updates_weights else "mask"
    with WindowRunner(job.blocks, job.block_index) as runner, double_differentiable():
        window = runner.trace_block(job.calls[0], dict(zip(names, starts)), options.k_step)
        targets = dense_targets(job, runner, window, options.target)  # the block is still dense in the model
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

            # Each module's least-squares start replaces the selector's where the block's
            # held-out window loss falls, in execution order (one window forward each).
            chosen, inits = list(starts), [start_name] * len(jobs)
            masked_loss = best = heldout(chosen)
            for i, fit in lsq.items():
                trial = chosen[:i] + [fit] + chosen[i + 1:]
                loss = heldout(trial)
                if loss < best:
                    chosen, best, inits[i] = trial, loss, "lsq"
        start, mask = layout.pack(chosen), layout.pack(masks)
        del starts, chosen, lsq, masks  # the flat copies are the solve's; CG keeps a few more of its size
        result = newton_refit(start, mask, residuals, [batches[i] for i in train], held_batches,
                              newton, shard, preconditioner=preconditioner, heldout_loss=best)
    masked = project(layout.pack([j.module.weight for j in jobs]), mask)
    weight, numerics = finite_weight(result, start, masked, ", ".join(dict.fromkeys(inits)))
    # Every module's record holds the joint solve's figures, named by its first module
    # (``joint_solve``): totals over layers count each solve once (``counted_solves``).
    joint = {"refit_unit": "block", "joint_solve": job.name, "joint_modules": [j.name for j in jobs]}
    results = []
    for j, w, kept, init in zip(jobs, layout.unpack(weight), mask_rows, inits):
        metrics = solve_metrics(window, init, masked_loss, result, began) | joint
        if numerics:
            metrics["numerics"] = numerics
        results.append(MethodResult(weight_rows=to_rows(w, j.layout), mask_rows=kept, metrics=metrics))
    return results, result, numerics


def _block_lsq(jobs: list[ModuleJob], train: list[int], starts: dict[str, torch.Tensor], rows: list[torch.Tensor],
               mask_rows: list[torch.Tensor], target: str) -> dict[int, torch.Tensor]:
    """The closed-form least-squares start of each Linear / Conv1D job (by position in
    ``jobs``), from one block forward per training call and stream: its inputs come
    from the block with every module at its selector start (the masks all applied)."""
    fit = [i for i, j in enumerate(jobs) if j.layout in ("linear", "conv1d")]
    if not fit:
        return {}
    grams = input_grams([jobs[i] for i in fit], local_positions(jobs[0], train), target, starts)
    found = {i: lsq_start(jobs[i], g, rows[i], mask_rows[i]) for i, g in zip(fit, grams)}
    return {i: w for i, w in found.items() if w is not None}
