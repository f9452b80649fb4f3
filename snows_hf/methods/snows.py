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

``refit_unit="group"`` re-fits the modules that read one input together (``q/k/v_proj``,
``gate/up_proj``; the pipeline finds them by the input tensor they share): the masks and
starts as above, then one Newton-CG over every member's kept weights on a window of every
member's output and the K operations after them.

``refit_unit="block"`` re-fits all of a block's targeted modules together instead: their
masks come from one forward's statistics of the still dense block (as the mask-only
methods' ``statistics="block"``), each start is chosen as above (the least-squares fits
from one forward per training micro-batch and stream, with the block at its masked
starts; each replaces the selector's weight where the block's held-out window loss
falls), and one Newton-CG solves for every kept weight of the block at once, the weights
end to end in one flat vector. The window is the block's output and the K operations
after it, with dense targets computed once per block; CG's preconditioner is
block-diagonal, each module's own input-energy diagonal. A Hessian-vector product is then
one window forward and backward per micro-batch for the whole block, where the
per-module re-fit takes one per module.

The pieces both re-fits share are in :mod:`~snows_hf.methods.refit`, the block re-fit in
:mod:`~snows_hf.methods.snows_block`, and what SNOWS says of its results (log lines,
the solver's figures, the card's column and plot) in :mod:`~snows_hf.methods.snows_report`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from ..fields import SettingError, config_field, redeclared
from ..masks import apply_selector, from_rows, get_selector, to_rows
from ..placement import format_size
from ..solver import NewtonConfig, newton_refit, window_loss
from ..solver.hvp import HESSIAN_KINDS
from ..windows import WindowRunner
from .base import LayerPlot, Method, MethodConfig, MethodPlan, MethodResult
from .job import ModuleJob
from .refit import (MicroBatch, dense_targets, double_differentiable, finite_weight, input_energy, input_grams,
                    local_positions, lsq_start, solve_metrics, split_holdout, term_scales)
from .snows_block import refit_jointly
from .snows_report import METRIC_KEYS, loss_column, loss_plot, refit_text, solver_figures, solver_lines

logger = logging.getLogger(__name__)


