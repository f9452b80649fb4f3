"""What SNOWS says about its own results, from the metrics each layer's record keeps
(:func:`~snows_hf.methods.refit.solve_metrics`): the per-layer log line, the solver's
figures over the run and their log line, the model card's column and plot. The pipeline
and the card ask the method (:class:`~snows_hf.methods.Method`), never these keys.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..fields import setting
from .base import LayerPlot

#: every key a SNOWS re-fit puts into a layer's ``metrics``
METRIC_KEYS = frozenset({
    "k", "window", "init", "heldout_loss_masked", "train_loss_before", "train_loss_after", "heldout_loss_before",
    "heldout_loss_after", "newton_steps", "rejected_steps", "cg_iterations", "line_search_failed", "stop_reason",
    "cg_converged", "solver_seconds", "numerics", "refit_unit", "joint_solve", "joint_modules", "heldout_losses",
    "start_losses",
})

#: the model card's heading of the per-layer loss column
LOSS_HEADER = ("line-search window loss (micro-batches kept out of the Newton steps, not out of the mask statistics), "
               "masked -> re-fitted")


def refit_text(metrics: Mapping[str, Any]) -> str:
    """A layer's log line on its re-fit: held-out window loss before and after, Newton steps
    and CG iterations (nothing for a layer that was not re-fitted).

    Example:
        >>> refit_text({"heldout_loss_masked": 0.5, "heldout_loss_before": 0.4, "heldout_loss_after": 0.25,
        ...             "newton_steps": 1, "cg_iterations": [5]})
        ', window loss 0.5 -> 0.25, 1 Newton step, CG 5'
    """
    m = metrics
    if "heldout_loss_after" not in m:
        return ""
    before, after = m.get("heldout_loss_masked", m["heldout_loss_before"]), m["heldout_loss_after"]
    steps = m.get("newton_steps", 0)
    return (f", window loss {before:.3g} -> {after:.3g}, {steps} Newton step{'' if steps == 1 else 's'}, "
            f"CG {'+'.join(map(str, m.get('cg_iterations', []))) or '0'}")


def counted_solves(report: Any) -> list[dict[str, Any]]:
    """The metrics of each re-fit of ``report`` (a :class:`~snows_hf.report.PruneReport`)
    once: a layer's own, or, for the modules of a block re-fitted together, those of the
    first (every one of them holds the joint solve's figures, under its name in
    ``joint_solve``).

    Example:
        >>> from snows_hf.report import LayerReport, PruneReport
        >>> joint = {"stop_reason": "steps", "joint_solve": "b.0.q"}
        >>> layers = [LayerReport(n, 0, [2, 2], "linear", 0.5, 1.0, metrics=joint) for n in ("b.0.q", "b.0.k")]
        >>> len(counted_solves(PruneReport({}, None, "b", 1, 8, layers=layers)))
        1
    """
    return [layer.metrics for layer in report.layers if "stop_reason" in layer.metrics
            and layer.metrics.get("joint_solve", layer.name) == layer.name]


def solver_figures(report: Any) -> dict[str, int]:
    """How the re-fits of ``report`` ended, over all layers (a block re-fit counts once, as
    its ``layers`` are its modules): nothing here is hidden in averages.

    Example:
        >>> from snows_hf.report import PruneReport
        >>> solver_figures(PruneReport({}, None, "b", 1, 8))
        {}
    """
    refits = counted_solves(report)
    converged = [c for m in refits for c in m.get("cg_converged", [])]
    layers = lambda m: len(m.get("joint_modules", [None]))  # noqa: E731 - the modules one solve re-fitted
    return {
        "layers": sum(layers(m) for m in refits),
        "solves": len(refits),
        "rejected_line_search": sum(m["stop_reason"] == "line_search_failed" for m in refits),
        "non_finite": sum(layers(m) for m in refits if m.get("numerics")),
        "newton_steps": sum(m["newton_steps"] for m in refits),
        "cg_solves": len(converged),
        "cg_not_converged": converged.count(False),
    } if refits else {}


def solver_lines(figures: Mapping[str, int]) -> list[str]:
    """The log line on :func:`solver_figures` (none without a re-fit).

    Example:
        >>> solver_lines({"layers": 2, "solves": 2, "rejected_line_search": 0, "non_finite": 0, "newton_steps": 2,
        ...               "cg_solves": 2, "cg_not_converged": 1})[0][:55]
        'solver: 2 Newton steps over 2 layers; 0 ended on a reje'
    """
    if not figures:
        return []
    s = figures
    non_finite = f"; {s['non_finite']} layers met NaN/Inf" if s["non_finite"] else ""
    return ["solver: %d Newton steps over %d layers; %d ended on a rejected line search; CG reached its "
            "tolerance in %d of %d solves (the rest stopped at %s)%s" % (
                s["newton_steps"], s["layers"], s["rejected_line_search"], s["cg_solves"] - s["cg_not_converged"],
                s["cg_solves"], setting("cg_iters"), non_finite)]


def loss_column(metrics: Sequence[Mapping[str, Any]]) -> tuple[str, list[str]] | None:
    """The model card's column of held-out window losses, masked -> re-fitted, one cell per
    layer; ``None`` when no layer was re-fitted.

    Example:
        >>> loss_column([{"heldout_loss_masked": 0.5, "heldout_loss_after": 0.25}, {}])[1]
        ['0.5 -> 0.25', '']
    """
    if not any("heldout_loss_after" in m for m in metrics):
        return None
    return LOSS_HEADER, [f"{m['heldout_loss_masked']:.4g} -> {m['heldout_loss_after']:.4g}"
                         if "heldout_loss_after" in m else "" for m in metrics]


def loss_plot(metrics: Sequence[Mapping[str, Any]]) -> LayerPlot | None:
    """The model card's panel of held-out window losses per layer, mask only and re-fitted
    (log scale); ``None`` unless every layer was re-fitted.

    Example:
        >>> loss_plot([{"heldout_loss_masked": 0.5, "heldout_loss_after": 0.25}]).series[1][:2]
        ('SNOWS', [0.25])
    """
    if not all("heldout_loss_after" in m for m in metrics):
        return None
    return LayerPlot("line-search window loss", [
        ("mask only", [m["heldout_loss_masked"] for m in metrics], "#c44e52"),
        ("SNOWS", [m["heldout_loss_after"] for m in metrics], "#55a868"),
    ], log=True)
