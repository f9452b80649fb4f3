"""The method that only masks, ``mask-only``: the run's mask selector picks the pruned
weights and the kept ones are not re-fitted. The magnitude mask alone is this method with
``mask="magnitude"`` (the earlier method names ``none`` and ``magnitude`` are read as
these: :mod:`~snows_hf.methods.aliases`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..fields import config_field
from ..masks import apply_selector, get_selector
from .base import Method, MethodConfig, MethodResult, ModuleJob


@dataclass
class MaskOnlyConfig(MethodConfig):
    """Options of the ``mask-only`` method (its mask is the run's ``mask``): where each
    module's input statistics come from.

    Example:
        >>> MaskOnlyConfig().name, MaskOnlyConfig().statistics
        ('mask-only', 'block')
    """

    name = "mask-only"
    statistics: str = config_field(
        "block", "where each module's input statistics come from: 'block' collects every module's in one forward of "
        "its block before any is pruned (two block forwards per block in all, as SparseGPT's reference and "
        "llm-compressor do); 'module' recomputes each module's after the ones before it in the block are pruned "
        "(one block forward per module)", choices=("block", "module"))


class MaskOnly(Method):
    """Mask only (``--mask`` selector), no re-fit: surviving weights keep their values, or
    the selector's own update where it makes one (SparseGPT)."""

    config_class = MaskOnlyConfig
    description = "the mask selector's weights, no re-fit"
    options_title = "mask-only method"
    card_paragraph = "Masks only: the surviving weights are those of the mask selector."

    @property
    def fits_data(self) -> bool:
        return bool(get_selector(self.mask_selector).needs)

    def block_statistics(self) -> frozenset[str]:
        if getattr(self.config.method, "statistics", "block") != "block":  # a subclass's options may lack it
            return frozenset()
        diagnostics = {"input_sq"} if self.config.diagnostics else set()
        return frozenset(get_selector(self.mask_selector).needs | diagnostics)

    def prune_module(self, job: ModuleJob) -> MethodResult:
        stats = job.input_stats(get_selector(self.mask_selector).needs)
        weight_rows, mask = apply_selector(self.mask_selector, job.weight_rows(), job.pattern, stats)
        return MethodResult(weight_rows=weight_rows, mask_rows=mask)
