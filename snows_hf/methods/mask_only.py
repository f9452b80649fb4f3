"""Methods that only mask: the kept weights are not re-fitted."""

from __future__ import annotations

from dataclasses import dataclass

from ..fields import config_field
from ..masks import apply_selector, get_selector
from .base import Method, MethodConfig, MethodResult
from .job import ModuleJob


@dataclass
class MaskOnlyConfig(MethodConfig):
    """Options of the ``none`` method (its mask is the run's ``mask``): where each module's
    input statistics come from.

    Example:
        >>> MaskOnlyConfig().name, MaskOnlyConfig().statistics
        ('none', 'block')
    """

    name = "none"
    statistics: str = config_field(
        "block", "where each module's input statistics come from: 'block' collects every module's in one forward of "
        "its block before any is pruned (two block forwards per block in all, as SparseGPT's reference and "
        "llm-compressor do); 'module' recomputes each module's after the ones before it in the block are pruned "
        "(one block forward per module)", choices=("block", "module"))


class MaskOnly(Method):
    """Mask only (``--mask`` selector), no re-fit: surviving weights keep their values, or
    the selector's own update where it makes one (SparseGPT)."""

    config_class = MaskOnlyConfig
    description = "mask only"
    options_title = "mask-only methods"
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


@dataclass
class MagnitudeConfig(MaskOnlyConfig):
    """Options of the ``magnitude`` method (it ignores the run's ``mask``): where the
    diagnostics' input statistics come from.

    Example:
        >>> MagnitudeConfig().name
        'magnitude'
    """

    name = "magnitude"


class MagnitudeMethod(MaskOnly):
    """Magnitude mask only: keep the largest ``|W|`` under the pattern, no re-fit."""

    config_class = MagnitudeConfig
    uses_mask_setting = False
    description = "magnitude mask only"
    card_paragraph = "Magnitude masks only: the largest weights were kept as they were."

    @property
    def mask_selector(self) -> str:
        return "magnitude"