@dataclass
class SnowsConfig(MethodConfig):
    """Options of the ``snows`` method: the re-fit window, its targets and the Newton-CG solve.

    Example:
        >>> SnowsConfig(k_step=0, hessian="exact").k_step
        0
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
    # The start decides heavy sparsity (issue 31, docs/results.md "The default in every
    # regime"): on the Fashion-MNIST ViT at 95% SNOWS from SparseGPT's update reached top-1
    # 0.68, from the better least-squares fit 0.75, from the best of these and the fit on the
    # magnitude mask 0.79 (quality_vit_regimes.json). Every candidate is fitted (one Gram
    # matrix serves both least-squares fits) and the held-out window loss chooses per module.
    init: str = config_field(
        "best", "SNOWS: start from the candidate with the lowest held-out window loss among the mask selector's "
        "weight and the closed-form least-squares fits on its mask and on alternative_mask (best), from the "
        "least-squares fit where it beats the selector's weight (lsq), from the selector's weight (mask: "
        "SparseGPT's own update, or the masked weight), or auto (mask when the selector updates weights, "
        "else lsq: the default before config_version 5)",
        choices=("best", "auto", "lsq", "mask"),
    )
    alternative_mask: str = config_field(
        "magnitude", "SNOWS: a second mask selector each module may take instead of the run's, when the "
        "least-squares start on it has the lower held-out window loss (none: the run's mask only; with init=best; "
        "a joint re-fit (group, block) judges it by the joint window's loss)",
    )
    hessian: str = config_field("gauss-newton", "SNOWS: Hessian-vector products, gauss-newton (PSD) or exact",
                                choices=HESSIAN_KINDS)
    # Newton steps go on while they pay: a second step is taken where the first lowered the
    # held-out window loss by more than 5%, up to 3 (issue 31). With a good start the second
    # step gained under 1% of that loss in 19 of 24 ViT modules at 95% (quality.py's
    # snows-choose-tol row); on 2 SmolLM2 blocks at 2:4 one step from SparseGPT's update
    # lowered the window loss by about 5% (solver_budget.json), the knee of that frontier.
    # The default is not the knee of whole SmolLM2's time/perplexity frontier at 2:4 or 50%:
    # the knee is the block re-fit at 1 x 5, whose perplexity is worse beyond noise, and
    # version 4's 1 x 5 from SparseGPT's update gives perplexity within noise of the default
    # for 1/1.3-1/1.9 of its time. The default is set for the heavy sparsities, where that
    # start falls short (ViT 95% top-1 0.68 against 0.79, ResNet 95% 0.74 against 0.79,
    # MiniLM 70% cosine 0.823 against 0.831: the quality_*_regimes.json files).
    newton_steps: int = config_field(3, "SNOWS: Newton steps per module at most", minimum=0)
    newton_tol: float = config_field(
        0.05, "SNOWS: take another Newton step only while the last one lowered the held-out window loss by more "
        "than this share of it (0: always newton_steps)", minimum=0, maximum=1,
    )
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
    # "module" stays the default (issue 31, docs/results.md "SNOWS's time against its quality"):
    # on whole SmolLM2 at 2:4 the block re-fit took 6.6x SparseGPT's time for perplexity 72.6
    # and 3.1x with its products on one micro-batch for 85.6, where the per-module re-fit at
    # version 4's defaults reached 65.7 at 13.6x (SparseGPT alone 95.4); at 50% 6.2x for 48.7
    # against 46.2 (quality_smollm2_frontier_block.json, quality_smollm2_regimes.json). The
    # group re-fit (q/k/v and gate/up together, four solves per Llama block instead of seven)
    # sits between: at the other defaults 11.3x for 66.6 at 2:4 and 12.7x for 46.7 at 50%
    # (the per-module default 18.1x for 66.0, 20.1x for 46.5), at version 4's 7.9x for 68.2
    # and 8.6x for 46.6 (quality_smollm2_frontier_group.json); on the ViT at 95% it kept
    # top-1 0.771 where the per-module default kept 0.792 (quality_vit_regimes.json).
    refit_unit: str = config_field(
        "module", "SNOWS: re-fit each module alone over its own window (module), the modules that read one "
        "input together (group: q/k/v, gate/up; one Newton-CG over every member's output and the K operations "
        "after them), or all of a block's modules together in one Newton-CG over the block's output and the K "
        "operations after it (block: masks and starts from one forward's statistics); a joint re-fit takes one "
        "window forward per Hessian-vector product for all its modules",
        choices=("module", "group", "block"),
    )


    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alternative_mask != "none":
            try:
                get_selector(self.alternative_mask)
            except (KeyError, ValueError) as err:
                raise SettingError(str(err), field="alternative_mask") from None


@dataclass
class SnowsPlan(MethodPlan):
    """SNOWS's part of the dry-run plan: its Newton-CG budget, and the micro-batches whose
    window graphs a Newton step keeps for CG (all training ones, or ``batches_per_step``
    / ``hessian_batches``)."""

    newton_steps: int = 0
    cg_iters: int = 0
    graph_batches: int = 0
    per_block: bool = False  #: one re-fit per block (``refit_unit="block"``)

    def footer(self, modules: list, batch_size: int) -> list[str]:
        """The largest window's activations over the kept graphs (about what a window holds
        on the device beyond the weights and activations), and the Hessian-vector products
        at most: re-fits (modules, or blocks) x Newton steps x CG iterations. A block's
        window spans the blocks its modules' windows span, so its graphs are estimated
        from the module whose window reaches furthest.

        Example:
            >>> SnowsPlan(newton_steps=2, cg_iters=5, graph_batches=7).footer([], batch_size=4)
            ["largest window's kept graphs (estimate): 0 B", 'Hessian-vector products: at most 0']
        """
        graphs = max((m.window_bytes for m in modules), default=0) * self.graph_batches * batch_size
        refits = len({m.block for m in modules}) if self.per_block else len(modules)
        return [f"largest window's kept graphs (estimate): {format_size(graphs)}",
                f"Hessian-vector products: at most {refits * self.newton_steps * self.cg_iters:,}"]


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
    newton_steps: int = redeclared(SnowsConfig, "newton_steps", 1)


class SnowsMethod(Method):
    """Mask with ``config.mask``, then re-fit the kept weights over the K-step window
    (options: ``config.method``, a :class:`SnowsConfig`)."""

    config_class = SnowsConfig
    description = "mask, then re-fit over a K-step window"
    options_title = "SNOWS re-fit"
    card_paragraph = ("After each layer's mask was chosen, SNOWS re-fitted its surviving weights so that "
                      "the network's outputs several operations downstream stay close to the dense model.")
    metric_keys = METRIC_KEYS

    def __init__(self, config) -> None:
        super().__init__(config)
        self._max_graphs: int | None = None  # lowered for good after an out-of-memory retry

    @property
    def needs_dense_stream(self) -> bool:  # type: ignore[override]
        return self.config.method.target == "dense-stream"

    @property
    def prunes_blocks(self) -> bool:  # type: ignore[override]
        return self.config.method.refit_unit == "block"

    @property
    def prunes_groups(self) -> bool:  # type: ignore[override]
        return self.config.method.refit_unit == "group"

    def block_statistics(self) -> frozenset[str]:
        """A block re-fit chooses every mask of the block from one forward's statistics
        (the selector's, and the preconditioner's and diagnostics' ``input_sq``)."""
        if not self.prunes_blocks:
            return frozenset()
        energy = self.config.method.preconditioner == "input-energy" or self.config.diagnostics
        return frozenset(get_selector(self.mask_selector).needs | ({"input_sq"} if energy else set()))

    def plan(self, micro_batches: int) -> SnowsPlan:
        cfg = self.config.method
        held = len(split_holdout(micro_batches, cfg.holdout)[1])
        unit = {"block": ", one re-fit per block", "group": ", one re-fit per group of modules reading one input"}
        unit = unit.get(cfg.refit_unit, "")
        return SnowsPlan(
            settings=f", K={cfg.k_step}, {cfg.newton_steps} Newton steps x {cfg.cg_iters} CG at most{unit}",
            calibration=f", {held} held out for the line search", window_k=cfg.k_step,
            newton_steps=cfg.newton_steps, cg_iters=cfg.cg_iters, per_block=cfg.refit_unit == "block",
            graph_batches=min(micro_batches - held, cfg.batches_per_step or micro_batches,
                              cfg.hessian_batches or micro_batches),
        )

    @classmethod
    def summary(cls, settings: Mapping[str, Any]) -> str:
        unit = {"block": ", re-fit per block", "group": ", re-fit per input group"}.get(settings.get("refit_unit"), "")
        return super().summary(settings) + f", K={settings['k_step']}, {settings['target']} targets{unit}"

    @classmethod
    def metadata(cls, settings: Mapping[str, Any]) -> dict[str, Any]:
        return super().metadata(settings) | {"k_step": settings["k_step"], "target": settings["target"]}

    @classmethod
    def card_settings(cls, settings: Mapping[str, Any]) -> list[tuple[str, Any]]:
        return super().card_settings(settings) + [
            ("K (operations downstream)", settings["k_step"]), ("targets", settings["target"]),
            ("Newton steps x CG iterations", f"{settings['newton_steps']} x {settings['cg_iters']}"),
            ("start", settings["init"]),
            # settings stored before the option existed meant a module at a time
            ("re-fit unit", settings.get("refit_unit", "module")),
        ]

    @classmethod
    def layer_text(cls, metrics: Mapping[str, Any]) -> str:
        return refit_text(metrics)

    @classmethod
    def run_figures(cls, report: Any) -> dict[str, Any]:
        return solver_figures(report)

    @classmethod
    def run_lines(cls, figures: Mapping[str, Any]) -> list[str]:
        return solver_lines(figures)

    @classmethod
    def card_column(cls, metrics: Sequence[Mapping[str, Any]]) -> tuple[str, list[str]]:
        return loss_column(metrics) or super().card_column(metrics)

    @classmethod
    def card_plot(cls, metrics: Sequence[Mapping[str, Any]]) -> LayerPlot | None:
        return loss_plot(metrics)

    def newton_config(self) -> NewtonConfig:
        cfg = self.config.method
        return NewtonConfig(
            steps=cfg.newton_steps, min_decrease=cfg.newton_tol, hessian=cfg.hessian, cg_iters=cfg.cg_iters, damping=cfg.damping,
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
        candidates = {}  # name -> (start weight, mask rows): least-squares fits, on the selector's mask and another
        if self._uses_lsq(selector) and job.layout in ("linear", "conv1d"):
            (grams,) = input_grams([job], local_positions(job, train), cfg.target)
            for name, kept in self._lsq_masks(job, rows, mask_rows).items():
                fitted = lsq_start(job, grams, rows, kept, start_rows if kept is mask_rows else None)
                if fitted is not None:
                    candidates[name] = (fitted, kept)
        preconditioner = input_energy(job, rows, weight) if cfg.preconditioner == "input-energy" else None
        with WindowRunner(job.blocks, job.block_index, job.param_name) as runner, double_differentiable():
            window = runner.trace(job.calls[0], weight, cfg.k_step)
            targets = dense_targets(job, runner, window, cfg.target)
            scales = term_scales(job, targets, cfg.term_scale)

            def residuals(w: torch.Tensor, batch: MicroBatch) -> list[torch.Tensor]:
                local = job.local_index(batch.index)
                outputs = runner.run(job.calls[local], window, {job.param_name: w})
                return [(o - t) * s for o, t, s in zip(outputs, targets[local], scales)]

            batches = [MicroBatch(i) for i in range(job.num_batches)]
            held_batches = [batches[i] for i in held]
            with torch.no_grad():
                masked_loss = float(window_loss(residuals, start_weight, held_batches, shard))
                init, start_loss, start_losses = start_name, masked_loss, {start_name: masked_loss}
                for name, (fitted, kept) in candidates.items():  # the lowest held-out window loss starts
                    start_losses[name] = loss = float(window_loss(residuals, fitted, held_batches, shard))
                    if loss < start_loss:
                        init, start_loss, start_weight, mask_rows = name, loss, fitted, kept
            mask = from_rows(mask_rows, job.layout, weight.shape).bool()
            result = newton_refit(
                start_weight, mask, residuals, [batches[i] for i in train], held_batches, self.newton_config(), shard,
                preconditioner=preconditioner, heldout_loss=start_loss,
            )
        self._remember_graphs(result, job.name)
        weight, numerics = finite_weight(result, start_weight, weight * mask, init)
        if numerics:
            logger.warning("%s: %s", job.name, numerics)
        metrics = solve_metrics(window, init, masked_loss, result, start)
        metrics["start_losses"] = start_losses  # each candidate start's held-out window loss
        if numerics:
            metrics["numerics"] = numerics
        return MethodResult(weight_rows=to_rows(weight, job.layout), mask_rows=mask_rows, metrics=metrics)

    def prune_block(self, jobs: list[ModuleJob]) -> list[MethodResult]:
        """Re-fit all of a block's modules together: each mask from the block's statistics
        and each start as :meth:`prune_module` chooses them, then one Newton-CG over every
        kept weight of the block at once, on the block's window (its output and the K
        operations after it): :func:`~snows_hf.methods.snows_block.refit_jointly`."""
        return self._refit_jointly(jobs, f"block {jobs[0].block_index}")

    def prune_group(self, jobs: list[ModuleJob]) -> list[MethodResult]:
        """Re-fit modules that read one input together: each mask and start as
        :meth:`prune_module` chooses them, then one Newton-CG over every member's kept
        weights, on a window of every member's output and the K operations after them
        (:func:`~snows_hf.methods.snows_block.refit_jointly`)."""
        return self._refit_jointly(jobs, " + ".join(j.name for j in jobs))

    def _refit_jointly(self, jobs: list[ModuleJob], name: str) -> list[MethodResult]:
        selector = get_selector(self.mask_selector)
        lsq_masks = self._lsq_masks if self._uses_lsq(selector) else None
        results, solved, numerics = refit_jointly(jobs, self.config.method, self.mask_selector, self.newton_config(), lsq_masks)
        self._remember_graphs(solved, name)
        if numerics:
            logger.warning("%s: %s", name, numerics)
        return results

    def _lsq_masks(self, job: ModuleJob, rows: torch.Tensor, mask_rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """The masks a least-squares start is fitted on, by the start's name: the selector's
        (``lsq``) and, for ``init="best"`` with an ``alternative_mask``, that selector's (``lsq-<name>``)."""
        masks = {"lsq": mask_rows}
        other = self.config.method.alternative_mask
        if self.config.method.init == "best" and other not in ("none", self.mask_selector):
            needs = get_selector(other).needs
            masks[f"lsq-{other}"] = apply_selector(other, rows, job.pattern, job.input_stats(needs))[1]
        return masks

    def _uses_lsq(self, selector) -> bool:
        init = self.config.method.init
        return init in ("best", "lsq") or (init == "auto" and not selector.updates_weights)

    def _remember_graphs(self, result, name: str) -> None:
        """After out-of-memory retries, later modules start from the graphs that fitted."""
        if result.memory_retries:
            logger.info("%s: out of memory with every micro-batch graph kept; holding %d at a time from now on",
                        name, result.graph_batches)
            self._max_graphs = result.graph_batches


class SnowsFastMethod(SnowsMethod):
    """SNOWS with a smaller Newton-CG budget (options: a :class:`SnowsFastConfig`)."""

    config_class = SnowsFastConfig
    description = "SNOWS with at most 2 CG iterations: faster, less accurate"
